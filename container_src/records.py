"""The run's own records: the step metric log, ``[metric]`` lines, and JSON files written atomically.

Metric lines look like ``[metric] step=100 tokens=409600 loss=0.0123 explained_variance=0.81 …`` so a SageMaker
MetricDefinitions regex such as ``explained_variance=([-+.0-9eE]+)`` can read them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# SAE-Lens log-dict keys -> our short names, in the order they are printed.
STEP_METRICS = {
    "losses/overall_loss": "loss",
    "losses/mse_loss": "mse_loss",
    "losses/auxiliary_reconstruction_loss": "aux_loss",
    "metrics/explained_variance": "explained_variance",
    "metrics/l0": "l0",
    "sparsity/dead_features": "dead_features",
    "details/current_learning_rate": "lr",
}


def write_text(path: Path, text: str) -> None:
    """Write so a reader never sees half a file, and a kill never leaves an emptied one: a temp file in the same
    folder, then a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def replace_dir(staging: Path, target: Path) -> None:
    """Put the finished folder ``staging`` at ``target``, so a reader finds the old folder or the new one, whole:
    an old ``target`` is moved aside, ``staging`` renamed in, and only then the old one deleted. Both must be on one
    file system. If the rename fails, the old folder goes back."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    had_old = target.exists()
    if had_old:
        target.rename(old)
    try:
        staging.rename(target)
    except BaseException:
        if had_old:
            old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def format_metric_line(fields: Mapping[str, Any]) -> str:
    parts = []
    for key, value in fields.items():
        if isinstance(value, float):
            value = "nan" if math.isnan(value) else f"{value:.6g}"
        parts.append(f"{key}={value}")
    return "[metric] " + " ".join(parts)


def emit_metrics(fields: Mapping[str, Any]) -> None:
    """One metric line on the log (stdout in a job, so CloudWatch and MetricDefinitions see it)."""
    logger.info(format_metric_line(fields))


class MetricLog:
    """Step metrics as JSON lines in a file that survives restarts (it lives beside the checkpoints)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step``: a resumed run redoes them from its checkpoint."""
        kept = [r for r in self.read() if r["step"] <= step]
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def append(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a kill; the rest of the log is still good
        return records

    def record_step(
        self, step: int, tokens: int, log_dict: Mapping[str, Any], extra: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Append the step's record (``extra``: an evaluation's figures) and put its numbers on a metric line."""
        record: dict[str, Any] = {"step": step, "tokens": tokens}
        record.update({short: float(log_dict[key]) for key, short in STEP_METRICS.items() if key in log_dict})
        record.update(extra or {})
        self.append(record)
        emit_metrics({key: value for key, value in record.items() if isinstance(value, int | float)})
        return record
