"""`viz` mode: rank an SAE's features by how specific they are to the prompts, and render dashboards.

    python -m container_src viz                        # the SAE in channel `sae`, else the tree's own model/
    python -m container_src viz --n_features 100 --features 12,873

The results are assembled in ``model/.dashboards-staging`` and replace ``model/dashboards`` only when complete:

    index.html        the ranked features, linking to their dashboards
    dashboard.html    sae-dashboard's feature-centric view (d3 and plotly inlined; open it anywhere)
    features.csv      every feature: score, raw frequencies and activations, per category, top prompt snippets
    features.json     the same, nested
    summary.json      what ran: the SAE, token counts, dead features, timings
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from container_src import dashboards, data, model, records, sae_input
from container_src.config import ConfigError, Resolved, VizConfig
from container_src.paths import ContainerPaths
from container_src.prompts import load_prompts
from container_src.ranking import STORIES, FeatureStats, rank
from container_src.snippets import top_snippets

if TYPE_CHECKING:
    import torch
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
    stories: IterableDataset
    stories_identity: str
    runtime: model.Runtime

    @property
    def hook_name(self) -> str:
        return self.sae_cfg["metadata"]["hook_name"]


@dataclass(frozen=True)
class Models:
    """The language model and the SAE, checked against each other, and the context size they run at."""

    lm: Any
    sae: Any
    context_size: int


@dataclass(frozen=True)
class Corpus:
    """The prompts and the stories packed as in training; every prompt token knows its prompt and category."""

    prompt_tokens: torch.Tensor
    prompt_docs: torch.Tensor
    story_tokens: torch.Tensor
    story_docs: torch.Tensor
    prompt_meta: list[dict[str, Any]]
    groups: list[str]
    """STORIES, then the categories, sorted: by position, so a category may even be called "tinystories"."""
    doc_group: torch.Tensor
    """Per prompt, the index of its category in ``groups``."""
    by_category: dict[str, dict[str, int]]
    context_size: int


def sae_source(paths: ContainerPaths) -> Path:
    """Channel ``sae``, else the model/ folder that train left an SAE in."""
    channel = paths.channel("sae")
    if channel is not None:
        return channel
    if (paths.model_dir / "cfg.json").is_file():
        logger.info("no channel sae: using the SAE that train left in %s", paths.model_dir)
        return paths.model_dir
    raise ConfigError(
        f"no SAE: channel sae ({paths.base}/input/data/sae) is missing and {paths.model_dir} holds no SAE. Pass a "
        "train run's model/ folder or its model.tar.gz as channel `sae`, or run train first."
    )


def check_inputs(cfg: VizConfig, paths: ContainerPaths, scratch: Path) -> Inputs:
    """Every check that loads no model: the SAE's files and metadata, the feature ids, the channels and datasets."""
    source = sae_source(paths)
    sae_dir = sae_input.unpack(source, scratch)
    sae_cfg = sae_input.read_cfg(sae_dir)
    meta, d_sae = sae_cfg["metadata"], sae_cfg["d_sae"]
    out_of_range = [f for f in cfg.feature_ids if f >= d_sae]
    if out_of_range:
        raise ConfigError(
            f"features={cfg.features!r}: {out_of_range} out of range; this SAE has {d_sae} (0-{d_sae - 1})"
        )
    model_name = cfg.model_name or meta["model_name"]
    channels = paths.model_inputs(model_name)
    if channels["prompts"] is None:
        raise ConfigError(
            f"viz compares the prompts with TinyStories, and there is no prompts channel ({paths.base}/input/data/"
            "prompts is missing or empty). Pass the exported prompts as channel `prompts`."
        )
    prompts = load_prompts(channels["prompts"])
    stories, stories_identity = data.load_stories(channels["tinystories"], cfg.tinystories_path, cfg.tinystories_split)
    runtime = model.pick_runtime(cfg.device, cfg.precision, job_instance=paths.instance_type())
    return Inputs(source, sae_dir, sae_cfg, model_name, channels["model"], prompts, stories, stories_identity, runtime)


def load_models(cfg: VizConfig, inputs: Inputs) -> Models:
    """Load the model and the SAE, and check that they fit each other and the context size."""
    runtime, sae_cfg, hook_name = inputs.runtime, inputs.sae_cfg, inputs.hook_name
    logger.info(
        "loading %s on %s (%s) for SAE %s", inputs.model_name, runtime.device_name, runtime.precision, inputs.sae_dir
    )
    lm = model.load_model(inputs.model_name, runtime.device, inputs.model_channel)
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


