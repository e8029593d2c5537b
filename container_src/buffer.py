"""The size of SAE-Lens's shuffling buffer: in tokens, in bytes, and whether it mixes enough documents.

SAE-Lens 6.54 holds ``n_batches_in_buffer × context_size`` activations (``get_data_loader``), each ``d_in`` wide.
A memory-sizing estimate adds ``buffer_bytes``; ``describe`` is what `train` logs at its start.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

MIN_CONTEXTS = 64
"""Below this many sequences in the buffer, a batch is drawn from too few documents to count as shuffled."""

_DTYPE_BYTES = {"float32": 4, "fp32": 4, "float16": 2, "bfloat16": 2, "bf16": 2, "float64": 8}


def buffer_tokens(cfg: Any) -> int:
    """Activations the buffer holds: ``n_batches_in_buffer`` sequences of ``context_size`` tokens."""
    return int(cfg.n_batches_in_buffer) * int(cfg.context_size)


def buffer_bytes(cfg: Any, d_in: int, dtype: str = "float32") -> int:
    """Bytes the buffer's activations take: tokens × d_in × the size of ``dtype`` (SAE-Lens stores float32)."""
    if dtype not in _DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r}: must be one of {', '.join(_DTYPE_BYTES)}")
    return buffer_tokens(cfg) * d_in * _DTYPE_BYTES[dtype]


def refill_steps(cfg: Any) -> int:
    """Training steps one refill feeds: SAE-Lens keeps half of the buffer for the next refill and serves the rest."""
    return max(1, buffer_tokens(cfg) // 2 // int(cfg.train_batch_size_tokens))


def contexts_per_batch(cfg: Any) -> int:
    """Sequences a training batch can be drawn from: the buffer's, at most one per token of the batch."""
    return min(int(cfg.n_batches_in_buffer), int(cfg.train_batch_size_tokens))


def describe(cfg: Any, d_in: int, dtype: str = "float32") -> None:
    """Log the buffer's size, and warn when a batch would mix fewer than ``MIN_CONTEXTS`` sequences."""
    tokens, size = buffer_tokens(cfg), buffer_bytes(cfg, d_in, dtype)
    logger.info(
        "shuffling buffer: %d sequences of %d tokens = %d tokens, %.1f MiB (d_in=%d, %s)",
        cfg.n_batches_in_buffer,
        cfg.context_size,
        tokens,
        size / 2**20,
        d_in,
        dtype,
    )
    contexts = contexts_per_batch(cfg)
    if contexts < MIN_CONTEXTS:
        logger.warning(
            "n_batches_in_buffer=%d: each batch of %d tokens is drawn from at most %d sequences (fewer than %d), "
            "so it holds consecutive tokens of a few documents rather than a shuffled sample, and the SAE's "
            "updates follow one document after another; raise n_batches_in_buffer to %d or more",
            cfg.n_batches_in_buffer,
            cfg.train_batch_size_tokens,
            contexts,
            MIN_CONTEXTS,
            MIN_CONTEXTS,
        )
