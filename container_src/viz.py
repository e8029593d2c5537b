"""`viz` mode: rank an SAE's features by how specific they are to the prompts, and render dashboards.

    python -m container_src viz                        # the SAE in channel `sae`, else the tree's own model/
    python -m container_src viz --n_features 100 --features 12,873

Order of work: every cheap check first (the SAE's files and metadata, channels, datasets, feature ids), then the
model and the SAE. The prompts and TinyStories are packed the way training packed them and run through the model
and the SAE in batches; per-feature statistics are kept per source and per censorship category (``ranking``). The
results are assembled in ``model/.dashboards-staging`` and replace ``model/dashboards`` only when complete:

    index.html        the ranked features, linking to their dashboards
    dashboard.html    sae-dashboard's feature-centric view (d3 and plotly inlined; open it anywhere)
    features.csv      every feature: score, raw frequencies and activations, per category, top prompt snippets
    features.json     the same, nested
    summary.json      what ran: the SAE, token counts, dead features, timings
"""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from container_src import dashboards, data, model, records
from container_src.config import ConfigError, Resolved, VizConfig
from container_src.paths import ContainerPaths
from container_src.ranking import STORIES, FeatureStats, rank

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

SAE_FILES = ("cfg.json", "sae_weights.safetensors")
SNIPPET_BEFORE, SNIPPET_AFTER = 12, 4


def _sae_source(paths: ContainerPaths) -> Path:
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


def _unpack(source: Path, scratch: Path) -> Path:
    """The folder that holds the SAE: ``source`` itself, or what its model.tar.gz unpacks to."""
    if (source / "cfg.json").is_file():
        return source
    archives = sorted(source.glob("*.tar.gz"))
    if len(archives) != 1:
        found = ", ".join(sorted(p.name for p in source.iterdir())) or "nothing"
        raise ConfigError(
            f"channel sae: {source} holds neither an SAE ({', '.join(SAE_FILES)}) nor one model.tar.gz (found {found})"
        )
    try:
        with tarfile.open(archives[0]) as tar:
            tar.extractall(scratch, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ConfigError(f"channel sae: {archives[0]} is not a readable tar.gz ({exc})") from None
    found = sorted(p.parent for p in scratch.rglob("cfg.json"))
    if not found:
        raise ConfigError(f"channel sae: {archives[0].name} holds no SAE (no cfg.json)")
    return found[0]


def _read_sae_cfg(sae_dir: Path) -> dict[str, Any]:
    """cfg.json, checked for what viz needs, without loading any weights."""
    missing = [name for name in SAE_FILES if not (sae_dir / name).is_file()]
    if missing:
        raise ConfigError(f"channel sae: {sae_dir} lacks {', '.join(missing)}; is it a whole SAE-Lens SAE?")
    try:
        cfg = json.loads((sae_dir / "cfg.json").read_text())
        meta = cfg["metadata"]
        for key in ("model_name", "hook_name"):
            if not isinstance(meta.get(key), str):
                raise KeyError(f"metadata.{key}")
        for key in ("d_in", "d_sae"):
            if not isinstance(cfg.get(key), int):
                raise KeyError(key)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"channel sae: {sae_dir / 'cfg.json'} is not an SAE-Lens config ({exc})") from None
    return cfg


def _load_sae(sae_dir: Path, device: str) -> Any:
    from sae_lens import SAE

    try:
        return SAE.load_from_disk(str(sae_dir), device=device)
    except Exception as exc:  # truncated or foreign weights: a problem with the input
        raise ConfigError(f"channel sae: could not load the SAE in {sae_dir} ({type(exc).__name__}: {exc})") from None


class _Batches:
    """Runs packed sequences through the model up to the hook and through the SAE, a batch at a time."""

    def __init__(self, lm: Any, sae: Any, hook_name: str, runtime: model.Runtime, batch_size: int) -> None:
        from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

        self.lm, self.sae, self.hook_name, self.runtime, self.batch_size = lm, sae, hook_name, runtime, batch_size
        self.stop_at_layer = extract_stop_at_layer_from_tlens_hook_name(hook_name)

    def __call__(self, tokens: torch.Tensor, what: str):
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


