"""The entry point on bad input: a non-zero exit, a failure file that names the problem, no SAE in model/.

Problems with the configuration or the channels must be found before the model is loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from datasets import Dataset

import container_src.__main__
import container_src.model
from container_src.__main__ import main
from container_src.config import ConfigError, TrainConfig, VizConfig
from container_src.interrupt import Interrupted
from tests.conftest import ROOT, TINY_RUN, run_container, write_hyperparameters


def _no_prompts(base: Path) -> None:
    shutil.rmtree(base / "input" / "data" / "prompts")


def _prompts_without_text(base: Path) -> None:
    _no_prompts(base)
    Dataset.from_dict({"prompt": ["q"], "answer": ["a"]}).save_to_disk(str(base / "input" / "data" / "prompts"))


def _empty_prompts(base: Path) -> None:
    _no_prompts(base)
    Dataset.from_dict({"text": []}).save_to_disk(str(base / "input" / "data" / "prompts"))


def _empty_prompts_folder(base: Path) -> None:
    """What docker compose mounts when data/prompts does not exist: an empty folder."""
    _no_prompts(base)
    (base / "input" / "data" / "prompts").mkdir()


def _empty_stories_channel(base: Path) -> None:
    stories = base / "input" / "data" / "control"
    stories.unlink()
    stories.mkdir()


def _stories_without_validation_split(base: Path) -> None:
    stories = base / "input" / "data" / "control"
    stories.unlink()
    Dataset.from_dict({"text": ["Once upon a time."] * 50}).save_to_disk(str(stories))


def _model_channel_without_the_model(base: Path) -> None:
    model = base / "input" / "data" / "model"
    model.unlink()
    (model / "hub" / "models--someone--else" / "refs").mkdir(parents=True)


def _model_channel_without_stories_channel(base: Path) -> None:
    (base / "input" / "data" / "control").unlink()


def _hyperparameters_not_json(base: Path) -> None:
    (base / "input" / "config" / "hyperparameters.json").write_text("{'k': 8")


CASES: list[tuple[str, dict[str, str], Callable[[Path], None] | None, list[str]]] = [
    ("unknown key", {"hook_layer": "2"}, None, ["hook_layer", "hook_name"]),
    ("wrong type", {"k": "eight"}, None, ["k='eight'", "int"]),
    ("impossible combination", {"lr_warm_up_fraction": "0.9", "lr_decay_fraction": "0.2"}, None, ["exceed"]),
    ("secret as hyperparameter", {"wandb_api_key": "x" * 40}, None, ["WANDB_SECRET_ID"]),
    ("prompt_ratio without prompts", {}, _no_prompts, ["prompt_ratio=0.1", "prompts channel", "prompt_ratio=0"]),
    ("prompts without text", {}, _prompts_without_text, ["channel prompts", "no text column", "answer, prompt"]),
    ("empty prompts", {}, _empty_prompts, ["channel prompts", "0 rows"]),
    ("empty prompts folder", {}, _empty_prompts_folder, ["prompt_ratio=0.1", "prompts is missing or empty"]),
    ("empty channel folder", {}, _empty_stories_channel, ["channel control", "is empty; put the data in it"]),
    (
        "stories without the evaluation's split",
        {},
        _stories_without_validation_split,
        ["channel control", "no 'validation' split", "control_eval_split='train'"],
    ),
    ("model channel lacks the model", {}, _model_channel_without_the_model, ["channel model", "models--someone--else"]),
    (
        "hub off but stories from the hub",
        {},
        _model_channel_without_stories_channel,
        ["turns the Hugging Face hub off", "channel `control`"],
    ),
]


@pytest.mark.parametrize(("hyperparameters", "breakage", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_before_the_model_loads(
    opt_ml: Path,
    monkeypatch: pytest.MonkeyPatch,
    hyperparameters: dict[str, str],
    breakage: Callable[[Path], None] | None,
    expected: list[str],
) -> None:
    """README: "It checks the configuration, the channels and the datasets before loading anything heavy"."""
    earlier_sae = opt_ml / "model" / "cfg.json"  # a successful earlier run in the same tree
    earlier_sae.parent.mkdir(parents=True)
    earlier_sae.write_text("{}")
    write_hyperparameters(opt_ml, {**TINY_RUN, **hyperparameters})
    if breakage:
        breakage(opt_ml)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(opt_ml))
    model_loads: list[str] = []
    monkeypatch.setattr(container_src.model, "load_model", lambda name, device: model_loads.append(name))

    assert main(["train"]) == 2
    failure = (opt_ml / "output" / "failure").read_text()
    for text in expected:
        assert text in failure
    assert list((opt_ml / "model").iterdir()) == []  # no SAE that could pass for this run's
    assert list((opt_ml / "model.previous").glob("*/cfg.json"))  # the earlier one is kept aside
    assert model_loads == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"hook_name": "blocks.6.mlp.hook_post"},
            ["blocks.6.mlp.hook_post", "blocks.0.mlp.hook_post", "blocks.3.mlp.hook_post"],
        ),
        ({"context_size": "1024", "n_batches_in_buffer": "8"}, ["context_size=1024", "512"]),
        ({"d_sae": "none", "expansion_factor": "1", "k": "300"}, ["k=300", "d_sae=256"]),
    ],
    ids=["hook the model lacks", "context longer than the model's", "k above the derived d_sae"],
)
def test_problems_only_the_model_reveals(
    opt_ml: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, str], expected: list[str]
) -> None:
    """docs/train.md: "longer than the model's context fail here, as soon as the model is loaded"."""
    write_hyperparameters(opt_ml, {**TINY_RUN, **overrides})
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(opt_ml))
    assert main(["train"]) == 2
    failure = (opt_ml / "output" / "failure").read_text()
    for text in expected:
        assert text in failure
    assert not (opt_ml / "model").exists()


def test_corrupt_model_weights_name_the_channel(opt_ml: Path, tmp_path: Path) -> None:
    """README: "with a message that names the key or the channel".
    In a fresh process: the HF libraries read the cache location once, at import."""
    channel = opt_ml / "input" / "data" / "model"
    copy = tmp_path / "model-copy"
    shutil.copytree(channel, copy, symlinks=False)
    channel.unlink()
    copy.rename(channel)
    # the session's hub cache may hold other test models beside it
    (weights,) = channel.glob("hub/models--roneneldan--TinyStories-33M/snapshots/*/model.safetensors")
    weights.write_bytes(b"not safetensors")
    write_hyperparameters(opt_ml, TINY_RUN)
    result = run_container(opt_ml, "train")
    assert result.returncode == 2, result.stdout[-2000:]
    failure = (opt_ml / "output" / "failure").read_text()
    assert "channel model: could not load 'roneneldan/TinyStories-33M'" in failure and "model.safetensors" in failure
    assert not (opt_ml / "model").exists()


@pytest.mark.parametrize(
    ("hyperparameters", "argv", "expected"),
    [
        ({"mode": "viz-later"}, [], "mode='viz-later'"),
        ({}, ["--mode", "viz-later"], "mode='viz-later'"),
        ({"mode": "viz"}, ["--prompt_tokens"], "--prompt_tokens needs a value"),
        (None, [], "not valid JSON"),
    ],
    ids=["mode hyperparameter", "--mode", "bad flags", "hyperparameters not JSON"],
)
def test_model_is_kept_until_the_mode_is_known_to_be_train(
    opt_ml: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    hyperparameters: dict | None,
    argv: list[str],
    expected: str,
) -> None:
    """docs/train.md: "As soon as the mode is known to be `train`".
    SageMaker always runs `train`; the hyperparameter (or --mode) decides, and only a run known to be `train`
    moves the earlier SAE in model/ aside: viz reads it."""
    earlier_sae = opt_ml / "model" / "cfg.json"
    earlier_sae.parent.mkdir(parents=True)
    earlier_sae.write_text("{}")
    write_hyperparameters(opt_ml, hyperparameters or {})
    if hyperparameters is None:
        _hyperparameters_not_json(opt_ml)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(opt_ml))
    assert main(["train", *argv]) == 2
    assert expected in (opt_ml / "output" / "failure").read_text()
    assert earlier_sae.read_text() == "{}" and not (opt_ml / "model.previous").exists()
    if expected.startswith("mode="):  # locally, a mode other than the one typed is pointed out
        assert "mode viz-later from the hyperparameters or --mode, not train" in capsys.readouterr().out


def test_a_stale_failure_file_is_cleared(opt_ml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README: "one an earlier run left is removed at the start".
    Gone before the mode runs, and a run that then succeeds leaves none (the mode's work is a stand-in here: what it
    does is other tests' business); a failing run writes its own reason in its place."""
    failure = opt_ml / "output" / "failure"
    failure.parent.mkdir(parents=True)
    failure.write_text("an old reason")
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(opt_ml))
    seen: list[bool] = []
    monkeypatch.setitem(container_src.__main__.MODES, "viz", (VizConfig, lambda *_: seen.append(failure.exists())))
    assert main(["viz"]) == 0
    assert seen == [False] and not failure.exists()
    failure.write_text("an old reason")
    write_hyperparameters(opt_ml, {"k": "x"})
    assert main(["train"]) == 2
    assert "an old reason" not in failure.read_text()


