"""`viz` mode: score an SAE's features under several contrasts (prompts vs stories, category vs category, response vs
question, …), counting evidence per prompt, and render dashboards.

    python -m container_src viz                        # the SAE in channel `sae`, else the tree's own model/
    python -m container_src viz --n_features 100 --features 12,873

The results are assembled in ``model/.dashboards-staging`` and replace ``model/dashboards`` only when complete:

    index.html        the ranked features, linking to their dashboards
    dashboard.html    sae-dashboard's feature-centric view (d3 and plotly inlined; open it anywhere)
    features.csv      every feature: each contrast's figures, raw frequencies and activations, top prompt snippets
    features.json     the same, nested
    summary.json      what ran: the SAE, the prompt set, every contrast with its sizes (or why it was skipped), timings
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from container_src import (
    chat,
    contrast_stats,
    contrasts,
    dashboards,
    data,
    model,
    prompt_set,
    records,
    sae_input,
    viz_compare,
    weights,
)
from container_src.config import ConfigError, Resolved, VizConfig
from container_src.corpus import Corpus, pack_corpus
from container_src.feature_batches import Batches, autocast
from container_src.paths import ContainerPaths
from container_src.prompts import load_prompts
from container_src.ranking import STORIES, FeatureStats, rank
from container_src.sequences import pad_to
from container_src.snippets import top_snippets
from container_src.viz_ablation import ablate_contrasts, attach_ablations

if TYPE_CHECKING:
    from datasets import Dataset, IterableDataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Inputs:
    """What the cheap checks found: the SAE's folder and config, the model's name and channel, the datasets."""

    source: Path
    sae_dir: Path
    sae_cfg: dict[str, Any]
    model_name: str
    model_channel: Path | None
    prompts: Dataset
    """The prompts of the chosen prompt set."""
    prompt_set: dict[str, Any]
    contrasts: list[contrasts.Contrast]
    stories: IterableDataset
    stories_identity: str
    runtime: model.Runtime
    weights: weights.Weights

    @property
    def hook_name(self) -> str:
        return self.sae_cfg["metadata"]["hook_name"]


@dataclass(frozen=True)
class Models:
    """The language model and the SAE, checked against each other, and the context size they run at."""

    lm: Any
    sae: Any
    context_size: int


def sae_source(paths: ContainerPaths) -> Path:
    """Channel ``sae``, else the model/ folder that train left an SAE in."""
    channel = paths.channel("sae")
    if channel is not None:
        return channel
    if (paths.model_dir / "cfg.json").is_file() or (paths.model_dir / viz_compare.MULTI).is_file():
        logger.info("no channel sae: using the SAE that train left in %s", paths.model_dir)
        return paths.model_dir
    raise ConfigError(
        f"no SAE: channel sae ({paths.base}/input/data/sae) is missing and {paths.model_dir} holds no SAE. Pass a "
        "train run's model/ folder or its model.tar.gz as channel `sae`, or run train first."
    )


def check_inputs(cfg: VizConfig, paths: ContainerPaths, scratch: Path, source: Path | None = None) -> Inputs:
    """Every check that loads no model: the SAE's files and metadata, the feature ids, the channels and datasets.
    The SAE is ``source`` (one SAE of a multi-SAE job), else `sae_source`'s."""
    source = source or sae_source(paths)
    sae_dir = sae_input.unpack(source, scratch)
    sae_cfg = sae_input.read_cfg(sae_dir)
    meta, d_sae = sae_cfg["metadata"], sae_cfg["d_sae"]
    out_of_range = [f for f in cfg.feature_ids if f >= d_sae]
    if out_of_range:
        raise ConfigError(
            f"features={cfg.features!r}: {out_of_range} out of range; this SAE has {d_sae} (0-{d_sae - 1})"
        )
    model_name = cfg.model_name or meta["model_name"]
    model_weights = cfg.model_weights if cfg.model_weights is not None else str(meta.get("model_weights") or "")
    channels = paths.model_inputs(model_weights or model_name)
    # rendered as train rendered them, so the features read the text they were trained on
    rendering = chat.Rendering.from_record(meta.get("prompt_rendering"))
    lm_weights = weights.prepare(model_name, model_weights, channels["model"], rendering.format == "chat")
    if channels["prompts"] is None:
        raise ConfigError(
            f"viz compares the prompts with the control text, and there is no prompts channel ({paths.base}/input/data/"
            "prompts is missing or empty). Pass the exported prompts as channel `prompts`."
        )
    renderer = chat.Renderer(rendering, lm_weights.tokenizer) if rendering.format == "chat" else None
    every_prompt = load_prompts(channels["prompts"], renderer)
    user = contrasts.parse(cfg.contrasts)
    contrasts.check_against(user, contrasts.column_values(every_prompt))
    prompts, chosen = prompt_set.select(every_prompt, cfg.prompt_set, sae_dir)
    known = {part: any(v >= 0 for v in prompts[f"{part}_start"]) for part in ("question", "response")}
    # the defaults come from every prompt's values, so a category the chosen set lacks is listed as skipped
    wanted = contrasts.defaults(contrasts.column_values(every_prompt), known) + user
    stories, stories_identity = data.load_control(
        channels["control"], cfg.control_path, cfg.control_split, cfg.control_text_column
    )
    runtime = model.pick_runtime(cfg.device, cfg.precision, job_instance=paths.instance_type())
    return Inputs(
        source,
        sae_dir,
        sae_cfg,
        model_name,
        channels["model"],
        prompts,
        chosen,
        wanted,
        stories,
        stories_identity,
        runtime,
        lm_weights,
    )