def _snippet(tokenizer: Any, tokens: list[int], docs: list[int], pos: int) -> dict[str, str]:
    """The text around token ``pos`` within its document, split into before, token and after. Byte-level BPE can cut
    a character (Chinese text often is) into several tokens: the token's span is widened to whole characters."""
    doc = docs[pos]
    first = pos
    while first > 0 and pos - first < SNIPPET_BEFORE and docs[first - 1] == doc:
        first -= 1
    end = pos + 1
    while end < len(docs) and end - pos <= SNIPPET_AFTER and docs[end] == doc:
        end += 1
    lo, hi = pos, pos + 1
    for extra in range(1, 7):  # a UTF-8 character is at most 4 bytes: take the narrowest whole span around pos
        if "\ufffd" not in tokenizer.decode(tokens[lo:hi]):
            break
        spans = [(pos - left, pos + 1 + extra - left) for left in range(extra + 1)]
        clean = [(a, b) for a, b in spans if a >= first and b <= end and "\ufffd" not in tokenizer.decode(tokens[a:b])]
        if clean:
            lo, hi = clean[0]
            break
    before = tokenizer.decode(tokens[first:lo]).lstrip("\ufffd")
    token, after = tokenizer.decode(tokens[lo:hi]), tokenizer.decode(tokens[hi:end]).rstrip("\ufffd")
    return {"before": before, "token": token, "after": after, "text": f"{before}[[{token}]]{after}"}


def _snippets(
    stats: FeatureStats, tokens: torch.Tensor, docs: torch.Tensor, meta: list[dict[str, Any]], tokenizer: Any, n: int
) -> dict[int, list[dict[str, Any]]]:
    """Per feature, up to ``n`` distinct prompts where it fires most, with the text around the strongest token."""
    flat_tokens, flat_docs = tokens.flatten().tolist(), docs.flatten().tolist()
    values, positions = stats.top_values.cpu(), stats.top_positions.cpu()
    out: dict[int, list[dict[str, Any]]] = {}
    for feature in range(values.shape[1]):
        seen: set[int] = set()
        found = []
        for value, pos in zip(values[:, feature].tolist(), positions[:, feature].tolist(), strict=True):
            if value <= 0 or pos < 0 or len(found) == n:
                break
            doc = flat_docs[pos]
            if doc in seen:
                continue
            seen.add(doc)
            text = _snippet(tokenizer, flat_tokens, flat_docs, pos)
            found.append({**meta[doc], "activation": round(value, 4), **text})
        out[feature] = found
    return out


def _prompts_by_category(categories: list[str], docs: Any) -> dict[str, dict[str, int]]:
    """Per category (sorted), how many of its prompts have tokens in ``docs`` (indices into ``categories``, -1 for
    padding) and how many it has."""
    used = set((docs[docs >= 0]).unique().tolist())
    counts: dict[str, dict[str, int]] = {c: {"used": 0, "of": 0} for c in sorted(set(categories))}
    for i, name in enumerate(categories):
        counts[name]["of"] += 1
        counts[name]["used"] += i in used
    return counts


