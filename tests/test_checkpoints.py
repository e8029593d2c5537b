"""Run identity and which checkpoints count as whole."""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from container_src import checkpoints, records
from container_src.checkpoints import COMPLETE_MARKER, latest_checkpoint, precision_change, run_id, write_marker
from container_src.config import TrainConfig


def test_run_id_follows_what_is_trained() -> None:
    """docs/train.md: "plus a hash of everything that shapes the result"."""
    base = TrainConfig(run_name="exp1")
    assert run_id(base, "data-a") == run_id(TrainConfig(run_name="exp1", log_every=7), "data-a")
    assert run_id(base, "data-a").startswith("exp1-")
    # the same name with another config, or another prompt export, is another run
    assert run_id(base, "data-a") != run_id(TrainConfig(run_name="exp1", k=4), "data-a")
    assert run_id(base, "data-a") != run_id(base, "data-b")
    # other prompts held out are another training set
    assert run_id(base, "data-a") != run_id(TrainConfig(run_name="exp1", heldout_prompt_fraction=0.2), "data-a")
    assert run_id(TrainConfig(run_name="a/b c"), "d").startswith("a-b-c-")


def _checkpoint(run_dir: Path, name: str, weights: bytes = b"w" * 100) -> Path:
    path = run_dir / name
    path.mkdir(parents=True)
    (path / "sae_weights.safetensors").write_bytes(weights)
    (path / "trainer_state.pt").write_bytes(b"state")
    write_marker(path, step=int(name.removeprefix("final_")) // 256, tokens=int(name.removeprefix("final_")))
    return path


def test_latest_whole_checkpoint_wins(tmp_path: Path) -> None:
    """docs/train.md: "**resumes from the newest whole one** instead of starting over"."""
    assert latest_checkpoint(tmp_path / "none") is None
    _checkpoint(tmp_path, "2560")
    newest = _checkpoint(tmp_path, "5120")
    (tmp_path / "7680").mkdir()  # killed before the marker was written
    found = latest_checkpoint(tmp_path)
    assert found is not None and found[0] == newest and found[1]["step"] == 20
    final = _checkpoint(tmp_path, "final_10240")
    found = latest_checkpoint(tmp_path)
    assert found is not None and found[0] == final


def test_a_checkpoint_whose_files_do_not_match_its_marker_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/train.md: "files don't match its marker (a kill mid-write, an S3 sync still under way"."""
    older = _checkpoint(tmp_path, "2560")
    newer = _checkpoint(tmp_path, "5120")
    # as if an S3 sync brought the marker before the whole weights file
    (newer / "sae_weights.safetensors").write_bytes(b"w" * 10)
    read: list[str] = []
    digest = checkpoints._digest
    monkeypatch.setattr(checkpoints, "_digest", lambda path: read.append(path.name) or digest(path))
    found = latest_checkpoint(tmp_path)
    assert found is not None and found[0] == older
    assert read == ["sae_weights.safetensors", "trainer_state.pt"], read  # the older ones; the torn file is not read
    monkeypatch.undo()
    (older / COMPLETE_MARKER).write_text("{not json")
    assert latest_checkpoint(tmp_path) is None
    marker = json.loads((newer / COMPLETE_MARKER).read_text())
    assert {name: f["size"] for name, f in marker["files"].items()} == {
        "sae_weights.safetensors": 100,
        "trainer_state.pt": 5,
    }


def test_a_file_of_the_right_size_from_another_attempt_is_caught(tmp_path: Path) -> None:
    """docs/train.md: "or files of an abandoned attempt at the same step) is skipped".
    A restart that resumed from an earlier checkpoint writes the same folder again; an S3 copy of the abandoned
    attempt's weights has the same size as the new ones, and must not pass for them."""
    rng = random.Random(0)
    older = _checkpoint(tmp_path, "2560")
    for size in (100, 9 << 20):  # read whole, and read in pieces
        first, second = rng.randbytes(size), rng.randbytes(size)
        newer = tmp_path / "5120"
        shutil.rmtree(newer, ignore_errors=True)
        _checkpoint(tmp_path, "5120", weights=second)
        found = latest_checkpoint(tmp_path)
        assert found is not None and found[0] == newer
        (newer / "sae_weights.safetensors").write_bytes(first)  # the other attempt's file, same size
        found = latest_checkpoint(tmp_path)
        assert found is not None and found[0] == older, size


def test_a_precision_change_on_resume_is_named(tmp_path: Path) -> None:
    """docs/train.md: "goes on in fp32 on a T4 or a CPU, and says so in a warning".
    device and the hardware keep the run id, and precision=auto follows the hardware: a checkpoint made with
    bf16 autocast on a GPU can resume in fp32 (a T4, a CPU), which the run must say."""
    (tmp_path / "runner_cfg.json").write_text(json.dumps({"autocast": True, "device": "cuda"}))
    assert precision_change(tmp_path, autocast=True) is None
    change = precision_change(tmp_path, autocast=False)
    assert change == "the checkpoint was trained with bf16 autocast; this run goes on in fp32"
    (tmp_path / "runner_cfg.json").write_text("{}")  # an older or foreign checkpoint: nothing to say
    assert precision_change(tmp_path, autocast=False) is None


def test_a_kill_while_the_step_log_is_cut_back_loses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/train.md: "while `training_log.jsonl` and the plots have the resumed run's".
    A resume cuts the step log back to its checkpoint's step. The log is replaced whole, never emptied first."""
    from container_src.records import MetricLog

    log = MetricLog(tmp_path / "training_log.jsonl")
    for step in range(1, 6):
        log.append({"step": step, "tokens": 256 * step})
    before = log.path.read_text()

    def killed(self: Path, target: Path) -> Path:
        raise KeyboardInterrupt  # injected: the process is stopped before the new log replaces the old

    monkeypatch.setattr(Path, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        log.truncate_after(3)
    assert log.path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["training_log.jsonl"]  # no temporary file left
    monkeypatch.undo()
    log.truncate_after(3)
    assert [r["step"] for r in log.read()] == [1, 2, 3]


# docs/train.md: "Keys that only change speed, logging or checkpoint count (...) keep the run id"; run_name is the
# id's readable start (checked above), not part of its hash.
_KEEP_THE_RUN_ID = {
    *("device", "compile_sae", "fused_lm", "lean_step", "data_worker", "prefetch_llm_batches"),  # speed
    *("n_checkpoints", "log_every", "eval_every_n_wandb_logs", "eval_batches", "control_eval_split"),  # logging
    *("log_to_wandb", "wandb_project", "wandb_entity", "run_name"),  # the W&B keys; the readable start
}


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "-other"
    return "set" if value is None else [*value, "other"]


def test_train_md_every_key_that_shapes_the_result_makes_a_new_run_and_the_others_keep_the_run_id() -> None:
    """docs/train.md: "Change a key that shapes the result, or the prompts, and it is a new run. Keys that only change
    speed, logging or checkpoint count ... keep the run id". Every key of TrainConfig, one at a time."""
    base = TrainConfig()
    reference = run_id(base, "data").split("-")[-1]  # the hash; run_name changes only the readable start
    kept, changed = set(), set()
    for field in dataclasses.fields(TrainConfig):
        other = copy.copy(base)
        object.__setattr__(other, field.name, _changed(getattr(base, field.name)))
        (kept if run_id(other, "data").split("-")[-1] == reference else changed).add(field.name)
    assert kept == _KEEP_THE_RUN_ID
    assert changed == {f.name for f in dataclasses.fields(TrainConfig)} - _KEEP_THE_RUN_ID
    assert len(changed) > 20  # every training key is among them, each checked by itself


def test_train_md_resumes_from_the_newest_whole_one_by_tokens_not_by_name(tmp_path: Path) -> None:
    """docs/train.md: "checkpoints and **resumes from the newest whole one**": newest by tokens (10240 after 7680,
    though "7680" sorts after "10240" as text), and a stray file named like a checkpoint is no checkpoint."""
    _checkpoint(tmp_path, "7680")
    newest = _checkpoint(tmp_path, "10240")
    (tmp_path / "20480").write_text("a file, not a checkpoint folder")
    found = latest_checkpoint(tmp_path)
    assert found is not None and found[0] == newest and found[1]["tokens"] == 10240


def test_docs_train_each_checkpoint_closed_by_its_marker_cleared_first_written_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/train.md: checkpoints are "each closed by `checkpoint_complete.json`, which lists its files", and "a
    checkpoint whose files don't match its marker (a kill mid-write ...) is skipped". So the runner clears an old
    marker before SAE-Lens (re)writes a folder, and writes the marker after it. SAE-Lens's trainer and its save are
    stand-ins here (a real one needs a training run, test_train.py); the order around them is the runner's own."""
    from types import SimpleNamespace

    from sae_lens import LanguageModelSAETrainingRunner

    from container_src.interrupt import StopRequest
    from container_src.runner import Runner

    folder = tmp_path / "512"
    folder.mkdir()
    (folder / "sae_weights.safetensors").write_bytes(b"an earlier attempt's weights")
    write_marker(folder, step=2, tokens=512)  # that attempt was whole
    seen: list[bool] = []

    def sae_lens_save(checkpoint_name: str) -> None:  # the trainer's save: the marker must be gone by now
        seen.append((tmp_path / checkpoint_name / COMPLETE_MARKER).exists())
        (tmp_path / checkpoint_name).mkdir(exist_ok=True)
        (tmp_path / checkpoint_name / "sae_weights.safetensors").write_bytes(b"this attempt's, torn")

    logger = SimpleNamespace(eval_every_n_wandb_logs=1)
    cfg = SimpleNamespace(
        checkpoint_path=str(tmp_path), total_training_samples=1024, train_batch_size_samples=256, logger=logger
    )
    trainer = SimpleNamespace(
        step=lambda batch: batch,
        save_checkpoint=sae_lens_save,
        cfg=cfg,
        n_training_samples=512,
        checkpoint_thresholds=[512],
        optimizer=torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))]),
    )
    # a fit that saves a new checkpoint (no folder yet, so no marker to clear), then rewrites the one at 512 tokens
    # and is killed there, before the runner's save_checkpoint closes the folder
    trainer.fit = lambda: [trainer.save_checkpoint("256"), trainer.save_checkpoint("512")]
    runner = object.__new__(Runner)
    runner.lean_step, runner.log_every = False, 1
    runner.metric_log = records.MetricLog(tmp_path / "log.jsonl")  # no step runs: nothing is logged
    monkeypatch.setattr(StopRequest, "phase", StopRequest.phase)  # set back after the test
    runner.run_trainer_with_interruption_handling(trainer)
    assert seen == [False, False]
    assert latest_checkpoint(tmp_path) is None  # the torn rewrite is not taken for whole

    def runner_save(self: Any, checkpoint_path: Path | None) -> None:  # SAE-Lens's runner writes the rest first
        assert checkpoint_path is not None and not (checkpoint_path / COMPLETE_MARKER).exists()
        (checkpoint_path / "sae_weights.safetensors").write_bytes(b"this attempt's weights")
        (checkpoint_path / "activations_store_state.safetensors").write_bytes(b"position")

    monkeypatch.setattr(LanguageModelSAETrainingRunner, "save_checkpoint", runner_save)
    runner.trainer = trainer
    runner.save_checkpoint(folder)
    found = latest_checkpoint(tmp_path)
    assert found is not None and found[0] == folder
    marker = found[1]
    assert (marker["step"], marker["tokens"]) == (2, 512)
    assert sorted(marker["files"]) == ["activations_store_state.safetensors", "sae_weights.safetensors"]
    assert marker["files"]["sae_weights.safetensors"]["size"] == len(b"this attempt's weights")