def load_models(cfg: VizConfig, inputs: Inputs) -> Models:
    """Load the model and the SAE, and check that they fit each other and the context size."""
    runtime, sae_cfg, hook_name = inputs.runtime, inputs.sae_cfg, inputs.hook_name
    logger.info(
        "loading %s on %s (%s) for SAE %s", inputs.model_name, runtime.device_name, runtime.precision, inputs.sae_dir
    )
    lm = model.load_model(
        inputs.model_name,
        runtime.device,
        inputs.model_channel,
        source=inputs.weights.source,
        tokenizer=inputs.weights.tokenizer,
    )
    model.check_hook(lm, hook_name)
    width = model.hook_width(lm, hook_name)
    if width != sae_cfg["d_in"]:
        raise ConfigError(
            f"channel sae: the SAE reads {sae_cfg['d_in']} values at {hook_name}, "
            f"but {inputs.model_name} has {width} there"
        )
    sae = sae_input.load(inputs.sae_dir, runtime.device)
    context_size = cfg.context_size or int(sae_cfg["metadata"].get("context_size") or 128)
    model.check_context(lm, context_size)
    return Models(lm, sae, context_size)


def gather_stats(
    cfg: VizConfig, inputs: Inputs, models: Models, corpus: Corpus
) -> tuple[FeatureStats, contrast_stats.SideStats]:
    """Per-feature statistics from one pass over each source: per category (the token-level table), and per
    contrast side (prompts and tokens fired on)."""
    import torch

    device, width = inputs.runtime.device, corpus.prompt_tokens.shape[1]
    d_sae = inputs.sae_cfg["d_sae"]
    stats = FeatureStats(d_sae, corpus.groups, top_k=4 * cfg.top_snippets, device=device)
    sides = contrast_stats.SideStats(corpus.plan, d_sae, device)
    encode = Batches(models.lm, models.sae, inputs.hook_name, inputs.runtime, cfg.batch_size)
    parts = torch.stack([corpus.rows.parts[p] for p in contrast_stats.PART_ORDER], dim=1).float()
    doc_group = corpus.doc_group.to(device)
    for start, feats in encode(corpus.prompt_tokens, "prompts"):
        end = start + feats.shape[0]
        sides.add_prompts(feats, torch.arange(start, end, device=device), parts[start:end].to(device))
        batch_docs = corpus.prompt_docs[start:end].to(device).flatten()
        keep = batch_docs >= 0
        positions = torch.arange(start * width, start * width + keep.numel(), device=device)
        stats.add(feats.flatten(0, 1)[keep], doc_group[batch_docs[keep]], positions[keep])
    for start, feats in encode(corpus.story_tokens, STORIES):
        batch_docs = corpus.story_docs[start : start + feats.shape[0]].to(device).flatten()
        keep = batch_docs >= 0
        flat = feats.flatten(0, 1)[keep]
        stats.add(flat, torch.zeros(flat.shape[0], dtype=torch.long, device=device))
        sides.add_stories(flat, batch_docs[keep])
    return stats, sides


