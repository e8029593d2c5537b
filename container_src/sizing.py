"""The GPU memory a `train` run needs, estimated from the configuration and the architecture's sizes alone (no torch,
no weights): the container checks it against the device before loading the model, the launcher against the instance
type before starting a job. An estimate, on the safe side: each part is a stated formula, in fp32 where the run
keeps fp32, plus a margin.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from container_src import buffer
from container_src.config_sources import ConfigError
from container_src.hardware import SUGGESTED_INSTANCES, gpu_memory
from container_src.model_shapes import ARCHITECTURES, Architecture

logger = logging.getLogger(__name__)

GIB = 2**30
FP32 = 4
ADAM_COPIES = 4
"""The SAE's weights, their gradients and Adam's two moments, each in fp32."""
GATED_MLP = ("qwen3", "qwen2", "llama", "gemma2", "mistral")
"""Model types whose MLP has three matrices (gate, up, down) rather than two."""
LEARNED_POSITIONS = ("gpt_neo", "gpt2")
"""Model types with a learned positional embedding rather than rotary positions."""
MARGIN_GIB = 1.5
"""The CUDA context and torch's own workspace."""
MARGIN_SHARE = 0.1
"""Allocator fragmentation and what the formulas leave out, as a share of the rest."""


def architecture_from_config(config: dict[str, Any]) -> Architecture:
    """An architecture's sizes from a config.json's values (Qwen/Llama names, or GPT-2/GPT-Neo names)."""

    def get(*keys: str) -> Any:
        return next((config[key] for key in keys if config.get(key) is not None), None)

    d_model = int(get("hidden_size", "n_embd", "d_model"))
    heads = int(get("num_attention_heads", "num_heads", "n_head"))
    dtype = str(get("torch_dtype", "dtype") or "float32")
    return Architecture(
        model_type=str(config.get("model_type", "")),
        layers=int(get("num_hidden_layers", "num_layers", "n_layer")),
        d_model=d_model,
        d_mlp=int(get("intermediate_size", "n_inner") or 4 * d_model),
        heads=heads,
        kv_heads=int(get("num_key_value_heads") or heads),
        vocab=int(get("vocab_size")),
        dtype_bytes=2 if dtype in ("bfloat16", "float16") else 4,
        head_dim=int(get("head_dim") or 0),
        learned_positions=int(get("n_positions", "max_position_embeddings") or 0)
        if config.get("model_type") in LEARNED_POSITIONS
        else 0,
    )


def read_architecture(folder: Path) -> Architecture:
    """The sizes in a plain model folder's config.json."""
    return architecture_from_config(json.loads((folder / "config.json").read_text()))


def config_folder(weights: str) -> Path | None:
    """The folder holding the config.json of ``weights`` (a folder, or a hub id: from the hub cache the run reads,
    else the hub); None when it cannot be read. Only config.json is fetched."""
    if Path(weights).is_dir():
        return Path(weights) if (Path(weights) / "config.json").is_file() else None
    from transformers.utils.hub import cached_file

    try:
        found = cached_file(weights, "config.json")
    except Exception:  # offline and not cached, or no such repository: the table of published configs instead
        return None
    return Path(found).parent if found else None


def known_architecture(model_name: str, folder: Path | None = None) -> Architecture | None:
    """The sizes of the run's model: a plain weights folder's config.json, else the table of published configs;
    None when neither has them."""
    if folder is not None and (folder / "config.json").is_file():
        return read_architecture(folder)
    return ARCHITECTURES.get(model_name)


def hook_layer(hook_name: str) -> int | None:
    match = re.match(r"blocks\.(\d+)\.", hook_name)
    return int(match.group(1)) if match else None


def hook_width(arch: Architecture, hook_name: str) -> int | None:
    """d_in at the hook: d_mlp inside the MLP, d_model on the residual stream and the blocks' outputs; None for
    another hook (its width is read from the model only)."""
    if re.fullmatch(r"blocks\.\d+\.mlp\.hook_(post|pre|pre_linear)", hook_name):
        return arch.d_mlp
    if re.fullmatch(r"blocks\.\d+\.hook_(resid_pre|resid_mid|resid_post|mlp_out|attn_out)", hook_name):
        return arch.d_model
    return None


