"""launcher/submit.py's own promises, each by what a user sees: the request's defaults and tags, the table, the
environment a job gets, where local channels go, what an interruption or an unreachable bucket says, and the
export checked again before its upload. Against the launcher tests' moto server and docker stub."""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass
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
jobs_in_progress = test_launcher.jobs_in_progress  # SageMaker reports every job as still running

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sae"
DIGEST = "sha256:" + "5e" * 32


@dataclass
class Launch:
    """submit.main run as a user runs it: the exit status and what it printed; ``log`` is what it logged."""

    capsys: pytest.CaptureFixture[str]
    caplog: pytest.LogCaptureFixture

    def __call__(self, *argv: str) -> tuple[int, str]:
        self.caplog.clear()
        code = submit.main(list(argv))
        return code, self.capsys.readouterr().out

    @property
    def log(self) -> str:
        return self.caplog.text

    @property
    def messages(self) -> list[str]:
        """Each logged message whole: a message's words are checked as they are, nothing around them."""
        return [record.getMessage() for record in self.caplog.records]


@pytest.fixture
def launch(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> Launch:
    return Launch(capsys, caplog)


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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, aws: dict[str, Any], launch: Launch
) -> None:
    """docs/launcher.md: "`--volume-gb` (default 50) sizes the job's storage volume; `--max-run` (default 86400 s)"
    Also: `--prompts DIR` (default `data/prompts`); tags `git-commit`, `image-digest`, `prompts-fingerprint`,
    `mode`, and under `--image` the commit `unknown` and the URI's digest; a shell's unstored WANDB_API_KEY is
    warned about and never sent; the table names the job, its instance, spot and state."""
    export = shutil.copytree(SAMPLE_PROMPTS, tmp_path / "work" / "data" / "prompts")
    monkeypatch.chdir(tmp_path / "work")  # --prompts left out: data/prompts here
    monkeypatch.setenv("WANDB_API_KEY", test_launcher.PLANTED_KEY)
    code, out = launch("--mode", "train", "--set", "preset=smoke", "--image", f"{IMAGE}@{DIGEST}", "--dry-run")
    assert code == 0, launch.log
    [request], table = _requests(out)
    name = request["TrainingJobName"]
    assert request["ResourceConfig"] == {"InstanceType": "ml.g5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 50}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 86400}
    assert not request.get("EnableManagedSpotTraining") and not request.get("EnableNetworkIsolation")
    assert request["AlgorithmSpecification"]["TrainingImage"] == f"{IMAGE}@{DIGEST}"
    fingerprint = _fingerprint(export)
    assert _channels(request) == {"prompts": f"s3://{aws['bucket']}/sae-censorship/prompts/{fingerprint[:16]}/"}
    assert request["CheckpointConfig"]["S3Uri"] == f"s3://{aws['bucket']}/sae-censorship/checkpoints/{name}/"
    # the artifacts too stay under the prefix, where the job role's policy lets the job write
    assert request["OutputDataConfig"]["S3OutputPath"].startswith(f"s3://{aws['bucket']}/sae-censorship/")
    assert _tags(request) == {
        "git-commit": "unknown",
        "image-digest": DIGEST,
        "mode": "train",
        "prompts-fingerprint": fingerprint,
    }
    secret_id = aws["env"]["SAE_WANDB_SECRET_ID"]
    assert (
        f"WANDB_API_KEY is set here but not stored as secret {secret_id}; run `submit.py secret` first. "
        "Jobs log W&B offline (the key is never sent with the job)."
    ) in launch.messages
    assert not request.get("Environment") and test_launcher.PLANTED_KEY not in out + launch.log
    widths = [len(name), len("instance"), len("spot"), len("dry run")]
    assert table == [
        "  ".join(["job".ljust(widths[0]), "instance".ljust(len("ml.g5.xlarge")), "spot", "state"]),
        "  ".join([name, "ml.g5.xlarge", "no".ljust(widths[2]), "dry run"]),
    ]


def test_a_spot_sweep_tags_each_run_and_tabulates_its_values(aws: dict[str, Any], export: Path, launch: Launch) -> None:
    """docs/launcher.md: "several `--sweep` flags start one per combination, in parallel"
    A dry run of a spot sweep: a request per run with its `sweep` tag, its own checkpoint folder, the options
    given (volume, instance), and a table whose columns line up: job, each swept key, instance, spot, state."""
    argv = ["--mode", "train", "--set", "preset=smoke", "--sweep", "k=16,128", "--sweep", "lr=1e-4,3e-4", "--spot"]
    argv += ["--volume-gb", "75", "--instance-type", "ml.g6.xlarge", "--image", f"{IMAGE}:v1", "--dry-run"]
    code, out = launch(*argv, "--prompts", str(export))
    assert code == 0, launch.log
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
    aws: dict[str, Any], export: Path, tiny_assets: dict[str, Path], launch: Launch
) -> None:
    """docs/launcher.md: "A network-isolated job cannot reach Secrets Manager, so it logs offline too."
    Even with the W&B secret stored, the job's environment holds no secret id; the request asks for isolation;
    the local --model and --control go to `s3://<bucket>/<prefix>/channels/<name>/<hash>/`, and a real submit
    uploads both, each with its record beside the prefix."""
    boto3.client("secretsmanager").create_secret(Name=aws["env"]["SAE_WANDB_SECRET_ID"], SecretString="k" * 40)
    argv = ["--mode", "train", "--set", "preset=smoke", "--network-isolation", "--image", f"{IMAGE}:v1"]
    argv += ["--model", str(tiny_assets["hf_home"]), "--control", str(tiny_assets["stories"])]
    argv += ["--prompts", str(export)]
    code, out = launch(*argv, "--dry-run")
    assert code == 0, launch.log
    [request], _ = _requests(out)
    assert "network isolation: the job cannot reach Secrets Manager or W&B, so W&B logs offline" in launch.messages
    assert request["EnableNetworkIsolation"] is True
    assert not request.get("Environment")
    channels = _channels(request)
    assert sorted(channels) == ["control", "model", "prompts"]
    for name in ("model", "control"):
        head, _, digest = channels[name].rstrip("/").rpartition("/")
        assert head == f"s3://{aws['bucket']}/sae-censorship/channels/{name}" and len(digest) >= 16
        assert channels[name].endswith("/")

    assert launch(*argv)[0] == 0, launch.log
    s3 = boto3.client("s3")
    for name in ("model", "control"):
        prefix = channels[name].split("/", 3)[3]
        listed = s3.list_objects_v2(Bucket=aws["bucket"], Prefix=prefix).get("Contents", [])
        assert len(listed) > 1, name
        record = s3.get_object(Bucket=aws["bucket"], Key=prefix.rstrip("/") + ".complete")["Body"].read()
        assert json.loads(record)["files"] == len(listed)


