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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from container_src import bench_pipelines, bench_report, model, records
from container_src.config import BenchConfig, ConfigError, Resolved
from container_src.paths import ContainerPaths, hub_env
from container_src.timing import NoWholeCycleError, PeakMemory, Speed
from container_src.train import Inputs, prepare_inputs

logger = logging.getLogger(__name__)

TIMED_WINDOW = (
    "whole activation-buffer refill cycles after the warm-up steps: each timed step's data (model forward, buffer) "
    "and SAE update; model loading, warm-up, the steps after the last refill, final evaluation and saving excluded"
)
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
    """ours and bare over the repeats: every timed run, bare's settings, and what held no whole refill cycle."""

    ours: list[Speed] = field(default_factory=list)
    bare: list[Speed] = field(default_factory=list)
    bare_settings: dict[str, Any] | None = None
    bare_precision: dict[str, Any] | None = None
    untimed: dict[str, str] = field(default_factory=dict)
    """A pipeline whose steps held no whole refill cycle, and why: the others still report."""


def write_assets(root: Path, cfg: BenchConfig, stories_needed: int) -> ContainerPaths:
    """A temporary SageMaker tree with channels model (random weights of ``model_shape``), tinystories, prompts."""
    from container_src.synthetic import make_stories, write_model_cache, write_story_dataset

    channels = root / "input" / "data"
    stories = make_stories(stories_needed, cfg.seed)
    write_model_cache(channels / "model", cfg.model_name, shape=cfg.model_shape, corpus=stories[:400])
    write_story_dataset(channels / "tinystories", n=stories_needed, seed=cfg.seed)
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
    steps = cfg.steps or DEFAULT_STEPS[kind][0]
    warmup = cfg.warmup_steps or DEFAULT_STEPS[kind][1]
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


def _repeat_pipelines(cfg: BenchConfig, plan: Plan, stories: Any, sae_size: tuple[int, int]) -> Repeats:
    """ours and (with ``bare``) bare SAE-Lens, ``repeats`` times each, taking turns."""
    runs = Repeats()
    warmup, steps, device = plan.warmup, plan.steps, plan.runtime.device
    for attempt in range(1, cfg.repeats + 1):
        logger.info("bench %d/%d: ours (train), %d warm-up + %d steps", attempt, cfg.repeats, warmup, steps)
        try:
            runs.ours.append(bench_pipelines.run_ours(cfg, plan.tree, warmup, steps, device))
        except NoWholeCycleError as exc:
            runs.untimed["ours"] = str(exc)
        for leftover in (plan.tree.checkpoints_dir, plan.tree.model_dir):  # or the next run would resume, not train
            shutil.rmtree(leftover, ignore_errors=True)
        if cfg.bare:
            logger.info("bench %d/%d: bare SAE-Lens with its defaults", attempt, cfg.repeats)
            try:
                speed, runs.bare_settings, runs.bare_precision = bench_pipelines.run_bare(
                    cfg, stories, sae_size, plan.root / f"bare-{attempt}", warmup, steps, device
                )
                runs.bare.append(speed)
            except NoWholeCycleError as exc:
                runs.untimed["bare"] = str(exc)
    return runs


def _sae_alone(cfg: BenchConfig, plan: Plan, sae_size: tuple[int, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The SAE step alone as train runs it, and with SAE-Lens's own step (the same figures when train runs that)."""
    logger.info("bench: the SAE step alone, %d warm-up + %d steps", plan.warmup, plan.steps)
    ours = bench_pipelines.sae_speed(cfg, sae_size, plan.runtime, plan.root, plan.warmup, plan.steps, cfg.lean_step)
    if not cfg.lean_step:
        return ours, ours
    return ours, bench_pipelines.sae_speed(cfg, sae_size, plan.runtime, plan.root, plan.warmup, plan.steps, lean=False)


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
    ours = max(runs.ours, key=lambda run: run.tokens_per_s) if runs.ours else None
    bare = max(runs.bare, key=lambda run: run.tokens_per_s) if runs.bare else None
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
        "bare_settings_not_default": runs.bare_settings,
        "bare_precision": runs.bare_precision,
        "ratio_ours_to_bare": round(ours.tokens_per_s / bare.tokens_per_s, 3) if ours and bare else None,
        "ratio_ours_to_bare_cpu_time": (
            round((ours.tokens / ours.cpu_seconds) / (bare.tokens / bare.cpu_seconds), 3) if ours and bare else None
        ),
        "all_runs_tokens_per_s": {
            "ours": [round(r.tokens_per_s, 1) for r in runs.ours],
            "bare": [round(r.tokens_per_s, 1) for r in runs.bare],
        },
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
