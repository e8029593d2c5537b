"""The pipelines `bench` times: ours (`train` itself), bare SAE-Lens, the model alone, the SAE step alone, and ours
under the profiler.

The HF libraries are imported inside the functions: bench points them at its stand-in model's cache first.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from container_src.config import BenchConfig, Resolved, TrainConfig
from container_src.model import Runtime
from container_src.paths import ContainerPaths
from container_src.timing import PeakMemory, Speed, StepClock, replaced, synchronize, time_batches
from container_src.train import run_train


def train_config(cfg: BenchConfig, total_steps: int) -> TrainConfig:
    """The configuration under test, trimmed to the benchmark's steps, without periodic checkpoints or W&B."""
    values = {f.name: getattr(cfg, f.name) for f in fields(TrainConfig)}
    values |= {
        "training_tokens": total_steps * cfg.train_batch_size_tokens,
        "n_checkpoints": 0,
        "log_to_wandb": False,
        "eval_batches": 1,
        # no evaluation during the timed steps: like the final evaluation, it is not training throughput
        "eval_every_n_wandb_logs": total_steps + 1,
    }
    return TrainConfig(**values)


def runner_config(cfg: BenchConfig, sae_size: tuple[int, int], runtime: Runtime, folder: Path, total_steps: int) -> Any:
    """SAE-Lens's runner configuration as train builds it for this configuration, writing under ``folder``."""
    from container_src.runner import sae_lens_config

    return sae_lens_config(train_config(cfg, total_steps), *sae_size, runtime, "bench", folder, folder / "out", None)


def run_ours(cfg: BenchConfig, tree: ContainerPaths, warmup: int, steps: int, device: str) -> Speed:
    train_cfg = train_config(cfg, warmup + steps)
    clock, memory = StepClock(device), PeakMemory(device)
    with memory.measuring(), clock.installed():
        run_train(Resolved(config=train_cfg, mode="bench"), tree)
    return clock.speed(warmup, cfg.train_batch_size_tokens, memory)


def run_bare(
    cfg: BenchConfig,
    stories: Any,
    sae_size: tuple[int, int],
    root: Path,
    warmup: int,
    steps: int,
    device: str,
    settings: dict[str, Any] | None = None,
) -> tuple[Speed, dict[str, Any], dict[str, Any]]:
    """SAE-Lens with its own defaults, loading the model itself; returns its speed, the settings that are not
    SAE-Lens's defaults, and its precision settings (SAE-Lens's defaults).

    Set here is only what SAE-Lens cannot default: the SAE, the model, hook, device and dataset (the stories alone,
    as text), and ``context_size``: SAE-Lens's own 128 would give a buffer smaller than its batch, which it refuses.
    ``settings``: SAE-Lens keys set as well (the tuned pipeline's, container_src/bench_peers.py).
    """
    from sae_lens import LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner, LoggingConfig

    from container_src.runner import training_sae_config

    d_in, d_sae = sae_size
    defaults = LanguageModelSAERunnerConfig.__dataclass_fields__
    settings = settings or {}
    batch_tokens = settings.get("train_batch_size_tokens", defaults["train_batch_size_tokens"].default)
    buffer = settings.get("n_batches_in_buffer", defaults["n_batches_in_buffer"].default)
    set_here: dict[str, Any] = {
        "model_name": cfg.model_name,
        "hook_name": cfg.hook_name,
        "dataset_path": cfg.control_path,
        "is_dataset_tokenized": False,
        "context_size": cfg.context_size,
        "training_tokens": (warmup + steps) * batch_tokens,
        "device": device,
        "checkpoint_path": str(root / "bare" / "checkpoints"),
        "output_path": str(root / "bare" / "output"),
        **settings,
    }
    if buffer * cfg.context_size < batch_tokens:
        # SAE-Lens refuses a buffer smaller than a batch: the least it accepts at this context size
        set_here["n_batches_in_buffer"] = -(-batch_tokens // cfg.context_size)
    sae_cfg = training_sae_config(cfg, d_in, d_sae, device)
    sae_cfg.apply_b_dec_to_input = type(sae_cfg).__dataclass_fields__["apply_b_dec_to_input"].default  # SAE-Lens's
    runner_cfg = LanguageModelSAERunnerConfig(sae=sae_cfg, logger=LoggingConfig(log_to_wandb=False), **set_here)
    clock, memory = StepClock(device), PeakMemory(device)
    with memory.measuring():
        runner = LanguageModelSAETrainingRunner(runner_cfg, override_dataset=stories)
        with clock.installed():
            runner.run()
        del runner
    speed = clock.speed(warmup, batch_tokens, memory)
    not_default = {k: v for k, v in set_here.items() if k not in ("checkpoint_path", "output_path")}
    # bare's are SAE-Lens's defaults, named because ours differs in them (bf16 autocast and compile on a GPU)
    precision = {k: getattr(runner_cfg, k) for k in ("dtype", "autocast", "autocast_lm", "compile_sae", "compile_llm")}
    return speed, not_default | {"log_to_wandb": False}, precision


def lm_speed(
    cfg: BenchConfig, lm: Any, stream: Any, runtime: Runtime, sae_size: tuple[int, int], root: Path
) -> dict[str, Any]:
    """The model alone: text to activations at the hook as training gets them (SAE-Lens's activation store with
    our configuration), and the full forward pass on the same batches."""
    import torch
    from sae_lens.util import extract_stop_at_layer_from_tlens_hook_name

    from container_src.store import packed_store

    runner_cfg = runner_config(cfg, sae_size, runtime, root / "lm", 1)
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


def sae_speed(
    cfg: BenchConfig, sae_size: tuple[int, int], runtime: Runtime, root: Path, warmup: int, steps: int, lean: bool
) -> dict[str, Any]:
    """The SAE step alone: SAE-Lens's trainer step on one random batch served again and again, with no model and no
    data pipeline, with the SAE and optimiser as train builds them (``lean``: our step, see container_src/sae_step.py)
    or as SAE-Lens does, at train's precision and compile setting. The pipelines above approach it as their data
    side gets out of the way: on a GPU it is the ceiling of ours."""
    import torch
    from sae_lens.training.sae_trainer import SAETrainer

    from container_src.sae_step import set_adam_kernel, training_sae

    runner_cfg = runner_config(cfg, sae_size, runtime, root / "sae", warmup + steps)
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


def profile_ours(cfg: BenchConfig, tree: ContainerPaths, warmup: int, steps: int, device: str, out: Path) -> None:
    """ours once more, under torch.profiler from the first step after the warm-up to the end of the last step (model
    loading, the warm-up, the final evaluation and saving outside it); writes the operator table to ``out``."""
    from sae_lens.training.sae_trainer import SAETrainer
    from torch._C._profiler import _ExperimentalConfig
    from torch.profiler import ProfilerActivity, profile

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
        run_train(Resolved(config=train_config(cfg, warmup + steps), mode="bench"), tree)
    sort = "self_device_time_total" if cuda else "self_cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort, row_limit=50)
    out.write_text(
        f"ours (train), {steps} steps after {warmup} warm-up steps on {device}, sorted by {sort}; CPU "
        f"operators of {threads}\n{table}"
    )