def model_parameters(arch: Architecture) -> int:
    """Embedding, unembedding (TransformerLens keeps both, tied or not) and learned positions, and every block's
    attention and MLP; the norms and biases are left out (under 2% of a small model, less of a large one)."""
    head_dim = arch.head_dim or arch.d_model // arch.heads
    attention = 2 * arch.d_model * head_dim * (arch.heads + arch.kv_heads)
    mlp = (3 if arch.model_type in GATED_MLP else 2) * arch.d_model * arch.d_mlp
    embeddings = (2 * arch.vocab + arch.learned_positions) * arch.d_model
    return embeddings + arch.layers * (attention + mlp)


@dataclass(frozen=True)
class Estimate:
    """Each part's bytes, with what it counts."""

    parts: dict[str, tuple[int, str]]

    @property
    def total(self) -> int:
        return sum(size for size, _ in self.parts.values())

    def lines(self) -> list[str]:
        rows = [f"{name}: {size / GIB:.1f} GiB ({why})" for name, (size, why) in self.parts.items()]
        return [*rows, f"total: {self.total / GIB:.1f} GiB"]

    def record(self) -> dict[str, Any]:
        """For resolved_config.json: GiB per part, and the total."""
        return {name: round(size / GIB, 2) for name, (size, _) in self.parts.items()} | {
            "total": round(self.total / GIB, 2)
        }


def estimate(cfg: Any, arch: Architecture, d_in: int) -> Estimate:
    """The GPU memory of a `train` run of ``cfg`` on ``arch`` at a hook ``d_in`` wide."""
    d_sae = cfg.d_sae or cfg.expansion_factor * d_in
    sae_params = 2 * d_in * d_sae + d_sae + d_in
    lm_tokens = cfg.store_batch_size_prompts * cfg.context_size
    head_scores = cfg.store_batch_size_prompts * arch.heads * cfg.context_size**2
    # per block, what one block of a no-grad forward holds at once: the residual stream, its normed copy and the
    # attention's output; the MLP's hidden activations (gate, up, their product); the scores and the pattern
    block = lm_tokens * (3 * arch.d_model + 3 * arch.d_mlp) + 2 * head_scores
    logits = 2 * lm_tokens * arch.vocab  # the final evaluation's logits and their log-softmax
    parts = {
        "model weights": (
            model_parameters(arch) * FP32,
            f"all {arch.layers} layers in fp32, as TransformerLens loads them; the final evaluation runs the whole "
            "model",
        ),
        "SAE": (sae_params * FP32 * ADAM_COPIES, f"{d_in}×{d_sae}: weights, gradients and Adam's two moments, fp32"),
        "SAE step": (
            cfg.train_batch_size_tokens * (3 * d_sae + 4 * d_in) * FP32,
            f"{cfg.train_batch_size_tokens} tokens' latents and activations, fp32",
        ),
        "activation buffer": (
            2 * buffer.buffer_bytes(cfg, d_in),
            f"{buffer.buffer_tokens(cfg)} tokens × {d_in} in fp32, twice: the buffer and its refill",
        ),
        "forward pass": (
            max(block, logits) * FP32,
            f"{lm_tokens} tokens per pass: the larger of one block's activations and the evaluation's logits",
        ),
    }
    return _with_margin(parts)


def _with_margin(parts: dict[str, tuple[int, str]]) -> Estimate:
    rest = sum(size for size, _ in parts.values())
    margin = int(MARGIN_GIB * GIB + MARGIN_SHARE * rest)
    parts["margin"] = (margin, f"{MARGIN_GIB} GiB for the CUDA context and {MARGIN_SHARE:.0%} of the rest")
    return Estimate(parts)


