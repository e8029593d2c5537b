"""`bench` mode: how fast `train` runs on this machine, against bare SAE-Lens, and what a full run would cost.

    python -m container_src bench                                     # TinyStories-33M's shape, this device
    python -m container_src bench --model_shape tiny --preset smoke   # seconds, on any laptop
    python -m container_src bench --instance_type ml.g5.xlarge --json bench.json

Nothing is downloaded and no channel is read: a random model of the chosen shape and generated data are written to
a temporary folder and removed at the end. In a SageMaker job the figures also go to ``model/bench.json``. The
method is in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from container_src import bench_peers, bench_pipelines, bench_report, buffer, model, records
from container_src.config import BenchConfig, ConfigError, Resolved
from container_src.paths import ContainerPaths, hub_env
from container_src.timing import NoWholeCycleError, PeakMemory, Speed
from container_src.train import Inputs, prepare_inputs

logger = logging.getLogger(__name__)

TIMED_WINDOW = (
    "whole activation-buffer refill cycles after the warm-up steps: each timed step's data (model forward, buffer) "
    "and SAE update; model loading, warm-up, the steps after the last refill, final evaluation and saving excluded"
)
PIPELINES = ("ours", "bare", "tuned", "sparsify")
# When steps / warmup_steps are empty: enough steps for a stable figure, without hours on a CPU.
DEFAULT_STEPS = {"cuda": (200, 20), "cpu": (8, 2)}


@dataclass
class Plan:
    """What every measurement of one bench shares: the stand-in tree, the device and the step counts."""

    root: Path
    tree: ContainerPaths
    runtime: model.Runtime
    warmup: int
    steps: int


@dataclass
class Repeats:
    """The pipelines over the repeats: every timed run, the peers' settings, and what held no whole refill cycle."""

    ours: list[Speed] = field(default_factory=list)
    bare: list[Speed] = field(default_factory=list)
    tuned: list[Speed] = field(default_factory=list)
    sparsify: list[Speed] = field(default_factory=list)
    settings: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    """What each peer reports of its settings, by pipeline name (bare: those not SAE-Lens's default, precision)."""
    untimed: dict[str, str] = field(default_factory=dict)
    """A pipeline whose steps held no whole refill cycle, and why: the others still report."""

    def best(self, name: str) -> Speed | None:
        return max(getattr(self, name), key=lambda run: run.tokens_per_s, default=None)


def write_assets(root: Path, cfg: BenchConfig, stories_needed: int) -> ContainerPaths:
    """A temporary SageMaker tree with channels model (random weights of ``model_shape``), control, prompts."""
    from container_src.synthetic import make_stories, write_model_cache, write_story_dataset

    channels = root / "input" / "data"
    stories = make_stories(stories_needed, cfg.seed)
    write_model_cache(channels / "model", cfg.model_name, shape=cfg.model_shape, corpus=stories[:400])
    write_story_dataset(channels / "control", n=stories_needed, seed=cfg.seed)
    # Stand-in prompts: only their share of the stream matters for speed.
    write_story_dataset(channels / "prompts", n=200, seed=cfg.seed + 1, validation=0)
    return ContainerPaths(root)


def _check_fresh_process(cache: Path) -> None:
    """The HF libraries read the cache location once, at import: in a process that imported them already, the
    stand-in model would be looked for elsewhere."""
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None and Path(getattr(hub, "HF_HUB_CACHE", "")) != cache:
        raise RuntimeError(
            "bench must run in a fresh process (python -m container_src bench): the Hugging Face "
            "libraries were imported already, with another cache"
        )


def _output_path(key: str, value: str | None, paths: ContainerPaths) -> Path | None:
    """A file the bench will write, its folder created now: a bad path fails before any measurement. In a job a
    relative path is under model/, whose files come back in model.tar.gz (the working folder is discarded)."""
    if not value:
        return None
    path = Path(value).expanduser()
    if paths.in_job() and not path.is_absolute():
        path = paths.model_dir / path
    if path.is_dir():
        raise ConfigError(f"{key}={value!r}: is a folder; give a file path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{key}={value!r}: cannot create its folder ({exc})") from None
    return path


