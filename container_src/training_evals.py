"""The evaluations during training, with or without W&B: SAE-Lens's evaluator (CE-loss score on the evaluation
stream) and the feature sparsity of the current window, added to that step's record of the metric log, from which
``plots`` draws the CE-loss score, the mean log10 feature sparsity and the sparsity histogram."""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

EVAL_METRICS = ("ce_loss_score", "ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation")
HISTOGRAM_EDGES = np.linspace(-10.0, 0.0, 41)
"""log10 of a latent's firing frequency, 0.25 wide; a latent that never fired counts at -10 (SAE-Lens's eps)."""
_EPS = 1e-10


def flatten(grouped: dict[str, Any]) -> dict[str, Any]:
    """SAE-Lens's evaluator groups its figures (``model_performance_preservation`` …); by name alone."""
    flat: dict[str, Any] = {}
    for key, value in grouped.items():
        if isinstance(value, dict):
            flat.update(flatten(value))
        else:
            flat[key.rsplit("/", 1)[-1]] = value
    return flat


def sparsity_record(trainer: Any) -> dict[str, Any]:
    """The current sparsity window's firing frequency per latent, as its mean log10 and a histogram; empty right
    after a window reset (no step counted yet)."""
    if not trainer.n_frac_active_samples:
        return {}
    log_sparsity = np.log10(trainer.feature_sparsity.detach().float().cpu().numpy() + _EPS)
    counts, _ = np.histogram(np.clip(log_sparsity, HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1]), bins=HISTOGRAM_EDGES)
    return {
        "mean_log10_feature_sparsity": float(log_sparsity.mean()),
        "feature_sparsity_histogram": {"log10_edges": HISTOGRAM_EDGES.tolist(), "latents": counts.tolist()},
        "sparsity_window_tokens": int(trainer.n_frac_active_samples),
    }


def evaluation_record(trainer: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run SAE-Lens's evaluator now: the figures for the step's record, and what W&B gets (SAE-Lens's own dict).

    The evaluation store's shuffles draw on torch's generator, which the prefetching thread's training store shares:
    with that thread paused, the generator is put back after, so evaluating (how often, or at all) leaves the
    training order as it was."""
    import torch
    from sae_lens.training.prefetch import PrefetchingIterator

    provider = trainer.data_provider
    paused = provider.paused() if isinstance(provider, PrefetchingIterator) else contextlib.nullcontext()
    cuda = [torch.cuda.current_device()] if str(trainer.cfg.device).startswith("cuda") else []
    trainer.sae.eval()
    try:
        with paused, torch.random.fork_rng(devices=cuda):
            # no data provider: the evaluator would pause it again, and its lock is not reentrant
            grouped = trainer.evaluator(trainer.sae, None, trainer.activation_scaler)
    finally:
        trainer.sae.train()
    flat = flatten(grouped)
    record: dict[str, Any] = {key: float(flat[key]) for key in EVAL_METRICS if key in flat}
    record |= sparsity_record(trainer)
    return record, grouped
