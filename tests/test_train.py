"""`train` mode end to end on the tiny model: real SAE-Lens training in a temporary /opt/ml tree."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from container_src.__main__ import main
from container_src.checkpoints import write_marker
from container_src.plots import ALL_PLOTS
from tests.conftest import (
    ROOT,
    TINY_RUN,
    container_cmd,
    make_opt_ml,
    run_container,
    stop_train_at,
    write_hyperparameters,
)

pytestmark = pytest.mark.slow

METRIC_LINE = re.compile(r"\[metric\] step=(\d+) tokens=(\d+) .*?explained_variance=([-+.0-9eE]+|nan)")


def _files_under(base: Path) -> list[Path]:
    return [p for p in base.rglob("*") if p.is_file() and not p.is_symlink()]


def test_sagemaker_tree_trains_end_to_end(opt_ml: Path, moto_server: dict[str, str]) -> None:
    """README: "trains a TopK (or BatchTopK) SAE with SAE-Lens on the control text interleaved with the prompts";
    every file of model/ the README lists, and the W&B key reaches W&B through the environment only."""
    import boto3
    from sae_lens import SAE

    from container_src.model import hook_width, load_model

    planted = "wandb-planted-key-0123456789abcdef"
    secrets = boto3.client(
        "secretsmanager",
        endpoint_url=moto_server["AWS_ENDPOINT_URL"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    secrets.create_secret(Name="wandb-e2e", SecretString=json.dumps({"WANDB_API_KEY": planted}))
    # SageMaker passes every hyperparameter as a string
    write_hyperparameters(opt_ml, {**TINY_RUN, "k": "8", "seed": "3", "log_to_wandb": "true"})

    result = run_container(opt_ml, "train", env={**moto_server, "WANDB_SECRET_ID": "wandb-e2e"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert not (opt_ml / "output" / "failure").exists()

    model_dir = opt_ml / "model"
    sae = SAE.load_from_disk(str(model_dir))
    width = hook_width(load_model("roneneldan/TinyStories-33M", "cpu"), "blocks.2.mlp.hook_post")
    assert sae.cfg.d_in == width == 256
    assert sae.cfg.d_sae == 4 * width  # the smoke preset's expansion factor
    assert sae.cfg.metadata.hook_name == "blocks.2.mlp.hook_post"

    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["tokens_trained"] == 16384 and metrics["training_steps"] == 64
    assert "centred on the mean" in metrics["explained_variance_definition"]
    assert 0.3 < metrics["explained_variance"] <= 1
    assert metrics["mse"] > 0 and 0 < metrics["l0"] <= 8
    assert 0 <= metrics["dead_feature_fraction"] <= 1
    assert {"ce_loss_score", "ce_loss_with_sae", "ce_loss_without_sae", "wall_time_s"} <= set(metrics)

    # each source by itself: 2 batches of 4 rows of 64 tokens for each figure
    by_source = metrics["evaluation_by_source"]
    assert list(by_source) == ["stories", "training_prompts", "heldout_prompts"]
    assert [by_source[s]["held_out"] for s in by_source] == [True, False, True]
    for name, unit, available in (
        ("stories", "stories", 100),
        ("training_prompts", "prompts", 86),
        ("heldout_prompts", "prompts", 9),
    ):
        record = by_source[name]
        assert record["tokens_evaluated"] == record["ce_loss_tokens_evaluated"] == 512, name
        assert 1 <= record[f"{unit}_evaluated"] <= available, name
        assert -1 < record["explained_variance"] <= 1 and 0 < record["l0"] <= 8, name
        assert record["ce_loss_score"] is not None, name
    assert by_source["heldout_prompts"]["prompts_in_source"] == 9
    assert by_source["training_prompts"]["prompts_in_source"] == 86
    heldout = json.loads((model_dir / "heldout_prompts.json").read_text())
    assert len(heldout["heldout_ids"]) == 9 and heldout["per_category"]["refusal"] == {"train": 4, "heldout": 0}

    resolved = json.loads((model_dir / "resolved_config.json").read_text())
    assert resolved["values"]["k"] == 8 and resolved["sources"]["k"] == "hyperparameters"
    assert resolved["sources"]["context_size"] == "preset:smoke"
    assert resolved["derived"]["d_in"] == 256 and resolved["derived"]["wandb_mode"] == "offline"

    pngs = sorted(p.stem for p in (model_dir / "plots").glob("*.png"))
    assert pngs == sorted(ALL_PLOTS) and len(pngs) == 10
    # 64 steps, a metric line every 4: fewer than 100 lines, so an evaluation at each, W&B or not
    log = [json.loads(line) for line in (model_dir / "training_log.jsonl").read_text().splitlines()]
    evaluated = [r for r in log if "ce_loss_score" in r]
    assert [r["step"] for r in evaluated] == list(range(4, 65, 4))
    for record in evaluated:
        assert sum(record["feature_sparsity_histogram"]["latents"]) == 4 * width  # every latent, once
        assert -10 <= record["mean_log10_feature_sparsity"] <= 0
    assert all(r["mse_loss"] > 0 and r["aux_loss"] >= 0 for r in log)
    for png in (model_dir / "plots").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 2000

    steps = [int(m.group(1)) for m in METRIC_LINE.finditer(result.stdout)]
    assert steps == list(range(4, 65, 4))  # every log_every=4 steps, the last step included
    (final,) = re.findall(r"\[metric\] final=1 .*", result.stdout)
    assert " explained_variance=" in final
    for name in ("stories", "training_prompts", "heldout_prompts"):
        for metric in ("explained_variance", "l0", "ce_loss_score"):
            value = re.search(rf" {metric}_{name}=([-+.0-9eE]+)", final)
            assert value and float(value.group(1)) == pytest.approx(by_source[name][metric], rel=1e-5), (metric, name)
    assert list((opt_ml / "output" / "data" / "wandb").rglob("offline-run-*")), "W&B did not run offline"

    # the key reached W&B through the environment only
    assert planted not in result.stdout + result.stderr
    leaks = [p for p in _files_under(opt_ml) if planted.encode() in p.read_bytes()]
    assert leaks == []


def test_sigterm_saves_a_checkpoint_and_a_rerun_resumes(opt_ml: Path) -> None:
    """README: "a spot restart, or the same command run again after a SIGTERM, goes on where the first stopped"."""
    write_hyperparameters(opt_ml, {**TINY_RUN, "training_tokens": "65536"})  # 256 steps
    status, output = stop_train_at(opt_ml, 40)
    assert status == 143, output[-3000:]

    failure = (opt_ml / "output" / "failure").read_text()
    assert "SIGTERM" in output and "checkpoint saved" in failure
    assert not (opt_ml / "model" / "cfg.json").exists()
    (run_dir,) = (opt_ml / "checkpoints").iterdir()
    saved = [p for p in run_dir.iterdir() if (p / "checkpoint_complete.json").exists()]
    interrupted = max(saved, key=lambda p: int(p.name))
    for name in ("sae_weights.safetensors", "trainer_state.pt", "activations_store_state.safetensors"):
        assert (interrupted / name).is_file(), name
    stopped_at = json.loads((interrupted / "checkpoint_complete.json").read_text())
    assert 40 <= stopped_at["step"] < 256 and stopped_at["tokens"] == 256 * stopped_at["step"]

    # as if trained on a GPU with bf16 autocast: this rerun says so (the marker is written again, since it holds a
    # digest of each file and an edited file no longer matches it)
    runner_cfg = interrupted / "runner_cfg.json"
    runner_cfg.write_text(runner_cfg.read_text().replace('"autocast": false', '"autocast": true', 1))
    write_marker(interrupted, stopped_at["step"], stopped_at["tokens"])
    result = run_container(opt_ml, "train")
    assert result.returncode == 0, result.stdout[-4000:]
    assert f"resuming from {interrupted}" in result.stdout
    assert "the checkpoint was trained with bf16 autocast; this run goes on in fp32" in result.stdout
    resumed_steps = [int(m.group(1)) for m in METRIC_LINE.finditer(result.stdout)]
    assert resumed_steps[0] > stopped_at["step"], "the rerun started over instead of resuming"
    metrics = json.loads((opt_ml / "model" / "metrics.json").read_text())
    assert metrics["tokens_trained"] == 65536 and metrics["resumed_from_tokens"] == stopped_at["tokens"]
    logged = [json.loads(line)["step"] for line in (opt_ml / "model" / "training_log.jsonl").read_text().splitlines()]
    assert logged == sorted(set(logged)) and logged[-1] == 256
    assert not (opt_ml / "output" / "failure").exists()


def _run_in_process(base: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    return main(["train", *args])


def test_batchtopk_trains(opt_ml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/train.md: "a BatchTopK SAE is saved as JumpReLU, so that is what gets evaluated"."""
    from sae_lens import SAE

    write_hyperparameters(opt_ml, {**TINY_RUN, "architecture": "batchtopk", "training_tokens": "4096"})
    assert _run_in_process(opt_ml, monkeypatch) == 0
    sae = SAE.load_from_disk(str(opt_ml / "model"))
    # SAE-Lens saves a trained BatchTopK SAE as JumpReLU, with the learned threshold
    assert sae.cfg.architecture() == "jumprelu" and sae.cfg.d_in == 256
    # without W&B (TINY_RUN turns it off) the evaluations still run, and every graph is drawn
    assert sorted(p.stem for p in (opt_ml / "model" / "plots").glob("*.png")) == sorted(ALL_PLOTS)
    log = [json.loads(line) for line in (opt_ml / "model" / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "ce_loss_score" in r] == [4, 8, 12, 16]


def test_evaluation_reads_held_out_stories(opt_ml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/train.md: "the same mix with seed + 1, of stories from the control text's `validation` split".
    Training streams the train split, the evaluations the validation split (the stand-in has both)."""
    from datasets import load_from_disk

    import container_src.data

    real, streams = container_src.data.mixed_stream, []

    def spy(stories: Any, prompts: Any, prompt_ratio: float, seed: int) -> Any:
        streams.append((seed, [row["text"] for row in itertools.islice(stories, 3)]))
        return real(stories, prompts, prompt_ratio, seed)

    monkeypatch.setattr(container_src.data, "mixed_stream", spy)
    write_hyperparameters(opt_ml, {**TINY_RUN, "training_tokens": "4096"})
    assert _run_in_process(opt_ml, monkeypatch) == 0
    splits: Any = load_from_disk(str(opt_ml / "input" / "data" / "control"))
    # the training stream, then the evaluation streams: the evaluations' during training and the final one's
    (train_seed, trained), *evaluations = streams
    assert trained == splits["train"]["text"][:3] and len(evaluations) == 2
    assert all(e == (train_seed + 1, splits["validation"]["text"][:3]) for e in evaluations)


def test_final_evaluation_reads_only_held_out_stories_by_their_tokens(
    opt_ml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README, channel control: "train also needs its `validation` split there" (the evaluation's stories are
    held out). Proved by the data read: every training story carries a character ("~") that no validation story or
    prompt has, and each validation story one ("^") that no training story has. The tokens that every final
    evaluation (the mixed stream and each source) fetched hold "^" and never "~"."""
    from datasets import Dataset, DatasetDict
    from transformers import AutoTokenizer

    import container_src.evaluate
    from container_src.synthetic import make_stories

    stories = opt_ml / "input" / "data" / "control"
    stories.unlink()
    DatasetDict(
        train=Dataset.from_dict({"text": [f"{s} ~ ~ ~" for s in make_stories(400)]}),
        validation=Dataset.from_dict({"text": [f"{s} ^ ^ ^" for s in make_stories(100, seed=9)]}),
    ).save_to_disk(str(stories))
    tokenizer = AutoTokenizer.from_pretrained("roneneldan/TinyStories-33M")
    (trained_mark,) = tokenizer.encode("~")
    (held_out_mark,) = tokenizer.encode("^")

    real, read_by_evaluation = container_src.evaluate.evaluate, []

    def recording(sae: Any, model: Any, store: Any, n_batches: int) -> dict[str, Any]:
        fetch = store.get_batch_tokens

        def noted(*args: Any, **kwargs: Any) -> Any:
            tokens = fetch(*args, **kwargs)
            read_by_evaluation.append(set(tokens.flatten().tolist()))
            return tokens

        store.get_batch_tokens = noted
        return real(sae, model, store, n_batches)

    monkeypatch.setattr(container_src.evaluate, "evaluate", recording)
    write_hyperparameters(opt_ml, {**TINY_RUN, "training_tokens": "4096"})
    assert _run_in_process(opt_ml, monkeypatch) == 0
    assert len(read_by_evaluation) >= 4  # the mixed stream, stories, training prompts, held-out prompts
    seen = set().union(*read_by_evaluation)
    assert held_out_mark in seen and trained_mark not in seen
    metrics = json.loads((opt_ml / "model" / "metrics.json").read_text())
    assert metrics["evaluation_by_source"]["stories"]["held_out"] is True


def test_failure_after_training_leaves_no_sae(opt_ml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/train.md: "so a run that fails after that leaves no SAE in `model/` and nothing is lost"."""
    import container_src.evaluate

    earlier = opt_ml / "model" / "notes.txt"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("from an earlier run")

    def explode(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("evaluation exploded")

    monkeypatch.setattr(container_src.evaluate, "evaluate", explode)
    write_hyperparameters(opt_ml, {**TINY_RUN, "training_tokens": "4096"})
    assert _run_in_process(opt_ml, monkeypatch) == 1
    assert "evaluation exploded" in (opt_ml / "output" / "failure").read_text()
    assert list((opt_ml / "model").iterdir()) == []  # neither this run's SAE nor the staging folder
    # what the earlier run left was moved aside, not lost
    (archived,) = (opt_ml / "model.previous").glob("*/notes.txt")
    assert archived.read_text() == "from an earlier run"


def test_kill_after_a_periodic_checkpoint_resumes_without_gaps(opt_ml: Path) -> None:
    """docs/train.md: "After a kill with no chance to save (SIGKILL, a lost instance)".
    SIGKILL (no chance to save) after a periodic checkpoint: the rerun resumes from it, the step log has no
    gap or repeat, and a third run of the finished run retrains nothing."""
    write_hyperparameters(opt_ml, {**TINY_RUN, "training_tokens": "32768", "n_checkpoints": "3", "log_every": "1"})
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(opt_ml), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        container_cmd("train"), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "checkpoint saved" in line:
            proc.kill()
            break
    proc.wait(timeout=60)
    (run_dir,) = (opt_ml / "checkpoints").iterdir()
    (periodic,) = [p for p in run_dir.iterdir() if (p / "checkpoint_complete.json").exists()]
    marker = json.loads((periodic / "checkpoint_complete.json").read_text())
    assert marker["tokens"] == int(periodic.name) == 256 * marker["step"]

    resumed = run_container(opt_ml, "train")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"resuming from {periodic}" in resumed.stdout
    assert next(int(m.group(1)) for m in METRIC_LINE.finditer(resumed.stdout)) == marker["step"] + 1
    logged = [json.loads(line)["step"] for line in (opt_ml / "model" / "training_log.jsonl").read_text().splitlines()]
    assert logged == list(range(1, 129))

    again = run_container(opt_ml, "train")
    assert again.returncode == 0, again.stdout[-3000:]
    assert f"resuming from {run_dir / 'final_32768'}" in again.stdout
    assert METRIC_LINE.search(again.stdout) is None  # nothing retrained
    assert json.loads((opt_ml / "model" / "metrics.json").read_text())["tokens_trained"] == 32768
    assert list((opt_ml / "model.previous").glob("*/cfg.json"))  # the first result was kept aside

    # Other weights under the same model name (another model channel, same shape and tokenizer) are another run:
    # its checkpoints are not resumed with activations they were not trained on.
    from container_src.synthetic import make_stories, write_model_cache

    channel = opt_ml / "input" / "data" / "model"
    channel.unlink()
    write_model_cache(channel, seed=1, corpus=make_stories(400))
    other = run_container(opt_ml, "train")
    assert other.returncode == 0, other.stdout[-3000:]
    assert "resuming from" not in other.stdout
    assert f"checkpoints of other configurations or data are ignored: {run_dir.name}" in other.stdout
    assert next(int(m.group(1)) for m in METRIC_LINE.finditer(other.stdout)) == 1


def test_wandb_gets_the_key_and_goes_online_only_with_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_server: dict[str, str]
) -> None:
    """docs/train.md: "Without a key W&B runs **offline** and writes its run to"."""
    import boto3

    from container_src.config import TrainConfig
    from container_src.train import _wandb_environment

    for name, value in moto_server.items():
        monkeypatch.setenv(name, value)
    boto3.client("secretsmanager").create_secret(Name="wandb-online", SecretString="key-from-the-secret")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SECRET_ID", "wandb-online")
    assert _wandb_environment(TrainConfig(), tmp_path) == "online"
    assert os.environ["WANDB_API_KEY"] == "key-from-the-secret"
    assert os.environ["WANDB_DIR"] == str(tmp_path) and os.environ["WANDB_RESUME"] == "allow"

    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SECRET_ID"):
        monkeypatch.delenv(name, raising=False)
    assert _wandb_environment(TrainConfig(), tmp_path) == "offline"
    assert "WANDB_API_KEY" not in os.environ
    assert _wandb_environment(TrainConfig(log_to_wandb=False), tmp_path) == "disabled"


def test_sigint_saves_a_checkpoint_and_exits_130(opt_ml: Path) -> None:
    """docs/train.md: "saves a full checkpoint at the next step boundary and exits with status 143 (130 for Ctrl-C)".
    Ctrl-C takes the same path as SIGTERM: a checkpoint at the next step boundary."""
    write_hyperparameters(opt_ml, {**TINY_RUN, "training_tokens": "65536"})
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(opt_ml), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        container_cmd("train"), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if METRIC_LINE.search(line):
            proc.send_signal(signal.SIGINT)
            break
    output = proc.stdout.read()
    assert proc.wait(timeout=120) == 130, output[-3000:]
    assert "stopped by SIGINT" in (opt_ml / "output" / "failure").read_text()
    assert list((opt_ml / "checkpoints").glob("*/*/checkpoint_complete.json"))


def test_signal_handling_by_phase() -> None:
    """docs/train.md: "Ctrl-C during training saves a full checkpoint at the next step boundary";
    before training it stops at once; while the final SAE is finished, the final checkpoint is already saved."""
    from container_src.interrupt import Interrupted, StopRequest

    StopRequest.install()
    with pytest.raises(Interrupted, match="before training started") as err:
        StopRequest.handle(signal.SIGTERM, None)
    assert err.value.signum == signal.SIGTERM
    StopRequest.phase, StopRequest.requested = "training", None
    StopRequest.handle(signal.SIGINT, None)  # only a flag: the loop stops at the next step boundary
    assert StopRequest.requested == signal.SIGINT
    StopRequest.phase = "finishing"
    with pytest.raises(Interrupted, match="after training; the final checkpoint is saved"):
        StopRequest.handle(signal.SIGTERM, None)
    StopRequest.phase = "done"
    StopRequest.handle(signal.SIGTERM, None)  # the SAE is published: nothing to stop


def test_publish_moves_the_staged_sae_in_with_cfg_json_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/train.md: "`cfg.json` last: a reader that finds `cfg.json` finds the weights"
    The staged entries move into model/ only when all are written, and an earlier plots/ is
    replaced whole, not merged."""
    from container_src.train import publish

    staging, model_dir = tmp_path / "model" / ".staging", tmp_path / "model"
    (staging / "plots").mkdir(parents=True)
    (staging / "plots" / "loss.png").write_text("new")
    for name in ("cfg.json", "sae_weights.safetensors", "metrics.json"):
        (staging / name).write_text(name)
    (model_dir / "plots").mkdir()
    (model_dir / "plots" / "stale.png").write_text("old")
    moved: list[str] = []
    replace = Path.replace

    def noted(self: Path, target: Path) -> Path:
        moved.append(self.name)
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", noted)
    publish(staging, model_dir)
    assert moved[-1] == "cfg.json" and sorted(moved) == ["cfg.json", "metrics.json", "sae_weights.safetensors"]
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "cfg.json",
        "metrics.json",
        "plots",
        "sae_weights.safetensors",
    ]
    assert [p.name for p in (model_dir / "plots").iterdir()] == ["loss.png"]


def test_docs_train_plots_replaced_whole_old_moved_aside_new_renamed_in_old_deleted_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/train.md: the SAE is "moved into `model/` only when everything is written", so a reader finds the old
    folder or the new one, whole: records.replace_dir moves the old folder aside, renames the new one in, and only
    then deletes the old one; if the rename fails, the old folder goes back."""
    from container_src import records

    staging, target = tmp_path / "new", tmp_path / "plots"
    staging.mkdir()
    (staging / "loss.png").write_text("new")
    target.mkdir()
    (target / "loss.png").write_text("old")
    events: list[tuple[str, str, str]] = []
    rename, rmtree = Path.rename, records.shutil.rmtree

    def noted_rename(self: Path, to: Path) -> Path:
        events.append(("rename", self.name, Path(to).name))
        return rename(self, to)

    def noted_rmtree(path: Path, ignore_errors: bool = False) -> None:
        events.append(("delete", Path(path).name, "exists" if Path(path).exists() else "absent"))
        rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(Path, "rename", noted_rename)
    monkeypatch.setattr(records.shutil, "rmtree", noted_rmtree)
    records.replace_dir(staging, target)
    assert events == [
        ("delete", ".plots.old", "absent"),  # a leftover of a killed earlier replace, cleared first
        ("rename", "plots", ".plots.old"),
        ("rename", "new", "plots"),
        ("delete", ".plots.old", "exists"),
    ]
    assert (target / "loss.png").read_text() == "new" and not (tmp_path / ".plots.old").exists()

    # the rename in fails (here: the new folder is gone): the old folder is back where it was, whole
    events.clear()
    with pytest.raises(FileNotFoundError):
        records.replace_dir(tmp_path / "missing", target)
    assert (target / "loss.png").read_text() == "new"
    assert events[-1] == ("rename", ".plots.old", "plots")


def _train_16_steps(
    base: Path, tiny_assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch, **hyperparameters: str
) -> dict[str, Any]:
    """The smoke preset for 16 steps of 256 tokens in a SageMaker tree of its own; returns the SAE's saved weights."""
    from safetensors.torch import load_file

    make_opt_ml(base, tiny_assets)
    write_hyperparameters(base, {**TINY_RUN, "training_tokens": "4096", **hyperparameters})
    assert _run_in_process(base, monkeypatch) == 0
    return load_file(str(base / "model" / "sae_weights.safetensors"))


def test_prefetching_trains_the_same_sae(
    tmp_path: Path, tiny_assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/configuration.md: "The data and its order are unchanged".
    prefetch_llm_batches only moves the data work to a background thread: the SAE trained with it is the one
    trained without it, weight for weight, also with W&B's evaluations running during training (they read a stream
    of their own, so they take no rows from training)."""
    import sae_lens.llm_sae_training_runner as runner_module
    import torch
    from sae_lens.training.prefetch import PrefetchingIterator

    import container_src.runner

    evaluations: list[int] = []
    prefetchers: list[int] = []
    sae_lens_config = container_src.runner.sae_lens_config

    def evaluating_every_log(*args: object, **kwargs: object) -> object:
        runner_cfg = sae_lens_config(*args, **kwargs)  # type: ignore[arg-type]
        runner_cfg.logger.eval_every_n_wandb_logs = 1
        return runner_cfg

    class CountedPrefetcher(PrefetchingIterator):
        def __init__(self, source: object, prefetch: int = 4) -> None:
            prefetchers.append(prefetch)
            super().__init__(source, prefetch)  # type: ignore[arg-type]

    evaluator_call = runner_module.LLMSaeEvaluator.__call__

    def counted_evaluation(self: object, *args: object, **kwargs: object) -> object:
        evaluations.append(1)
        return evaluator_call(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(container_src.runner, "sae_lens_config", evaluating_every_log)
    monkeypatch.setattr(runner_module, "PrefetchingIterator", CountedPrefetcher)
    monkeypatch.setattr(runner_module.LLMSaeEvaluator, "__call__", counted_evaluation)
    weights = [
        _train_16_steps(
            tmp_path / f"prefetch-{prefetch}",
            tiny_assets,
            monkeypatch,
            log_to_wandb="true",
            prefetch_llm_batches=prefetch,
        )
        for prefetch in ("0", "2")
    ]
    assert prefetchers == [2]  # the second run prefetched, the first did not
    assert len(evaluations) >= 6  # 16 steps, a W&B log every 4 and an evaluation at each: 4 per run
    assert weights[0].keys() == weights[1].keys() and weights[0]
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name


def test_data_worker_trains_the_same_sae(
    tmp_path: Path, tiny_assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/configuration.md: "The worker hands the rows back in order, so the rows are the same".
    data_worker (the default) packs the training rows in a worker process; the SAE is the one trained with the
    rows packed in the training process, weight for weight."""
    import torch

    from container_src import store

    rows_from_worker: list[int] = []
    worker_iter = store.WorkerRows.__iter__

    def counted(self: store.WorkerRows) -> Any:
        for row in worker_iter(self):
            rows_from_worker.append(1)
            yield row

    monkeypatch.setattr(store.WorkerRows, "__iter__", counted)
    without = _train_16_steps(tmp_path / "in-process", tiny_assets, monkeypatch, data_worker="false")
    assert not rows_from_worker
    with_worker = _train_16_steps(tmp_path / "worker", tiny_assets, monkeypatch)
    # the rows trained on came from the worker: 4096 tokens are 64 rows of the smoke preset's 64 tokens (the store's
    # first look at the data takes one row more)
    assert len(rows_from_worker) >= 4096 // 64 + 1
    assert without.keys() == with_worker.keys() and without
    for name, tensor in without.items():
        assert torch.equal(with_worker[name], tensor), name


def test_lean_step_trains_what_sae_lens_step_trains(
    tmp_path: Path, tiny_assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/configuration.md: "The loss and the updates are SAE-Lens's, to rounding".
    lean_step (the default) trains with our step, fused Adam included, and gives SAE-Lens's SAE to rounding;
    lean_step=false runs SAE-Lens's own step and Adam."""
    import torch

    from container_src import sae_step

    lean_steps: list[bool] = []
    kernels: list[bool] = []
    applies, set_kernel = sae_step.LeanTopKTrainingSAE.lean_step_applies, sae_step.set_adam_kernel

    def counted_applies(self: sae_step.LeanTopKTrainingSAE, sae_in: torch.Tensor) -> bool:
        lean_steps.append(applies(self, sae_in))
        return lean_steps[-1]

    def counted_kernel(optimizer: torch.optim.Optimizer, fused: bool) -> None:
        set_kernel(optimizer, fused)
        kernels.append(all(group["fused"] for group in optimizer.param_groups))

    monkeypatch.setattr(sae_step.LeanTopKTrainingSAE, "lean_step_applies", counted_applies)
    monkeypatch.setattr(sae_step, "set_adam_kernel", counted_kernel)
    weights = []
    for lean in ("false", "true"):
        lean_steps.clear()
        kernels.clear()
        weights.append(_train_16_steps(tmp_path / f"lean-{lean}", tiny_assets, monkeypatch, lean_step=lean))
        if lean == "true":  # 16 steps of 256 tokens, each through the lean step, with fused Adam
            assert len(lean_steps) >= 16 and all(lean_steps) and kernels == [True]
        else:
            assert not lean_steps and kernels == [False]
    assert weights[0].keys() == weights[1].keys() and weights[0]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def test_fused_lm_trains_what_transformer_lens_code_trains(
    tmp_path: Path, tiny_assets: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/configuration.md: "The activations are TransformerLens's, to rounding".
    fused_lm (the default) fills the buffer through the fused attention path and the fused GELU, and trains the
    SAE that TransformerLens's own code trains, to rounding."""
    import torch

    from container_src import fused

    fused_passes: list[bool] = []
    fusable = fused.FusedAttention.fusable

    def counted(self: fused.FusedAttention, **kwargs: Any) -> bool:
        fused_passes.append(fusable(self, **kwargs))
        return fused_passes[-1]

    monkeypatch.setattr(fused.FusedAttention, "fusable", counted)
    weights = []
    for on in ("false", "true"):
        fused_passes.clear()
        weights.append(_train_16_steps(tmp_path / f"fused-{on}", tiny_assets, monkeypatch, fused_lm=on))
        if on == "true":  # 16 steps of 256 tokens are 16 model batches of 4 rows, through 3 layers each at least
            assert len(fused_passes) >= 16 * 3 and all(fused_passes)
        else:
            assert not fused_passes
    assert weights[0].keys() == weights[1].keys() and weights[0]
    # The activations differ by about 1e-7 (summation order); 16 Adam steps grow that to at most 2.3e-5 (seen) in
    # decoder weights of up to 0.13. A wrong mask or activation function moves them by far more.
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=1e-4, atol=1e-4, msg=name)
