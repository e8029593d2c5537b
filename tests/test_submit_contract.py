"""launcher/submit.py's own promises, each by what a user sees: the request's defaults and tags, the table, the
environment a job gets, where local channels go, what an interruption or an unreachable bucket says, and the
export checked again before its upload. Against the launcher tests' moto server and docker stub."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import boto3
import pytest

from launcher import submit
from tests import test_launcher
from tests.conftest import SAMPLE_PROMPTS

# The launcher tests' moto-backed AWS (own bucket and repository) and docker stub, and the sample prompt export.
aws = test_launcher.aws
export = test_launcher.export

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sae"
DIGEST = "sha256:" + "5e" * 32


def _requests(out: str) -> tuple[list[dict[str, Any]], list[str]]:
    """A dry run's output: the requests it printed, then the lines of its table."""
    decoder, requests, at = json.JSONDecoder(), [], 0
    while out[at:].lstrip().startswith("{"):
        at += len(out[at:]) - len(out[at:].lstrip())
        request, at = decoder.raw_decode(out, at)
        requests.append(request)
    return requests, out[at:].strip("\n").splitlines()


def _tags(request: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in request.get("Tags", [])}


def _channels(request: dict[str, Any]) -> dict[str, str]:
    return {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request.get("InputDataConfig", [])}


def _fingerprint(export: Path) -> str:
    return json.loads((export / "manifest.json").read_text())["fingerprint"]