def _plan(cfg: BenchConfig, paths: ContainerPaths, root: Path) -> Plan:
    """Point the HF libraries at the stand-in model's cache, pick the device and step counts, write the tree."""
    hub = root / "input" / "data" / "model" / "hub"
    os.environ.update(hub_env(hub) | {"HF_DATASETS_OFFLINE": "1"})
    _check_fresh_process(hub)
    runtime = model.pick_runtime(cfg.device, cfg.precision, cfg.compile_sae, paths.instance_type())
    kind = "cuda" if runtime.device.startswith("cuda") else "cpu"
    warmup = cfg.warmup_steps or DEFAULT_STEPS[kind][1]
    # the timed window is whole refill cycles: by default at least one after the warm-up, however large the buffer
    steps = cfg.steps or max(DEFAULT_STEPS[kind][0], 2 * buffer.refill_steps(cfg))
    # Enough stories that no pipeline runs out (a story is about 90 tokens here), within reason.
    stories_needed = min(max(2000, (warmup + steps) * cfg.train_batch_size_tokens // 60), 200_000)
    logger.info("bench: writing a random %s-shaped model and %d stories", cfg.model_shape, stories_needed)
    return Plan(root, write_assets(root, cfg, stories_needed), runtime, warmup, steps)


def _model_alone(cfg: BenchConfig, plan: Plan) -> tuple[Inputs, tuple[int, int], dict[str, Any]]:
    """The inputs as train prepares them, the SAE's size, and the model alone's figures. The model is dropped on
    return: each pipeline loads its own, as it would in a job."""
    inputs = prepare_inputs(bench_pipelines.train_config(cfg, 1), plan.tree)
    lm = model.load_model(cfg.model_name, plan.runtime.device, inputs.channels["model"], cfg.fused_lm)
    model.check_context(lm, cfg.context_size)
    d_in = model.hook_width(lm, cfg.hook_name)
    sae_size = (d_in, cfg.sae_width(d_in))
    logger.info("bench: the model alone, %d batches", cfg.lm_batches)
    return inputs, sae_size, bench_pipelines.lm_speed(cfg, lm, inputs.stream, plan.runtime, sae_size, plan.root)


def _timed(runs: Repeats, name: str, run: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
    """Run one pipeline (its speed first, then the settings it reports): the speed kept under ``name`` and the rest
    returned; where its steps held no whole refill cycle, the reason kept and nothing returned."""
    try:
        speed, *rest = run()
    except NoWholeCycleError as exc:
        runs.untimed[name] = str(exc)
        return ()
    getattr(runs, name).append(speed)
    return tuple(rest)


def _repeat_pipelines(cfg: BenchConfig, plan: Plan, stories: Any, sae_size: tuple[int, int]) -> Repeats:
    """ours and (each with its key) bare SAE-Lens, tuned SAE-Lens and sparsify, ``repeats`` times each, in turns."""
    runs = Repeats()
    warmup, steps, runtime = plan.warmup, plan.steps, plan.runtime
    for attempt in range(1, cfg.repeats + 1):
        logger.info("bench %d/%d: ours (train), %d warm-up + %d steps", attempt, cfg.repeats, warmup, steps)
        _timed(runs, "ours", lambda: (bench_pipelines.run_ours(cfg, plan.tree, warmup, steps, runtime.device),))
        for leftover in (plan.tree.checkpoints_dir, plan.tree.model_dir):  # or the next run would resume, not train
            shutil.rmtree(leftover, ignore_errors=True)
        for name, (what, run) in bench_peers.PEERS.items():
            if getattr(cfg, name):
                logger.info("bench %d/%d: %s", attempt, cfg.repeats, what)
                folder = plan.root / f"{name}-{attempt}"
                if out := _timed(runs, name, partial(run, cfg, stories, sae_size, folder, warmup, steps, runtime)):
                    runs.settings[name] = out
    return runs


def _sae_alone(cfg: BenchConfig, plan: Plan, sae_size: tuple[int, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The SAE step alone as train runs it, and with SAE-Lens's own step (the same figures when train runs that)."""
    logger.info("bench: the SAE step alone, %d warm-up + %d steps", plan.warmup, plan.steps)
    ours = bench_pipelines.sae_speed(cfg, sae_size, plan.runtime, plan.root, plan.warmup, plan.steps, cfg.lean_step)
    if not cfg.lean_step:
        return ours, ours
    return ours, bench_pipelines.sae_speed(cfg, sae_size, plan.runtime, plan.root, plan.warmup, plan.steps, lean=False)


def _ratios(name: str, ours: Speed | None, peer: Speed | None) -> dict[str, float | None]:
    """ours / ``name`` in tokens/s, by wall time and by CPU time (steadier on a shared machine)."""
    if not (ours and peer):
        return {f"ratio_ours_to_{name}": None, f"ratio_ours_to_{name}_cpu_time": None}
    return {
        f"ratio_ours_to_{name}": round(ours.tokens_per_s / peer.tokens_per_s, 3),
        f"ratio_ours_to_{name}_cpu_time": round((ours.tokens / ours.cpu_seconds) / (peer.tokens / peer.cpu_seconds), 3),
    }


def _figures(
    resolved: Resolved[BenchConfig],
    plan: Plan,
    sae_size: tuple[int, int],
    runs: Repeats,
    alone: dict[str, Any],
    instance_type: str | None,
) -> dict[str, Any]:
    """Everything measured, with what it was measured on, as written to the JSON file."""
    import sae_lens
    import torch

    cfg, runtime = resolved.config, plan.runtime
    ours, bare, tuned, sparsify = (runs.best(name) for name in PIPELINES)
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": runtime.device,
        "device_name": runtime.device_name,
        "cpu_threads": torch.get_num_threads(),
        "precision": runtime.precision,
        "torch": torch.__version__,
        "sae_lens": sae_lens.__version__,
        "model_shape": cfg.model_shape,
        "hook_name": cfg.hook_name,
        "architecture": cfg.architecture,
        "d_in": sae_size[0],
        "d_sae": sae_size[1],
        "k": cfg.k,
        "compile_sae": runtime.compile_sae,
        "warmup_steps": plan.warmup,
        "steps": plan.steps,
        "timed_window": TIMED_WINDOW,
        "peak_memory_kind": PeakMemory(runtime.device).kind,
        "repeats": cfg.repeats,
        "ours": ours.to_json() if ours else None,
        "bare": bare.to_json() if bare else None,
        "untimed": runs.untimed,
        "bare_settings_not_default": runs.settings.get("bare", (None, None))[0],
        "bare_precision": runs.settings.get("bare", (None, None))[1],
        **_ratios("bare", ours, bare),
        "tuned": tuned.to_json() if tuned else None,
        "tuned_settings_not_default": runs.settings.get("tuned", (None,))[0],
        **_ratios("tuned", ours, tuned),
        "sparsify": sparsify.to_json() if sparsify else None,
        "sparsify_settings": runs.settings.get("sparsify", (None,))[0],
        **_ratios("sparsify", ours, sparsify),
        "all_runs_tokens_per_s": {name: [round(r.tokens_per_s, 1) for r in getattr(runs, name)] for name in PIPELINES},
        **alone,
        "projection": (
            bench_report.projection(cfg, instance_type, ours.tokens_per_s, runtime.device_name) if ours else None
        ),
        "config": resolved.to_json()["values"],
    }


def _report(figures: dict[str, Any], json_path: Path | None, paths: ContainerPaths) -> None:
    """Print the table and write the JSON file: where asked, and in a job into model/, which model.tar.gz carries."""
    sys.stdout.write(bench_report.format_table(figures))
    if json_path is not None:
        records.write_json(json_path, figures)
        logger.info("bench: figures written to %s", json_path)
    if paths.in_job():
        records.write_json(paths.model_dir / "bench.json", figures)
        logger.info("bench: figures written to %s", paths.model_dir / "bench.json")


def run_bench(resolved: Resolved[BenchConfig], paths: ContainerPaths) -> dict[str, Any]:
    """Measure, print and write the figures; returns them."""
    cfg = resolved.config
    instance_type = bench_report.priced_instance(cfg, paths)
    if cfg.sparsify:
        bench_peers.check_sparsify(cfg)
    json_path, profile_path = _output_path("json", cfg.json, paths), _output_path("profile", cfg.profile, paths)

    with tempfile.TemporaryDirectory(prefix="sae-bench-") as tmp:
        plan = _plan(cfg, paths, Path(tmp))
        inputs, sae_size, lm_figures = _model_alone(cfg, plan)
        runs = _repeat_pipelines(cfg, plan, inputs.stories, sae_size)
        sae_figures, sae_lens_figures = _sae_alone(cfg, plan, sae_size)
        if profile_path is not None:
            logger.info("bench: ours once more, under the profiler")
            bench_pipelines.profile_ours(cfg, plan.tree, plan.warmup, plan.steps, plan.runtime.device, profile_path)
            logger.info("bench: profile written to %s", profile_path)

    alone = {"lm": lm_figures, "sae_alone": sae_figures, "sae_lens_step_alone": sae_lens_figures}
    figures = _figures(resolved, plan, sae_size, runs, alone, instance_type)
    _report(figures, json_path, paths)
    if runs.untimed:
        raise ConfigError(
            f"steps={plan.steps}: too few to time {' and '.join(runs.untimed)} ({'; '.join(runs.untimed.values())}). "
            "The figures of the rest are above; raise steps"
        )
    return figures
