"""The contract of a job's channels (launcher/channels.py) and of the uploads behind them (launcher/upload.py), by
calling them directly against a real moto server on loopback: the URIs a job is given, what goes up in which
order, which earlier jobs are accepted, and every refusal's message and exit status."""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, NoCredentialsError

from container_src.data import channel_fingerprint
from launcher.channels import (
    check_local_dir,
    check_sae_uri,
    check_same_run,
    model_files,
    planned_uri,
    resume_checkpoints,
    s3_channel,
    trained_model_artifact,
    upload_dir,
)
from launcher.errors import LauncherError
from launcher.upload import (
    check_remote,
    read_manifest,
    remote_fingerprint,
    s3_errors,
    upload_export,
    upload_folder,
)
from tests.conftest import SAMPLE_PROMPTS

FP = "0123456789abcdef" * 4  # a fingerprint as an export writes it (sha256 hex)


@pytest.fixture
def s3(moto_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """An S3 client on moto."""
    for key, value in moto_server.items():
        monkeypatch.setenv(key, value)
    return boto3.client("s3")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"contract-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=name)
    return name


def calls(client: Any) -> list[tuple[str, str]]:
    """(operation, key or number of keys deleted) of every request ``client`` sends from now on, in order."""
    seen: list[tuple[str, str]] = []

    def record(model: Any, params: dict[str, Any], **_: Any) -> None:
        seen.append((model.name, params.get("Key") or str(len(params.get("Delete", {}).get("Objects", [])))))

    client.meta.events.register("provide-client-params.s3", record)
    return seen


def refusal(call: Callable[[], object]) -> LauncherError:
    with pytest.raises(LauncherError) as caught:
        call()
    return caught.value


def refused(function: Callable[..., object], *args: Any, **kwargs: Any) -> str:
    """The message ``function(*args, **kwargs)`` is refused with."""
    return str(refusal(lambda: function(*args, **kwargs)))


# --- launcher/channels.py: the URIs a job is given -------------------------------------------------------------


def test_an_s3_channel_is_a_prefix_ending_in_a_slash() -> None:
    """docs/launcher.md: "An `s3://` channel is sent as a prefix ending in `/`"
    With or without the slash given; a URI without a prefix is refused naming the option it came from."""
    assert s3_channel("--prompts", "s3://b/prompts/2025-07") == "s3://b/prompts/2025-07/"
    assert s3_channel("--prompts", "s3://b/prompts/2025-07/") == "s3://b/prompts/2025-07/"
    error = refusal(lambda: s3_channel("--control", "b/stories"))
    assert str(error) == "--control: 'b/stories' is not an S3 URI (s3://bucket/prefix)" and error.status == 2
    assert str(refusal(lambda: s3_channel("--model", "s3://b/"))).startswith("--model: 's3://b/': expected")


def test_a_sae_that_is_not_an_s3_object_is_refused_saying_how_to_upload_it() -> None:
    """docs/launcher.md: "a `--sae` that is not `s3://BUCKET/KEY`" """
    for uri in ("s3://b/jobs/sae-train-1/output/model.tar.gz", "s3://b/saes/run1/"):
        assert check_sae_uri(uri) == uri  # sent to the job as it is
    for bad in ("data/sae", "s3://b"):
        error = refusal(lambda bad=bad: check_sae_uri(bad))
        assert str(error) == (
            f"--sae {bad!r}: expected s3://BUCKET/KEY (a train job's model.tar.gz, or a prefix holding an SAE); "
            "upload a local SAE folder first (aws s3 cp --recursive DIR s3://BUCKET/PREFIX/), or use --from-job"
        )
        assert error.status == 2


def test_a_local_channel_must_be_a_folder_with_files(tmp_path: Path) -> None:
    """docs/launcher.md: "a local `--model` or `--control` that is not a folder or is empty"
    A link to a folder is taken as the folder it points at (hub caches are often links)."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "train.jsonl").write_text("{}\n")
    (tmp_path / "link").symlink_to(real)
    assert check_local_dir("control", tmp_path / "link") == real.resolve()
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", real / "train.jsonl", tmp_path / "missing"):
        error = refusal(lambda bad=bad: check_local_dir("model", bad))
        assert str(error) == f"--model {bad.resolve()}: not a folder, or empty; give a folder or an s3:// URI"


def _hub(root: Path, *names: str) -> dict[str, list[Path]]:
    """A hub cache under ``root`` with each model's refs/, snapshots/ and blobs/; the files a job reads per model."""
    read: dict[str, list[Path]] = {}
    for name in names:
        entry = root / ("models--" + name.replace("/", "--"))
        for rel in ("refs/main", "snapshots/abc/config.json", "snapshots/abc/sub/model.safetensors", "blobs/f00"):
            (entry / rel).parent.mkdir(parents=True, exist_ok=True)
            (entry / rel).write_text(rel)
        read[name] = sorted(p for p in entry.rglob("*") if p.is_file() and "blobs" not in p.parts)
    return read


def test_a_model_cache_sends_refs_and_snapshots_of_the_models_named(tmp_path: Path) -> None:
    """docs/launcher.md: "only the `refs/` and `snapshots/` of the models the runs name go up"
    From a cache folder (its models under hub/) or from the hub folder itself; every model when none is named;
    a plain model folder (config.json at its top) whole."""
    read = _hub(tmp_path / "home" / "hub", "org/small", "org/big")
    both = sorted(read["org/small"] + read["org/big"])
    assert len(read["org/small"]) == 3
    assert model_files(tmp_path / "home", {"org/small"}) == read["org/small"]
    assert model_files(tmp_path / "home" / "hub", {"org/small"}) == read["org/small"]
    assert model_files(tmp_path / "home", None) == both
    assert model_files(tmp_path / "home" / "hub", None) == both
    assert model_files(tmp_path / "home", {"org/small", "org/big"}) == both
    plain = tmp_path / "plain"
    (plain / "sub").mkdir(parents=True)
    for rel in ("config.json", "model.safetensors", "sub/tokenizer.json"):
        (plain / rel).write_text(rel)
    assert model_files(plain, {"org/small"}) == sorted(p for p in plain.rglob("*") if p.is_file())
    assert len(model_files(plain, None)) == 3


def test_a_local_channel_is_planned_under_its_content_hash(tmp_path: Path) -> None:
    """docs/launcher.md: "go to `s3://<bucket>/<prefix>/channels/<name>/<hash>/`"
    The hash is the container's own (file names and contents) of the files that go up, so other files in the local
    folder (blobs/, other models) do not change it; changed content gets another prefix."""
    folder, sent = tmp_path / "stories", tmp_path / "as-the-job-gets-it"
    for where in (folder, sent):
        where.mkdir()
        (where / "train.jsonl").write_text('{"text": "a"}\n')
    (folder / "notes.txt").write_text("not sent")
    files = [folder / "train.jsonl"]
    uri = planned_uri(folder, "s3://b/sae/channels/control", files)
    assert uri == f"s3://b/sae/channels/control/{channel_fingerprint(sent)}/"
    (folder / "train.jsonl").write_text('{"text": "b"}\n')
    assert planned_uri(folder, "s3://b/sae/channels/control/", files) not in (uri, "")


def test_a_local_channel_replaces_what_an_upload_cut_short_left(s3: Any, bucket: str, tmp_path: Path) -> None:
    """docs/launcher.md: "the files are uploaded again and any others there removed"
    Files first, then the stale ones removed, the record beside the prefix last; the old record goes first."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    files = [folder / "config.json"]
    uri = planned_uri(folder, f"s3://{bucket}/channels/model", files)
    prefix = uri.split("/", 3)[3]
    record = prefix.rstrip("/") + ".complete"
    s3.put_object(Bucket=bucket, Key=prefix + "stale.bin", Body=b"old")
    s3.put_object(Bucket=bucket, Key=record, Body=b'{"fingerprint": "other"}')
    sent = calls(s3)
    upload_dir(s3, folder, uri, files)
    writes = [c for c in sent if c[0] in ("PutObject", "DeleteObject", "DeleteObjects")]
    assert writes == [
        ("DeleteObject", record),
        ("PutObject", prefix + "config.json"),
        ("DeleteObjects", "1"),
        ("PutObject", record),
    ]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="channels/")["Contents"]]
    assert sorted(keys) == sorted([prefix + "config.json", record])
    body = json.loads(s3.get_object(Bucket=bucket, Key=record)["Body"].read())
    assert body == {"fingerprint": prefix.rstrip("/").rsplit("/", 1)[1], "files": 1}


def test_stale_files_are_removed_in_batches_s3_accepts(s3: Any, bucket: str, tmp_path: Path) -> None:
    """docs/launcher.md: "the files are uploaded again and any others there removed"
    More than the 1,000 keys S3 deletes in one request (moto does not enforce that limit: the batches are counted)."""
    folder = tmp_path / "control"
    folder.mkdir()
    (folder / "train.jsonl").write_text("{}\n")
    uri = planned_uri(folder, f"s3://{bucket}/channels/control", [folder / "train.jsonl"])
    prefix = uri.split("/", 3)[3]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: s3.put_object(Bucket=bucket, Key=f"{prefix}stale/{i:04}", Body=b""), range(1001)))
    sent = calls(s3)
    upload_dir(s3, folder, uri, [folder / "train.jsonl"])
    assert [n for op, n in sent if op == "DeleteObjects"] == ["1000", "1"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]] == [prefix + "train.jsonl"]


# --- launcher/channels.py: earlier jobs (--from-job, --resume-from) ---------------------------------------------


@pytest.fixture
def sagemaker(s3: Any) -> Any:
    return boto3.client("sagemaker")


JOB_REQUEST: dict[str, Any] = {
    "AlgorithmSpecification": {"TrainingImage": "x.dkr.ecr.us-east-1.amazonaws.com/x:1", "TrainingInputMode": "File"},
    "RoleArn": "arn:aws:iam::123456789012:role/sae-test",
    "OutputDataConfig": {"S3OutputPath": "s3://elsewhere/jobs"},
    "ResourceConfig": {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50},
    "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
}


def _job(sagemaker: Any, mode: str | None = "train", **reported: Any) -> str:
    """A training job put into moto; ``reported`` replaces fields of what DescribeTrainingJob answers for it (moto
    completes a job at once: a job that failed, stopped or runs is what this stands in for; None removes one)."""
    name = f"job-{uuid.uuid4().hex[:8]}"
    request = {**JOB_REQUEST, "CheckpointConfig": {"S3Uri": f"s3://elsewhere/checkpoints/{name}/"}}
    sagemaker.create_training_job(TrainingJobName=name, HyperParameters={"mode": mode} if mode else {}, **request)

    def rewrite(parsed: dict[str, Any], **_: Any) -> None:
        if parsed.get("TrainingJobName") == name:
            parsed.update({k: v for k, v in reported.items() if v is not None})
            for key in [k for k, v in reported.items() if v is None]:
                parsed.pop(key, None)

    sagemaker.meta.events.register("after-call.sagemaker.DescribeTrainingJob", rewrite)
    return name


def test_from_job_takes_the_model_artifact_of_a_completed_train_job(sagemaker: Any) -> None:
    """docs/launcher.md: "a `--from-job` that has not Completed or has no model artifact"
    Failed, Stopped, Stopping and InProgress are refused with the command to follow the job; a job described
    without a mode is a train job; a job's mode as the SDK writes it (JSON, with quotes) is read."""
    artifact = "s3://elsewhere/jobs/x/output/model.tar.gz"
    assert trained_model_artifact(sagemaker, _job(sagemaker, ModelArtifacts={"S3ModelArtifacts": artifact})) == artifact
    assert trained_model_artifact(sagemaker, _job(sagemaker, None, ModelArtifacts={"S3ModelArtifacts": artifact}))
    for status in ("Failed", "Stopped", "Stopping", "InProgress"):
        name = _job(sagemaker, TrainingJobStatus=status)
        assert refused(trained_model_artifact, sagemaker, name) == (
            f"--from-job {name}: the job is {status}, not Completed; "
            f"follow it with `submit.py follow {name}` and try again when it has finished"
        )
    name = _job(sagemaker, ModelArtifacts=None)
    assert refused(trained_model_artifact, sagemaker, name) == (f"--from-job {name}: the job has no model artifact")
    name = _job(sagemaker, '"viz"')
    error = refusal(lambda: trained_model_artifact(sagemaker, name))
    assert str(error) == f"--from-job {name}: it is a viz job; --from-job needs a train job" and error.status == 2


def test_resume_from_takes_the_checkpoints_of_an_ended_train_job(sagemaker: Any) -> None:
    """docs/launcher.md: "or a `--resume-from` still running or without a checkpoint location"
    Completed, Failed and Stopped jobs have ended; InProgress and Stopping still write their checkpoints."""
    for status in ("Completed", "Failed", "Stopped"):
        name = _job(sagemaker, TrainingJobStatus=status)
        uri, job = resume_checkpoints(sagemaker, name)
        assert (uri, job["TrainingJobName"]) == (f"s3://elsewhere/checkpoints/{name}/", name)
    for status in ("InProgress", "Stopping"):
        name = _job(sagemaker, TrainingJobStatus=status)
        assert refused(resume_checkpoints, sagemaker, name) == (
            f"--resume-from {name}: the job is {status} and still writes its checkpoints; "
            f"stop it (aws sagemaker stop-training-job --training-job-name {name}) or wait for it to end"
        )
    name = _job(sagemaker, CheckpointConfig=None)
    assert refused(resume_checkpoints, sagemaker, name) == (
        f"--resume-from {name}: that job had no checkpoint location, so there is nothing to resume"
    )
    name = _job(sagemaker, "bench")
    assert refused(resume_checkpoints, sagemaker, name) == (
        f"--resume-from {name}: it is a bench job; --resume-from needs a train job"
    )
    error = refusal(lambda: resume_checkpoints(sagemaker, "sae-train-nope"))
    assert str(error).startswith("--resume-from sae-train-nope: no such training job in this account and region")


def _earlier(channels: dict[str, str], **values: str) -> dict[str, Any]:
    """An earlier job's description, as far as check_same_run reads it."""
    return {
        "HyperParameters": {"mode": "train", **values},
        "InputDataConfig": [
            {"ChannelName": c, "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri}}}
            for c, uri in channels.items()
        ],
    }


def test_resume_from_needs_the_same_run_id(caplog: pytest.LogCaptureFixture) -> None:
    """docs/launcher.md: "the settings that decide what is trained (`log_every`, say, may change), `run_name`, or the
    `prompts` or `control` channel" """
    same = {"preset": "smoke", "k": "4", "run_name": "first"}
    channels = {"prompts": "s3://b/prompts/p1/", "control": "s3://b/channels/control/c1/", "model": "s3://b/m1/"}
    earlier = _earlier(channels, **same, log_every="5")
    # log_every, the model's source and a trailing slash are not the run's identity
    here = {"prompts": "s3://b/prompts/p1", "control": "s3://b/channels/control/c1", "model": "s3://b/m2/"}
    assert check_same_run("e", earlier, {**same, "log_every": "50"}, here) is None
    # a job from before the control channel was renamed
    old = _earlier({"prompts": channels["prompts"], "tinystories": channels["control"]}, **same)
    assert check_same_run("e", old, same, here) is None
    # neither job with a control channel
    assert (
        check_same_run("e", _earlier({"prompts": channels["prompts"]}, **same), same, {"prompts": here["prompts"]})
        is None
    )

    def differs(values: dict[str, str], now: dict[str, str], earlier: dict[str, Any] = earlier) -> str:
        return str(refusal(lambda: check_same_run("e", earlier, values, now)))

    assert differs({**same, "k": "8"}, here) == (
        "--resume-from e: the settings differ (k=4 there, 8 here), so the job would not find that run's "
        "checkpoints and would train afresh; give the same values (--set KEY=VALUE) and channels (--prompts, "
        "--control), or leave out --resume-from to start a new run"
    )
    assert "(run_name='first' there, 'second' here)" in differs({**same, "run_name": "second"}, here)
    assert "(run_name='first' there, None here)" in differs({"preset": "smoke", "k": "4"}, here)
    prompts = differs(same, {**here, "prompts": "s3://b/prompts/p2/"})
    assert "(channel prompts: s3://b/prompts/p1 there, s3://b/prompts/p2 here)" in prompts
    control = differs(same, {**here, "control": "s3://b/channels/control/c2/"})
    assert "(channel control: s3://b/channels/control/c1 there, s3://b/channels/control/c2 here)" in control
    assert "(channel control: s3://b/channels/control/c1 there, none here)" in differs(
        same, {"prompts": "s3://b/prompts/p1"}
    )
    both = differs({**same, "k": "8"}, {"prompts": "s3://b/prompts/p1"})
    assert "(k=4 there, 8 here; channel control: s3://b/channels/control/c1 there, none here)" in both
    caplog.set_level(logging.WARNING)
    unreadable = _earlier(channels, k="many")
    assert check_same_run("e", unreadable, {**same, "k": "8"}, {}) is None
    assert "--resume-from e: its hyperparameters are not readable here (k='many'" in caplog.text
    assert "not compared" in caplog.text


# --- launcher/upload.py ----------------------------------------------------------------------------------------


def _put_export(s3: Any, bucket: str, prefix: str, manifest: bytes | None, *names: str) -> str:
    for name in names:
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{name}", Body=b"{}")
    if manifest is not None:
        s3.put_object(Bucket=bucket, Key=f"{prefix}/manifest.json", Body=manifest)
    return f"s3://{bucket}/{prefix}"


def test_s3_prompts_must_hold_a_manifest_with_a_fingerprint_and_a_dataset(s3: Any, bucket: str) -> None:
    """docs/launcher.md: "`--prompts s3://…` must hold an export (its `manifest.json` gives the job's
    `prompts-fingerprint` tag, and a dataset must lie beside it)"
    Either file save_to_disk writes proves the dataset; a manifest that is not a JSON object, or whose fingerprint
    is empty or not text, is no export; without a manifest the prefix is not even listed."""
    manifest = json.dumps({"fingerprint": FP}).encode()
    for name in ("state.json", "dataset_info.json"):
        assert remote_fingerprint(s3, _put_export(s3, bucket, f"only-{name}", manifest, name)) == FP
    no_export = (
        "--prompts: {}/ holds no export (manifest.json with a fingerprint is missing there); check the prefix, "
        "or upload one with `export_prompts.py --s3-uri` (or give the export folder, which submit.py uploads)"
    )
    bad = [b'{"fingerprint": ""}', b'{"fingerprint": 5}', b'["fingerprint"]', b"not json", b"{}"]
    for i, body in enumerate(bad):
        uri = _put_export(s3, bucket, f"bad{i}", body, "state.json", "dataset_info.json")
        assert refused(remote_fingerprint, s3, uri) == no_export.format(uri)
    uri = _put_export(s3, bucket, "none", None, "state.json")
    sent = calls(s3)
    assert refused(remote_fingerprint, s3, uri) == no_export.format(uri)
    assert [op for op, _ in sent] == ["GetObject"]
    uri = _put_export(s3, bucket, "lonely", manifest, "data-00000-of-00001.arrow")
    assert refused(remote_fingerprint, s3, uri) == (
        f"--prompts: {uri}/ holds a manifest.json but no dataset beside it; upload the whole export again "
        "(export_prompts.py --s3-uri … --force, or give the export folder)"
    )


def test_an_export_prefix_holding_something_else_is_refused(s3: Any, bucket: str) -> None:
    """docs/export.md: "a prefix holding another export, or objects without a `manifest.json`, is refused"
    Status 1, naming the prefix and both fingerprints; without --force only (force is off unless asked for)."""
    assert check_remote(f"s3://{bucket}/empty", FP, s3_client=s3) is False
    uri = _put_export(s3, bucket, "same", json.dumps({"fingerprint": FP}).encode())
    assert check_remote(uri, FP, s3_client=s3) is True
    assert check_remote(uri, FP, force=True, s3_client=s3) is True  # the same content is not uploaded again
    other = "fedcba9876543210" * 4
    uri = _put_export(s3, bucket, "other", json.dumps({"fingerprint": other}).encode())
    error = refusal(lambda: check_remote(uri, FP, s3_client=s3))
    assert str(error) == (
        f"{uri}/ holds a different export (fingerprint fedcba987654…, this one 0123456789ab…); "
        "nothing was uploaded. Replace it with --force (force=True) or choose another prefix."
    )
    assert error.status == 1
    assert check_remote(uri, FP, force=True, s3_client=s3) is False
    for i, body in enumerate([b'{"columns": []}', b"not json", b'["a list"]']):  # a manifest, if not a good one
        uri = _put_export(s3, bucket, f"unnamed{i}", body)
        assert "holds a different export (fingerprint none…, this one" in refused(check_remote, uri, FP, s3_client=s3)
    uri = _put_export(s3, bucket, "foreign", None, "a.txt", "b.txt")
    error = refusal(lambda: check_remote(uri, FP, s3_client=s3))
    assert str(error) == (
        f"{uri}/ holds 2 object(s) but no manifest.json, so it is not an export; nothing was uploaded. Choose "
        "another prefix, or replace them with --force (force=True)."
    )
    assert error.status == 1


def test_s3_refusals_name_the_option_the_uri_came_from(s3: Any, bucket: str) -> None:
    """docs/launcher.md: "S3's own refusals (no such bucket, access denied) are status 1, as every AWS service's are,
    and name where the URI came from" """
    missing = f"{bucket}-none"
    error = refusal(lambda: check_remote(f"s3://{missing}/p", FP, s3_client=s3))
    assert (
        str(error)
        == f"--s3-uri s3://{missing}/p/: S3 refused the request (NoSuchBucket: no such bucket; check its name)"
    )
    assert error.status == 1
    error = refusal(lambda: upload_export(SAMPLE_PROMPTS, f"s3://{missing}/p", s3_client=s3))
    assert str(error).startswith(f"--s3-uri s3://{missing}/p/: S3 refused the request (NoSuchBucket")
    error = refusal(
        lambda: upload_export(SAMPLE_PROMPTS, f"s3://{missing}/p", s3_client=s3, option="the `bucket` setting")
    )
    assert str(error).startswith(f"the `bucket` setting s3://{missing}/p/: S3 refused the request (NoSuchBucket")
    for code, hint in [
        (
            "AccessDenied",
            "the bucket belongs to another account, or your credentials may not use it (see the IAM policy)",
        ),
        ("403", "the bucket belongs to another account, or your credentials may not use it (see the IAM policy)"),
        ("404", "no such bucket; check its name"),
        ("SlowDown", "Reduce your request rate"),
    ]:
        with pytest.raises(LauncherError) as caught, s3_errors("s3://b/p/", "--prompts"):
            raise ClientError({"Error": {"Code": code, "Message": "Reduce your request rate"}}, "GetObject")
        assert str(caught.value) == f"--prompts s3://b/p/: S3 refused the request ({code}: {hint})"
        assert caught.value.status == 1
    with pytest.raises(NoCredentialsError), s3_errors("s3://b/p/", "--prompts"):
        raise NoCredentialsError()  # the caller says what to do about missing credentials
    closed = boto3.client("s3", endpoint_url="http://127.0.0.1:9", config=Config(retries={"max_attempts": 1}))
    error = refusal(lambda: check_remote(f"s3://{bucket}/p", FP, s3_client=closed))
    assert str(error).startswith(f"--s3-uri s3://{bucket}/p/: cannot talk to S3 (Could not connect")
    assert error.status == 1


def test_an_export_goes_up_files_first_and_its_manifest_last(
    s3: Any, bucket: str, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/export.md: "the files first, `manifest.json` last"
    Over another export (with force): its manifest is removed first and its stale files after the new ones."""
    uri = _put_export(s3, bucket, "v1", json.dumps({"fingerprint": "old"}).encode(), "data-00001-of-00002.arrow")
    sent = calls(s3)
    assert upload_export(SAMPLE_PROMPTS, uri, force=True, s3_client=s3) == uri + "/"
    writes = [c for c in sent if c[0] in ("PutObject", "DeleteObject", "DeleteObjects")]
    files = sorted(p.name for p in SAMPLE_PROMPTS.iterdir() if p.is_file() and p.name != "manifest.json")
    assert writes[0] == ("DeleteObject", "v1/manifest.json")
    assert sorted(writes[1:-2]) == [("PutObject", f"v1/{name}") for name in files]
    assert writes[-2:] == [("DeleteObjects", "1"), ("PutObject", "v1/manifest.json")]
    listed = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="v1/")["Contents"])
    assert listed == sorted(f"v1/{name}" for name in [*files, "manifest.json"])
    remote = s3.get_object(Bucket=bucket, Key="v1/manifest.json")["Body"].read()
    assert remote == (SAMPLE_PROMPTS / "manifest.json").read_bytes()
    sent.clear()
    caplog.set_level(logging.INFO)
    fingerprint = read_manifest(SAMPLE_PROMPTS)["fingerprint"]
    assert upload_folder(s3, SAMPLE_PROMPTS, [], uri, fingerprint, export=True) == uri + "/"
    assert [op for op, _ in sent] == ["GetObject"]  # already there: nothing written
    assert f"{uri}/ already holds this export (fingerprint {fingerprint[:12]}…); nothing uploaded" in caplog.text


def test_an_export_changed_while_the_launcher_ran_is_not_uploaded(s3: Any, bucket: str, tmp_path: Path) -> None:
    """Pins: upload_export refuses an export whose fingerprint is no longer the one the launcher planned with.
    And a folder that is no export, or whose manifest has no fingerprint, is refused saying to export again."""
    fingerprint = read_manifest(SAMPLE_PROMPTS)["fingerprint"]
    sent = calls(s3)
    error = refusal(lambda: upload_export(SAMPLE_PROMPTS, f"s3://{bucket}/p", s3_client=s3, expected=FP))
    assert str(error) == (
        f"{SAMPLE_PROMPTS} was exported again while the launcher ran (fingerprint 0123456789ab… became "
        f"{fingerprint[:12]}…); nothing was uploaded. Run the command again."
    )
    assert sent == []
    assert upload_export(SAMPLE_PROMPTS, f"s3://{bucket}/p", s3_client=s3, expected=fingerprint) == f"s3://{bucket}/p/"
    assert refused(read_manifest, tmp_path) == (
        f"{tmp_path} is not an export: it has no manifest.json; "
        "export the prompts first (python launcher/export_prompts.py --out DIR)"
    )
    (tmp_path / "manifest.json").write_text("[]")
    assert refused(read_manifest, tmp_path) == (
        f"manifest {tmp_path / 'manifest.json'} must hold a JSON object of key: value pairs"
    )
    (tmp_path / "manifest.json").write_text('{"fingerprint": ""}')
    assert refused(read_manifest, tmp_path) == f"{tmp_path / 'manifest.json'} has no fingerprint; export again"


def test_an_export_is_read_back_before_it_goes_up(tmp_path: Path) -> None:
    """docs/launcher.md: "a folder edited after the export (its manifest naming other rows), or a manifest without
    its dataset, is refused, with the command to export again"
    The message names both fingerprints; a folder holding a DatasetDict (not what an export writes) is refused."""
    from datasets import Dataset, DatasetDict

    from launcher.upload import verify_export

    edited = tmp_path / "edited"
    shutil.copytree(SAMPLE_PROMPTS, edited)
    actual = json.loads((edited / "manifest.json").read_text())["fingerprint"]
    (edited / "manifest.json").write_text(json.dumps({"fingerprint": FP}))
    again = f"export again (python launcher/export_prompts.py --out {edited})"
    assert refused(verify_export, edited) == (
        f"{edited}: its dataset does not match its manifest.json (the rows' fingerprint is {actual[:12]}…, the "
        f"manifest says 0123456789ab…), so it was changed after the export; nothing was uploaded. To use the "
        f"changed prompts, {again}"
    )
    split = tmp_path / "split"
    DatasetDict({"train": Dataset.from_list([{"text": "a"}])}).save_to_disk(str(split))
    (split / "manifest.json").write_text(json.dumps({"fingerprint": FP}))
    assert refused(verify_export, split) == (
        f"{split} holds a DatasetDict, not the one dataset an export writes; "
        f"export again (python launcher/export_prompts.py --out {split})"
    )
    assert verify_export(SAMPLE_PROMPTS)["fingerprint"] == actual
