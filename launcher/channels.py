"""Where a job's channels come from: the exported prompts, optional local copies of the model and the control text
(for network-isolated jobs), and a finished training job's model artifact (the ``sae`` channel of a viz job).

Local folders are uploaded under a prefix named by their content, so the same folder is uploaded once and a changed
one never overwrites what an earlier job read.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from container_src.checkpoints import run_prefix, trained_fields
from container_src.config import ConfigError
from container_src.data import channel_fingerprint
from container_src.paths import hub_cache_entry
from launcher import jobs
from launcher.aws import parse_s3_uri
from launcher.errors import LauncherError
from launcher.follow import describe
from launcher.upload import split_prefix, upload_folder

logger = logging.getLogger(__name__)


def s3_channel(flag: str, uri: str) -> str:
    """``uri`` as a channel's S3 prefix, ending in ``/``: without it a channel on ``s3://b/prompts/2025-07`` would
    also take in ``s3://b/prompts/2025-07b/``."""
    try:
        bucket, prefix = split_prefix(uri)
    except LauncherError as exc:
        raise LauncherError(f"{flag}: {exc}") from None
    return f"s3://{bucket}/{prefix}"


def check_sae_uri(uri: str) -> str:
    """``--sae``: an S3 object or prefix (SageMaker would upload a local path itself, even in a dry run)."""
    try:
        parse_s3_uri(uri)  # a bucket and a key
    except LauncherError:
        raise LauncherError(
            f"--sae {uri!r}: expected s3://BUCKET/KEY (a train job's model.tar.gz, or a prefix holding an SAE); "
            "upload a local SAE folder first (aws s3 cp --recursive DIR s3://BUCKET/PREFIX/), or use --from-job"
        ) from None
    return uri


def check_local_dir(name: str, folder: Path) -> Path:
    folder = folder.resolve()  # the model channel may be symlinked hub caches; upload what they point at
    if not folder.is_dir() or not any(folder.iterdir()):
        raise LauncherError(f"--{name} {folder}: not a folder, or empty; give a folder or an s3:// URI")
    return folder


def model_files(folder: Path, model_names: set[str] | None) -> list[Path]:
    """What a job reads of a hub-cache ``--model`` folder: ``refs/`` and ``snapshots/`` of each model named (of every
    model when a run names none). Not ``blobs/``: the snapshots' files are links to it, uploaded as the files they
    point at, so both would send every file twice. Nor the other models a user's own cache holds. A plain model
    folder (config.json at its top) is sent whole."""
    if (folder / "config.json").is_file():
        return sorted(p for p in folder.rglob("*") if p.is_file())
    hub = folder / "hub" if (folder / "hub").is_dir() else folder
    entries = (
        [hub / hub_cache_entry(name) for name in sorted(model_names)]
        if model_names is not None
        else sorted(hub.glob("models--*"))
    )
    read = [entry / part for entry in entries for part in ("refs", "snapshots")]
    return sorted(p for part_dir in read for p in part_dir.rglob("*") if p.is_file())


def planned_uri(folder: Path, s3_base: str, files: list[Path]) -> str:
    """Where `upload_dir` puts ``files`` of ``folder``: ``<s3_base>/<content hash>/``, so the same files are
    uploaded once and changed ones never overwrite what an earlier job read."""
    bucket, base = parse_s3_uri(s3_base)
    return f"s3://{bucket}/{base}/{channel_fingerprint(folder, files)}/"  # the container's own hash of a channel


def upload_dir(s3: Any, folder: Path, uri: str, files: list[Path]) -> None:
    """Upload ``files`` of ``folder`` to the prefix ``uri`` from `planned_uri`, unless they are there already. The
    prefix is named by the content, so whatever else it holds (an upload cut short) is replaced."""
    upload_folder(s3, folder, files, uri, uri.rstrip("/").rsplit("/", 1)[1], force=True)


def _describe_train_job(sagemaker: Any, flag: str, job_name: str) -> dict[str, Any]:
    """The job named on ``flag``, checked to be a `train` job (a read-only call: it runs before any push)."""
    try:
        job = describe(sagemaker, job_name)
    except LauncherError as exc:
        raise LauncherError(f"{flag} {exc}") from None
    mode = job.get("HyperParameters", {}).get("mode", "train").strip('"')
    if mode != "train":
        raise LauncherError(f"{flag} {job_name}: it is a {mode} job; {flag} needs a train job")
    return job


def trained_model_artifact(sagemaker: Any, job_name: str) -> str:
    """The model.tar.gz of a finished training job, checked to be a `train` job that completed."""
    job = _describe_train_job(sagemaker, "--from-job", job_name)
    status = job["TrainingJobStatus"]
    if status != "Completed":
        raise LauncherError(
            f"--from-job {job_name}: the job is {status}, not Completed; "
            f"follow it with `submit.py follow {job_name}` and try again when it has finished"
        )
    artifact = job.get("ModelArtifacts", {}).get("S3ModelArtifacts")
    if not artifact:
        raise LauncherError(f"--from-job {job_name}: the job has no model artifact")
    return artifact


def resume_checkpoints(sagemaker: Any, job_name: str) -> tuple[str, dict[str, Any]]:
    """The checkpoint S3 URI of an earlier train job that has ended, for a new job to resume from, and that job's
    description.

    A job still running (or stopping) keeps writing there, and two jobs writing one checkpoint folder would mix
    their states, so only an ended job is accepted.
    """
    job = _describe_train_job(sagemaker, "--resume-from", job_name)
    status = job["TrainingJobStatus"]
    if status not in ("Completed", "Failed", "Stopped"):
        raise LauncherError(
            f"--resume-from {job_name}: the job is {status} and still writes its checkpoints; "
            f"stop it (aws sagemaker stop-training-job --training-job-name {job_name}) or wait for it to end"
        )
    uri = job.get("CheckpointConfig", {}).get("S3Uri")
    if not uri:
        raise LauncherError(
            f"--resume-from {job_name}: that job had no checkpoint location, so there is nothing to resume"
        )
    return uri, job


def check_same_run(job_name: str, earlier: dict[str, Any], values: dict[str, str], channels: dict[str, str]) -> None:
    """--resume-from goes on from the earlier job's checkpoints only when the new job trains what that one did: other
    settings, another run_name or other data make another run id, and the job would train afresh beside them."""
    try:
        then = jobs.config_of("train", earlier.get("HyperParameters", {}))
    except ConfigError as exc:
        logger.warning("--resume-from %s: its hyperparameters are not readable here (%s); not compared", job_name, exc)
        return
    now = jobs.config_of("train", values)
    before, after = trained_fields(then), trained_fields(now)
    differ = [f"{key}={before[key]!r} there, {after[key]!r} here" for key in before if before[key] != after[key]]
    if run_prefix(then) != run_prefix(now):
        differ.append(f"run_name={then.run_name!r} there, {now.run_name!r} here")
    sources = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in earlier.get("InputDataConfig", [])}
    sources.setdefault("control", sources.get("tinystories", ""))  # a job from before the channel was renamed
    for name in ("prompts", "control"):  # the data in the run id (the model enters by its weights, not its source)
        there, here = (sources.get(name) or "none").rstrip("/"), (channels.get(name) or "none").rstrip("/")
        if there != here:
            differ.append(f"channel {name}: {there} there, {here} here")
    if differ:
        raise LauncherError(
            f"--resume-from {job_name}: the settings differ ({'; '.join(differ)}), so the job would not find that "
            "run's checkpoints and would train afresh; give the same values (--set KEY=VALUE) and channels "
            "(--prompts, --control), or leave out --resume-from to start a new run"
        )
