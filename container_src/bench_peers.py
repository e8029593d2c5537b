"""The peers `bench` times beside ours: SAE-Lens's runner with its best settings for this configuration ("tuned"),
and EleutherAI's sparsify training a TopK SAE of the same size, on the same stand-in model and stories.

The HF libraries are imported inside the functions: bench points them at its stand-in model's cache first.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from container_src import bench_pipelines
from container_src.config import BenchConfig, ConfigError
from container_src.model import Runtime
from container_src.timing import PeakMemory, Speed, StepClock, replaced

logger = logging.getLogger(__name__)

# TransformerLens hook -> the module of HF's GPT-Neo whose output it is (sparsify hooks HF modules' outputs).
SPARSIFY_HOOKS = {
    r"blocks\.(\d+)\.mlp\.hook_post": r"h.\1.mlp.act",
    r"blocks\.(\d+)\.hook_mlp_out": r"h.\1.mlp",
    r"blocks\.(\d+)\.hook_resid_post": r"h.\1",
}


def tuned_settings(cfg: BenchConfig, runtime: Runtime) -> dict[str, Any]:
    """SAE-Lens's own levers at their best for this configuration: train's batch, model batch, buffer and
    prefetching, bf16 autocast of the SAE and the model where the device has it, and the SAE compiled where train
    compiles it (on CUDA by default)."""
    return {
        "train_batch_size_tokens": cfg.train_batch_size_tokens,
        "store_batch_size_prompts": cfg.store_batch_size_prompts,
        "n_batches_in_buffer": cfg.n_batches_in_buffer,
        "prefetch_llm_batches": cfg.prefetch_llm_batches,
        "autocast": runtime.autocast,
        "autocast_lm": runtime.autocast,
        "compile_sae": runtime.compile_sae,
    }


def run_bare(
    cfg: BenchConfig, stories: Any, sae_size: tuple[int, int], root: Path, warmup: int, steps: int, runtime: Runtime
) -> tuple[Speed, dict[str, Any], dict[str, Any]]:
    """SAE-Lens with its own defaults (``bench_pipelines.run_bare``), called as the other peers are."""
    return bench_pipelines.run_bare(cfg, stories, sae_size, root, warmup, steps, runtime.device)


def run_tuned(
    cfg: BenchConfig, stories: Any, sae_size: tuple[int, int], root: Path, warmup: int, steps: int, runtime: Runtime
) -> tuple[Speed, dict[str, Any], dict[str, Any]]:
    """SAE-Lens's runner, its text path, its SAE step and Adam, with :func:`tuned_settings`; as ``run_bare``."""
    return bench_pipelines.run_bare(
        cfg, stories, sae_size, root, warmup, steps, runtime.device, tuned_settings(cfg, runtime)
    )


def sparsify_hookpoint(hook_name: str) -> str | None:
    """The HF GPT-Neo module sparsify hooks for a TransformerLens hook, or None where there is none."""
    for pattern, module in SPARSIFY_HOOKS.items():
        if re.fullmatch(pattern, hook_name):
            return re.sub(pattern, module, hook_name)
    return None


def check_sparsify(cfg: BenchConfig) -> None:
    """What sparsify cannot run, refused before any work."""
    fix = "; or give --sparsify false"
    if cfg.architecture != "topk":
        raise ConfigError(f"architecture={cfg.architecture!r}: sparsify trains TopK SAEs only{fix}")
    if sparsify_hookpoint(cfg.hook_name) is None:
        hooks = ", ".join(p.replace(r"(\d+)", "N").replace("\\", "") for p in SPARSIFY_HOOKS)
        raise ConfigError(f"hook_name={cfg.hook_name!r}: no sparsify hookpoint for it; known: {hooks}{fix}")
    if cfg.train_batch_size_tokens % cfg.context_size:
        raise ConfigError(
            f"train_batch_size_tokens={cfg.train_batch_size_tokens}: sparsify's batches are whole sequences, so it "
            f"must be a multiple of context_size={cfg.context_size}{fix}"
        )