def test_s3_model_and_control_go_to_the_job_as_given_with_the_secret_id(
    aws: dict[str, Any], export: Path, launch: Launch
) -> None:
    """docs/launcher.md: "S3 URIs there go to the job as they are"
    Not isolated, with the W&B secret stored: the job gets WANDB_SECRET_ID and the region, and the s3:// model
    and control channels unchanged."""
    secret_id = aws["env"]["SAE_WANDB_SECRET_ID"]
    boto3.client("secretsmanager").create_secret(Name=secret_id, SecretString="k" * 40)
    model, control = "s3://elsewhere/hub/", "s3://elsewhere/stories/"
    argv = ["--mode", "train", "--set", "preset=smoke", "--image", f"{IMAGE}:v1", "--model", model]
    code, out = launch(*argv, "--control", control, "--prompts", str(export), "--dry-run")
    assert code == 0, launch.log
    [request], _ = _requests(out)
    assert request["Environment"] == {"WANDB_SECRET_ID": secret_id, "AWS_DEFAULT_REGION": "us-east-1"}
    channels = _channels(request)
    assert (channels["model"], channels["control"]) == (model, control)


def _on_create(monkeypatch: pytest.MonkeyPatch, before: Any) -> None:
    """Calls ``before(n, name)`` as the n-th CreateTrainingJob (from 1) is about to be sent; what it raises is what
    the launcher's call raises, and that job is not sent. Where a test plays what no server can do here (a Ctrl-C,
    a throttled call, the log a job writes)."""
    from botocore.client import BaseClient

    sent = BaseClient._make_api_call  # pyright: ignore[reportPrivateUsage]
    created: list[str] = []

    def call(client: Any, operation: str, params: dict[str, Any]) -> Any:
        if operation == "CreateTrainingJob":
            created.append(params["TrainingJobName"])
            before(len(created), params["TrainingJobName"])
        return sent(client, operation, params)

    monkeypatch.setattr(BaseClient, "_make_api_call", call)


