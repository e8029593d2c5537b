"""The entry point's contract, pinned where tests/test_entry.py leaves a one-line change unseen: which mode runs,
what the failure file and the log say, and what each mode is told. The modes themselves are stand-ins here (what
they do is other tests' business), so no test trains or renders."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import container_src.__main__
from container_src.__main__ import main
from container_src.config import ConfigError, TrainConfig, VizConfig
from tests.conftest import write_hyperparameters


def _recording(seen: list[Any], what: Callable[[Any], Any], outcome: BaseException | None = None) -> Any:
    """A stand-in mode that records ``what(resolved)`` and then raises ``outcome`` (if any)."""

    def run(resolved: Any, _paths: Any) -> None:
        seen.append(what(resolved))
        if outcome is not None:
            raise outcome

    return run


def _failure(base: Path) -> str:
    return (base / "output" / "failure").read_text()


def test_an_unknown_mode_names_the_modes_there_are(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README: "with a message that names the key or the channel".
    The whole reason: the mode asked for and every mode there is; an earlier SAE is left alone (the mode is not
    train)."""
    earlier_sae = tmp_path / "model" / "cfg.json"
    earlier_sae.parent.mkdir(parents=True)
    earlier_sae.write_text("{}")
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    assert main(["tune"]) == 2
    assert _failure(tmp_path) == "tune failed: mode='tune': unknown mode; available: train, viz, bench\n"
    assert earlier_sae.read_text() == "{}"


@pytest.mark.parametrize("argv", [["--k", "eight"], ["-k", "eight"]])
def test_a_flag_first_runs_train(argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/container.md: "A `mode` hyperparameter overrides the mode on the command line".
    Without a mode on the command line (a flag first) the mode is train, and the flag is train's."""
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    seen: list[str] = []
    monkeypatch.setitem(container_src.__main__.MODES, "viz", (VizConfig, _recording(seen, lambda r: r.mode)))
    monkeypatch.setitem(container_src.__main__.MODES, "bench", (VizConfig, _recording(seen, lambda r: r.mode)))
    status = main(argv)
    if argv[0] == "--k":
        assert status == 2
        assert _failure(tmp_path).startswith("train failed: k='eight'")
    else:  # "-k" is a flag too, never a mode: parse_cli refuses it as train's bad flag
        assert status == 2 and _failure(tmp_path).startswith("train failed: ")
    assert seen == []


@pytest.mark.parametrize(
    ("outcome", "status", "reason"),
    [
        (ConfigError("k=0: must\n   be positive"), 2, "train failed: k=0: must be positive\n"),
        (RuntimeError("disk\nfull"), 1, "train failed: RuntimeError: disk full\n"),
    ],
    ids=["configuration", "anything else"],
)
def test_readme_the_failure_file_is_one_paragraph_naming_the_mode(
    outcome: BaseException,
    status: int,
    reason: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """README: "on any failure, one paragraph on why (SageMaker's FailureReason)".
    The whole file: the mode, then a configuration problem's own message (it names the key), or any other error's
    type and message; on one line. The log (stdout, which the job's log shows) carries the error too, with its level,
    and the traceback of an unexpected one."""
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    monkeypatch.setitem(container_src.__main__.MODES, "train", (TrainConfig, _recording([], lambda r: r, outcome)))
    assert main(["train", "--log_to_wandb", "false"]) == status
    assert _failure(tmp_path) == reason
    out = capsys.readouterr().out
    if status == 2:
        assert "ERROR container_src: k=0: must\n   be positive" in out and "Traceback" not in out
    else:
        assert "ERROR container_src: train failed\nTraceback" in out and "RuntimeError: disk\nfull" in out


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [(KeyboardInterrupt(), "viz failed: KeyboardInterrupt:\n"), (SystemExit(3), "viz failed: SystemExit: 3\n")],
    ids=["Ctrl-C", "exit"],
)
def test_readme_ctrl_c_in_a_mode_without_a_handler_still_writes_the_failure_file(
    outcome: BaseException, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: "on any failure, one paragraph on why (SageMaker's FailureReason)".
    A KeyboardInterrupt or SystemExit passes on (Python then ends with its own status: 130 after Ctrl-C), after the
    failure file says what stopped the mode."""
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    monkeypatch.setitem(container_src.__main__.MODES, "viz", (VizConfig, _recording([], lambda r: r, outcome)))
    with pytest.raises(type(outcome)) as raised:
        main(["viz"])
    assert raised.value is outcome
    assert _failure(tmp_path) == reason


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [False, True])
def test_progress_bars_are_off_when_stdout_is_not_a_terminal(
    terminal: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pins: progress bars are off (TQDM_DISABLE=1) when stdout is not a terminal, as in a job, where each update
    would be a new line of the log; on a terminal they are left on."""
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    if terminal:
        monkeypatch.setattr("sys.stdout", _Terminal())
    seen: list[str | None] = []
    runner = _recording(seen, lambda _r: os.environ.get("TQDM_DISABLE"))
    monkeypatch.setitem(container_src.__main__.MODES, "viz", (VizConfig, runner))
    assert main(["viz"]) == 0
    assert seen == [None if terminal else "1"]


@pytest.mark.parametrize(
    ("argv", "hyperparameters", "in_job", "runs", "warned"),
    [
        (["train"], {"mode": "viz"}, False, "viz", True),
        (["train"], {"mode": "viz"}, True, "viz", False),
        (["viz"], {"mode": "viz"}, False, "viz", False),
        (["viz"], {}, False, "viz", False),
        (["train", "--mode", "bench"], {"mode": "viz"}, False, "bench", True),
    ],
    ids=["local, overridden", "in a job", "the same mode", "no override", "--mode beats the hyperparameter"],
)
def test_docs_container_the_mode_hyperparameter_wins_with_a_warning_outside_a_job(
    argv: list[str],
    hyperparameters: dict[str, str],
    in_job: bool,
    runs: str,
    warned: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docs/container.md: "A `mode` hyperparameter overrides the mode on the command line (outside a job, with a
    warning)". The mode that runs is told its own name (resolved_config.json records it); the warning only when the
    mode differs from the one typed, and never in a job (SageMaker always types train)."""
    write_hyperparameters(tmp_path, hyperparameters)
    if in_job:
        (tmp_path / "input" / "config" / "resourceconfig.json").write_text('{"current_instance_type": "ml.g5.xlarge"}')
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    seen: list[tuple[str, str]] = []
    for mode, schema in (("viz", VizConfig), ("bench", container_src.__main__.MODES["bench"][0])):
        runner = _recording(seen, lambda r, mode=mode: (mode, r.to_json()["mode"]))
        monkeypatch.setitem(container_src.__main__.MODES, mode, (schema, runner))
    assert main(argv) == 0
    assert seen == [(runs, runs)]
    out = capsys.readouterr().out
    assert f"INFO container_src: mode {runs}, base dir {tmp_path}" in out  # the log opens with what runs where
    assert ("from the hyperparameters or --mode, not" in out) == warned
    if warned:
        assert f"mode {runs} from the hyperparameters or --mode, not {argv[0]}" in out