def rank_features(
    cfg: VizConfig, stats: FeatureStats, sides: contrast_stats.SideStats, corpus: Corpus, tokenizer: Any
) -> tuple[list[dict[str, Any]], dict[str, list[int]]]:
    """The features in the order of the first contrast that ran (prompts vs stories, counted per prompt), each with
    every contrast's figures and its top prompt snippets; and each contrast's ranking (live features, best first)."""
    rows = rank(stats)
    by_contrast = contrast_stats.score_contrasts(sides)
    found = top_snippets(
        stats, corpus.prompt_tokens, corpus.prompt_docs, corpus.prompt_meta, tokenizer, cfg.top_snippets
    )
    for row in rows:
        row["contrasts"] = {name: figures.get(row["feature"]) for name, figures in by_contrast.items()}
        row["snippets"] = found[row["feature"]]
    rankings = {
        name: sorted((f for f in figures if figures[f]["score"] is not None), key=lambda f: figures[f]["rank"])
        for name, figures in by_contrast.items()
    }
    if rankings:
        first = next(iter(by_contrast.values()))
        rows.sort(key=lambda r: (r["dead"], first[r["feature"]]["rank"] if r["feature"] in first else math.inf))
    return rows, rankings


def ablate_features(
    cfg: VizConfig, inputs: Inputs, models: Models, corpus: Corpus, rankings: dict[str, list[int]]
) -> tuple[dict[str, dict[int, dict[str, Any]]], dict[str, dict[str, int]]]:
    """Ablate the top ``ablate_top`` features of each contrast. Before the dashboards, which fold the SAE's decoder
    norms into its encoder."""
    data = (corpus.rows, corpus.story_tokens, corpus.story_docs)
    with autocast(inputs.runtime):
        return ablate_contrasts(
            models.lm, models.sae, inputs.hook_name, corpus.plan, rankings, data, cfg.ablate_top, cfg.batch_size
        )


def render_dashboards(
    cfg: VizConfig,
    inputs: Inputs,
    models: Models,
    corpus: Corpus,
    rows: list[dict[str, Any]],
    rankings: dict[str, list[int]],
    staging: Path,
) -> list[int]:
    """Dashboards for the top features of every contrast (those with a score: they fired on its first side) and any
    asked for; returns the features rendered."""
    import torch

    scored = [f for ranking in rankings.values() for f in ranking]
    if not rankings:
        logger.warning("every contrast was skipped (see summary.json): lower min_prompts or read more prompts")
    chosen = list(dict.fromkeys(dashboards.dashboard_features(rankings, cfg.n_features) + cfg.feature_ids))
    if chosen:
        logger.info("rendering dashboards for %d features", len(chosen))
        dashboards.render_dashboard(
            models.sae,
            models.lm,
            torch.cat([pad_to(corpus.prompt_tokens, corpus.context_size), corpus.story_tokens]),
            chosen,
            device=inputs.runtime.device,
            ignore_tokens={int(corpus.prompt_tokens[0, 0])},
            out_file=staging / "dashboard.html",
            title=f"SAE features: {inputs.hook_name}",
        )
    elif scored:
        logger.warning("n_features=0 and no --features: no dashboards to render (dashboard.html is not written)")
    else:
        logger.warning("no feature fired on the prompts: no dashboards to render (dashboard.html is not written)")
    if dead_asked := [r["feature"] for r in rows if r["dead"] and r["feature"] in cfg.feature_ids]:
        logger.warning(
            "features %s never fired on these tokens: their dashboards show no activations",
            ", ".join(map(str, dead_asked)),
        )
    return chosen


