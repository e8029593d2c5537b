"""Run identity and checkpoint bookkeeping: which checkpoints belong to a run, and which are whole.

SAE-Lens writes a checkpoint into ``checkpoints/<run id>/<tokens>/`` (``final_<tokens>`` at the end); after its last
file we add ``checkpoint_complete.json``, listing the files with their sizes and digests. A run resumes only from a
checkpoint whose files all match its marker.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from container_src import records
from container_src.config import TrainConfig

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
# Fields that change how a run is recorded or how fast it goes, not what it trains: a restart that changes them
# still resumes the same run.
_NOT_IN_RUN_ID = {
    "log_every",
    "eval_every_n_wandb_logs",
    "eval_batches",
    "control_eval_split",
    "log_to_wandb",
    "wandb_project",
    "wandb_entity",
    "run_name",
    "device",
    "compile_sae",
    "data_worker",
    "prefetch_llm_batches",
    "lean_step",
    "fused_lm",
    "n_checkpoints",
}


def trained_fields(cfg: TrainConfig) -> dict[str, Any]:
    """The settings that decide what a run trains: those that go into its run id."""
    return {k: v for k, v in asdict(cfg).items() if k not in _NOT_IN_RUN_ID}


def run_id(cfg: TrainConfig, data_identity: str) -> str:
    """A stable id from what is trained (config and data): a spot restart finds its own checkpoints and W&B run,
    and a changed config or a new prompt export starts a new run even under the same ``run_name``."""
    trained = trained_fields(cfg)
    trained["data"] = data_identity
    digest = hashlib.sha256(json.dumps(trained, sort_keys=True).encode()).hexdigest()[:10]
    return f"{run_prefix(cfg)}-{digest}"


def run_prefix(cfg: TrainConfig) -> str:
    """The readable start of the run id: ``run_name``, or the architecture and k."""
    prefix = cfg.run_name or f"{cfg.architecture}-k{cfg.k}"
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in prefix)[:50]


def checkpoint_tokens(path: Path) -> int:
    return int(path.name.removeprefix("final_"))


def clear_marker(path: Path) -> None:
    """Called before a checkpoint folder is (re)written, so a torn rewrite is never taken for whole."""
    (path / COMPLETE_MARKER).unlink(missing_ok=True)


def _digest(path: Path) -> str:
    """sha256 of a file up to 4 MiB, else of 64 evenly spaced 64 KiB pieces of it: two attempts' weights or optimizer
    state differ all through, so the pieces tell them apart, for 4 MiB read per file instead of gigabytes."""
    piece, pieces = 1 << 16, 64
    size = path.stat().st_size
    digest = hashlib.sha256()
    with path.open("rb") as f:
        if size <= piece * pieces:
            digest.update(f.read())
        else:
            stride = (size - piece) // (pieces - 1)
            for i in range(pieces):
                f.seek(i * stride)
                digest.update(f.read(piece))
    return digest.hexdigest()


def _file_record(path: Path) -> dict[str, Any]:
    return {"size": path.stat().st_size, "digest": _digest(path)}


def write_marker(path: Path, step: int, tokens: int) -> None:
    """Close a written checkpoint. The digests matter where a folder is written twice: a restart that resumed from an
    earlier checkpoint writes the same ``<tokens>`` again, and files of an abandoned attempt (in S3, say) have the
    same sizes."""
    files = {p.name: _file_record(p) for p in sorted(path.iterdir()) if p.is_file() and p.name != COMPLETE_MARKER}
    records.write_json(path / COMPLETE_MARKER, {"step": step, "tokens": tokens, "files": files})


def read_marker(path: Path) -> dict[str, Any] | None:
    """The marker of a whole checkpoint, or None (no marker, unreadable, or a file missing or not the one written):
    a kill during the write, or an S3 sync that brought the small marker down before the large weights, leaves a
    checkpoint that is skipped."""
    try:
        marker = json.loads((path / COMPLETE_MARKER).read_text())
        for name, written in marker["files"].items():
            # the size first: a torn or foreign file is then skipped without reading it
            if (path / name).stat().st_size != written["size"] or _digest(path / name) != written["digest"]:
                return None
        return marker
    except (OSError, ValueError, KeyError, AttributeError):
        return None


def precision_change(path: Path, autocast: bool) -> str | None:
    """What changes when the checkpoint at ``path`` resumes with or without bf16 autocast (``device`` and hardware
    keep the run id, and precision=auto follows the hardware), or None when nothing does or it cannot tell."""
    try:
        before = json.loads((path / "runner_cfg.json").read_text())["autocast"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if bool(before) == autocast:
        return None
    name = {True: "bf16 autocast", False: "fp32"}
    return f"the checkpoint was trained with {name[bool(before)]}; this run goes on in {name[autocast]}"


def latest_checkpoint(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest whole checkpoint under ``run_dir`` and its marker; incomplete ones are reported and skipped."""
    if not run_dir.is_dir():
        return None
    candidates = [p for p in run_dir.iterdir() if p.is_dir() and p.name.removeprefix("final_").isdigit()]
    for path in sorted(candidates, key=checkpoint_tokens, reverse=True):
        marker = read_marker(path)
        if marker is not None:
            return path, marker
        logger.warning("skipping incomplete checkpoint %s", path)
    return None
