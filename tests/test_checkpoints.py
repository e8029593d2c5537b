"""Run identity and which checkpoints count as whole."""

from __future__ import annotations

import json
from pathlib import Path

from container_src.checkpoints import COMPLETE_MARKER, latest_checkpoint, precision_change, run_id, write_marker
from container_src.config import TrainConfig


def test_run_id_follows_what_is_trained() -> None:
    base = TrainConfig(run_name="exp1")
    assert run_id(base, "data-a") == run_id(TrainConfig(run_name="exp1", log_every=7), "data-a")
    assert run_id(base, "data-a").startswith("exp1-")
    # the same name with another config, or another prompt export, is another run
    assert run_id(base, "data-a") != run_id(TrainConfig(run_name="exp1", k=4), "data-a")
    assert run_id(base, "data-a") != run_id(base, "data-b")
    assert run_id(TrainConfig(run_name="a/b c"), "d").startswith("a-b-c-")


def _checkpoint(run_dir: Path, name: str, weights: bytes = b"w" * 100) -> Path:
    path = run_dir / name
    path.mkdir(parents=True)
    (path / "sae_weights.safetensors").write_bytes(weights)
    (path / "trainer_state.pt").write_bytes(b"state")
    write_marker(path, step=int(name.removeprefix("final_")) // 256, tokens=int(name.removeprefix("final_")))
    return path


def test_latest_whole_checkpoint_wins(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "none") is None
    _checkpoint(tmp_path, "2560")
    newest = _checkpoint(tmp_path, "5120")
    (tmp_path / "7680").mkdir()  # killed before the marker was written
    found = latest_checkpoint(tmp_path)
    assert found is not None and found[0] == newest and found[1]["step"] == 20
    final = _checkpoint(tmp_path, "final_10240")
    found = latest_checkpoint(tmp_path)
    assert found is not None and found[0] == final


def test_a_checkpoint_whose_files_do_not_match_its_marker_is_skipped(tmp_path: Path) -> None:
    older = _checkpoint(tmp_path, "2560")
    newer = _checkpoint(tmp_path, "5120")
    # as if an S3 sync brought the marker before the whole weights file
    (newer / "sae_weights.safetensors").write_bytes(b"w" * 10)
    found = latest_checkpoint(tmp_path)
    assert found is not None and found[0] == older
    (older / COMPLETE_MARKER).write_text("{not json")
    assert latest_checkpoint(tmp_path) is None
    marker = json.loads((newer / COMPLETE_MARKER).read_text())
    assert marker["files"] == {"sae_weights.safetensors": 100, "trainer_state.pt": 5}


def test_a_precision_change_on_resume_is_named(tmp_path: Path) -> None:
    """device and the hardware keep the run id, and precision=auto follows the hardware: a checkpoint made with
    bf16 autocast on a GPU can resume in fp32 (a T4, a CPU), which the run must say."""
    (tmp_path / "runner_cfg.json").write_text(json.dumps({"autocast": True, "device": "cuda"}))
    assert precision_change(tmp_path, autocast=True) is None
    change = precision_change(tmp_path, autocast=False)
    assert change == "the checkpoint was trained with bf16 autocast; this run goes on in fp32"
    (tmp_path / "runner_cfg.json").write_text("{}")  # an older or foreign checkpoint: nothing to say
    assert precision_change(tmp_path, autocast=False) is None