def test_ctrl_c_part_way_through_a_sweep_names_the_jobs_that_run_on(
    aws: dict[str, Any], export: Path, monkeypatch: pytest.MonkeyPatch, launch: Launch
) -> None:
    """docs/launcher.md: "130 Ctrl-C (what was written stays whole; jobs already submitted run on"
    Ctrl-C as the third of four jobs is sent: status 130, the two created named with the commands to follow or
    stop them, no table. An AWS error of no known kind keeps its class name, with status 1."""
    from botocore.exceptions import ClientError

    sent: list[str] = []

    def ctrl_c_at_third(n: int, name: str) -> None:
        sent.append(name)
        if n == 3:
            raise KeyboardInterrupt

    _on_create(monkeypatch, ctrl_c_at_third)
    argv = ["--mode", "train", "--set", "preset=smoke", "--image", f"{IMAGE}:v1", "--prompts", str(export)]
    assert launch(*argv, "--sweep", "k=4,8,16,32") == (130, "")
    assert len(sent) == 3 and sent[0].endswith("-1-k4")
    this_sweep = sent[0].removesuffix("-1-k4")  # the shared moto server holds other tests' jobs too
    jobs = boto3.client("sagemaker").list_training_jobs(NameContains=this_sweep)["TrainingJobSummaries"]
    started, third = sent[:2], sent[2]  # the third's request was going out when Ctrl-C came
    assert sorted(j["TrainingJobName"] for j in jobs) == started
    assert launch.messages[-3:] == [
        f"2 of 4 jobs were submitted before the error below and run on: {', '.join(started)}. Follow them with "
        "`submit.py follow JOB`, or stop them with `aws sagemaker stop-training-job --training-job-name JOB`",
        f"{third} was being sent when the error below came, so it may have been created too: check with "
        f"`aws sagemaker describe-training-job --training-job-name {third}`",
        "interrupted (Ctrl-C); jobs already submitted run on",
    ]

    def quota(n: int, name: str) -> None:
        raise ClientError({"Error": {"Code": "ThrottlingException", "Message": "slow down"}}, "CreateTrainingJob")

    _on_create(monkeypatch, quota)
    assert launch(*argv) == (1, "")
    message = "ClientError: An error occurred (ThrottlingException) when calling the CreateTrainingJob operation"
    assert launch.messages[-1] == f"{message}: slow down"
    assert "were submitted before the error" not in launch.log  # the one job's own error says it all
    assert "was being sent" not in launch.log  # SageMaker answered: the job was not created


def test_ctrl_c_while_a_request_is_out_names_that_job_as_maybe_created(
    aws: dict[str, Any], export: Path, monkeypatch: pytest.MonkeyPatch, launch: Launch
) -> None:
    """docs/launcher.md: "the job whose request was out when it came is named as perhaps created"
    Ctrl-C after SageMaker has taken the second request but before its answer is read (played here by raising it
    once the call returns): that job exists, so the launcher names it beside the one it knows was submitted."""
    from botocore.client import BaseClient

    sent = BaseClient._make_api_call  # pyright: ignore[reportPrivateUsage]
    created: list[str] = []

    def call(client: Any, operation: str, params: dict[str, Any]) -> Any:
        answer = sent(client, operation, params)
        if operation == "CreateTrainingJob":
            created.append(params["TrainingJobName"])
            if len(created) == 2:
                raise KeyboardInterrupt
        return answer

    monkeypatch.setattr(BaseClient, "_make_api_call", call)
    argv = ["--mode", "train", "--set", "preset=smoke", "--image", f"{IMAGE}:v1", "--prompts", str(export)]
    assert launch(*argv, "--sweep", "k=4,8,16") == (130, "")
    assert len(created) == 2
    this_sweep = created[0].removesuffix("-1-k4")  # the shared moto server holds other tests' jobs too
    jobs = boto3.client("sagemaker").list_training_jobs(NameContains=this_sweep)["TrainingJobSummaries"]
    assert sorted(j["TrainingJobName"] for j in jobs) == created  # the second exists, though its answer was never read
    first, second = created
    assert launch.messages[-3:] == [
        f"1 of 3 jobs were submitted before the error below and run on: {first}. Follow them with "
        "`submit.py follow JOB`, or stop them with `aws sagemaker stop-training-job --training-job-name JOB`",
        f"{second} was being sent when the error below came, so it may have been created too: check with "
        f"`aws sagemaker describe-training-job --training-job-name {second}`",
        "interrupted (Ctrl-C); jobs already submitted run on",
    ]


