"""Follow a training job (status and its CloudWatch logs) and fetch its model artifact."""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
import tarfile
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any, TextIO

from container_src.records import replace_dir
from launcher.aws import client_for, parse_s3_uri
from launcher.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, LauncherError

logger = logging.getLogger(__name__)
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
TERMINAL = ("Completed", "Failed", "Stopped")
REPORT_S = 300.0  # a status line at least this often while a job runs, so a long wait shows it is alive


def describe(sagemaker: Any, job_name: str) -> dict[str, Any]:
    """DescribeTrainingJob; a name SageMaker does not know (it answers ValidationException) is bad input, while
    anything else (access denied, throttling) is an AWS failure and keeps its own message."""
    try:
        return sagemaker.describe_training_job(TrainingJobName=job_name)
    except sagemaker.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] not in ("ValidationException", "ResourceNotFound"):
            raise
        raise LauncherError(
            f"{job_name}: no such training job in this account and region; "
            "check the name (the table printed when it was submitted lists it)"
        ) from None


def _print_new_events(logs: Any, job_name: str, tokens: dict[str, str], out: TextIO) -> None:
    try:
        streams = logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=f"{job_name}/")["logStreams"]
    except logs.exceptions.ResourceNotFoundException:
        return  # the job has not written a log yet
    for stream in streams:
        name = stream["logStreamName"]
        while True:
            kwargs: dict[str, Any] = {"nextToken": tokens[name]} if name in tokens else {"startFromHead": True}
            page = logs.get_log_events(logGroupName=LOG_GROUP, logStreamName=name, **kwargs)
            for event in page["events"]:
                out.write(event["message"].rstrip("\n") + "\n")
            if page["nextForwardToken"] == tokens.get(name) or not page["events"]:
                tokens[name] = page["nextForwardToken"]
                break
            tokens[name] = page["nextForwardToken"]
    out.flush()


def follow(
    sagemaker: Any,
    logs: Any | None,
    job_name: str,
    *,
    poll_s: float = 20.0,
    out: TextIO | None = None,
    report_s: float = REPORT_S,
) -> dict[str, Any]:
    """Wait until the job ends, logging its status with how long it has been followed (on each change, and every
    ``report_s`` seconds) and (with ``logs``) streaming its log lines to ``out``."""
    stream = out or sys.stdout  # looked up per call: tests and callers may have swapped it
    tokens: dict[str, str] = {}
    last = ""
    start = reported = time.monotonic()
    while True:
        job = sagemaker.describe_training_job(TrainingJobName=job_name)
        status = f"{job['TrainingJobStatus']} ({job.get('SecondaryStatus', '')})"
        now = time.monotonic()
        if status != last or now - reported >= report_s:
            logger.info("%s: %s; waited %s", job_name, status, timedelta(seconds=round(now - start)))
            last, reported = status, now
        if logs is not None:
            _print_new_events(logs, job_name, tokens, stream)
        if job["TrainingJobStatus"] in TERMINAL:
            return job
        time.sleep(poll_s)


def check_succeeded(job: dict[str, Any]) -> None:
    if job["TrainingJobStatus"] != "Completed":
        reason = job.get("FailureReason", "no reason given")
        raise LauncherError(f"{job['TrainingJobName']} {job['TrainingJobStatus']}: {reason}", EXIT_FAILED)


def download_target(dest: Path, job_name: str) -> Path:
    """Where a job's artifact is unpacked; refused up front if something is already there."""
    target = dest / job_name
    if target.exists():
        raise LauncherError(f"--download: {target} already exists; remove it or choose another folder")
    return target


def download(s3: Any, job: dict[str, Any], dest: Path) -> Path:
    """Fetch the job's model.tar.gz and unpack it into ``dest/<job name>/`` (complete, or not at all)."""
    target = download_target(dest, job["TrainingJobName"])
    artifact = job.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if not artifact:
        raise LauncherError(f"{job['TrainingJobName']} has no model artifact", EXIT_FAILED)
    bucket, key = parse_s3_uri(artifact)
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest, prefix=f".{job['TrainingJobName']}."))
    try:
        archive = staging / "model.tar.gz"
        try:
            s3.download_file(bucket, key, str(archive))
        except s3.exceptions.ClientError as exc:
            raise LauncherError(f"--download: could not fetch {artifact}: {exc}", EXIT_FAILED) from None
        unpacked = staging / "model"
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")  # refuses absolute paths, .. and links out of the folder
        replace_dir(unpacked, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("unpacked %s into %s", artifact, target)
    return target


def follow_and_fetch(
    names: list[str], region: str, *, poll_s: float, dest: Path | None, stream_logs: bool, again: list[str]
) -> tuple[int, list[list[str]]]:
    """Follow each job to its end and fetch its artifact (into ``dest`` when given): the exit status (1 when a job
    failed) and a row per job (name, status, where its artifact is or why it failed). Ctrl-C leaves the jobs
    running and says how to follow them again (``again``: the options to repeat)."""
    sagemaker, s3 = client_for("sagemaker", region), client_for("s3", region)
    logs = client_for("logs", region) if stream_logs else None
    rows: list[list[str]] = []
    status, pending = EXIT_OK, list(names)
    try:
        while pending:
            job = follow(sagemaker, logs, pending[0], poll_s=poll_s)
            where, failed = _fetch(s3, job, dest)
            rows.append([pending.pop(0), job["TrainingJobStatus"], where])
            status = EXIT_FAILED if failed else status
    except KeyboardInterrupt:  # the jobs run on: say how to follow them again, without a traceback
        raise LauncherError(_follow_again(pending, again), EXIT_INTERRUPTED) from None
    return status, rows


def _fetch(s3: Any, job: dict[str, Any], dest: Path | None) -> tuple[str, bool]:
    """(where a finished job's artifact is, or why it failed; whether it failed), unpacking it into ``dest``."""
    try:
        check_succeeded(job)
        return str(download(s3, job, dest)) if dest else job["ModelArtifacts"]["S3ModelArtifacts"], False
    except LauncherError as exc:
        if exc.status != EXIT_FAILED:  # a download folder taken meanwhile is bad input, as it is up front
            raise
        logger.error("%s", exc)
        return job.get("FailureReason", "")[:80], True


def _follow_again(names: list[str], options: list[str]) -> str:
    """What Ctrl-C while following says: the jobs run on, and the exact commands that follow them again."""
    commands = [shlex.join(["python", "launcher/submit.py", "follow", name, *options]) for name in names]
    return (
        f"interrupted: stopped following {', '.join(names)}, which run(s) on in SageMaker. Follow again with: "
        f"{'; '.join(commands)} (stop a job with: aws sagemaker stop-training-job --training-job-name JOB)"
    )