def test_docs_train_marker_digest_whole_up_to_4_mib_else_64_evenly_spaced_64_kib_pieces(tmp_path: Path) -> None:
    """docs/train.md: the marker lists each file's size and "a digest of their content (whole for files up to 4 MiB,
    64 evenly spaced pieces of larger ones)". Each digest recomputed here from that sentence alone."""
    import hashlib

    piece, mib = 64 * 1024, 1024 * 1024
    rng = random.Random(0)
    sizes = {
        "small.bin": 100 * 1024,
        "exactly_4_mib.bin": 4 * mib,
        "one_byte_more.bin": 4 * mib + 1,
        "larger.bin": 5 * mib + 12345,
    }
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(rng.randbytes(size))
    write_marker(tmp_path, step=1, tokens=256)
    files = json.loads((tmp_path / COMPLETE_MARKER).read_text())["files"]

    def expected(name: str) -> str:
        data = (tmp_path / name).read_bytes()
        if len(data) <= 4 * mib:
            return hashlib.sha256(data).hexdigest()
        stride = (len(data) - piece) // 63  # the first piece at 0, the last ending at the file's end (or just before)
        return hashlib.sha256(b"".join(data[i * stride : i * stride + piece] for i in range(64))).hexdigest()

    for name, size in sizes.items():
        assert files[name] == {"size": size, "digest": expected(name)}, name
    # a changed byte inside a sampled piece of a large file makes the checkpoint torn
    data = bytearray((tmp_path / "larger.bin").read_bytes())
    data[((len(data) - piece) // 63) * 40 + 7] ^= 1
    (tmp_path / "larger.bin").write_bytes(bytes(data))
    assert checkpoints.read_marker(tmp_path) is None
