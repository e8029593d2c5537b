"""Training graphs as PNG, drawn from the run's own metric log (no W&B needed): the step records' curves, the
evaluations' curves and the feature sparsity histogram of the last evaluation."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# file stem -> (record key, y label, log scale); step records every log_every steps
CURVES = {
    "loss": ("loss", "overall loss (MSE + aux), training batch", True),
    "mse_loss": ("mse_loss", "MSE loss, training batch", True),
    "aux_loss": ("aux_loss", "auxiliary loss (dead latents), training batch", False),
    "explained_variance": ("explained_variance", "explained variance (training batch, centred)", False),
    "l0": ("l0", "L0 (active latents per token)", False),
    "dead_features": ("dead_features", "dead features", False),
    "learning_rate": ("lr", "learning rate", False),
}
# in the records of the steps with an evaluation, every eval_every_n_wandb_logs metric lines
EVAL_CURVES = {
    "ce_loss_score": ("ce_loss_score", "CE-loss score (evaluation stream: held-out stories, training prompts)", False),
    "mean_log10_feature_sparsity": (
        "mean_log10_feature_sparsity",
        "mean log10 feature sparsity (sparsity window)",
        False,
    ),
}
HISTOGRAM = "feature_sparsity_histogram"
ALL_PLOTS = (*CURVES, *EVAL_CURVES, HISTOGRAM)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _curve(records: Sequence[dict[str, Any]], key: str, label: str, log_scale: bool, title: str, path: Path) -> Any:
    import matplotlib.pyplot as plt

    points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    if not points:
        return None
    steps, values = zip(*points, strict=True)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, values, marker="." if len(points) < 30 else None)
    ax.set_xlabel("step")
    ax.set_ylabel(label, fontsize=8)
    if log_scale and min(values) > 0:
        ax.set_yscale("log")
    ax.set_title(f"{label}\n{title}" if title else label, fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _histogram(records: Sequence[dict[str, Any]], title: str, path: Path) -> Path | None:
    import matplotlib.pyplot as plt

    last = next((r for r in reversed(records) if HISTOGRAM in r), None)
    if last is None:
        return None
    edges, counts = last[HISTOGRAM]["log10_edges"], last[HISTOGRAM]["latents"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.bar(edges[:-1], counts, width=[b - a for a, b in itertools.pairwise(edges)], align="edge")
    ax.set_xlabel("log10 firing frequency (share of training tokens; never fired at -10)")
    ax.set_ylabel("latents")
    window = last.get("sparsity_window_tokens")
    heading = f"feature sparsity at step {last['step']} (window of {window} training tokens)"
    ax.set_title(f"{heading}\n{title}" if title else heading, fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_curves(records: Sequence[dict[str, Any]], out_dir: Path, title: str = "") -> list[Path]:
    """One PNG per graph of ``ALL_PLOTS`` in ``out_dir``; graphs with no points are skipped. Returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        _curve(records, key, label, log_scale, title, out_dir / f"{stem}.png")
        for stem, (key, label, log_scale) in (CURVES | EVAL_CURVES).items()
    ]
    written.append(_histogram(records, title, out_dir / f"{HISTOGRAM}.png"))
    done = [p for p in written if p is not None]
    logger.info("wrote %d training graphs to %s", len(done), out_dir)
    return done
