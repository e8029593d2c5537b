"""`bench` mode: how fast `train` runs on this machine, against bare SAE-Lens, and what a full run would cost.

    python -m container_src bench                                     # TinyStories-33M's shape, this device
    python -m container_src bench --model_shape tiny --preset smoke   # seconds, on any laptop
    python -m container_src bench --preset tinystories-33m --instance_type ml.g5.xlarge --json bench.json

Nothing is downloaded and no channel is read: a random GPT-Neo of the chosen shape (``tinystories-33m``: the real
model's matrices, so its speed), a generated story set and generated prompts are written to a temporary folder,
loaded through the real loading code, and removed at the end. The tree's model/ and checkpoints/ are not touched;
in a SageMaker job the figures also go to ``model/bench.json``, so the job's model.tar.gz carries them (locally,
``--json /opt/ml/model/bench.json`` does the same).

Five measurements in one process, the first three on the same data:

- ours: `train` itself (``run_train``: data mixing, our runner, metric log) for warm-up + timed steps, with the
  configuration given (precision, compile, buffer sizes, ...), periodic checkpoints and W&B off.
- bare: SAE-Lens's ``LanguageModelSAETrainingRunner`` with SAE-Lens's default configuration, except what it cannot
  default: the SAE (architecture, d_in, d_sae, k), the model, hook, device and dataset (the stories alone, as
  text), and ``context_size`` (ours: SAE-Lens's own 128 gives a 20 × 128-token buffer, smaller than its
  4096-token batch, which it refuses; below 205 tokens, n_batches_in_buffer is raised to the least it accepts).
  W&B is off.
- lm: the model alone, from text to activations at the hook (tokenising, forward pass up to the hook's layer),
  as training feeds the buffer; and the full forward pass, for what stopping at the hook's layer saves.
- sae_alone: the SAE training step alone, as train runs it (our step with ``lean_step``, see sae_step.py), on one
  random batch served again and again: what ours would reach if the model and the data cost nothing; and
  sae_lens_step_alone, the same with SAE-Lens's own TopK step and Adam, for comparison.

Timed window: whole refill cycles of the activation buffer after the warm-up steps (see timing.StepClock), timed on
the GPU's own stream on a GPU. It holds every timed step's data (model forward, buffer) and SAE update; loading
the model, the warm-up steps, the steps after the last refill, the final evaluation and saving the SAE are outside
it. ``steps`` counts the steps run after the warm-up; the JSON gives how many of them were timed.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from container_src import records
from container_src.config import BenchConfig, ConfigError, Resolved, TrainConfig
from container_src.paths import ContainerPaths, hub_env
from container_src.timing import NoWholeCycleError, PeakMemory, Speed, StepClock, replaced, synchronize, time_batches

logger = logging.getLogger(__name__)

# On-demand prices of SageMaker training instances in us-east-1, USD per hour. Approximate: the list prices as
# commonly quoted, gathered on PRICES_DATE without access to AWS's page; check https://aws.amazon.com/sagemaker/pricing/
# before relying on a cost.
PRICES_DATE = "2026-11-27"
PRICES_USD_PER_HOUR = {
    "ml.m5.xlarge": 0.23,
    "ml.g4dn.xlarge": 0.736,
    "ml.g5.xlarge": 1.408,
    "ml.g5.2xlarge": 1.515,
    "ml.p4d.24xlarge": 37.688,
    "ml.p5.48xlarge": 113.068,
}
PRICES_NOTE = f"approximate on-demand SageMaker training prices, us-east-1, gathered {PRICES_DATE}"
TIMED_WINDOW = (
    "whole activation-buffer refill cycles after the warm-up steps: each timed step's data (model forward, buffer) "
    "and SAE update; model loading, warm-up, the steps after the last refill, final evaluation and saving excluded"
)
# When steps / warmup_steps are empty: enough steps for a stable figure, without hours on a CPU.
DEFAULT_STEPS = {"cuda": (200, 20), "cpu": (8, 2)}


def _projection(cfg: BenchConfig, instance_type: str | None, tokens_per_s: float, device_name: str) -> dict[str, Any]:
    """``training_tokens`` at ours' speed measured here, priced at ``instance_type``'s rate: a cost for that instance
    only when this machine is one (a job's own, or the same GPU)."""
    wall_s = cfg.training_tokens / tokens_per_s
    price = PRICES_USD_PER_HOUR.get(instance_type) if instance_type else None
    return {
        "training_tokens": cfg.training_tokens,
        "wall_s": round(wall_s, 1),
        "wall_h": round(wall_s / 3600, 3),
        "instance_type": instance_type,
        "usd_per_hour": price,
        "usd": round(wall_s / 3600 * price, 2) if price is not None else None,
        "prices": PRICES_NOTE,
        "measured_on": device_name,
        "note": "training only, at the speed of ours measured on measured_on; the job's start, model loading and "
        "evaluation add to it",
    }


def _instance_type(cfg: BenchConfig, paths: ContainerPaths) -> str | None:
    """The instance type to price: the one given, else the SageMaker job's own. Checked before any work."""
    if cfg.instance_type:
        if cfg.instance_type not in PRICES_USD_PER_HOUR:
            raise ConfigError(
                f"instance_type={cfg.instance_type!r}: no price for it; known: {', '.join(PRICES_USD_PER_HOUR)}"
            )
        return cfg.instance_type
    in_job = paths.instance_type()
    if in_job and in_job not in PRICES_USD_PER_HOUR:
        logger.warning("no price for this job's instance type %s: the projection gives time only", in_job)
    return in_job


def _write_assets(root: Path, cfg: BenchConfig, stories_needed: int) -> ContainerPaths:
    """A temporary SageMaker tree with channels model (random weights of ``model_shape``), tinystories, prompts."""
    from container_src.synthetic import make_stories, write_model_cache, write_story_dataset

    channels = root / "input" / "data"
    stories = make_stories(stories_needed, cfg.seed)
    write_model_cache(channels / "model", cfg.model_name, shape=cfg.model_shape, corpus=stories[:400])
    write_story_dataset(channels / "tinystories", n=stories_needed, seed=cfg.seed)
    # Stand-in prompts: only their share of the stream matters for speed.
    write_story_dataset(channels / "prompts", n=200, seed=cfg.seed + 1, validation=0)
    return ContainerPaths(root)


def _train_config(cfg: BenchConfig, total_steps: int) -> TrainConfig:
    """The configuration under test, trimmed to the benchmark's steps, without periodic checkpoints or W&B."""
    values = {f.name: getattr(cfg, f.name) for f in fields(TrainConfig)}
    values |= {
        "training_tokens": total_steps * cfg.train_batch_size_tokens,
        "n_checkpoints": 0,
        "log_to_wandb": False,
        "eval_batches": 1,
    }
    return TrainConfig(**values)


def _runner_config(cfg: BenchConfig, sae_size: tuple[int, int], runtime: Any, folder: Path, total_steps: int) -> Any:
    """SAE-Lens's runner configuration as train builds it for this configuration, writing under ``folder``."""
    from container_src.train import _sae_lens_config

    return _sae_lens_config(_train_config(cfg, total_steps), *sae_size, runtime, "bench", folder, folder / "out", None)


def _run_ours(cfg: BenchConfig, tree: ContainerPaths, warmup: int, steps: int, device: str) -> Speed:
    from container_src.train import run_train

    train_cfg = _train_config(cfg, warmup + steps)
    clock, memory = StepClock(device), PeakMemory(device)
    with memory.measuring(), clock.installed():
        run_train(Resolved(config=train_cfg, mode="bench"), tree)
    return clock.speed(warmup, cfg.train_batch_size_tokens, memory)


def _run_bare(
    cfg: BenchConfig, stories: Any, sae_size: tuple[int, int], root: Path, warmup: int, steps: int, device: str
) -> tuple[Speed, dict[str, Any], dict[str, Any]]:
    """SAE-Lens with its own defaults, loading the model itself; returns its speed, the settings that are not
    SAE-Lens's defaults, and its precision settings (SAE-Lens's defaults)."""
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig

    from container_src.train import training_sae_config

    d_in, d_sae = sae_size
    defaults = LanguageModelSAERunnerConfig.__dataclass_fields__
    batch_tokens = defaults["train_batch_size_tokens"].default
    set_here: dict[str, Any] = {
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name,
        "dataset_path": cfg.tinystories_path,
        "is_dataset_tokenized": False,
        "context_size": cfg.context_size,
        "training_tokens": (warmup + steps) * batch_tokens,
        "device": device,
        "checkpoint_path": str(root / "bare" / "checkpoints"),
        "output_path": str(root / "bare" / "output"),
    }
    if defaults["n_batches_in_buffer"].default * cfg.context_size < batch_tokens:
        # SAE-Lens refuses a buffer smaller than a batch: the least it accepts at this context size
        set_here["n_batches_in_buffer"] = -(-batch_tokens // cfg.context_size)
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=training_sae_config(cfg, d_in, d_sae, device), logger=LoggingConfig(log_to_wandb=False), **set_here
    )
    clock, memory = StepClock(device), PeakMemory(device)
    with memory.measuring():
        runner = LanguageModelSAETrainingRunner(runner_cfg, override_dataset=stories)
        with clock.installed():
            runner.run()
        del runner
    speed = clock.speed(warmup, batch_tokens, memory)
    not_default = {k: v for k, v in set_here.items() if k not in ("checkpoint_path", "output_path")}
    # SAE-Lens's defaults, named because ours differs in them (bf16 autocast and compile on a GPU)
    precision = {k: getattr(runner_cfg, k) for k in ("dtype", "autocast", "autocast_lm", "compile_sae", "compile_llm")}
    return speed, not_default | {"log_to_wandb": False}, precision


def _lm_speed(
    cfg: BenchConfig, lm: Any, stream: Any, runtime: Any, sae_size: tuple[int, int], root: Path
) -> dict[str, Any]:
    """The model alone: text to activations at the hook as training gets them (SAE-Lens's activation store with
    our configuration), and the full forward pass on the same batches."""
    import torch
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

    from container_src.store import packed_store

    runner_cfg = _runner_config(cfg, sae_size, runtime, root / "lm", 1)
    # In this process: with the data worker, packing would run ahead of the timed batches, unmeasured
    store = packed_store(stream, lm, runner_cfg, worker=False)
    batch_tokens = cfg.store_batch_size_prompts * cfg.context_size
    memory = PeakMemory(runtime.device)
    with memory.measuring():
        to_hook_s = time_batches(runtime.device, cfg.lm_batches, store.get_raw_llm_batch)
    tokens = store.get_batch_tokens()
    store.close()
    autocast = torch.autocast(device_type=tokens.device.type, dtype=torch.bfloat16, enabled=runtime.autocast)

    def forward(stop_at_layer: int | None) -> Callable[[], Any]:
        def run() -> None:
            with torch.no_grad(), autocast:
                lm.run_with_cache(tokens, names_filter=[cfg.hook_name], stop_at_layer=stop_at_layer, prepend_bos=False)

        return run

    stop = extract_stop_at_layer_from_tlens_hook_name(cfg.hook_name)
    hook_s = time_batches(runtime.device, cfg.lm_batches, forward(stop))
    full_s = time_batches(runtime.device, cfg.lm_batches, forward(None))
    total = cfg.lm_batches * batch_tokens
    return {
        "tokens_per_s": round(total / to_hook_s, 1),
        "forward_to_hook_tokens_per_s": round(total / hook_s, 1),
        "full_forward_tokens_per_s": round(total / full_s, 1),
        "batches": cfg.lm_batches,
        "batch_tokens": batch_tokens,
        "peak_memory_bytes": memory.peak,
        "what": "tokens_per_s: text to activations at the hook in one process (tokenise, pack, forward up to the "
        "hook's layer), as training fills its buffer (with data_worker, training tokenises in another process); "
        "forward_to_hook and full_forward: the forward pass alone on ready tokens, "
        "stopped after the hook's layer as training does, and through all layers and the unembedding",
    }


def _sae_speed(
    cfg: BenchConfig, sae_size: tuple[int, int], runtime: Any, root: Path, warmup: int, steps: int, lean: bool
) -> dict[str, Any]:
    """The SAE step alone: SAE-Lens's trainer step on one random batch served again and again, with no model and no
    data pipeline, with the SAE and optimiser as train builds them (``lean``: our step, see container_src/sae_step.py)
    or as SAE-Lens does, at train's precision and compile setting. The pipelines above approach it as their data
    side gets out of the way: on a GPU it is the ceiling of ours."""
    import itertools

    import torch
    from sae_lens.training.sae_trainer import SAETrainer

    from container_src.sae_step import set_adam_kernel, training_sae

    runner_cfg = _runner_config(cfg, sae_size, runtime, root / "sae", warmup + steps)
    memory = PeakMemory(runtime.device)
    with memory.measuring():
        sae = training_sae(runner_cfg, lean)
        sae.to(runtime.device)
        if runner_cfg.compile_sae:
            sae.training_forward_pass = torch.compile(sae.training_forward_pass)
        batch = torch.randn(cfg.train_batch_size_tokens, sae_size[0], generator=torch.Generator().manual_seed(0))
        batch = batch.to(runtime.device)
        trainer = SAETrainer(cfg=runner_cfg.to_sae_trainer_config(), sae=sae, data_provider=itertools.repeat(batch))
        set_adam_kernel(trainer.optimizer, fused=lean)
        clock = StepClock(runtime.device)
        for _ in range(warmup):
            trainer.step(batch)
        start = clock.mark()
        for _ in range(steps):
            trainer.step(batch)
        seconds = clock.seconds_between(start, clock.mark())
        del trainer, sae, batch
    tokens = steps * cfg.train_batch_size_tokens
    step = "our step (container_src/sae_step.py)" if lean else "SAE-Lens's own TopK step and Adam"
    return {
        "tokens_per_s": round(tokens / seconds, 1),
        "steps": steps,
        "seconds": round(seconds, 6),
        "peak_memory_bytes": memory.peak,
        "lean_step": lean,
        "what": f"the SAE training step alone (forward, loss, backward, Adam), {step}, on one random batch served "
        "again and again: no model, no data pipeline",
    }


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


def _profile_ours(cfg: BenchConfig, tree: ContainerPaths, warmup: int, steps: int, device: str, out: Path) -> None:
    """ours once more, under torch.profiler from the first step after the warm-up to the end of the last step (model
    loading, the warm-up, the final evaluation and saving outside it); writes the operator table to ``out``."""
    from sae_lens.training.sae_trainer import SAETrainer
    from torch._C._profiler import _ExperimentalConfig
    from torch.profiler import ProfilerActivity, profile

    from container_src.train import run_train

    cuda = device.startswith("cuda")
    try:  # the prefetching thread's work too, where this torch can (2.13 can)
        threads, experimental = "all threads", _ExperimentalConfig(profile_all_threads=True)
    except TypeError:
        threads, experimental = "the training thread only (and all device kernels)", None
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    profiler = profile(activities=activities, experimental_config=experimental)
    step, done = SAETrainer.step, 0

    def profiled_step(trainer: Any, batch: Any) -> Any:
        nonlocal done
        if done == warmup:
            profiler.start()
        output = step(trainer, batch)
        done += 1
        if done == warmup + steps:
            synchronize(device)
            profiler.stop()
        return output

    with replaced(SAETrainer, step=profiled_step):
        run_train(Resolved(config=_train_config(cfg, warmup + steps), mode="bench"), tree)
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort, row_limit=50)
    out.write_text(
        f"ours (train), {steps} steps after {warmup} warm-up steps on {device}, sorted by {sort}; CPU "
        f"operators of {threads}\n{table}"
    )


