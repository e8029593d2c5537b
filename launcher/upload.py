"""Upload a local folder under an S3 prefix, where a job reads it as a channel: an export of the prompts, or a copy
of the model or of the control text.

Every folder goes up the same way: its files first and, last, a record of them with their content's fingerprint,
so a record always describes files that are completely there. The record decides: the same content already there
is not uploaded again, and other content is replaced only with ``force`` (its old record goes first, stale files
go). An export's record is its own manifest.json, inside the prefix, where the launcher reads it back; any other
folder's lies beside the prefix (``<prefix>.complete``), since inside it the job would read it as data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from container_src.config import ConfigError, read_json_object
from container_src.data import channel_files
from launcher.aws import list_keys, parse_s3_uri
from launcher.errors import EXIT_FAILED, LauncherError
from launcher.prompt_rows import fingerprint

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
RECORD_SUFFIX = ".complete"
BUCKET_SETTING = "the `bucket` setting"
_DENIED = "the bucket belongs to another account, or your credentials may not use it (see the IAM policy)"
S3_HINTS = {
    "NoSuchBucket": "no such bucket; check its name",
    "404": "no such bucket; check its name",
    "AccessDenied": _DENIED,
    "403": _DENIED,
}
"""What to check, for S3's refusals that come from a wrong URI or missing permissions."""


def split_prefix(uri: str) -> tuple[str, str]:
    """(bucket, prefix ending in ``/``), so that a channel on it cannot take in a sibling prefix that shares its
    name's start (``s3://b/prompts/2025-07`` and ``…/2025-07b/``)."""
    bucket, key = parse_s3_uri(uri)
    return bucket, key + "/"


def read_manifest(export_dir: Path) -> dict[str, Any]:
    path = export_dir / MANIFEST
    if not path.is_file():
        raise LauncherError(
            f"{export_dir} is not an export: it has no {MANIFEST}; "
            "export the prompts first (python launcher/export_prompts.py --out DIR)"
        )
    try:
        manifest = read_json_object(path, "manifest")
    except ConfigError as exc:
        raise LauncherError(str(exc)) from None
    if not isinstance(manifest.get("fingerprint"), str) or not manifest["fingerprint"]:
        raise LauncherError(f"{path} has no fingerprint; export again")
    return manifest


def verify_export(export_dir: Path) -> dict[str, Any]:
    """The export's manifest, once its dataset has been read back and its rows' fingerprint, computed as the export
    computed it, found to be the manifest's: a folder edited after the export, or a manifest without its dataset,
    would otherwise go up (or be taken as already there) under the old fingerprint."""
    manifest = read_manifest(export_dir)
    from datasets import Dataset, disable_progress_bars, load_from_disk

    disable_progress_bars()
    again = f"export again (python launcher/export_prompts.py --out {export_dir})"
    try:
        dataset = load_from_disk(str(export_dir))
    except Exception as exc:  # no dataset files, or unreadable ones: the job could not read them either
        raise LauncherError(f"{export_dir} holds no readable dataset beside its {MANIFEST} ({exc}); {again}") from None
    if not isinstance(dataset, Dataset):
        raise LauncherError(f"{export_dir} holds a DatasetDict, not the one dataset an export writes; {again}")
    actual = fingerprint(dataset.to_list(), dataset.column_names)
    if actual != manifest["fingerprint"]:
        raise LauncherError(
            f"{export_dir}: its dataset does not match its {MANIFEST} (the rows' fingerprint is {actual[:12]}…, the "
            f"manifest says {manifest['fingerprint'][:12]}…), so it was changed after the export; nothing was "
            f"uploaded. To use the changed prompts, {again}"
        )
    return manifest


@contextmanager
def s3_errors(uri: str, option: str) -> Iterator[None]:
    """S3's refusals (and botocore's failures) as a LauncherError, status 1, naming the option ``uri`` came from."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        yield
    except NoCredentialsError:
        raise  # the caller says what to do about missing credentials
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code"))
        hint = S3_HINTS.get(code, error.get("Message", ""))
        raise LauncherError(f"{option} {uri}: S3 refused the request ({code}: {hint})", EXIT_FAILED) from None
    except BotoCoreError as exc:  # no credentials, endpoint unreachable, ...
        raise LauncherError(f"{option} {uri}: cannot talk to S3 ({exc})", EXIT_FAILED) from None


def _read_record(s3: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The JSON object at ``key``; None when there is none, empty when it is not one."""
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    try:
        record = json.loads(body)
    except json.JSONDecodeError:
        return {}
    return record if isinstance(record, dict) else {}