def _prompts_by_category(categories: list[str], docs: Any) -> dict[str, dict[str, int]]:
    """Per category (sorted), how many of its prompts have tokens in ``docs`` (indices into ``categories``, -1 for
    padding) and how many it has."""
    used = set((docs[docs >= 0]).unique().tolist())
    counts: dict[str, dict[str, int]] = {c: {"used": 0, "of": 0} for c in sorted(set(categories))}
    for i, name in enumerate(categories):
        counts[name]["of"] += 1
        counts[name]["used"] += i in used
    return counts


def pack_corpus(
    cfg: VizConfig, prompts: Dataset, stories: IterableDataset, tokenizer: Any, context_size: int
) -> Corpus:
    """Tokens packed as in training. Prompts go in a seeded random order, so that a prompt_tokens cap takes a fair
    sample of the categories rather than the first rows."""
    import torch

    prompts = prompts.shuffle(seed=cfg.seed, keep_in_memory=True)
    columns = prompts.column_names
    ids = [str(v) for v in prompts["id"]] if "id" in columns else [str(i) for i in range(len(prompts))]
    cats = (
        [data.NO_CATEGORY if v in (None, "") else str(v) for v in prompts["category"]]
        if "category" in columns
        else ["prompts"] * len(prompts)
    )
    prompt_meta = [{"prompt_id": i, "category": c} for i, c in zip(ids, cats, strict=True)]
    groups = [STORIES, *sorted(set(cats))]
    group_of = {c: i for i, c in enumerate(groups[1:], start=1)}
    p_tokens, p_docs = data.pack_documents(tokenizer, prompts["text"], context_size, cfg.prompt_tokens)
    s_tokens, s_docs = data.pack_documents(tokenizer, (row["text"] for row in stories), context_size, cfg.story_tokens)
    doc_group = torch.tensor([group_of[m["category"]] for m in prompt_meta], dtype=torch.long)
    logger.info(
        "tokens: %d from %d of %d prompts, %d from stories; context %d",
        int((p_docs >= 0).sum()),
        int(p_docs.max()) + 1,
        len(prompt_meta),
        int((s_docs >= 0).sum()),
        context_size,
    )
    by_category = _prompts_by_category(cats, p_docs)
    for name, used in by_category.items():
        if used["used"] == 0:
            logger.warning(
                "category %r: none of its %d prompts fit in prompt_tokens=%d, so it has no scores; "
                "raise prompt_tokens to include it",
                name,
                used["of"],
                cfg.prompt_tokens,
            )
    return Corpus(p_tokens, p_docs, s_tokens, s_docs, prompt_meta, groups, doc_group, by_category, context_size)