def test_a_plain_submit_gets_the_documented_defaults_and_tags(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    aws: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "`--volume-gb` (default 50) sizes the job's storage volume; `--max-run` (default 86400 s)"
    Also: `--prompts DIR` (default `data/prompts`); tags `git-commit`, `image-digest`, `prompts-fingerprint`,
    `mode`, and under `--image` the commit `unknown` and the URI's digest; a shell's unstored WANDB_API_KEY is
    warned about and never sent; the table names the job, its instance, spot and state."""
    export = shutil.copytree(SAMPLE_PROMPTS, tmp_path / "work" / "data" / "prompts")
    monkeypatch.chdir(tmp_path / "work")  # --prompts left out: data/prompts here
    monkeypatch.setenv("WANDB_API_KEY", test_launcher.PLANTED_KEY)
    code = submit.main(["--mode", "train", "--set", "preset=smoke", "--image", f"{IMAGE}@{DIGEST}", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0, caplog.text
    [request], table = _requests(out)
    name = request["TrainingJobName"]
    assert request["ResourceConfig"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    assert not request.get("EnableManagedSpotTraining") and not request.get("EnableNetworkIsolation")
    assert request["AlgorithmSpecification"]["TrainingImage"] == f"{IMAGE}@{DIGEST}"
    fingerprint = _fingerprint(export)
    assert _channels(request) == {"prompts": f"s3://{aws['bucket']}/sae-censorship/prompts/{fingerprint[:16]}/"}
    assert request["CheckpointConfig"]["S3Uri"] == f"s3://{aws['bucket']}/sae-censorship/checkpoints/{name}/"
    assert _tags(request) == {
        "git-commit": "unknown",
        "image-digest": DIGEST,
        "mode": "train",
        "prompts-fingerprint": fingerprint,
    }
    secret_id = aws["env"]["SAE_WANDB_SECRET_ID"]
    assert f"WANDB_API_KEY is set here but not stored as secret {secret_id}; run `submit.py secret` first" in (
        caplog.text
    )
    assert not request.get("Environment") and test_launcher.PLANTED_KEY not in out + caplog.text
    widths = [len(name), len("instance"), len("spot"), len("dry run")]
    assert table == [
        "  ".join(["job".ljust(widths[0]), "instance".ljust(len("ml.g5.xlarge")), "spot", "state"]),
        "  ".join([name, "ml.g5.xlarge", "no".ljust(widths[2]), "dry run"]),
    ]


def test_a_spot_sweep_tags_each_run_and_tabulates_its_values(
    aws: dict[str, Any], export: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/launcher.md: "several `--sweep` flags start one per combination, in parallel"
    A dry run of a spot sweep: a request per run with its `sweep` tag, its own checkpoint folder, the options
    given (volume, instance), and a table whose columns line up: job, each swept key, instance, spot, state."""
    argv = ["--mode", "train", "--set", "preset=smoke", "--sweep", "k=16,128", "--sweep", "lr=1e-4,3e-4", "--spot"]
    argv += ["--volume-gb", "75", "--instance-type", "ml.g6.xlarge", "--image", f"{IMAGE}:v1", "--dry-run"]
    code = submit.main([*argv, "--prompts", str(export)])
    out = capsys.readouterr().out
    assert code == 0, caplog.text
    requests, table = _requests(out)
    names = [r["TrainingJobName"] for r in requests]
    assert [_tags(r)["sweep"] for r in requests] == ["k=16 lr=1e-4", "k=16 lr=3e-4", "k=128 lr=1e-4", "k=128 lr=3e-4"]
    assert all(_tags(r)["image-digest"] == "unknown" for r in requests)
    for name, request in zip(names, requests, strict=True):
        assert request["CheckpointConfig"]["S3Uri"].endswith(f"/sae-censorship/checkpoints/{name}/")
        assert request["ResourceConfig"]["VolumeSizeInGB"] == 75
        assert request["EnableManagedSpotTraining"] is True
    job = max(len(n) for n in names)
    header = f"{'job'.ljust(job)}  k    lr    instance      spot  state"
    values = [("16", "1e-4"), ("16", "3e-4"), ("128", "1e-4"), ("128", "3e-4")]
    rows = [
        f"{n.ljust(job)}  {k.ljust(3)}  {lr}  ml.g6.xlarge  yes   dry run"
        for n, (k, lr) in zip(names, values, strict=True)
    ]
    assert table == [header, *rows]


def test_a_network_isolated_job_gets_no_secret_and_its_local_channels_go_up(
    aws: dict[str, Any],
    export: Path,
    tiny_assets: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """docs/launcher.md: "A network-isolated job cannot reach Secrets Manager, so it logs offline too."
    Even with the W&B secret stored, the job's environment holds no secret id; the request asks for isolation;
    the local --model and --control go to `s3://<bucket>/<prefix>/channels/<name>/<hash>/`, and a real submit
    uploads both, each with its record beside the prefix."""
    boto3.client("secretsmanager").create_secret(Name=aws["env"]["SAE_WANDB_SECRET_ID"], SecretString="k" * 40)
    argv = ["--mode", "train", "--set", "preset=smoke", "--network-isolation", "--image", f"{IMAGE}:v1"]
    argv += ["--model", str(tiny_assets["hf_home"]), "--control", str(tiny_assets["stories"])]
    argv += ["--prompts", str(export)]
    assert submit.main([*argv, "--dry-run"]) == 0, caplog.text
    [request], _ = _requests(capsys.readouterr().out)
    assert "network isolation: the job cannot reach Secrets Manager or W&B, so W&B logs offline" in caplog.text
    assert request["EnableNetworkIsolation"] is True
    assert not request.get("Environment")
    channels = _channels(request)
    assert sorted(channels) == ["control", "model", "prompts"]
    for name in ("model", "control"):
        head, _, digest = channels[name].rstrip("/").rpartition("/")
        assert head == f"s3://{aws['bucket']}/sae-censorship/channels/{name}" and len(digest) >= 16
        assert channels[name].endswith("/")

    assert submit.main(argv) == 0, caplog.text
    s3 = boto3.client("s3")
    for name in ("model", "control"):
        prefix = channels[name].split("/", 3)[3]
        listed = s3.list_objects_v2(Bucket=aws["bucket"], Prefix=prefix).get("Contents", [])
        assert len(listed) > 1, name
        record = s3.get_object(Bucket=aws["bucket"], Key=prefix.rstrip("/") + ".complete")["Body"].read()
        assert json.loads(record)["files"] == len(listed)


def test_s3_model_and_control_go_to_the_job_as_given_with_the_secret_id(
    aws: dict[str, Any], export: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/launcher.md: "S3 URIs there go to the job as they are"
    Not isolated, with the W&B secret stored: the job gets WANDB_SECRET_ID and the region, and the s3:// model
    and control channels unchanged."""
    secret_id = aws["env"]["SAE_WANDB_SECRET_ID"]
    boto3.client("secretsmanager").create_secret(Name=secret_id, SecretString="k" * 40)
    model, control = "s3://elsewhere/hub/", "s3://elsewhere/stories/"
    argv = ["--mode", "train", "--set", "preset=smoke", "--image", f"{IMAGE}:v1", "--model", model]
    code = submit.main([*argv, "--control", control, "--prompts", str(export), "--dry-run"])
    assert code == 0, caplog.text
    [request], _ = _requests(capsys.readouterr().out)
    assert request["Environment"] == {"WANDB_SECRET_ID": secret_id, "AWS_DEFAULT_REGION": "us-east-1"}
    channels = _channels(request)
    assert (channels["model"], channels["control"]) == (model, control)
