"""Final evaluation of a trained SAE, with SAE-Lens's own evals, into the flat record of metrics.json: on the mixed
evaluation stream, and separately on each source (held-out stories, training prompts, held-out prompts)."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from container_src import data
from container_src.config import TrainConfig

if TYPE_CHECKING:
    from datasets import Dataset
    from sae_lens import SAE
    from sae_lens.training.activations_store import ActivationsStore
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

EXPLAINED_VARIANCE_DEFINITION = (
    "1 - E[||x - x_hat||^2] / E[||x - E[x]||^2] over all evaluated tokens, centred on the mean of the evaluated "
    "activations (SAE-Lens >= 6.45.1 `explained_variance`); `explained_variance_legacy` is the older per-batch mean"
)
CE_LOSS_SCORE_DEFINITION = (
    "(CE with zero-ablated activations - CE with the SAE spliced in) / (CE zero-ablated - CE of the clean model); "
    "1 means the SAE preserves next-token loss"
)


def evaluate(
    sae: SAE[Any],
    model: HookedTransformer,
    store: ActivationsStore,
    n_batches: int,
) -> dict[str, Any]:
    """Reconstruction, sparsity and downstream-loss metrics on ``n_batches`` fresh batches of the training stream,
    leaving out the special tokens where the store does (``exclude_special_tokens``)."""
    from sae_lens.evals import EvalConfig, run_evals
    from sae_lens.training.activation_scaler import ActivationScaler

    eval_config = EvalConfig(
        batch_size_prompts=store.store_batch_size_prompts,
        n_eval_reconstruction_batches=n_batches,
        n_eval_sparsity_variance_batches=n_batches,
        compute_ce_loss=True,
        compute_kl=False,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
    )
    sae.eval()
    grouped, _ = run_evals(
        sae=sae,
        activation_store=store,
        model=model,
        # the trainer folds any activation scaling into the weights when it finishes
        activation_scaler=ActivationScaler(),
        eval_config=eval_config,
        exclude_special_tokens=excluded_tokens(store),
    )
    flat = {key: value for group in grouped.values() for key, value in group.items()}
    return {
        "explained_variance": flat["explained_variance"],
        "explained_variance_definition": EXPLAINED_VARIANCE_DEFINITION,
        "explained_variance_legacy": flat["explained_variance_legacy"],
        "mse": flat["mse"],
        "cossim": flat["cossim"],
        "l0": flat["l0"],
        "l1": flat["l1"],
        "ce_loss_score": flat["ce_loss_score"],
        "ce_loss_score_definition": CE_LOSS_SCORE_DEFINITION,
        "ce_loss_with_sae": flat["ce_loss_with_sae"],
        "ce_loss_without_sae": flat["ce_loss_without_sae"],
        "ce_loss_with_ablation": flat["ce_loss_with_ablation"],
        "eval_tokens": flat["total_tokens_eval_sparsity_variance"],
        "ce_loss_eval_tokens": flat["total_tokens_eval_reconstruction"],
    }


def excluded_tokens(store: ActivationsStore) -> list[int] | bool:
    """The token ids the store leaves out of training (``exclude_special_tokens``), for the evals to leave out too."""
    ids = store.exclude_special_tokens
    return False if ids is None else [int(i) for i in ids.tolist()]


SOURCE_METRICS = ("explained_variance", "l0", "ce_loss_score")
SOURCE_NAMES = ("stories", "training_prompts", "heldout_prompts")
"""The sources of ``sources``, in order; the final metric line names each figure ``<metric>_<source>``."""
"""The per-source figures that also go on the final metric line, as ``<metric>_<source>=``."""
_SOURCE_DETAILS = ("mse", "cossim", "ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation")


@dataclass(frozen=True)
class Source:
    """One part of the data that the final evaluation reports on by itself."""

    name: str
    """Its key under ``evaluation_by_source`` in metrics.json, and the suffix of its keys on the metric line."""
    data: str
    held_out: bool
    unit: str
    """What its documents are: ``stories`` or ``prompts``."""
    documents: Iterable[dict[str, Any]] | None
    """Rows with ``text``; None when the source is skipped."""
    available: int | None = None
    """How many distinct documents it has; None for a stream read until the evaluation has its rows."""
    skipped: str | None = None


def _prompt_source(name: str, data_text: str, held_out: bool, texts: list[str], seed: int, why_none: str) -> Source:
    if not texts:
        return Source(name, data_text, held_out, "prompts", None, skipped=why_none)
    # a seeded order, so that where the evaluation reads only some of them they are a sample, not the first rows
    random.Random(seed).shuffle(texts)
    return Source(name, data_text, held_out, "prompts", data.CycledTexts(texts), available=len(texts))


def sources(
    cfg: TrainConfig, eval_stories: Iterable[dict[str, Any]], prompts: Dataset | None, heldout_rows: list[int]
) -> list[Source]:
    """The three sources: the control text's ``control_eval_split``, the prompts trained on, the prompts held out."""
    trained_split = cfg.control_eval_split == cfg.control_split
    stories = Source(
        "stories",
        f"control text {cfg.control_path} split {cfg.control_eval_split!r}, "
        + ("the training split: trained on" if trained_split else "held out from training"),
        not trained_split,
        "stories",
        eval_stories,
    )
    if prompts is None:
        why = "no prompts were trained on (prompt_ratio=0 or no prompts channel)"
        return [
            stories,
            Source("training_prompts", "prompts trained on", False, "prompts", None, skipped=why),
            Source("heldout_prompts", "prompts held out from training", True, "prompts", None, skipped=why),
        ]
    held = set(heldout_rows)
    texts = prompts["text"]
    fraction = cfg.heldout_prompt_fraction
    no_heldout = (
        "heldout_prompt_fraction=0: every prompt is trained on"
        if fraction == 0
        else f"heldout_prompt_fraction={fraction} holds out no prompt of {len(texts)} (too few per category)"
    )
    return [
        stories,
        _prompt_source(
            "training_prompts",
            "prompts trained on (cycled in training)",
            False,
            [t for i, t in enumerate(texts) if i not in held],
            cfg.seed,
            "every prompt is held out",
        ),
        _prompt_source(
            "heldout_prompts",
            f"prompts held out from training (heldout_prompt_fraction={fraction}, heldout_prompts.json)",
            True,
            [t for i, t in enumerate(texts) if i in held],
            cfg.seed,
            no_heldout,
        ),
    ]