class Batches:
    """Runs packed sequences through the model up to the hook and through the SAE, a batch at a time."""

    def __init__(self, models: Models, hook_name: str, runtime: model.Runtime, batch_size: int) -> None:
        from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

        self.lm, self.sae, self.hook_name = models.lm, models.sae, hook_name
        self.runtime, self.batch_size = runtime, batch_size
        self.stop_at_layer = extract_stop_at_layer_from_tlens_hook_name(hook_name)

    def __call__(self, tokens: torch.Tensor, what: str) -> Iterator[tuple[int, torch.Tensor]]:
        import torch

        n = tokens.shape[0]
        step = max(1, -(-n // self.batch_size) // 10)
        for i, start in enumerate(range(0, n, self.batch_size)):
            batch = tokens[start : start + self.batch_size].to(self.runtime.device)
            with (
                torch.inference_mode(),
                torch.autocast(self.runtime.device.split(":")[0], torch.bfloat16, enabled=self.runtime.autocast),
            ):
                _, cache = self.lm.run_with_cache(
                    batch, names_filter=[self.hook_name], stop_at_layer=self.stop_at_layer
                )
                acts = cache[self.hook_name]
                acts = acts.flatten(2) if acts.ndim == 4 else acts  # attention heads, as SAE-Lens flattens them
                feats = self.sae.encode(acts)
            if i % step == 0:
                logger.info("%s: %d/%d sequences", what, min(start + self.batch_size, n), n)
            yield start, feats.float()


def gather_stats(cfg: VizConfig, inputs: Inputs, models: Models, corpus: Corpus) -> FeatureStats:
    """Per-feature statistics from one pass over each source."""
    import torch

    device, context_size = inputs.runtime.device, corpus.context_size
    stats = FeatureStats(inputs.sae_cfg["d_sae"], corpus.groups, top_k=4 * cfg.top_snippets, device=device)
    encode = Batches(models, inputs.hook_name, inputs.runtime, cfg.batch_size)
    sources = (("prompts", corpus.prompt_tokens, corpus.prompt_docs), (STORIES, corpus.story_tokens, corpus.story_docs))
    for what, tokens, docs in sources:
        for start, feats in encode(tokens, what):
            batch_docs = docs[start : start + feats.shape[0]].to(device).flatten()
            keep = batch_docs >= 0
            feats = feats.flatten(0, 1)[keep]
            if what == STORIES:
                group = torch.zeros(feats.shape[0], dtype=torch.long, device=device)
                stats.add(feats, group)
            else:
                group = corpus.doc_group.to(device)[batch_docs[keep]]
                positions = torch.arange(start * context_size, start * context_size + keep.numel(), device=device)
                stats.add(feats, group, positions[keep])
    return stats


def rank_features(cfg: VizConfig, stats: FeatureStats, corpus: Corpus, tokenizer: Any) -> list[dict[str, Any]]:
    """The features, most prompt-specific first, each with its top prompt snippets."""
    rows = rank(stats)
    found = top_snippets(
        stats, corpus.prompt_tokens, corpus.prompt_docs, corpus.prompt_meta, tokenizer, cfg.top_snippets
    )
    for row in rows:
        row["snippets"] = found[row["feature"]]
    return rows


def render_dashboards(
    cfg: VizConfig, inputs: Inputs, models: Models, corpus: Corpus, rows: list[dict[str, Any]], staging: Path
) -> list[int]:
    """Dashboards for the top features (those with a score: they fired on the prompts) and any asked for; returns
    the features rendered."""
    import torch

    scored = [r["feature"] for r in rows if r["score"] is not None]
    chosen = list(dict.fromkeys(scored[: cfg.n_features] + cfg.feature_ids))
    if chosen:
        logger.info("rendering dashboards for %d features", len(chosen))
        dashboards.render_dashboard(
            models.sae,
            models.lm,
            torch.cat([corpus.prompt_tokens, corpus.story_tokens]),
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
    chosen: list[int],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """What ran, for summary.json and the index."""
    return {
        "sae": {
            "source": str(inputs.source),
            "model_name": inputs.model_name,
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
        },
        "stories_source": inputs.stories_identity,
        "dead_features": sum(r["dead"] for r in rows),
        "rendered": chosen,
        "top": [{k: r[k] for k in ("feature", "score", "freq_prompts", "freq_stories")} for r in rows[:10]],
        "config": asdict(cfg),
        "device": inputs.runtime.device_name,
        "seconds": seconds,
    }


def run_viz(resolved: Resolved[VizConfig], paths: ContainerPaths) -> dict[str, Any]:
    """Rank, render and publish to model/dashboards; returns the summary written beside them. Every cheap check
    runs before the model and the SAE load."""
    cfg = resolved.config
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="viz-sae-") as scratch:
        inputs = check_inputs(cfg, paths, Path(scratch))
        models = load_models(cfg, inputs)
    tokenizer = models.lm.tokenizer
    assert tokenizer is not None
    corpus = pack_corpus(cfg, inputs.prompts, inputs.stories, tokenizer, models.context_size)

    ranked_at = time.monotonic()
    stats = gather_stats(cfg, inputs, models, corpus)
    rows = rank_features(cfg, stats, corpus, tokenizer)
    ranked_s = time.monotonic() - ranked_at

    staging = paths.model_dir / ".dashboards-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:  # a failed run leaves no half-written folder in model/
        rendered_at = time.monotonic()
        chosen = render_dashboards(cfg, inputs, models, corpus, rows, staging)
        seconds = {"ranking": round(ranked_s, 2), "dashboards": round(time.monotonic() - rendered_at, 2)}
        summary = summarize(cfg, inputs, corpus, stats, rows, chosen, seconds)
        dashboards.write_tables(rows, staging)
        dashboards.write_index(rows, set(chosen), summary, staging / "index.html")
        summary["seconds"]["total"] = round(time.monotonic() - started, 2)
        records.write_json(staging / "summary.json", summary)
        records.replace_dir(staging, paths.model_dir / "dashboards")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info(
        "viz done in %.1f s: %d features ranked, %d dead, %d dashboards in %s; most prompt-specific: %s",
        summary["seconds"]["total"],
        len(rows),
        summary["dead_features"],
        len(chosen),
        paths.model_dir / "dashboards",
        ", ".join(f"{r['feature']} ({r['score']})" for r in rows[:5]),
    )
    return summary