def remote_fingerprint(s3: Any, s3_uri: str) -> str:
    """``--prompts s3://…``: the fingerprint of the export there, read from its manifest (read-only calls), once the
    prefix is seen to hold a dataset beside it."""
    bucket, prefix = split_prefix(s3_uri)
    uri = f"s3://{bucket}/{prefix}"
    with s3_errors(uri, "--prompts"):
        remote = _read_record(s3, bucket, prefix + MANIFEST)
        names = {key[len(prefix) :] for key in list_keys(s3, bucket, prefix)} if remote else set()
    if not remote or not isinstance(remote.get("fingerprint"), str) or not remote["fingerprint"]:
        raise LauncherError(
            f"--prompts: {uri} holds no export ({MANIFEST} with a fingerprint is missing there); check the prefix, "
            "or upload one with `export_prompts.py --s3-uri` (or give the export folder, which submit.py uploads)"
        )
    if not names & {"state.json", "dataset_info.json"}:  # what save_to_disk writes beside the data files
        raise LauncherError(
            f"--prompts: {uri} holds a {MANIFEST} but no dataset beside it; upload the whole export again "
            "(export_prompts.py --s3-uri … --force, or give the export folder)"
        )
    return remote["fingerprint"]


def _holds(s3: Any, bucket: str, prefix: str, record_key: str, fingerprint: str, force: bool) -> bool:
    """True when the prefix already holds this content. Raises when it holds something else, unless force."""
    uri = f"s3://{bucket}/{prefix}"
    remote = _read_record(s3, bucket, record_key)
    if remote is not None and remote.get("fingerprint") == fingerprint:
        return True
    if force:
        return False
    if remote is not None:
        theirs = str(remote.get("fingerprint") or "none")[:12]
        raise LauncherError(
            f"{uri} holds a different export (fingerprint {theirs}…, this one {fingerprint[:12]}…); "
            "nothing was uploaded. Replace it with --force (force=True) or choose another prefix.",
            EXIT_FAILED,
        )
    existing = list_keys(s3, bucket, prefix)
    if existing:
        raise LauncherError(
            f"{uri} holds {len(existing)} object(s) but no {MANIFEST}, so it is not an export; nothing was "
            "uploaded. Choose another prefix, or replace them with --force (force=True).",
            EXIT_FAILED,
        )
    return False


def check_remote(s3_uri: str, fingerprint: str, *, force: bool = False, s3_client: Any = None) -> bool:
    """``--s3-uri``: True when the prefix already holds the export with this fingerprint. Raises when it holds
    something else, unless force."""
    bucket, prefix = split_prefix(s3_uri)
    with s3_errors(f"s3://{bucket}/{prefix}", "--s3-uri"):
        return _holds(s3_client or _client(), bucket, prefix, prefix + MANIFEST, fingerprint, force)


def _client() -> Any:
    import boto3

    return boto3.client("s3")


def upload_folder(
    s3: Any,
    folder: Path,
    files: list[Path],
    s3_uri: str,
    fingerprint: str,
    *,
    export: bool = False,
    force: bool = False,
    option: str = BUCKET_SETTING,
) -> str:
    """Upload ``files`` of ``folder`` under the prefix of ``s3_uri`` unless the prefix holds them already, and return
    the prefix's URI (ending in ``/``). ``export``: the folder is a prompt export, its manifest.json its record.
    ``option``: where the URI came from, named in S3's refusals."""
    bucket, prefix = split_prefix(s3_uri)
    uri = f"s3://{bucket}/{prefix}"
    keys = {prefix + path.relative_to(folder).as_posix(): path for path in files}
    record = prefix + MANIFEST if export else prefix.rstrip("/") + RECORD_SUFFIX
    what = "this export" if export else str(folder)
    with s3_errors(uri, option):
        if _holds(s3, bucket, prefix, record, fingerprint, force):
            logger.info("%s already holds %s (fingerprint %s…); nothing uploaded", uri, what, fingerprint[:12])
            return uri
        s3.delete_object(Bucket=bucket, Key=record)
        for key, path in keys.items():
            if key != record:
                s3.upload_file(str(path), bucket, key)
        stale = [key for key in list_keys(s3, bucket, prefix) if key not in keys]
        for start in range(0, len(stale), 1000):
            batch = [{"Key": key} for key in stale[start : start + 1000]]
            s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        if export:
            s3.upload_file(str(keys[record]), bucket, record)
        else:
            body = json.dumps({"fingerprint": fingerprint, "files": len(files)}).encode()
            s3.put_object(Bucket=bucket, Key=record, Body=body)
    logger.info("uploaded %d files of %s to %s (removed %d stale)", len(files), folder, uri, len(stale))
    return uri


def upload_export(
    export_dir: Path,
    s3_uri: str,
    *,
    force: bool = False,
    s3_client: Any = None,
    option: str = "--s3-uri",
    expected: str | None = None,
) -> str:
    """Upload the export folder ``export_dir`` (the dataset, manifest.json, categories.png) under the prefix of
    ``s3_uri``, once its files are checked against its manifest; returns the prefix's URI. ``expected``: the
    fingerprint the caller planned with, refused when the export has changed since."""
    manifest = verify_export(export_dir)
    if expected is not None and manifest["fingerprint"] != expected:
        raise LauncherError(
            f"{export_dir} was exported again while the launcher ran (fingerprint {expected[:12]}… became "
            f"{manifest['fingerprint'][:12]}…); nothing was uploaded. Run the command again."
        )
    split_prefix(s3_uri)  # a bad URI is refused before any client is made
    files = channel_files(export_dir)
    s3 = s3_client or _client()
    return upload_folder(
        s3, export_dir, files, s3_uri, manifest["fingerprint"], export=True, force=force, option=option
    )