def evaluate_source(sae: SAE[Any], model: HookedTransformer, runner_cfg: Any, source: Source, n_batches: int) -> dict:
    """``evaluate`` on a store of this source's documents alone (packed as training packs them), with what it read:
    tokens, and distinct documents with tokens in the rows read (a few prompts are cycled to fill the rows)."""
    record: dict[str, Any] = {"data": source.data, "held_out": source.held_out}
    if source.documents is None:
        return record | {"skipped": source.skipped} | dict.fromkeys(SOURCE_METRICS)
    from container_src.store import store_over

    rows = data.CountedRows(source.documents, model, runner_cfg)
    store = store_over(rows, model, runner_cfg)
    try:
        metrics = evaluate(sae, model, store, n_batches)
    finally:
        store.close()
    covered = rows.documents_covered
    record |= {
        "tokens_evaluated": metrics["eval_tokens"],
        "ce_loss_tokens_evaluated": metrics["ce_loss_eval_tokens"],
        f"{source.unit}_evaluated": covered if source.available is None else min(covered, source.available),
    }
    if source.available is not None:
        record |= {f"{source.unit}_in_source": source.available, f"{source.unit}_read_with_repeats": covered}
    return record | {key: metrics[key] for key in (*SOURCE_METRICS, *_SOURCE_DETAILS)}


def evaluate_sources(
    sae: SAE[Any], model: HookedTransformer, runner_cfg: Any, of: list[Source], n_batches: int
) -> dict[str, dict[str, Any]]:
    """Each source's figures, by name; a skipped source has its reason and null figures, never zeros."""
    by_source = {}
    for source in of:
        by_source[source.name] = evaluate_source(sae, model, runner_cfg, source, n_batches)
        if source.documents is None:
            logger.info("evaluation on %s skipped: %s", source.name, source.skipped)
    return by_source


def metric_fields(by_source: dict[str, dict[str, Any]]) -> dict[str, float]:
    """The per-source figures for the final metric line: ``explained_variance_heldout_prompts=`` and so on, only
    for the sources evaluated."""
    return {
        f"{metric}_{name}": record[metric]
        for name, record in by_source.items()
        for metric in SOURCE_METRICS
        if record.get(metric) is not None
    }