def run_viz(resolved: Resolved[VizConfig], paths: ContainerPaths) -> dict[str, Any]:
    """Rank, render and publish to model/dashboards; returns the summary written beside them."""
    import torch

    cfg = resolved.config
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="viz-sae-") as scratch:
        # Cheap checks first: the SAE's files and metadata, the channels and datasets, the feature ids.
        source = _sae_source(paths)
        sae_dir = _unpack(source, Path(scratch))
        sae_cfg = _read_sae_cfg(sae_dir)
        meta = sae_cfg["metadata"]
        hook_name, d_sae = meta["hook_name"], sae_cfg["d_sae"]
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
        prompts = data.load_prompts(channels["prompts"])
        stories, stories_identity = data.load_stories(
            channels["tinystories"], cfg.tinystories_path, cfg.tinystories_split
        )
        runtime = model.pick_runtime(cfg.device, cfg.precision, job_instance=paths.instance_type())

        # The model and the SAE.
        logger.info("loading %s on %s (%s) for SAE %s", model_name, runtime.device_name, runtime.precision, sae_dir)
        lm = model.load_model(model_name, runtime.device, channels["model"])
        model.check_hook(lm, hook_name)
        width = model.hook_width(lm, hook_name)
        if width != sae_cfg["d_in"]:
            raise ConfigError(
                f"channel sae: the SAE reads {sae_cfg['d_in']} values at {hook_name}, "
                f"but {model_name} has {width} there"
            )
        sae = _load_sae(sae_dir, runtime.device)
        context_size = cfg.context_size or int(meta.get("context_size") or 128)
        model.check_context(lm, context_size)
    tokenizer = lm.tokenizer
    assert tokenizer is not None

    # Tokens, packed as in training; every prompt token knows its prompt and category. Prompts go in a seeded random
    # order, so that a prompt_tokens cap takes a fair sample of the categories rather than the first rows.
    prompts = prompts.shuffle(seed=cfg.seed, keep_in_memory=True)
    columns = prompts.column_names
    ids = [str(v) for v in prompts["id"]] if "id" in columns else [str(i) for i in range(len(prompts))]
    cats = (
        [data.NO_CATEGORY if v in (None, "") else str(v) for v in prompts["category"]]
        if "category" in columns
        else ["prompts"] * len(prompts)
    )
    prompt_meta = [{"prompt_id": i, "category": c} for i, c in zip(ids, cats, strict=True)]
    groups = [STORIES, *sorted(set(cats))]  # by position: a category may even be called "tinystories"
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

    # One pass over each source.
    ranked_at = time.monotonic()
    stats = FeatureStats(d_sae, groups, top_k=4 * cfg.top_snippets, device=runtime.device)
    encode = _Batches(lm, sae, hook_name, runtime, cfg.batch_size)
    for what, tokens, docs in (("prompts", p_tokens, p_docs), (STORIES, s_tokens, s_docs)):
        for start, feats in encode(tokens, what):
            batch_docs = docs[start : start + feats.shape[0]].to(runtime.device).flatten()
            keep = batch_docs >= 0
            feats = feats.flatten(0, 1)[keep]
            if what == STORIES:
                group = torch.zeros(feats.shape[0], dtype=torch.long, device=runtime.device)
                stats.add(feats, group)
            else:
                group = doc_group.to(runtime.device)[batch_docs[keep]]
                positions = torch.arange(
                    start * context_size, start * context_size + keep.numel(), device=runtime.device
                )
                stats.add(feats, group, positions[keep])
    rows = rank(stats)
    snippets = _snippets(stats, p_tokens, p_docs, prompt_meta, tokenizer, cfg.top_snippets)
    for row in rows:
        row["snippets"] = snippets[row["feature"]]
    ranked_s = time.monotonic() - ranked_at

    # Dashboards for the top features (those with a score: they fired on the prompts) and any asked for.
    scored = [r["feature"] for r in rows if r["score"] is not None]
    chosen = list(dict.fromkeys(scored[: cfg.n_features] + cfg.feature_ids))
    staging = paths.model_dir / ".dashboards-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:  # a failed run leaves no half-written folder in model/
        rendered_at = time.monotonic()
        if chosen:
            logger.info("rendering dashboards for %d features", len(chosen))
            dashboards.render_dashboard(
                sae,
                lm,
                torch.cat([p_tokens, s_tokens]),
                chosen,
                device=runtime.device,
                ignore_tokens={int(p_tokens[0, 0])},
                out_file=staging / "dashboard.html",
                title=f"SAE features: {hook_name}",
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
        summary = {
            "sae": {
                "source": str(source),
                "model_name": model_name,
                "hook_name": hook_name,
                "d_in": sae_cfg["d_in"],
                "d_sae": d_sae,
            },
            "tokens": {
                "prompts": int(stats.tokens[1:].sum()),
                "stories": int(stats.tokens[0]),
                "categories": {g: int(n) for g, n in zip(groups[1:], stats.tokens[1:].tolist(), strict=True)},
                "prompts_used": int(p_docs.max()) + 1,
                "prompts_by_category": by_category,
                "context_size": context_size,
            },
            "stories_source": stories_identity,
            "dead_features": sum(r["dead"] for r in rows),
            "rendered": chosen,
            "top": [{k: r[k] for k in ("feature", "score", "freq_prompts", "freq_stories")} for r in rows[:10]],
            "config": asdict(cfg),
            "device": runtime.device_name,
            "seconds": {"ranking": round(ranked_s, 2), "dashboards": round(time.monotonic() - rendered_at, 2)},
        }
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