def _sparsify_rows(cfg: BenchConfig, stories: Any, tokenizer: Any, rows: int) -> Any:
    """The stories as sparsify's own CLI prepares text: chunked and tokenised into rows of ``context_size`` tokens,
    shuffled; the first ``rows`` of them."""
    from datasets import Dataset
    from sparsify.data import chunk_and_tokenize

    texts = Dataset.from_dict({"text": [row["text"] for row in stories]})
    data = chunk_and_tokenize(texts, tokenizer, max_seq_len=cfg.context_size, num_proc=1, load_from_cache_file=False)
    data = data.shuffle(seed=cfg.seed).with_format("torch")
    if len(data) < rows:
        logger.warning("sparsify: the stories give %d rows of %d tokens, not %d", len(data), cfg.context_size, rows)
    return data.select(range(min(rows, len(data))))


def run_sparsify(
    cfg: BenchConfig, stories: Any, sae_size: tuple[int, int], root: Path, warmup: int, steps: int, runtime: Runtime
) -> tuple[Speed, dict[str, Any]]:
    """sparsify's trainer (its TopK SAE, fused encoder, sparse decoder, default optimiser) on the stand-in model
    loaded as sparsify's CLI loads it (bf16 where the device has it), ``warmup + steps`` batches of the same
    tokens per batch. Each step runs the model on its own batch, so every step is a whole cycle; timed from the end
    of the last warm-up step, by the same clock as the other pipelines. Tokenising happens before, untimed."""
    import torch
    from sparsify import SparseCoderConfig, TrainConfig, Trainer
    from sparsify.utils import decoder_impl
    from transformers import AutoModel, AutoTokenizer

    sequences = cfg.train_batch_size_tokens // cfg.context_size
    dtype = torch.bfloat16 if runtime.autocast else torch.float32
    sparsify_cfg = TrainConfig(
        SparseCoderConfig(num_latents=sae_size[1], k=cfg.k),
        batch_size=sequences,
        hookpoints=[str(sparsify_hookpoint(cfg.hook_name))],
        init_seeds=[cfg.seed],
        log_to_wandb=False,
        save_dir=str(root / "sparsify"),
    )
    clock, memory = StepClock(runtime.device), PeakMemory(runtime.device)
    get_k, started = Trainer.get_current_k, False

    def marked_get_k(trainer: Any) -> int:
        # called once before the first step, then at the end of each step, after the optimiser
        nonlocal started
        if started:
            clock.ends.append((clock.mark(), clock.cpu_seconds()))
        started = True
        clock.refill_after.add(len(clock.ends))  # the next step runs the model on a batch of its own
        return get_k(trainer)

    matmul_precision, printed = torch.get_float32_matmul_precision(), io.StringIO()
    with memory.measuring():
        tokenizer = AutoTokenizer.from_pretrained(cfg.model_name)
        data = _sparsify_rows(cfg, stories, tokenizer, (warmup + steps) * sequences)
        lm = AutoModel.from_pretrained(cfg.model_name, dtype=dtype).to(runtime.device)
        try:  # sparsify sets TF32 matmuls for the whole process; the pipelines after it must not inherit that
            with contextlib.redirect_stdout(printed), replaced(Trainer, get_current_k=marked_get_k):
                Trainer(sparsify_cfg, data, lm).fit()
        finally:
            torch.set_float32_matmul_precision(matmul_precision)
            logger.info("sparsify printed: %s", " | ".join(printed.getvalue().split("\n")).strip(" |"))
        del lm
    settings = {
        "hookpoint": sparsify_cfg.hookpoints[0],
        "num_latents": sae_size[1],
        "k": cfg.k,
        "batch_size_sequences": sequences,
        "optimizer": sparsify_cfg.optimizer,
        "model_dtype": str(dtype).removeprefix("torch."),
        "sparse_decoder": decoder_impl.__name__,
        "model_forward": "all layers (sparsify does not stop at the hook's layer)",
        "tokenised": "before the run, untimed (as sparsify's CLI does)",
    }
    return clock.speed(warmup, sequences * cfg.context_size, memory), settings


# The pipelines bench runs beside ours, by the key that turns each on: what the log calls it, and how to run it.
PEERS: dict[str, tuple[str, Callable[..., tuple[Any, ...]]]] = {
    "bare": ("bare SAE-Lens with its defaults", run_bare),
    "tuned": ("SAE-Lens with its best settings", run_tuned),
    "sparsify": ("sparsify", run_sparsify),
}