def test_wait_streams_a_single_jobs_log_and_tabulates_every_job(
    aws: dict[str, Any], export: Path, monkeypatch: pytest.MonkeyPatch, launch: Launch
) -> None:
    """docs/launcher.md: "streams the job's CloudWatch log (a sweep: status only) and prints a table of the"
    Each job writes three log lines as soon as it is created (moto completes it at once): `--wait` on one job
    prints them, on a sweep it does not; both end with a table of job, status and artifact."""
    logs = boto3.client("logs")
    group = "/aws/sagemaker/TrainingJobs"
    if not logs.describe_log_groups(logGroupNamePrefix=group)["logGroups"]:
        logs.create_log_group(logGroupName=group)

    def write_log(n: int, name: str) -> None:
        logs.create_log_stream(logGroupName=group, logStreamName=f"{name}/algo-1-1")
        now = int(time.time() * 1000)  # CloudWatch drops events older than 14 days
        events = [{"timestamp": now + i, "message": f"{name} line {i}"} for i in range(3)]
        logs.put_log_events(logGroupName=group, logStreamName=f"{name}/algo-1-1", logEvents=events)

    _on_create(monkeypatch, write_log)
    argv = ["--mode", "train", "--set", "preset=smoke", "--image", f"{IMAGE}:v1", "--prompts", str(export), "--wait"]
    for sweep, count in (([], 1), (["--sweep", "k=4,8"], 2)):
        code, printed = launch(*argv, "--poll-seconds", "0", *sweep)
        assert code == 0, launch.log
        out = printed.splitlines()
        names = [line.split()[0] for line in out if line.startswith("sae-") and " line " not in line]
        names = list(dict.fromkeys(names))
        assert len(names) == count
        if not sweep:  # the submit's own table first: the job is submitted, not only planned
            assert out[1].split() == [names[0], "ml.g5.xlarge", "no", "submitted"]
        streamed = [line for line in out if " line " in line]
        assert streamed == ([f"{names[0]} line {i}" for i in range(3)] if not sweep else [])
        table = out[out.index(next(line for line in out if line.startswith("job ") and "artifact" in line)) :]
        assert table[0].split() == ["job", "status", "artifact"]
        jobs = [boto3.client("sagemaker").describe_training_job(TrainingJobName=n) for n in names]
        assert [row.split() for row in table[1:]] == [
            [n, "Completed", j["ModelArtifacts"]["S3ModelArtifacts"]] for n, j in zip(names, jobs, strict=True)
        ]