def summarize(
    cfg: VizConfig,
    inputs: Inputs,
    corpus: Corpus,
    stats: FeatureStats,
    rows: list[dict[str, Any]],
    rankings: dict[str, list[int]],
    chosen: list[int],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """What ran, for summary.json and the index."""
    return {
        "sae": {
            "source": str(inputs.source),
            "model_name": inputs.model_name,
            "model_weights": inputs.weights.name,
            "prompt_rendering": chat.Rendering.from_record(inputs.sae_cfg["metadata"].get("prompt_rendering")).record(),
            "hook_name": inputs.hook_name,
            "d_in": inputs.sae_cfg["d_in"],
            "d_sae": inputs.sae_cfg["d_sae"],
        },
        "tokens": {
            "prompts": int(stats.tokens[1:].sum()),
            "stories": int(stats.tokens[0]),
            "categories": {g: int(n) for g, n in zip(corpus.groups[1:], stats.tokens[1:].tolist(), strict=True)},
            "prompts_used": int(corpus.prompt_docs.max()) + 1,
            "prompts_by_category": corpus.by_category,
            "context_size": corpus.context_size,
            "prompt_row_width": int(corpus.prompt_tokens.shape[1]),
        },
        "prompt_set": inputs.prompt_set,
        "contrasts": [{**entry, "top": rankings.get(entry["name"], [])[:10]} for entry in corpus.plan.contrasts],
        "positions": int(corpus.prompt_tokens.numel() + corpus.story_tokens.numel()),
        "stories_source": inputs.stories_identity,
        "dead_features": sum(r["dead"] for r in rows),
        "rendered": chosen,
        "top": [{k: r[k] for k in ("feature", "score", "freq_prompts", "freq_stories")} for r in rows[:10]],
        "config": asdict(cfg),
        "device": inputs.runtime.device_name,
        "seconds": seconds,
    }


def run_viz(resolved: Resolved[VizConfig], paths: ContainerPaths) -> dict[str, Any]:
    """Rank, render and publish to model/dashboards; returns the summary written beside them. A multi-SAE job's
    SAEs each get theirs in model/dashboards/<name>/, and a table comparing them (container_src/viz_compare.py)."""
    cfg, out = resolved.config, paths.model_dir / "dashboards"
    with tempfile.TemporaryDirectory(prefix="viz-multi-") as scratch:
        root = viz_compare.multi_root(sae_source(paths), Path(scratch))
        if root is None:
            return viz_sae(cfg, paths, None, out)
        staging = paths.model_dir / ".dashboards-multi-staging"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            comparison = viz_compare.compare(root, staging, lambda sae, to: viz_sae(cfg, paths, sae, to))
            records.replace_dir(staging, out)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    logger.info("%d SAEs compared in %s", len(comparison["saes"]), out / "comparison.html")
    return comparison


def viz_sae(cfg: VizConfig, paths: ContainerPaths, source: Path | None, out: Path) -> dict[str, Any]:
    """Rank and render the SAE in ``source`` (`sae_source`'s when None) into ``out``; returns its summary. Every
    cheap check runs before the model and the SAE load."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="viz-sae-") as scratch:
        inputs = check_inputs(cfg, paths, Path(scratch), source)
        models = load_models(cfg, inputs)
    tokenizer = models.lm.tokenizer
    assert tokenizer is not None
    corpus = pack_corpus(cfg, inputs.prompts, inputs.stories, inputs.contrasts, tokenizer, models.context_size)

    ranked_at = time.monotonic()
    stats, sides = gather_stats(cfg, inputs, models, corpus)
    rows, rankings = rank_features(cfg, stats, sides, corpus, tokenizer)
    ranked_s = time.monotonic() - ranked_at
    ablated_at = time.monotonic()
    ablations, ablation_work = ablate_features(cfg, inputs, models, corpus, rankings)
    attach_ablations(rows, ablations)
    ablated_s = time.monotonic() - ablated_at

    staging = out.parent / f".{out.name}-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:  # a failed run leaves no half-written folder in model/
        rendered_at = time.monotonic()
        chosen = render_dashboards(cfg, inputs, models, corpus, rows, rankings, staging)
        seconds = {"ranking": round(ranked_s, 2), "ablation": round(ablated_s, 2)}
        seconds["dashboards"] = round(time.monotonic() - rendered_at, 2)
        summary = summarize(cfg, inputs, corpus, stats, rows, rankings, chosen, seconds)
        for entry in summary["contrasts"]:
            entry["ablated"] = ablation_work.get(entry["name"])
        dashboards.write_tables(rows, staging)
        dashboards.write_index(rows, rankings, set(chosen), summary, staging / "index.html")
        summary["seconds"]["total"] = round(time.monotonic() - started, 2)
        records.write_json(staging / "summary.json", summary)
        records.replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "viz done in %.1f s: %d features ranked, %d dead, %d dashboards in %s; most prompt-specific (per prompt): %s",
        summary["seconds"]["total"],
        len(rows),
        summary["dead_features"],
        len(chosen),
        out,
        ", ".join(str(f) for f in next(iter(rankings.values()), [])[:5]),
    )
    return summary
