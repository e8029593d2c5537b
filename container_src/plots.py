"""Training curves as PNG, drawn from the run's own metric log (no W&B needed)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# file stem -> (record key, y label, log scale)
CURVES = {
    "loss": ("loss", "training loss (MSE + aux)", True),
    "explained_variance": ("explained_variance", "explained variance (batch, centred)", False),
    "l0": ("l0", "L0 (active latents per token)", False),
    "dead_features": ("dead_features", "dead features", False),
    "learning_rate": ("lr", "learning rate", False),
}


def plot_curves(records: Sequence[dict[str, Any]], out_dir: Path, title: str = "") -> list[Path]:
    """One PNG per curve in ``out_dir``; curves with no points are skipped. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stem, (key, label, log_scale) in CURVES.items():
        points = [(r["step"], r[key]) for r in records if key in r]
        if not points:
            continue
        steps, values = zip(*points, strict=True)
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.plot(steps, values, marker="." if len(points) < 30 else None)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        if log_scale and min(values) > 0:
            ax.set_yscale("log")
        ax.set_title(title or label, fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{stem}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    logger.info("wrote %d training curves to %s", len(written), out_dir)
    return written