def test_failure_reason_fits_sagemaker(opt_ml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README: "on any failure, one paragraph on why (SageMaker's FailureReason)"."""
    write_hyperparameters(opt_ml, {"x" * 3000: "1"})
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(opt_ml))
    assert main(["train"]) == 2
    reason = (opt_ml / "output" / "failure").read_text()
    assert len(reason) <= 1025 and "\n" not in reason.rstrip("\n")


@pytest.mark.parametrize(
    ("argv", "modes"),
    [
        (["--help"], ["train", "viz", "bench"]),
        (["help"], ["train", "viz", "bench"]),
        (["bench", "--help"], ["bench"]),
        (["viz", "-h"], ["viz"]),
        (["train", "--k", "8", "--help"], ["train"]),
    ],
)
def test_help_lists_keys_and_presets(
    argv: list[str],
    modes: list[str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """README: "`python -m container_src MODE --help` lists the keys".
    Help lists the presets and each key of the mode asked for (of every mode without one): type, default and
    the first line of its docstring."""
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    assert main(argv) == 0
    out = capsys.readouterr().out
    presets = "presets: qwen3-0.6b, qwen3-8b-distill, smoke, tinystories-33m-mlp-out-published"
    assert presets in out and "modes: train, viz, bench" in out
    assert "python -m container_src train [--preset NAME] [--config FILE] [--key value ...]" in out  # the usage
    hook_default = json.dumps("blocks.2.mlp.hook_post")
    expected = {
        "train": ["--hook_name: str = ", "TransformerLens hook to train on.", "--d_sae: int | None = None"],
        "viz": ["--n_features: int = 50", "Dashboards for this many features, the most prompt-specific first."],
        "bench": ["--hook_name: str = ", "--model_shape: str = ", "Shape of the random stand-in model"],
    }
    for mode in modes:
        for text in expected[mode]:
            assert text in out, (mode, text)
    assert (hook_default in out.replace("'", '"')) == bool({"train", "bench"} & set(modes))
    assert ("--n_features" in out) == ("viz" in modes)  # a mode's help lists only its own keys
    assert ("--model_shape" in out) == ("bench" in modes)
    assert list(tmp_path.iterdir()) == []  # help runs nothing and writes nothing (no failure file)


def test_train_shim_runs_the_entry_point(opt_ml: Path) -> None:
    """README: "in the image `train` is on PATH, because SageMaker runs `docker run IMAGE train`".
    The image's `train` program (docker/train) dispatches to the same entry point."""
    write_hyperparameters(opt_ml, {"k": "eight"})
    env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(opt_ml),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    result = subprocess.run(
        [str(ROOT / "docker" / "train")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "k='eight'" in (opt_ml / "output" / "failure").read_text()


@pytest.mark.parametrize("in_job", [False, True])
def test_other_modes_keys_are_left_to_them_only_in_a_local_tree(
    opt_ml: Path, monkeypatch: pytest.MonkeyPatch, in_job: bool
) -> None:
    """README: "while a job's hyperparameters, a `--config` file or a flag with another mode's key is refused".
    A local tree's hyperparameters.json serves train and viz alike; a job's hyperparameters are its own."""
    write_hyperparameters(opt_ml, {"mode": "viz", "k": "16"})
    if in_job:
        (opt_ml / "input" / "config" / "resourceconfig.json").write_text('{"current_instance_type": "ml.g5.xlarge"}')
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(opt_ml))
    assert main(["train"]) == 2
    failure = (opt_ml / "output" / "failure").read_text()
    if in_job:
        assert "configuration key 'k' (from the hyperparameters) belongs to train and bench, not VizConfig" in failure
    else:  # past the configuration: viz finds no SAE to look at
        assert "holds no SAE" in failure


def test_an_empty_prompts_folder_is_no_prompts_for_a_stories_only_run(opt_ml: Path) -> None:
    """docs/container.md: "An empty folder counts as no prompts".
    docker compose mounts data/prompts whether or not it holds an export; with prompt_ratio=0 an empty one is
    simply no prompts."""
    _empty_prompts_folder(opt_ml)
    write_hyperparameters(opt_ml, {**TINY_RUN, "prompt_ratio": "0"})
    result = run_container(opt_ml, "train")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "channel prompts: " in result.stdout and "is empty, so there are no prompts" in result.stdout
    assert (opt_ml / "model" / "cfg.json").is_file()


def _mode_that(outcome: BaseException | None) -> Callable[[object, object], None]:
    def run(_resolved: object, _paths: object) -> None:
        if outcome is not None:
            raise outcome

    return run


@pytest.mark.parametrize(
    ("outcome", "status", "failure_says"),
    [
        (None, 0, None),
        (ConfigError("k=0: must be positive"), 2, "k=0: must be positive"),
        (RuntimeError("disk full"), 1, "disk full"),
        (Interrupted("stopped by SIGTERM before training started", signal.SIGTERM), 143, "stopped by SIGTERM"),
        (Interrupted("stopped by SIGINT before training started", signal.SIGINT), 130, "stopped by SIGINT"),
    ],
    ids=["success", "configuration", "anything else", "SIGTERM", "SIGINT"],
)
def test_readme_exit_status_0_success_2_configuration_1_anything_else_143_sigterm_130_sigint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: BaseException | None, status: int, failure_says: str
) -> None:
    """README, the container contract: "exit status | 0, 2, 1 | 0 success; 2 a problem with the configuration or the
    inputs ...; 1 anything else" and "every mode then stops with 143 (SIGTERM) or 130 (SIGINT), and the failure file
    says so". The numbers themselves, not the module's constants, so a changed constant fails here."""
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))
    monkeypatch.setitem(container_src.__main__.MODES, "train", (TrainConfig, _mode_that(outcome)))
    assert main(["train", "--log_to_wandb", "false"]) == status
    failure = tmp_path / "output" / "failure"
    if failure_says is None:
        assert not failure.exists()
    else:
        assert failure_says in failure.read_text()


def test_readme_every_mode_stops_with_143_on_sigterm_and_the_failure_file_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README: on SIGTERM "every mode then stops with 143 (SIGTERM) ..., and the failure file says so". A real
    SIGTERM, sent to this process while a mode without its own handler (here a stand-in for viz) runs; the handler
    that was in place before is back afterwards."""
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path))

    def signalled(_resolved: object, _paths: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler interrupts this at once

    monkeypatch.setitem(container_src.__main__.MODES, "viz", (VizConfig, signalled))
    before = signal.getsignal(signal.SIGTERM)
    started = time.monotonic()
    assert main(["viz"]) == 143
    assert time.monotonic() - started < 20
    assert (tmp_path / "output" / "failure").read_text() == "viz failed: Interrupted: stopped by SIGTERM\n"
    assert signal.getsignal(signal.SIGTERM) is before