def test_an_unreachable_bucket_fails_before_the_push_naming_the_setting(
    aws: dict[str, Any], export: Path, monkeypatch: pytest.MonkeyPatch, launch: Launch
) -> None:
    """docs/launcher.md: "`the bucket setting` (the bucket's check and creation, and the uploads)"
    S3 cannot be reached (its endpoint is a closed port): status 1, the message names the bucket setting, and
    nothing was built or pushed (the bucket's check comes before the push)."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    assert launch("--mode", "train", "--set", "preset=smoke", "--prompts", str(export)) == (1, "")
    assert f"the `bucket` setting s3://{aws['bucket']}: cannot talk to S3 (" in launch.log
    assert not Path(aws["env"]["FAKE_DOCKER_LOG"]).exists()


def _docker_doing(tmp_path: Path, at_build: str) -> Path:
    """A docker CLI (the tests' stub) that first runs the shell command ``at_build`` when it builds: what happens
    meanwhile, while the image builds."""
    docker = tmp_path / "meanwhile" / "docker"
    docker.parent.mkdir()
    docker.write_text(f'#!/bin/sh\n[ "$1" = build ] && {at_build}\nexec "{shutil.which("docker")}" "$@"\n')
    docker.chmod(0o755)
    return docker


def test_an_export_written_again_during_the_push_is_not_uploaded(
    aws: dict[str, Any], export: Path, tmp_path: Path, launch: Launch
) -> None:
    """docs/launcher.md: "the check is repeated just before the upload"
    The export is written again (other rows, a manifest of its own) while the image is built: the upload refuses
    it, naming what happened, with status 2; nothing goes under prompts/ and no job is created."""
    from datasets import Dataset, load_from_disk

    from launcher.prompt_rows import fingerprint

    source = load_from_disk(str(export))
    assert isinstance(source, Dataset)
    rows = Dataset.from_list(source.to_list()[:40], features=source.features)
    again = tmp_path / "exported-again"
    rows.save_to_disk(str(again))
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["fingerprint"] = fingerprint(rows.to_list(), rows.column_names)
    (again / "manifest.json").write_text(json.dumps(manifest))
    docker = _docker_doing(tmp_path, f'rm -r "{export}" && cp -r "{again}" "{export}"')
    argv = ["--mode", "train", "--set", "preset=smoke", "--prompts", str(export), "--docker", str(docker)]
    planned, written = _fingerprint(export), manifest["fingerprint"]
    assert launch(*argv) == (2, "")
    assert [c["argv"][0] for c in map(json.loads, Path(aws["env"]["FAKE_DOCKER_LOG"]).read_text().splitlines())] == [
        "build", "tag", "login", "push"
    ]  # fmt: skip
    assert (
        f"{export} was exported again while the launcher ran (fingerprint {planned[:12]}… became {written[:12]}…); "
        "nothing was uploaded. Run the command again." in launch.log
    )
    listed = boto3.client("s3").list_objects_v2(Bucket=aws["bucket"], Prefix="sae-censorship/prompts/")
    assert listed["KeyCount"] == 0


@pytest.mark.parametrize("mode", [["--mode", "viz"], ["--mode=viz"]])
def test_an_action_name_as_an_options_value_is_not_taken_for_the_action(
    mode: list[str], aws: dict[str, Any], export: Path, launch: Launch
) -> None:
    """Pins: with --mode given, `follow` as a value (here a job's name) is that value, not a misplaced action
    The job named follow is looked up, and that look-up's refusal is what the user reads."""
    assert launch(*mode, "--from-job", "follow", "--prompts", str(export)) == (2, "")
    assert launch.messages[-1].startswith("--from-job follow: no such training job")


@pytest.mark.usefixtures("jobs_in_progress")
def test_follow_of_a_running_job_refuses_a_taken_folder_at_once_and_repeats_the_settings(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launch: Launch
) -> None:
    """docs/launcher.md: "the message names it with the exact `submit.py follow` command to take it up again"
    A job still running: `follow --download DIR` where DIR already holds the job is refused before any wait (a wait
    here is a Ctrl-C, status 130); Ctrl-C while following says the command again with its --settings file."""
    from launcher import follow

    waits: list[float] = []

    def ctrl_c(seconds: float) -> None:
        waits.append(seconds)
        raise KeyboardInterrupt

    code, out = launch("--mode", "bench", "--image", f"{IMAGE}:v1")
    assert code == 0, launch.log
    [name] = [line.split()[0] for line in out.splitlines() if line.startswith("sae-bench-")]
    monkeypatch.setattr(follow.time, "sleep", ctrl_c)
    (tmp_path / "fetched" / name).mkdir(parents=True)
    settings = aws["env"]["SAE_SETTINGS"]
    assert launch("follow", name, "--settings", settings, "--download", str(tmp_path / "fetched")) == (2, "")
    assert launch.messages[-1].startswith(f"--download: {tmp_path / 'fetched' / name} already exists")
    assert launch("follow", name, "--settings", settings, "--no-logs", "--poll-seconds", "7") == (130, "")
    assert waits == [7.0]  # it polled at the interval asked for
    assert (
        f"Follow again with: python launcher/submit.py follow {name} --settings {settings} --no-logs ("
        in launch.messages[-1]
    )


@pytest.mark.parametrize("action", [["push"], ["secret"], ["follow", "sae-train-x"]])
def test_each_action_reads_the_settings_file_it_is_given(
    action: list[str], aws: dict[str, Any], tmp_path: Path, launch: Launch
) -> None:
    """docs/launcher.md: "a settings file given with `--settings` or `SAE_SETTINGS` that does not exist"
    Each action reads the file its --settings names (not the default one): a missing file is refused, named."""
    missing = tmp_path / "nowhere.toml"
    assert launch(*action, "--settings", str(missing)) == (2, "")
    assert launch.messages == [f"settings file {missing} does not exist"]


def test_a_request_that_holds_the_wandb_key_is_refused_whole(
    aws: dict[str, Any], export: Path, monkeypatch: pytest.MonkeyPatch, launch: Launch
) -> None:
    """docs/launcher.md: "the launcher refuses a hyperparameter, or a request, that contains it"
    The key inside a channel's URI: refused with the launcher's whole message, before the bucket is created."""
    key = "0123456789abcdef" * 2 + "01234567"
    monkeypatch.setenv("WANDB_API_KEY", key)
    argv = ["--mode", "viz", "--sae", f"s3://b/{key}/model.tar.gz", "--image", f"{IMAGE}:v1"]
    assert launch(*argv, "--prompts", str(export)) == (2, "")
    assert launch.messages[-1] == "the W&B key appears in the job request; remove it (jobs get only WANDB_SECRET_ID)"
    assert aws["bucket"] not in [b["Name"] for b in boto3.client("s3").list_buckets()["Buckets"]]


def test_no_credentials_is_one_line_that_says_what_to_do(export: Path, tmp_path: Path) -> None:
    """docs/launcher.md: "Credentials come the usual AWS ways (`aws configure`, `AWS_PROFILE`, the `AWS_*` variables)"
    As a user runs it, with no credentials anywhere: status 2, and stderr's last line is the launcher's whole
    message, in its log format."""
    import os
    import subprocess

    from tests.conftest import ROOT

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAE_"))}
    env |= {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), "AWS_CONFIG_FILE": str(tmp_path / "none")}
    env |= {"AWS_EC2_METADATA_DISABLED": "true", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    settings = tmp_path / "settings.toml"
    settings.write_text(
        'region = "us-east-1"\nbucket = "b-1"\nrole_arn = "arn:aws:iam::123456789012:role/r"\n'
        'image_repository = "sae"\n'
    )
    argv = ["--mode", "train", "--set", "preset=smoke", "--dry-run", "--prompts", str(export)]
    result = subprocess.run(
        [sys.executable, "launcher/submit.py", *argv, "--settings", str(settings)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        "ERROR launcher: no AWS credentials found: configure them (aws configure, AWS_PROFILE, or AWS_ACCESS_KEY_ID "
        "and AWS_SECRET_ACCESS_KEY). --dry-run needs them too: it reads the W&B secret's existence, the image's "
        "repository, any --from-job or --resume-from job and an S3 export's manifest, and only sends nothing"
    )


def test_every_call_goes_to_the_settings_region(
    aws: dict[str, Any], export: Path, monkeypatch: pytest.MonkeyPatch, launch: Launch
) -> None:
    """docs/launcher.md: "fill in `region`, `role_arn`, `bucket` and `image_repository`"
    The settings' region differs from the shell's default region: the secret is stored and looked up, the bucket
    created, the prompts uploaded and the job created and followed there, and the job's environment names it."""
    region = "eu-west-1"
    monkeypatch.setenv("SAE_REGION", region)
    secret_id = aws["env"]["SAE_WANDB_SECRET_ID"]
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert launch("secret")[0] == 0, launch.log
    stored = boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=secret_id)
    assert stored["SecretString"] == "k" * 40
    argv = ["--mode", "train", "--set", "preset=smoke", "--image", f"{IMAGE}:v1", "--prompts", str(export)]
    code, out = launch(*argv, "--dry-run")
    assert code == 0, launch.log
    [request], _ = _requests(out)
    assert request["Environment"] == {"WANDB_SECRET_ID": secret_id, "AWS_DEFAULT_REGION": region}
    code, out = launch(*argv, "--wait", "--poll-seconds", "0")
    assert code == 0, launch.log
    name = out.split()[out.split().index("state") + 1]
    job = boto3.client("sagemaker", region_name=region).describe_training_job(TrainingJobName=name)
    assert out.splitlines()[-1].split() == [name, "Completed", job["ModelArtifacts"]["S3ModelArtifacts"]]
    s3 = boto3.client("s3", region_name=region)
    assert s3.get_bucket_location(Bucket=aws["bucket"])["LocationConstraint"] == region
    assert s3.list_objects_v2(Bucket=aws["bucket"], Prefix="sae-censorship/prompts/")["KeyCount"] > 0
    local = boto3.client("sagemaker", region_name="us-east-1")
    assert not local.list_training_jobs(NameContains=name)["TrainingJobSummaries"]


def test_an_upload_that_s3_refuses_names_the_bucket_setting(
    aws: dict[str, Any], export: Path, tmp_path: Path, launch: Launch
) -> None:
    """docs/launcher.md: "`the bucket setting` (the bucket's check and creation, and the uploads)"
    The bucket is removed while the image builds: the prompts' upload is refused by S3 (status 1), and the
    message names the bucket setting as where the URI came from."""
    remove = f"{sys.executable} -c \"import boto3; boto3.client('s3').delete_bucket(Bucket='{aws['bucket']}')\""
    argv = ["--mode", "train", "--set", "preset=smoke", "--prompts", str(export)]
    assert launch(*argv, "--docker", str(_docker_doing(tmp_path, remove))) == (1, "")
    prefix = f"s3://{aws['bucket']}/sae-censorship/prompts/{_fingerprint(export)[:16]}/"
    assert launch.messages[-1].startswith(f"the `bucket` setting {prefix}: S3 refused the request (NoSuchBucket")


@pytest.mark.parametrize("action", [["secret"], ["follow", "sae-train-x"]])
def test_an_action_without_a_region_is_refused_naming_the_setting(
    action: list[str], aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launch: Launch
) -> None:
    """docs/launcher.md: "a missing setting stops the launcher before any AWS call, naming it"
    No region in the settings nor the shell: `secret` (with a well-formed key) and `follow` stop with status 2."""
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SAE_REGION", "")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert launch(*action) == (2, "")
    message = "missing setting(s): region (or SAE_REGION). Put them in launcher/settings.toml"
    assert launch.messages[-1].startswith(message)


def test_sweep_together_plans_one_job_that_lists_every_sae(aws: dict[str, Any], export: Path, launch: Launch) -> None:
    """docs/launcher.md: "`--sweep-together` (train) turns the sweep into one job instead"
    A dry run: one request, its `saes` hyperparameter the sweep's combinations, and a table of one row."""
    argv = ["--mode", "train", "--set", "preset=smoke", "--sweep", "k=4,8", "--image", f"{IMAGE}:v1", "--dry-run"]
    code, out = launch(*argv, "--sweep-together", "--prompts", str(export))
    assert code == 0, launch.log
    [request], table = _requests(out)
    assert json.loads(request["HyperParameters"]["saes"]) == [{"k": "4"}, {"k": "8"}]
    assert len(table) == 2 and table[1].startswith(request["TrainingJobName"])


def test_secret_without_a_secret_id_is_refused_naming_the_setting(
    aws: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, launch: Launch
) -> None:
    """docs/launcher.md: "a missing setting stops the launcher before any AWS call, naming it"
    `secret` with the secret's id emptied in the settings file: status 2, the setting named, and no secret stored."""
    settings = tmp_path / "settings.toml"
    settings.write_text('region = "us-east-1"\nwandb_secret_id = ""\n')
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    monkeypatch.delenv("SAE_WANDB_SECRET_ID", raising=False)
    secrets = boto3.client("secretsmanager")
    before = secrets.list_secrets()["SecretList"]
    assert launch("secret", "--settings", str(settings)) == (2, "")
    message = "missing setting(s): wandb_secret_id (or SAE_WANDB_SECRET_ID). Put them in launcher/settings.toml"
    assert launch.messages[-1].startswith(message)
    assert secrets.list_secrets()["SecretList"] == before