def _together(estimates: list[tuple[str, Estimate]]) -> Estimate:
    """Several SAEs on one model pass (a multi-SAE job; ``estimates``: each SAE's hook and single-run estimate):
    one model and forward pass, every SAE and its step, one buffer per hook."""
    first = estimates[0][1].parts
    per_hook = {hook: est.parts["activation buffer"][0] for hook, est in reversed(estimates)}
    parts = {
        "model weights": first["model weights"],
        "SAE": (sum(e.parts["SAE"][0] for _, e in estimates), f"{len(estimates)} SAEs, each as a single run's"),
        "SAE step": (sum(e.parts["SAE step"][0] for _, e in estimates), "each SAE's step, as a single run's"),
        "activation buffer": (sum(per_hook.values()), f"one buffer per hook ({len(per_hook)}), as a single run's"),
        "forward pass": first["forward pass"],
    }
    return _with_margin(parts)


def estimate_for(cfg: Any, folder: Path | None = None) -> Estimate | None:
    """The estimate for a `train` config (every SAE of a multi-SAE job), its model's sizes from ``folder``'s
    config.json or the table; None (with a warning) for an architecture or a hook whose sizes are not known without
    loading the model."""
    arch = known_architecture(cfg.model_name, folder)
    if arch is None:
        logger.warning(
            "GPU memory not estimated: %s is not in the table of published configs (container_src/model_shapes.py)",
            cfg.model_name,
        )
        return None
    from container_src.sae_set import members

    estimates = []
    for one in [m.config for m in members(cfg)] or [cfg]:  # a multi-SAE job's SAEs, or the run's one
        d_in = hook_width(arch, one.hook_name)
        if d_in is None:
            logger.warning("GPU memory not estimated: the width of hook %s is known only from the model", one.hook_name)
            return None
        estimates.append((one.hook_name, estimate(one, arch, d_in)))
    return estimates[0][1] if len(estimates) == 1 else _together(estimates)


def fitting_instances(needed: int) -> list[str]:
    """The suggested instance types whose GPU holds ``needed`` bytes, smallest first."""
    return [name for name in SUGGESTED_INSTANCES if _gib(name) * GIB >= needed]


def _gib(instance_type: str) -> float:
    memory = gpu_memory(instance_type)
    return memory[1] if memory else 0.0


def shortfall(est: Estimate, available: int, where: str) -> str | None:
    """Why ``available`` bytes cannot hold the run (each part, and what to change), or None when they can."""
    if est.total <= available:
        return None
    fits = fitting_instances(est.total)
    return (
        f"{where} has {available / GIB:.1f} GiB of GPU memory and the run needs about {est.total / GIB:.1f} GiB "
        f"({'; '.join(est.lines()[:-1])}). Use a GPU with more memory"
        + (f" (instance types that hold it: {', '.join(fits)})" if fits else "")
        + ", or make the run smaller: expansion_factor or d_sae (the SAE), store_batch_size_prompts and "
        "context_size (the forward pass), n_batches_in_buffer (the buffer), train_batch_size_tokens (the SAE step)"
    )


def check_memory(cfg: Any, inputs: Any) -> dict[str, float] | None:
    """Refuse a GPU too small for the run's estimated memory, before the model is loaded; returns the estimate (GiB
    per part) for the records, None where nothing was estimated (CPU, or sizes unknown without the model).
    ``inputs``: `train`'s prepared inputs (its runtime, and the weights' source)."""
    runtime = inputs.runtime
    if not runtime.device.startswith("cuda"):
        logger.info("GPU memory: not estimated on %s", runtime.device)
        return None
    est = estimate_for(cfg, config_folder(inputs.weights.source or cfg.model_name))
    if est is None:
        return None
    import torch

    available = torch.cuda.get_device_properties(torch.device(runtime.device)).total_memory
    logger.info(
        "GPU memory estimate, of %.1f GiB on %s: %s",
        available / GIB,
        runtime.device_name,
        "; ".join(est.lines()),
    )
    if why := shortfall(est, available, f"{runtime.device_name} ({runtime.device})"):
        raise ConfigError(why)
    return est.record()
