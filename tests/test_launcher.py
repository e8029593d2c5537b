"""The launcher against a real moto server on loopback: ECR, S3, Secrets Manager, SageMaker and CloudWatch Logs.

The Docker CLI is the one stub (no engine runs here): tests/fixtures/fake_docker.py records its calls. What the
launcher sent is read back from moto (describe_training_job, list_tags, S3) and from moto's request recording,
which keeps the raw CreateTrainingJob body (moto does not store MetricDefinitions or Environment).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest

from container_src import evaluate, records
from container_src.config import TrainConfig
from launcher import ecr, jobs, submit
from tests.conftest import ROOT, SAMPLE_PROMPTS

PLANTED_KEY = "wandb-planted-" + "7f3c9a" * 6
FAKE_DOCKER = ROOT / "tests" / "fixtures" / "fake_docker.py"


def _recorder(endpoint: str, action: str) -> str:
    method = "GET" if action == "download-recording" else "POST"
    with urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/recorder/{action}", method=method)) as r:
        return r.read().decode()


def _recorded(endpoint: str) -> list[dict[str, Any]]:
    """Every request moto received since the test started, bodies decoded."""
    out = []
    for line in _recorder(endpoint, "download-recording").splitlines():
        entry = json.loads(line)
        body = entry.get("body") or ""
        if entry.get("body_encoded"):
            body = base64.b64decode(body).decode("utf-8", "replace")
        out.append({**entry, "body": body})
    return out


@pytest.fixture
def aws(moto_server: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """moto's environment, fresh settings (own bucket and repository), the docker stub on PATH, and recording on."""
    suffix = uuid.uuid4().hex[:8]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_DOCKER}" "$@"\n')
    (bin_dir / "docker").chmod(0o755)
    env = {
        **moto_server,
        "SAGEMAKER_VALIDATE_ROLE": "false",  # the SDK's IAM policy simulation is not served by moto
        "SAE_SETTINGS": str(tmp_path / "no-settings.toml"),
        "SAE_REGION": "us-east-1",
        "SAE_ROLE_ARN": "arn:aws:iam::123456789012:role/sae-test",
        "SAE_BUCKET": f"sae-test-{suffix}",
        "SAE_IMAGE_REPOSITORY": f"sae-test-{suffix}",
        "SAE_WANDB_SECRET_ID": f"sae-test/{suffix}",
        "FAKE_DOCKER_LOG": str(tmp_path / "docker.jsonl"),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    (tmp_path / "no-settings.toml").write_text("")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    endpoint = moto_server["AWS_ENDPOINT_URL"]
    _recorder(endpoint, "reset-recording")
    _recorder(endpoint, "start-recording")
    yield {"env": env, "endpoint": endpoint, "bucket": env["SAE_BUCKET"], "repo": env["SAE_IMAGE_REPOSITORY"]}
    _recorder(endpoint, "stop-recording")


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """An exported prompt dataset: the shipped sample export (its manifest's fingerprint is its rows')."""
    out = tmp_path / "prompts"
    shutil.copytree(SAMPLE_PROMPTS, out)
    return out


def _rewrite_rows(export: Path, out: Path, rows: int, *, manifest: bool) -> Path:
    """``out``: the first ``rows`` rows of ``export``, with the last one's text changed, saved as the export saves
    them; with ``manifest`` a manifest of their own (another export), else ``export``'s (an export edited later)."""
    from datasets import Dataset, load_from_disk

    from launcher.prompt_rows import fingerprint

    source = load_from_disk(str(export))
    assert isinstance(source, Dataset)
    kept = source.to_list()[:rows]
    kept[-1]["text"] += " (edited)"
    dataset = Dataset.from_list(kept, features=source.features)
    dataset.save_to_disk(str(out))
    record = json.loads((export / "manifest.json").read_text())
    if manifest:
        record["fingerprint"] = fingerprint(dataset.to_list(), dataset.column_names)
    (out / "manifest.json").write_text(json.dumps(record))
    return out


def _docker_calls(aws: dict[str, Any]) -> list[dict[str, Any]]:
    path = Path(aws["env"]["FAKE_DOCKER_LOG"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = submit.main(list(argv))
    return code, capsys.readouterr().out


def _job(name: str) -> dict[str, Any]:
    return boto3.client("sagemaker").describe_training_job(TrainingJobName=name)


def _tags(job: dict[str, Any]) -> dict[str, str]:
    tags = boto3.client("sagemaker").list_tags(ResourceArn=job["TrainingJobArn"])["Tags"]
    return {t["Key"]: t["Value"] for t in tags}


def _job_names(out: str, prefix: str = "sae-") -> list[str]:
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


def test_metric_definitions_read_the_containers_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """docs/launcher.md: "MetricDefinitions read the container's `[metric]` lines"
    The regexes against lines the container's own code writes (a step line and the final line)."""
    caplog.set_level("INFO")
    log = records.MetricLog(tmp_path / "log.jsonl")
    log.record_step(
        400,
        1638400,
        {
            "losses/overall_loss": 0.0123,
            "metrics/explained_variance": 0.8125,
            "metrics/l0": 64.0,
            "sparsity/dead_features": 12,
            "details/current_learning_rate": 1e-4,
        },
    )
    step_line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("[metric] step="))
    by_source = {  # as train's final evaluation reports them; a skipped source has no figures
        "stories": {"explained_variance": 0.71, "l0": 62.0, "ce_loss_score": 0.9},
        "training_prompts": {"explained_variance": 0.66, "l0": 60.5, "ce_loss_score": 0.85},
        "heldout_prompts": {"explained_variance": None, "l0": None, "ce_loss_score": None, "skipped": "none"},
    }
    assert [s.name for s in evaluate.sources(TrainConfig(), [], None, [])] == list(by_source)
    final_line = records.format_metric_line(
        {"final": 1, "explained_variance": 0.77, "explained_variance_legacy": 0.95, "ce_loss_score": 0.93,
         "mse": 2.5e-05, "cossim": 0.91, "l0": 63.5, "dead_feature_fraction": 0.0,
         **evaluate.metric_fields(by_source)}
    )  # fmt: skip
    found: dict[str, float] = {}
    for definition in jobs.metric_definitions():
        for line in (step_line, final_line):
            match = re.search(definition["Regex"], line)
            if match:
                assert definition["Name"] not in found, f"{definition['Name']} matches both lines"
                found[definition["Name"]] = float(match.group(1))
    assert found == {
        "train:tokens": 1638400,
        "train:loss": 0.0123,
        "train:explained_variance": 0.8125,
        "train:l0": 64,
        "train:dead_features": 12,
        "train:lr": 1e-4,
        "final:explained_variance": 0.77,  # not the legacy value printed before it
        "final:ce_loss_score": 0.93,
        "final:mse": 2.5e-05,
        "final:cossim": 0.91,
        "final:l0": 63.5,
        "final:dead_feature_fraction": 0.0,
        "final:explained_variance_stories": 0.71,
        "final:l0_stories": 62,
        "final:ce_loss_score_stories": 0.9,
        "final:explained_variance_training_prompts": 0.66,
        "final:l0_training_prompts": 60.5,
        "final:ce_loss_score_training_prompts": 0.85,
    }


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--mode", "tune"], {}, "unknown mode"),
        (["--mode", "train", "--sweep", "k"], {}, "expected key=v1,v2"),
        (["--mode", "train", "--sweep", "k=32,"], {}, "no empty value"),
        (["--mode", "train", "--sweep", "k=32", "--sweep", "k=64"], {}, "given twice"),
        (["--mode", "train", "--sweep", "k=16,16.0"], {}, "{'k': '16'} and {'k': '16.0'} are the same configuration"),
        (
            ["--mode", "train"],
            {"SAE_ROLE_ARN": "", "SAE_BUCKET": ""},
            "bucket (or SAE_BUCKET). Put them in launcher/settings.toml (copy launcher/settings.example.toml)",
        ),
        (["--mode", "train", "--instance-type", "ml.m5.xlarge"], {}, "has no NVIDIA GPU"),
        (["--mode", "train", "--instance-type", "ml.g4dn.xlarge", "--set", "precision=bf16"], {}, "no native bf16"),
        (["--mode", "train", "--set", "wandb_api_key=abc"], {}, "secrets never go in hyperparameters"),
        (["--mode", "viz", "--set", "api_key=abc", "--sae", "s3://b/m.tar.gz"], {}, "secrets never go"),
        (["--mode", "train", "--set", "k=many"], {}, "hyperparameters: k='many': expected int (not a number)"),
        (["--mode", "train", "--set", "lr_warm_up_fraction=0.9"], {}, "exceed the whole run"),
        (["--mode", "viz"], {}, "--from-job TRAIN_JOB or --sae"),
        # each mode's keys are checked with the container's own schema for that mode
        (
            ["--mode", "viz", "--set", "k=16", "--sae", "s3://b/m.tar.gz"],
            {},
            "configuration key 'k' (from the hyperparameters) belongs to train and bench, not VizConfig",
        ),
        (["--mode", "viz", "--set", "features=1,x", "--sae", "s3://b/m.tar.gz"], {}, "'x' is not a feature id"),
        (["--mode", "bench", "--set", "n_features=5"], {}, "'n_features' (from the hyperparameters) belongs to viz"),
        (["--mode", "train", "--spot", "--max-run", "7200", "--max-wait", "3600"], {}, "at least --max-run"),
        (["--mode", "train", "--prompts", "/nonexistent/export"], {}, "export the prompts first"),
        (["--mode", "train", "--network-isolation"], {}, "give --model and --control"),
        (["--mode", "train", "--set", "k=32", "--set", "k=64"], {}, "--set k: given twice ('32' and '64')"),
        (
            ["--mode", "train", "--set", "config=run.json"],
            {},
            "config (from --set or --sweep): a path would be read",
        ),
        (["--mode", "train", "--volume-gb", "0"], {}, "--volume-gb 0: must be at least 1"),
        (["--mode", "bench", "--instance-type", "ml.g4dn.xlarge", "--set", "precision=bf16"], {}, "no native bf16"),
        # the SDK would upload a local path itself, even in a dry run
        (["--mode", "viz", "--sae", "saes/run1"], {}, "--sae 'saes/run1': expected s3://BUCKET/KEY"),
        (["--mode", "viz", "--sae", "s3://b/"], {}, "expected s3://BUCKET/KEY"),
        (["--mode", "train", "--prompts", "s3://b"], {}, "--prompts: 's3://b': expected s3://BUCKET/PREFIX"),
        (["--mode", "train", "--control", "s3:///x"], {}, "--control: 's3:///x' is not an S3 URI"),
        # --tinystories is --control's old name: it is read as --control, and both at once is refused
        (["--mode", "train", "--tinystories", "s3:///x"], {}, "--control: 's3:///x' is not an S3 URI"),
        (
            ["--mode", "train", "--tinystories", "s3://b/old/", "--control", "s3://b/new/"],
            {},
            "--tinystories and --control are both given",
        ),
        # a folder that is not a hub cache (here the prompt export), refused before the job would refuse it
        (["--mode", "train", "--model", "EXPORT"], {}, "is not a Hugging Face hub-cache layout"),
        (["--settings", "launcher/settings.toml", "push"], {}, "push: an action comes first"),
    ],
)
def test_bad_input_is_refused_before_any_aws_call(
    argv: list[str],
    env: dict[str, str],
    message: str,
    aws: dict[str, Any],
    export: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "stops the launcher with status 2 and a message that says what to do" """
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    argv = [str(export) if a == "EXPORT" else a for a in argv]
    if "--prompts" not in argv:
        argv = [*argv, "--prompts", str(export)]
    assert _refused(aws, capsys, caplog, argv, message) == []


def test_stories_without_the_evaluation_split_are_refused_before_upload(
    aws: dict[str, Any],
    export: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "a local folder without it is refused before anything is uploaded" """
    from container_src.synthetic import write_story_dataset

    one = write_story_dataset(tmp_path / "one", n=20, validation=0)  # one dataset, no splits
    argv = ["--mode", "train", "--set", "preset=smoke", "--prompts", str(export), "--control", str(one)]
    assert _refused(aws, capsys, caplog, argv, "--control: channel control") == []
    assert "so no 'validation' split" in caplog.text and "control_eval_split='train'" in caplog.text
    # the same folder evaluated on its training stories, by choice, and a folder with both splits, pass the check
    both = write_story_dataset(tmp_path / "both")
    for folder, extra in ((one, ["--set", "control_eval_split=train"]), (both, [])):
        argv = ["--mode", "train", "--set", "preset=smoke", "--prompts", str(export), "--control", str(folder)]
        code, _ = _run(capsys, *argv, *extra, "--dry-run")
        assert code == 0, caplog.text


def test_mode_and_the_wandb_key_in_hyperparameters_are_refused(
    aws: dict[str, Any],
    export: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "a `mode` in `--config` or `--set` that differs from `--mode`"
    --mode decides the job's mode: another mode in --config or --set is an error, not silently replaced. A value
    that holds the local W&B key is refused under any key name, and the key itself is never logged. A null in
    --config is refused too."""
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"mode": "viz", "preset": "smoke"}))
    base = ["--prompts", str(export)]
    refusals = [
        (["--mode", "train", "--config", str(config)], "mode=viz (from --config) disagrees with --mode train"),
        (["--mode", "train", "--set", "mode=bench"], "mode=bench (from --set or --sweep) disagrees with --mode train"),
        (["--mode", "bench", "--sweep", "mode=bench,train"], "mode=train (from --set or --sweep) disagrees"),
    ]
    key = "0123456789abcdef0123456789abcdef01234567"
    monkeypatch.setenv("WANDB_API_KEY", key)
    refusals.append(
        (
            ["--mode", "train", "--set", f"run_name=team-{key}"],
            "run_name: secrets never go in hyperparameters (this one holds the value of WANDB_API_KEY)",
        )
    )
    # a null would go as the text "null", which model_name would take as a model's name
    nulls = tmp_path / "nulls.json"
    nulls.write_text(json.dumps({"preset": "smoke", "model_name": None, "k": 4}))
    refusals.append((["--mode", "train", "--config", str(nulls)], "model_name: null; leave the key out"))
    for argv, message in refusals:
        assert _refused(aws, capsys, caplog, [*argv, *base], message) == []
    # the key elsewhere in the request (here a channel's URI) is caught by the last check, before the request is sent
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sae:v1"
    argv = ["--mode", "viz", "--sae", f"s3://b/{key}/model.tar.gz", "--image", image, *base]
    sent = _refused(aws, capsys, caplog, argv, "the W&B key appears in the job request")
    assert not any("CreateTrainingJob" in action for action in sent)
    assert key not in caplog.text
    # the same mode in --config and --set as --mode is accepted, and so is a run name that is not the key
    config.write_text(json.dumps({"mode": "train", "preset": "smoke"}))
    argv = ["--mode", "train", "--config", str(config), "--set", "mode=train", "--set", "run_name=team-a", "--dry-run"]
    code, _ = _run(capsys, *argv, *base)
    assert code == 0, caplog.text


def _refused(
    aws: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    argv: list[str],
    message: str,
) -> list[str]:
    """Submit ``argv``, check that it is refused (status 2, ``message`` logged, no result, nothing built or pushed)
    and return the AWS actions moto received meanwhile."""
    code, out = _run(capsys, *argv)
    assert code == 2  # docs/launcher.md, Refusals: "Each of these stops the launcher with status 2"
    assert message in caplog.text
    assert out == ""
    assert _docker_calls(aws) == []
    recorded = _recorded(aws["endpoint"])
    # "... before any push, upload or job": no S3, ECR, SageMaker or Secrets Manager write at all, not only no job
    assert [_action(r) for r in recorded if _writes(r)] == []
    return [_action(r) for r in recorded]


_WRITE_VERBS = ("Create", "Put", "Delete", "Update", "Start", "Stop", "Upload", "Complete", "Initiate", "Tag", "Add")


def _action(request: dict[str, Any]) -> str:
    return request["headers"].get("X-Amz-Target") or f"{request['method']} {request['url']}"


def _writes(request: dict[str, Any]) -> bool:
    """Whether a request moto recorded changes something: a JSON-protocol action (SageMaker, ECR, Secrets Manager)
    or a query-protocol one (STS, IAM) named by a writing verb, or an S3 PUT, POST or DELETE."""
    target = request["headers"].get("X-Amz-Target")
    if target:
        return target.split(".")[-1].startswith(_WRITE_VERBS)
    query = urllib.parse.parse_qs(request["body"]) if request["body"].startswith("Action=") else {}
    if query:
        return query["Action"][0].startswith(_WRITE_VERBS)
    return request["method"] in ("PUT", "POST", "DELETE")


def test_write_detection_sees_every_kind_of_write(
    aws: dict[str, Any], export: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """Internal: the refusal tests' write detection sees a real submit's writes
    The refusal tests' check of "no write before a refusal" must see writes: a real submit's bucket, uploads,
    push and job are all found among moto's recorded requests, and reads are not taken for writes."""
    code, _ = _run(capsys, "--mode", "train", "--set", "preset=smoke", "--prompts", str(export))
    assert code == 0, caplog.text
    recorded = _recorded(aws["endpoint"])
    written = [_action(r) for r in recorded if _writes(r)]
    assert f"PUT {aws['endpoint']}/{aws['bucket']}" in [w.split("?")[0].rstrip("/") for w in written]
    assert any(w.startswith("PUT") and "manifest.json" in w for w in written)
    assert "SageMaker.CreateTrainingJob" in written
    reads = [_action(r) for r in recorded if not _writes(r)]
    assert reads and all(not a.startswith(("PUT", "DELETE")) for a in reads)


class _Terminal(io.StringIO):
    """A stdin that says it is a terminal: a real one cannot be had in tests, so getpass is patched with it."""

    def isatty(self) -> bool:
        return True


def test_secret_checks_the_key_and_never_replaces_one_unasked(
    aws: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "A secret that already exists is left as it is, with a refusal (status 2)"
    The README's way: `submit.py secret` in a terminal asks for the key without echo (getpass, patched here).
    A key not shaped like W&B's is refused before any AWS call; a stored key is replaced only with --force."""
    import getpass

    secret_id = aws["env"]["SAE_WANDB_SECRET_ID"]
    secrets = boto3.client("secretsmanager")

    def stored() -> str | None:
        try:
            return secrets.get_secret_value(SecretId=secret_id)["SecretString"]
        except secrets.exceptions.ResourceNotFoundException:
            return None
        finally:  # the launcher's calls alone are recorded
            _recorder(aws["endpoint"], "reset-recording")
            _recorder(aws["endpoint"], "start-recording")

    for bad, why in (("…", "it may hold only letters"), ("abc", "it has 3 characters where a W&B key has 40 or more")):
        monkeypatch.setenv("WANDB_API_KEY", bad)
        assert _refused(aws, capsys, caplog, ["secret"], f"WANDB_API_KEY is not a W&B API key ({why}") == []
    assert stored() is None
    monkeypatch.delenv("WANDB_API_KEY")
    assert _refused(aws, capsys, caplog, ["secret"], "there is no terminal to ask for the key on") == []

    first, second = "0123456789abcdef" * 2 + "01234567", "fedcba9876543210" * 2 + "76543210"
    asked: list[str] = []
    monkeypatch.setattr(sys, "stdin", _Terminal())
    monkeypatch.setattr(getpass, "getpass", lambda prompt: asked.append(prompt) or f" {first}\n")
    code, out = _run(capsys, "secret")
    assert code == 0, caplog.text
    assert asked == ["W&B API key (from wandb.ai/authorize; input hidden): "]
    assert stored() == first and f"jobs get WANDB_SECRET_ID={secret_id}" in out
    assert first not in out + caplog.text

    monkeypatch.setattr(getpass, "getpass", lambda prompt: "short")
    assert _refused(aws, capsys, caplog, ["secret"], "the key typed is not a W&B API key (it has 5") == []
    monkeypatch.setenv("WANDB_API_KEY", second)
    _refused(aws, capsys, caplog, ["secret"], f"secret {secret_id} already holds a W&B key; nothing was changed")
    assert stored() == first
    code, _ = _run(capsys, "secret", "--force")
    assert code == 0 and stored() == second
    assert f"replaced the W&B key stored in secret {secret_id} (--force)" in caplog.text
    # an on-prem server's key: a prefix, a dash, and the secret
    monkeypatch.setenv("WANDB_API_KEY", "local-" + first)
    assert _run(capsys, "secret", "--force")[0] == 0 and stored() == "local-" + first


@pytest.mark.parametrize(
    "key",
    ["", "abc", "…", "0123456789" * 4, "0123456789" * 3 + "012345678", "local-" + "ab" * 20, "local-" + "ab" * 19,
     "a.b.c", "key with spaces" * 4, "x" * 39 + "!", "wandb-planted-" + "7f3c9a" * 6],
)  # fmt: skip
def test_the_key_shape_is_wandbs_own(key: str) -> None:
    """docs/launcher.md: "W&B's own rule: at least 40 letters, digits or underscores"
    The launcher's check agrees with W&B's own validation of a key's shape."""
    from wandb.sdk.lib.wbauth.validation import check_api_key

    from launcher.secret import key_problem

    assert (key_problem(key) is None) == (check_api_key(key) is None)


def test_push_builds_tags_and_pushes_once(aws: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    """docs/launcher.md: "The repository is created on the first push, with immutable tags" """
    code, out = _run(capsys, "push")
    assert code == 0
    calls = [c["argv"] for c in _docker_calls(aws)]
    assert [c[0] for c in calls] == ["build", "tag", "login", "push"]
    tag = calls[0][calls[0].index("-t") + 1]
    assert tag.startswith(f"{aws['repo']}:")
    assert "--provenance=false" in calls[0] and calls[0][calls[0].index("--platform") + 1] == "linux/amd64"
    remote = calls[3][1]
    assert calls[1] == ["tag", tag, remote]
    assert remote.endswith(":" + tag.split(":", 1)[1])
    assert calls[2][:4] == ["login", "--username", "AWS", "--password-stdin"]
    assert _docker_calls(aws)[2]["stdin_bytes"] > 0  # the password came on stdin, not in argv
    ecr = boto3.client("ecr")
    repo = ecr.describe_repositories(repositoryNames=[aws["repo"]])["repositories"][0]
    assert remote.startswith(repo["repositoryUri"] + ":")
    assert repo["imageTagMutability"] == "IMMUTABLE"
    assert [any(r["url"].endswith("/") and "GetAuthorizationToken" in json.dumps(r["headers"]) for r in [rec])
            for rec in _recorded(aws["endpoint"])].count(True) == 1  # fmt: skip
    digest = ecr.describe_images(repositoryName=aws["repo"])["imageDetails"][0]["imageDigest"]
    assert out.split() == [remote, digest]

    code, out = _run(capsys, "push")  # same image files and lock: found in ECR, nothing built or pushed
    assert code == 0
    assert len(_docker_calls(aws)) == 4
    assert out.split() == [remote, digest]


def test_image_tag_names_the_images_files_not_the_commit(tmp_path: Path) -> None:
    """docs/launcher.md: "so a commit that touches only other files (README, launcher, tests) keeps the tag"
    A real git repository holding the image's inputs and a README: only what the image is built from moves the
    tag, and uncommitted image files get a tag of their own, marked dirty."""

    def git(*args: str) -> str:
        cmd = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    def commit() -> tuple[str, str]:
        git("add", "--all")
        git("commit", "-qm", "change")
        return ecr.content_tag(tmp_path)

    for name in (*ecr.IMAGE_INPUTS, "README.md"):
        path = tmp_path / name / "__init__.py" if name == "container_src" else tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{name}\n")
    git("init", "-q")
    clean, first_commit = commit()
    assert re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]{12}", clean)
    (tmp_path / "README.md").write_text("docs only\n")
    assert commit() == (clean, git("rev-parse", "HEAD").strip())  # a new commit, the same image: the same tag
    assert git("rev-parse", "HEAD").strip() != first_commit

    (tmp_path / "container_src" / "__init__.py").write_text("changed\n")
    dirty, _ = ecr.content_tag(tmp_path)
    assert dirty.endswith("-dirty") and not dirty.startswith(clean.split("-")[0])
    (tmp_path / "container_src" / "new.py").write_text("untracked\n")  # an untracked file is copied in too
    dirtier, _ = ecr.content_tag(tmp_path)
    assert dirtier.endswith("-dirty") and dirtier != dirty
    assert git("status", "--porcelain") == " M container_src/__init__.py\n?? container_src/new.py\n"  # index untouched
    assert commit()[0] == dirtier.removesuffix("-dirty")  # committed as it was: the content hash is the same

    (tmp_path / "docker" / "container.lock").write_text("torch==2.13.0\n")
    locked, _ = commit()
    assert locked.split("-")[0] != dirtier.split("-")[0] and locked.split("-")[1] != clean.split("-")[1]
    git("rm", "-q", "container_src/new.py")
    git("checkout", first_commit, "--", "container_src", "docker")
    assert commit()[0] == clean  # back to the first image's files: its tag, nothing to push


def test_train_job_request(
    aws: dict[str, Any],
    export: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/launcher.md: "Jobs are tagged `git-commit`, `image-digest`, `prompts-fingerprint`, `mode`" """
    monkeypatch.setenv("WANDB_API_KEY", PLANTED_KEY)
    assert _run(capsys, "secret")[0] == 0
    config = export.parent / "run.json"
    config.write_text(json.dumps({"preset": "smoke", "k": 16}))
    code, out = _run(
        capsys, "--mode", "train", "--config", str(config), "--set", "lr=3e-4", "--spot", "--max-run", "3600",
        "--prompts", str(export),
    )  # fmt: skip
    assert code == 0, caplog.text
    [name] = _job_names(out)
    job = _job(name)
    digest = boto3.client("ecr").describe_images(repositoryName=aws["repo"])["imageDetails"][0]["imageDigest"]
    assert job["AlgorithmSpecification"]["TrainingImage"].endswith(f"/{aws['repo']}@{digest}")
    assert job["HyperParameters"] == {"preset": "smoke", "k": "16", "lr": "3e-4", "mode": "train"}
    fingerprint = json.loads((export / "manifest.json").read_text())["fingerprint"]
    [channel] = job["InputDataConfig"]
    assert channel["ChannelName"] == "prompts"
    prompts_uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
    assert prompts_uri == f"s3://{aws['bucket']}/sae-censorship/prompts/{fingerprint[:16]}/"
    listed = boto3.client("s3").list_objects_v2(Bucket=aws["bucket"], Prefix=prompts_uri.split("/", 3)[3])
    assert sorted(o["Key"].rsplit("/", 1)[1] for o in listed["Contents"]) == sorted(p.name for p in export.iterdir())
    assert job["EnableManagedSpotTraining"] is True
    assert job["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert job["CheckpointConfig"] == {
        "S3Uri": f"s3://{aws['bucket']}/sae-censorship/checkpoints/{name}/",
        "LocalPath": "/opt/ml/checkpoints",
    }
    assert job["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    tags = _tags(job)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert tags["git-commit"] == commit
    assert tags["image-digest"] == digest
    assert tags["prompts-fingerprint"] == fingerprint

    # moto keeps neither MetricDefinitions nor Environment: read them from the request it received.
    recorded = _recorded(aws["endpoint"])
    [create] = [json.loads(r["body"]) for r in recorded if "CreateTrainingJob" in json.dumps(r["headers"])]
    assert create["AlgorithmSpecification"]["MetricDefinitions"] == jobs.metric_definitions()
    assert create["Environment"] == {
        "WANDB_SECRET_ID": aws["env"]["SAE_WANDB_SECRET_ID"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    # The key went to Secrets Manager, and nowhere else: not in any other request, the output or the log.
    with_key = [r for r in recorded if PLANTED_KEY in r["body"] or PLANTED_KEY in r["url"]]
    assert with_key and all("secretsmanager.CreateSecret" in json.dumps(r["headers"]) for r in with_key)
    assert PLANTED_KEY not in out + caplog.text + json.dumps(job, default=str) + json.dumps(tags)


def test_sweep_starts_one_job_per_combination(
    aws: dict[str, Any], export: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/launcher.md: "several `--sweep` flags start one per combination, in parallel" """
    code, out = _run(
        capsys, "--mode", "train", "--set", "preset=smoke", "--sweep", "k=16,32", "--sweep", "lr=1e-4,3e-4",
        "--prompts", str(export),
    )  # fmt: skip
    assert code == 0, caplog.text
    names = _job_names(out)
    assert len(names) == len(set(names)) == 4
    seen = set()
    for name in names:
        job = _job(name)
        hp = job["HyperParameters"]
        seen.add((hp["k"], hp["lr"]))
        assert _tags(job)["sweep"] == f"k={hp['k']} lr={hp['lr']}"
        assert job["CheckpointConfig"]["S3Uri"].endswith(f"/checkpoints/{name}/")  # each run resumes only itself
    assert seen == {("16", "1e-4"), ("16", "3e-4"), ("32", "1e-4"), ("32", "3e-4")}
    assert caplog.text.count(f"creating bucket {aws['bucket']} in us-east-1 (it does not exist yet)") == 1
    # one image build and one upload of the prompts serve the four jobs
    assert [c["argv"][0] for c in _docker_calls(aws)] == ["build", "tag", "login", "push"]
    manifest_puts = [r for r in _recorded(aws["endpoint"]) if r["method"] == "PUT" and "manifest.json" in r["url"]]
    assert len(manifest_puts) == 1


def _put_artifact(job: dict[str, Any], files: dict[str, bytes]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    bucket, _, key = job["ModelArtifacts"]["S3ModelArtifacts"][5:].partition("/")
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=buffer.getvalue())


def test_viz_from_job_then_follow_and_download(
    aws: dict[str, Any],
    export: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "unpacks `model.tar.gz` into `DIR/<job>/`, never over an existing folder" """
    code, out = _run(capsys, "--mode", "train", "--set", "preset=smoke", "--prompts", str(export))
    assert code == 0, caplog.text
    [train_name] = _job_names(out)
    train_job = _job(train_name)  # moto completes jobs at once
    _put_artifact(train_job, {"cfg.json": b"{}", "sae_weights.safetensors": b"weights"})

    code, out = _run(capsys, "--mode", "viz", "--from-job", train_name, "--prompts", str(export))
    assert code == 0, caplog.text
    [viz_name] = _job_names(out)
    viz = _job(viz_name)
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in viz["InputDataConfig"]}
    assert channels["sae"] == train_job["ModelArtifacts"]["S3ModelArtifacts"]
    assert channels["prompts"].endswith("/prompts/" + _tags(train_job)["prompts-fingerprint"][:16] + "/")
    assert viz["HyperParameters"]["mode"] == "viz"
    assert _tags(viz)["from-job"] == train_name
    assert "CheckpointConfig" not in viz

    # follow: stream the job's CloudWatch log, then fetch and unpack its artifact
    logs = boto3.client("logs")
    group, stream = "/aws/sagemaker/TrainingJobs", f"{viz_name}/algo-1-1700000000"
    with contextlib.suppress(logs.exceptions.ResourceAlreadyExistsException):
        logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName=stream)
    logs.put_log_events(
        logGroupName=group,
        logStreamName=stream,
        # recent timestamps: CloudWatch drops events older than 14 days
        logEvents=[{"timestamp": int(time.time() * 1000) + i, "message": f"viz line {i}"} for i in range(3)],
    )
    _put_artifact(viz, {"dashboards/index.html": b"<html>index</html>", "dashboards/feature_7.html": b"<html>7"})
    dest = tmp_path / "fetched"
    code, out = _run(capsys, "follow", viz_name, "--download", str(dest), "--poll-seconds", "0")
    assert code == 0, caplog.text
    assert [line for line in out.splitlines() if line.startswith("viz line")] == [f"viz line {i}" for i in range(3)]
    assert (dest / viz_name / "dashboards" / "index.html").read_bytes() == b"<html>index</html>"
    assert sorted(p.name for p in dest.iterdir()) == [viz_name]  # no temp files left beside it

    code, _ = _run(capsys, "follow", viz_name, "--download", str(dest))  # never overwrites
    assert code == submit.EXIT_INPUT
    assert "already exists" in caplog.text


class _InProgressProxy(BaseHTTPRequestHandler):
    """Forwards each request to moto and reports every training job as InProgress. moto completes a job as soon as
    it is created; a running job is what this stands in for."""

    upstream = ""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        request = urllib.request.Request(self.upstream + self.path, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request) as reply:
                status, data = reply.status, reply.read()
        except urllib.error.HTTPError as exc:
            status, data = exc.code, exc.read()
        if b'"TrainingJobStatus"' in data:
            data = json.dumps({**json.loads(data), "TrainingJobStatus": "InProgress"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def jobs_in_progress(aws: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The launcher talks to moto's SageMaker through _InProgressProxy (to the other services directly)."""
    _InProgressProxy.upstream = aws["endpoint"]
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _InProgressProxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_SAGEMAKER", f"http://127.0.0.1:{proxy.server_address[1]}")
    yield
    proxy.shutdown()


class _Clock:
    """launcher.follow's clock: each reading 200 s after the last, and the third sleep is Ctrl-C (no one can press
    it in a test, so KeyboardInterrupt is raised where the poll waits)."""

    def __init__(self) -> None:
        self.now, self.sleeps = 0.0, 0

    def monotonic(self) -> float:
        self.now += 200
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps += 1
        if self.sleeps == 3:
            raise KeyboardInterrupt


@pytest.mark.usefixtures("jobs_in_progress")
def test_ctrl_c_while_following_ends_cleanly_and_says_how_to_follow_again(
    aws: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "Ctrl-C ends the following with status 130 and no traceback"
    `follow --download` and `--wait --download` of a job still running: the status line says how long it has
    waited, and Ctrl-C ends with status 130, no traceback, and the exact command to follow the job again."""
    from launcher import follow

    name = _make_job("sae-train-running", preset="smoke")
    dest = tmp_path / "fetched"
    monkeypatch.setattr(follow, "time", _Clock())
    code, out = _run(capsys, "follow", name, "--download", str(dest), "--no-logs")
    assert code == submit.EXIT_INTERRUPTED == 130
    assert f"{name}: InProgress (" in caplog.text
    waited = re.findall(rf"{name}: InProgress \(.*\); waited (\S+)", caplog.text)
    assert waited == ["0:03:20", "0:10:00"]  # on the change, then after 300 s more without one
    assert f"Follow again with: python launcher/submit.py follow {name} --download {dest} --no-logs" in caplog.text
    assert "Traceback" not in caplog.text + out and not dest.exists()

    monkeypatch.setattr(follow, "time", _Clock())
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sae:v1"
    argv = ["--mode", "bench", "--image", image, "--wait", "--download", str(dest)]
    code, out = _run(capsys, *argv)
    assert code == 130
    [submitted] = _job_names(out)
    assert f"Follow again with: python launcher/submit.py follow {submitted} --download {dest} (" in caplog.text


def _make_job(
    name: str, mode: str = "train", checkpoints: bool = True, channels: dict[str, str] | None = None, **values: str
) -> str:
    """A training job put straight into moto (no launcher): a train job with or without checkpoints, or another mode,
    with ``values`` among its hyperparameters and ``channels`` (name -> S3 URI) as its input."""
    extra: dict[str, Any] = {}
    if checkpoints:
        extra["CheckpointConfig"] = {"S3Uri": f"s3://elsewhere/checkpoints/{name}/"}
    if channels:
        extra["InputDataConfig"] = [
            {"ChannelName": c, "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri}}}
            for c, uri in channels.items()
        ]
    boto3.client("sagemaker").create_training_job(
        TrainingJobName=name,
        HyperParameters={"mode": mode, **values},
        AlgorithmSpecification={"TrainingImage": "123456789012.dkr.ecr.us-east-1.amazonaws.com/x:1",
                                "TrainingInputMode": "File"},
        RoleArn="arn:aws:iam::123456789012:role/sae-test",
        OutputDataConfig={"S3OutputPath": "s3://elsewhere/jobs"},
        ResourceConfig={"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
        StoppingCondition={"MaxRuntimeInSeconds": 3600},
        **extra,
    )  # fmt: skip
    return name


@pytest.mark.parametrize(
    ("argv", "setup", "message"),
    [
        (["--mode", "viz", "--from-job", "sae-train-nope"], "", "--from-job sae-train-nope: no such training job"),
        (["--mode", "viz", "--from-job", "viz-job"], "viz-job", "--from-job viz-job: it is a viz job"),
        (["--mode", "viz", "--from-job", "running"], "running", "the job is InProgress, not Completed"),
        (["--mode", "train", "--resume-from", "sae-train-nope"], "", "--resume-from sae-train-nope: no such training"),
        (["--mode", "train", "--resume-from", "no-ckpt"], "no-ckpt", "had no checkpoint location"),
        (["--mode", "train", "--resume-from", "running"], "running", "is InProgress and still writes its checkpoints"),
    ],
)
def test_earlier_jobs_are_checked_before_the_push_and_uploads(
    argv: list[str],
    setup: str,
    message: str,
    request: pytest.FixtureRequest,
    aws: dict[str, Any],
    export: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "they are looked up (read-only) before the image is pushed or anything uploaded"
    No --image: without the look-up first, each of these would build, push and upload before failing."""
    if setup:
        _make_job(setup, mode="viz" if setup == "viz-job" else "train", checkpoints=setup != "no-ckpt")
    if setup == "running":
        request.getfixturevalue("jobs_in_progress")
    _recorder(aws["endpoint"], "reset-recording")
    _recorder(aws["endpoint"], "start-recording")
    preset = ["--set", "preset=smoke"] if "train" in argv else []  # a preset holds train keys, which viz refuses
    argv = [*argv, *preset, "--prompts", str(export)]
    # only the look-up reached AWS: no ECR call, no S3 upload
    assert set(_refused(aws, capsys, caplog, argv, message)) == {"SageMaker.DescribeTrainingJob"}


def test_resume_from_an_ended_job_reuses_its_checkpoints(
    aws: dict[str, Any],
    export: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "that differs from that job in what makes the run id"
    It goes on only with what decides the run id (the settings, run_name, the prompts and stories): anything else
    would train afresh beside the earlier checkpoints. Settings outside the run id (log_every) may change."""
    fingerprint = json.loads((export / "manifest.json").read_text())["fingerprint"]
    prompts = f"s3://{aws['bucket']}/sae-censorship/prompts/{fingerprint[:16]}/"
    earlier = _make_job(
        "sae-train-earlier", channels={"prompts": prompts}, preset="smoke", k="4", log_every="5", run_name="first"
    )
    other = _rewrite_rows(export, tmp_path / "other-export", 94, manifest=True)
    base = ["--mode", "train", "--set", "preset=smoke", "--resume-from", earlier]
    _recorder(aws["endpoint"], "reset-recording")
    _recorder(aws["endpoint"], "start-recording")
    refusals = [
        (["--prompts", str(export)], "the settings differ (k=4 there, 8 here; run_name='first' there, None here)"),
        (
            ["--set", "k=4", "--set", "run_name=first", "--prompts", str(other)],
            f"the settings differ (channel prompts: {prompts.rstrip('/')} there, s3://",
        ),
    ]
    for argv, message in refusals:
        sent = _refused(aws, capsys, caplog, [*base, *argv], message)
        assert set(sent) <= {"SageMaker.DescribeTrainingJob", "secretsmanager.DescribeSecret"}, sent
    code, out = _run(capsys, *base, "--set", "k=4", "--set", "run_name=first", "--prompts", str(export))
    assert code == 0, caplog.text
    [name] = _job_names(out)
    assert _job(name)["CheckpointConfig"]["S3Uri"] == f"s3://elsewhere/checkpoints/{earlier}/"


NAME_RULE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


def test_job_names_are_unique_within_one_second_and_valid() -> None:
    """docs/launcher.md: "cut to 63 characters), so two submits in the same second never collide" """
    now = 1_800_000_000.0
    first, second = jobs.job_names("train", [{}], now=now), jobs.job_names("train", [{}], now=now)
    assert first != second
    for [name] in (first, second):
        assert NAME_RULE.fullmatch(name) and name.startswith("sae-train-270115-080000-")
    runs = jobs.combinations({"dataset_path": ["x" * 80, "y" * 80], "lr": ["1e-4", "3e-4"]})
    names = jobs.job_names("train", runs, now=now)
    assert len(set(names)) == 4
    assert all(NAME_RULE.fullmatch(n) and len(n) <= 63 for n in names)
    assert len({"-".join(n.split("-")[:5]) for n in names}) == 1  # one sweep: the same time and random part
    assert [n.split("-")[5] for n in names] == ["1", "2", "3", "4"]  # numbered, so cutting a long slug keeps them apart


def test_two_submits_in_the_same_second_make_two_jobs(
    aws: dict[str, Any],
    export: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """docs/launcher.md: "so two submits in the same second never collide" """
    monkeypatch.setattr(jobs, "job_names", functools.partial(jobs.job_names, now=1_800_000_000.0))  # a frozen clock
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/x:1"
    names = []
    for k in ("16", "32"):
        code, out = _run(capsys, "--mode", "train", "--set", "preset=smoke", "--set", f"k={k}", "--prompts",
                         str(export), "--image", image)  # fmt: skip
        assert code == 0, caplog.text
        names += _job_names(out)
    assert len(set(names)) == 2
    assert [_job(name)["HyperParameters"]["k"] for name in names] == ["16", "32"]


def test_the_sdks_checks_run_before_the_push_and_uploads(
    aws: dict[str, Any],
    export: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "the SageMaker SDK's own checks of each request (among them the role, with IAM)"
    With its IAM check on, the SDK refuses the role (moto does not serve the policy simulation it calls): that
    must come before the image is built and the prompts are uploaded, not after."""
    monkeypatch.delenv("SAGEMAKER_VALIDATE_ROLE")
    argv = ["--mode", "train", "--set", "preset=smoke", "--prompts", str(export)]
    sent = _refused(aws, capsys, caplog, argv, "the SageMaker SDK refused the job")
    assert not [a for a in sent if a.startswith(("PUT", "AmazonEC2ContainerRegistry"))], sent


def test_s3_prompts_are_an_export_named_as_a_prefix(
    aws: dict[str, Any],
    export: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "An `s3://` channel is sent as a prefix ending in `/`"
    --prompts s3://… must hold an export (its manifest's fingerprint tags the job) and is sent as a prefix
    ending in /, so it cannot take in a sibling prefix such as 2025-07b/."""
    from launcher.upload import upload_export

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=aws["bucket"])
    upload_export(export, f"s3://{aws['bucket']}/prompts/2025-07", s3_client=s3)
    _recorder(aws["endpoint"], "reset-recording")
    _recorder(aws["endpoint"], "start-recording")
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sae:v1"
    base = ["--mode", "train", "--set", "preset=smoke", "--image", image]
    missing = f"s3://{aws['bucket']}/prompts/2025-08"
    sent = _refused(aws, capsys, caplog, [*base, "--prompts", missing], f"{missing}/ holds no export")
    assert not [a for a in sent if a.startswith("PUT") or "CreateTrainingJob" in a], sent
    # S3's own refusal (here: no such bucket) is an AWS failure, status 1
    code, _ = _run(capsys, *base, "--prompts", f"s3://{aws['bucket']}-none/prompts/2025-07")
    assert code == submit.EXIT_FAILED
    assert f"--prompts s3://{aws['bucket']}-none/prompts/2025-07/: S3 refused the request (NoSuchBucket" in caplog.text
    # a manifest alone under the prefix is not an export
    manifest = (export / "manifest.json").read_bytes()
    s3.put_object(Bucket=aws["bucket"], Key="prompts/lonely/manifest.json", Body=manifest)
    _recorder(aws["endpoint"], "reset-recording")  # the put above is this test's, not the launcher's
    _recorder(aws["endpoint"], "start-recording")
    lonely = f"s3://{aws['bucket']}/prompts/lonely"
    message = f"--prompts: {lonely}/ holds a manifest.json but no dataset"
    _refused(aws, capsys, caplog, [*base, "--prompts", lonely], message)
    code, out = _run(capsys, *base, "--prompts", f"s3://{aws['bucket']}/prompts/2025-07")
    assert code == 0, caplog.text
    [name] = _job_names(out)
    job = _job(name)
    [channel] = job["InputDataConfig"]
    assert channel["DataSource"]["S3DataSource"]["S3Uri"] == f"s3://{aws['bucket']}/prompts/2025-07/"
    assert _tags(job)["prompts-fingerprint"] == json.loads((export / "manifest.json").read_text())["fingerprint"]


def test_an_export_is_checked_by_its_files_before_anything_is_written(
    aws: dict[str, Any],
    export: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "or a manifest without its dataset, is refused, with the command to export again"
    A manifest without its dataset, and an export whose data file was edited after the export (its manifest
    still names the old rows), are refused before any AWS call: the bucket is never even created. The export's
    own upload (export_prompts --s3-uri) refuses them too, before writing."""
    from launcher.errors import LauncherError
    from launcher.upload import upload_export

    manifest_only = tmp_path / "manifest-only"
    manifest_only.mkdir()
    shutil.copy(export / "manifest.json", manifest_only)
    edited = _rewrite_rows(export, tmp_path / "edited-rows", 95, manifest=False)
    shutil.copy(edited / "data-00000-of-00001.arrow", export / "data-00000-of-00001.arrow")  # the same name
    base = ["--mode", "train", "--set", "preset=smoke"]
    refusals = [
        (manifest_only, f"{manifest_only} holds no readable dataset beside its manifest.json"),
        (export, f"{export}: its dataset does not match its manifest.json"),
    ]
    for folder, message in refusals:
        assert _refused(aws, capsys, caplog, [*base, "--prompts", str(folder)], message) == []
        assert f"export again (python launcher/export_prompts.py --out {folder})" in caplog.text
    s3 = boto3.client("s3")
    for folder, message in refusals:
        with pytest.raises(LauncherError, match=re.escape(message)):
            upload_export(folder, f"s3://{aws['bucket']}/prompts/x", s3_client=s3)
    assert aws["bucket"] not in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    # the export written again from the edited rows is accepted
    shutil.rmtree(export)
    _rewrite_rows(SAMPLE_PROMPTS, export, 95, manifest=True)
    code, _ = _run(capsys, *base, "--prompts", str(export), "--dry-run")
    assert code == 0, caplog.text


def test_a_sweep_that_fails_part_way_names_the_jobs_it_started(
    aws: dict[str, Any],
    export: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "A sweep refused part-way (an account limit, say) names the jobs it already started"
    The second CreateTrainingJob is refused (a quota moto does not enforce, so the refusal is injected)."""
    from botocore.client import BaseClient
    from botocore.exceptions import ClientError

    real, calls = BaseClient._make_api_call, []  # pyright: ignore[reportPrivateUsage]

    def refuse_second(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation == "CreateTrainingJob":
            calls.append(params["TrainingJobName"])
            if len(calls) == 2:
                error = {"Error": {"Code": "ResourceLimitExceeded", "Message": "account limit"}}
                raise ClientError(error, operation)  # pyright: ignore[reportArgumentType]
        return real(client, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", refuse_second)
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sae:v1"
    code, out = _run(capsys, "--mode", "train", "--set", "preset=smoke", "--sweep", "k=4,8", "--image", image,
                     "--prompts", str(export))  # fmt: skip
    assert code == submit.EXIT_FAILED and out == ""
    assert f"1 of 2 jobs were submitted before the error below and run on: {calls[0]}" in caplog.text
    assert "ResourceLimitExceeded" in caplog.text
    job = _job(calls[0])
    assert job["HyperParameters"]["k"] == "4"  # it was created (moto completes jobs at once)
    # another image's commit is not this checkout's HEAD
    assert _tags(job)["git-commit"] == "unknown" and _tags(job)["image-digest"] == "unknown"


def test_a_model_cache_uploads_only_what_the_job_reads(
    aws: dict[str, Any],
    export: Path,
    tmp_path: Path,
    tiny_assets: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "only the `refs/` and `snapshots/` of the models the runs name go up"
    A user's own cache, as the hub writes it: snapshot files are links into blobs/, and other models sit beside
    this one. The job gets refs/ and snapshots/ of its model (the links as the files they point at), once."""
    home = tmp_path / "hf_home"
    shutil.copytree(tiny_assets["hf_home"], home)
    entry = home / "hub" / "models--roneneldan--TinyStories-33M"
    (entry / "blobs").mkdir()
    for path in sorted(p for p in (entry / "snapshots").rglob("*") if p.is_file()):
        blob = entry / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        path.replace(blob)
        path.symlink_to(blob)
    other = home / "hub" / "models--someone--big" / "snapshots" / "abc"
    other.mkdir(parents=True)
    (other / "model.safetensors").write_bytes(b"\0" * 1000)
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sae:v1"
    argv = ["--mode", "train", "--set", "preset=smoke", "--network-isolation", "--model", str(home), "--image", image]
    code, out = _run(capsys, *argv, "--control", str(tiny_assets["stories"]), "--prompts", str(export))
    assert code == 0, caplog.text
    [name] = _job_names(out)
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in _job(name)["InputDataConfig"]}
    prefix = channels["model"].split("/", 3)[3]
    listed = boto3.client("s3").list_objects_v2(Bucket=aws["bucket"], Prefix=prefix)["Contents"]
    uploaded = {o["Key"].removeprefix(prefix): o["Size"] for o in listed}
    expected = {
        p.relative_to(home).as_posix(): p.stat().st_size
        for part in ("refs", "snapshots")
        for p in (entry / part).rglob("*")
        if p.is_file()
    }
    assert uploaded == expected and len(expected) > 3
    assert all("/snapshots/" in key or "/refs/" in key for key in uploaded)


def test_a_local_channel_goes_up_once_with_its_record_beside_it(aws: dict[str, Any], tmp_path: Path) -> None:
    """docs/launcher.md: "a prefix whose record holds this fingerprint is not uploaded again"
    A folder that is not an export: its files under a prefix named by their content, and a record beside the
    prefix (inside, the job would read it as data). The same folder again uploads nothing; an upload cut short
    (files but no record) is completed."""
    from launcher.channels import planned_uri, upload_dir

    folder = tmp_path / "stories"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "train.jsonl").write_text('{"text": "a story"}\n')
    (folder / "data" / "validation.jsonl").write_text('{"text": "another"}\n')
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket=aws["bucket"])
    uri = planned_uri(folder, f"s3://{aws['bucket']}/channels/control", files)
    prefix = uri.split("/", 3)[3]
    fingerprint = prefix.rstrip("/").rsplit("/", 1)[1]

    def listing() -> dict[str, str]:
        objects = s3.list_objects_v2(Bucket=aws["bucket"], Prefix="channels/").get("Contents", [])
        return {o["Key"]: o["ETag"] for o in objects}

    upload_dir(s3, folder, uri, files)
    first = listing()
    record = prefix.rstrip("/") + ".complete"
    assert set(first) == {prefix + "data/train.jsonl", prefix + "data/validation.jsonl", record}
    body = json.loads(s3.get_object(Bucket=aws["bucket"], Key=record)["Body"].read())
    assert body == {"fingerprint": fingerprint, "files": 2}
    upload_dir(s3, folder, uri, files)
    assert listing() == first
    s3.delete_object(Bucket=aws["bucket"], Key=record)
    s3.delete_object(Bucket=aws["bucket"], Key=prefix + "data/validation.jsonl")
    upload_dir(s3, folder, uri, files)
    assert set(listing()) == set(first)


def test_following_an_unknown_job_is_bad_input(
    aws: dict[str, Any], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/launcher.md: "no AWS credentials; `follow` of an unknown job"; each refusal is status 2."""
    code, _ = _run(capsys, "follow", "sae-train-nope", "--no-logs")
    assert code == submit.EXIT_INPUT
    assert "sae-train-nope: no such training job in this account and region" in caplog.text


def test_dry_run_prints_the_request_and_sends_nothing(aws: dict[str, Any], export: Path) -> None:
    """docs/launcher.md: "`--dry-run` prints the full CreateTrainingJob request(s) and sends nothing"
    As a user runs it: the script, in a fresh process."""
    result = subprocess.run(
        [sys.executable, "launcher/submit.py", "--mode", "train", "--set", "preset=smoke", "--spot", "--dry-run",
         "--prompts", str(export), "--instance-type", "ml.g4dn.xlarge"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "WANDB_API_KEY": PLANTED_KEY},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    request = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert request["HyperParameters"]["mode"] == "train"
    assert request["EnableManagedSpotTraining"] is True
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == jobs.metric_definitions()
    assert request["InputDataConfig"][0]["ChannelName"] == "prompts"
    assert "no native bf16" in result.stderr
    assert f"bucket {aws['bucket']} does not exist: a real run creates it in us-east-1" in result.stderr
    assert PLANTED_KEY not in result.stdout + result.stderr
    sent = [r for r in _recorded(aws["endpoint"]) if r["method"] in ("PUT", "DELETE") or "Create" in json.dumps(r)]
    assert sent == []
    assert (
        boto3.client("sagemaker").list_training_jobs(NameContains=request["TrainingJobName"])["TrainingJobSummaries"]
        == []
    )
    assert _docker_calls(aws) == []


def test_no_credentials_says_what_to_do(aws: dict[str, Any], export: Path, tmp_path: Path) -> None:
    """docs/launcher.md: "without any the launcher stops with status 2" """
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") or k in ("AWS_ENDPOINT_URL",)}
    env |= {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    env |= {"AWS_EC2_METADATA_DISABLED": "true"}
    result = subprocess.run(
        [sys.executable, "launcher/submit.py", "--mode", "train", "--set", "preset=smoke", "--dry-run",
         "--prompts", str(export)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "no AWS credentials found" in result.stderr and "aws configure" in result.stderr


def test_pin_base_writes_only_a_resolved_digest(tmp_path: Path) -> None:
    """docs/container.md: "it never writes a digest it did not resolve"
    make pin-base with the registry query stubbed (no registry is reachable here)."""
    dockerfile = tmp_path / "Dockerfile"
    shutil.copy(ROOT / "Dockerfile", dockerfile)
    original = dockerfile.read_text()
    from_lines = [line for line in original.splitlines() if line.startswith("FROM ")]
    assert len(from_lines) == 2  # the compatibility libraries' stage and the image itself

    def pinned(text: str, digest: str) -> str:  # every FROM's image gets the digest, before any `AS name`
        for line in from_lines:
            words = line.split()
            text = text.replace(line, " ".join([words[0], f"{words[1]}@{digest}", *words[2:]]))
        return text

    digest = "sha256:" + "ab" * 32
    fake = tmp_path / "docker"

    def pin(answer: str) -> subprocess.CompletedProcess[str]:
        fake.write_text(f"#!/bin/sh\n[ \"$2\" = version ] && exit 0\necho '{answer}'\n")
        fake.chmod(0o755)
        env = {**os.environ, "DOCKERFILE": str(dockerfile), "DOCKER": str(fake)}
        return subprocess.run(["bash", "docker/pin-base.sh"], cwd=ROOT, env=env, capture_output=True, text=True)

    bad = pin('{"digest": "not-a-digest"}')
    assert bad.returncode == 1 and "could not resolve" in bad.stderr
    assert dockerfile.read_text() == original
    good = pin(json.dumps({"digest": digest}))
    assert good.returncode == 0, good.stderr
    assert dockerfile.read_text() == pinned(original, digest)
    again = pin(json.dumps({"digest": "sha256:" + "cd" * 32}))  # re-pinning resolves the tag again
    assert again.returncode == 0
    assert dockerfile.read_text() == pinned(original, "sha256:" + "cd" * 32)


def test_settings_file_and_environment(tmp_path: Path) -> None:
    """docs/launcher.md: "a missing setting stops the launcher before any AWS call, naming it" """
    from launcher.errors import LauncherError
    from launcher.settings import Settings

    file = tmp_path / "s.toml"
    file.write_text('region = "eu-west-1"\nbucket = "from-file"\nrole_arn = "arn:aws:iam::111122223333:role/x"\n')
    settings = Settings.load(file, env={"SAE_BUCKET": "from-env"})
    assert (settings.region, settings.bucket) == ("eu-west-1", "from-env")
    with pytest.raises(LauncherError, match="image_repository"):
        settings.require("region", "image_repository")
    file.write_text('regoin = "x"\n')
    with pytest.raises(LauncherError, match="unknown key"):
        Settings.load(file, env={})
    with pytest.raises(LauncherError, match="not an IAM role ARN"):
        Settings(region="r", role_arn="my-role", bucket="b-1").require("role_arn")


def test_an_instance_too_small_for_the_estimate_is_refused_naming_those_that_fit(
    aws: dict[str, Any], export: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/launcher.md: "naming the instance types that hold it, smallest first"
    The subject model's preset needs about 64 GiB (container_src/sizing.py): an L40S's 44 GiB is refused before
    any AWS call, an A100 80 GB is accepted."""
    argv = ["--mode", "train", "--set", "preset=qwen3-8b-distill", "--prompts", str(export)]
    message = "--instance-type ml.g6e.xlarge (L40S) has 44.4 GiB of GPU memory and the run needs about 69.9 GiB"
    assert _refused(aws, capsys, caplog, [*argv, "--instance-type", "ml.g6e.xlarge"], message) == []
    assert "instance types that hold it: ml.p4de.24xlarge, ml.p5.48xlarge, ml.p5e.48xlarge" in caplog.text
    caplog.clear()
    code, out = _run(capsys, *argv, "--instance-type", "ml.p4de.24xlarge", "--dry-run")
    assert code == 0, caplog.text
    assert json.loads(out[: out.rindex("}") + 1])["ResourceConfig"]["InstanceType"] == "ml.p4de.24xlarge"
    assert "GPU memory estimate for Qwen/Qwen3-8B" in caplog.text


def test_a_plain_model_folder_is_checked_against_the_architecture_before_any_aws_call(
    aws: dict[str, Any],
    export: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "a plain `--model` folder whose config.json is not the architecture `model_name`"
    A tiny random Qwen3 as a plain folder: refused for Qwen/Qwen3-8B (its config.json says what differs), and
    accepted for an architecture whose sizes the launcher leaves to the job, its memory estimated from the folder."""
    from container_src.synthetic_qwen import write_qwen_folder

    folder = write_qwen_folder(tmp_path / "qwen")
    argv = ["--mode", "train", "--set", "preset=smoke", "--prompts", str(export), "--model", str(folder)]
    argv += ["--set", "hook_name=blocks.1.mlp.hook_post"]
    refused = [*argv, "--set", "model_name=Qwen/Qwen3-8B"]
    assert _refused(aws, capsys, caplog, refused, "is not the architecture model_name='Qwen/Qwen3-8B'") == []
    for difference in ("layers 2 (expected 36)", "d_mlp 192 (expected 12288)", "kv_heads 2 (expected 8)"):
        assert difference in caplog.text
    caplog.clear()
    code, out = _run(capsys, *argv, "--set", "model_name=Qwen/Qwen3-1.7B", "--dry-run")
    assert code == 0, caplog.text
    request = json.loads(out[: out.rindex("}") + 1])
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == ["prompts", "model"]
    assert "model weights: 0.0 GiB (all 2 layers in fp32" in caplog.text  # sized from the folder's config.json