def run_bench(resolved: Resolved[BenchConfig], paths: ContainerPaths) -> dict[str, Any]:
    """Measure, print and write the figures; returns them."""
    cfg = resolved.config
    instance_type = _instance_type(cfg, paths)
    json_path, profile_path = _output_path("json", cfg.json, paths), _output_path("profile", cfg.profile, paths)

    with tempfile.TemporaryDirectory(prefix="sae-bench-") as tmp:
        root = Path(tmp)
        hub = root / "input" / "data" / "model" / "hub"
        os.environ.update(hub_env(hub) | {"HF_DATASETS_OFFLINE": "1"})
        _check_fresh_process(hub)
        from container_src import model, train

        runtime = model.pick_runtime(cfg.device, cfg.precision, cfg.compile_sae, paths.instance_type())
        kind = "cuda" if runtime.device.startswith("cuda") else "cpu"
        steps = cfg.steps or DEFAULT_STEPS[kind][0]
        warmup = cfg.warmup_steps or DEFAULT_STEPS[kind][1]
        # Enough stories that no pipeline runs out (a story is about 90 tokens here), within reason.
        stories_needed = min(max(2000, (warmup + steps) * cfg.train_batch_size_tokens // 60), 200_000)
        logger.info("bench: writing a random %s-shaped model and %d stories", cfg.model_shape, stories_needed)
        tree = _write_assets(root, cfg, stories_needed)

        inputs = train._prepare_inputs(_train_config(cfg, 1), tree)
        lm = model.load_model(cfg.model_name, runtime.device, inputs.channels["model"], cfg.fused_lm)
        model.check_context(lm, cfg.context_size)
        d_in = model.hook_width(lm, cfg.hook_name)
        d_sae = cfg.sae_width(d_in)
        logger.info("bench: the model alone, %d batches", cfg.lm_batches)
        lm_figures = _lm_speed(cfg, lm, inputs.stream, runtime, (d_in, d_sae), root)
        del lm  # each pipeline loads its own, as it would in a job

        ours_runs: list[Speed] = []
        bare_runs: list[Speed] = []
        bare_settings = bare_precision = None
        untimed: dict[str, str] = {}  # a pipeline whose steps held no whole refill cycle: the others still report
        for attempt in range(1, cfg.repeats + 1):
            logger.info("bench %d/%d: ours (train), %d warm-up + %d steps", attempt, cfg.repeats, warmup, steps)
            try:
                ours_runs.append(_run_ours(cfg, tree, warmup, steps, runtime.device))
            except NoWholeCycleError as exc:
                untimed["ours"] = str(exc)
            for leftover in (tree.checkpoints_dir, tree.model_dir):  # or the next run would resume, not train
                shutil.rmtree(leftover, ignore_errors=True)
            if cfg.bare:
                logger.info("bench %d/%d: bare SAE-Lens with its defaults", attempt, cfg.repeats)
                try:
                    speed, bare_settings, bare_precision = _run_bare(
                        cfg, inputs.stories, (d_in, d_sae), root / f"bare-{attempt}", warmup, steps, runtime.device
                    )
                    bare_runs.append(speed)
                except NoWholeCycleError as exc:
                    untimed["bare"] = str(exc)
        logger.info("bench: the SAE step alone, %d warm-up + %d steps", warmup, steps)
        sae_figures = _sae_speed(cfg, (d_in, d_sae), runtime, root, warmup, steps, cfg.lean_step)
        sae_lens_figures = (
            _sae_speed(cfg, (d_in, d_sae), runtime, root, warmup, steps, lean=False) if cfg.lean_step else sae_figures
        )
        if profile_path is not None:
            logger.info("bench: ours once more, under the profiler")
            _profile_ours(cfg, tree, warmup, steps, runtime.device, profile_path)
            logger.info("bench: profile written to %s", profile_path)
        ours = max(ours_runs, key=lambda run: run.tokens_per_s) if ours_runs else None
        bare = max(bare_runs, key=lambda run: run.tokens_per_s) if bare_runs else None

    import sae_lens
    import torch

    figures = {
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
        "d_in": d_in,
        "d_sae": d_sae,
        "k": cfg.k,
        "compile_sae": runtime.compile_sae,
        "warmup_steps": warmup,
        "steps": steps,
        "timed_window": TIMED_WINDOW,
        "peak_memory_kind": PeakMemory(runtime.device).kind,
        "repeats": cfg.repeats,
        "ours": ours.to_json() if ours else None,
        "bare": bare.to_json() if bare else None,
        "untimed": untimed,
        "bare_settings_not_default": bare_settings,
        "bare_precision": bare_precision,
        "ratio_ours_to_bare": round(ours.tokens_per_s / bare.tokens_per_s, 3) if ours and bare else None,
        "ratio_ours_to_bare_cpu_time": (
            round((ours.tokens / ours.cpu_seconds) / (bare.tokens / bare.cpu_seconds), 3) if ours and bare else None
        ),
        "all_runs_tokens_per_s": {
            "ours": [round(r.tokens_per_s, 1) for r in ours_runs],
            "bare": [round(r.tokens_per_s, 1) for r in bare_runs],
        },
        "lm": lm_figures,
        "sae_alone": sae_figures,
        "sae_lens_step_alone": sae_lens_figures,
        "projection": _projection(cfg, instance_type, ours.tokens_per_s, runtime.device_name) if ours else None,
        "config": resolved.to_json()["values"],
    }
    sys.stdout.write(format_table(figures))
    if json_path is not None:
        records.write_json(json_path, figures)
        logger.info("bench: figures written to %s", json_path)
    if paths.in_job():  # the job's model.tar.gz carries the figures
        records.write_json(paths.model_dir / "bench.json", figures)
        logger.info("bench: figures written to %s", paths.model_dir / "bench.json")
    if untimed:
        raise ConfigError(
            f"steps={steps}: too few to time {' and '.join(untimed)} ({'; '.join(untimed.values())}). The figures "
            "of the rest are above; raise steps"
        )
    return figures


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def format_table(f: dict[str, Any]) -> str:
    """The figures as a short human-readable report."""
    memory = "GPU peak allocated (at start)" if f["peak_memory_kind"].startswith("cuda") else "peak RSS (at start)"
    lines = [
        f"bench: {f['device_name']} ({f['device']}, {f['precision']}, {f['cpu_threads']} CPU threads), "
        f"{f['model_shape']} shape, random weights",
        f"  SAE {f['architecture']} {f['hook_name']} d_in={f['d_in']} d_sae={f['d_sae']} k={f['k']}; "
        f"{f['warmup_steps']} warm-up + {f['steps']} steps each, timed over whole buffer refill cycles within "
        f"them; best of {f['repeats']}",
        f"  {'':30}{'tokens/s':>12}{'batch':>8}{'timed':>7}{'seconds':>10}{'CPU s':>10}  {memory}",
    ]
    bare_name = "bare SAE-Lens defaults"
    if f["bare_precision"]:
        bare_name += " (fp32)" if f["bare_precision"]["dtype"] == "float32" else f" ({f['bare_precision']['dtype']})"
    for name, key in (("ours (train)", "ours"), (bare_name, "bare")):
        if f[key]:
            s = f[key]
            lines.append(
                f"  {name:30}{s['tokens_per_s']:>12,.0f}{s['batch_tokens']:>8}{s['steps']:>7}{s['seconds']:>10.2f}"
                f"{s['cpu_seconds']:>10.2f}  "
                f"{_gib(s['peak_memory_bytes'])} ({_gib(s['memory_at_start_bytes'])})"
            )
        elif key in f["untimed"]:
            lines.append(f"  {name:30}not timed: {f['untimed'][key]}")
    if f["ratio_ours_to_bare"] is not None:
        lines.append(
            f"  ratio ours / bare: {f['ratio_ours_to_bare']:.3f} (by CPU time: {f['ratio_ours_to_bare_cpu_time']:.3f})"
        )
    lm = f["lm"]
    lines.append(
        f"  model alone: {lm['tokens_per_s']:,.0f} tokens/s from text to the hook; forward pass alone "
        f"{lm['forward_to_hook_tokens_per_s']:,.0f} tokens/s to the hook, {lm['full_forward_tokens_per_s']:,.0f} "
        "through all layers"
    )
    lines.append(
        f"  SAE step alone: {f['sae_alone']['tokens_per_s']:,.0f} tokens/s as train runs it, "
        f"{f['sae_lens_step_alone']['tokens_per_s']:,.0f} with SAE-Lens's own step (no model, no data pipeline)"
    )
    if p := f["projection"]:
        cost = (
            f", ${p['usd']:,.2f} at {p['instance_type']}'s ${p['usd_per_hour']}/h ({p['prices']})"
            if p["usd"] is not None
            else " (no price: give --instance_type)"
        )
        lines.append(
            f"  projection at ours' speed on {p['measured_on']}: {p['training_tokens']:,} tokens in "
            f"{p['wall_h']:.2f} h{cost}"
        )
    return "\n".join(lines) + "\n"
