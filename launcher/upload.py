"""Upload an export folder (the dataset, manifest.json, categories.png) under an S3 prefix, where a training job
reads it as its ``prompts`` channel.

The manifest's fingerprint decides: the same export already there is not uploaded again, and a different one is
replaced only with ``force``. The old manifest goes first and the new one last, so a manifest at the prefix always
describes data that is completely there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from container_src.config import ConfigError, read_json_object
from launcher.aws import list_keys, split_s3_uri

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class UploadError(Exception):
    """The upload cannot or must not happen; the message says why and what to do."""


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix ending in ``/``). The prefix must not be empty: a channel on a whole bucket would take in
    everything in it."""
    try:
        bucket, prefix = split_s3_uri(uri)
    except ValueError as exc:
        raise UploadError(str(exc)) from None
    prefix = prefix.strip("/")
    if not bucket or not prefix:
        raise UploadError(f"{uri!r}: expected s3://BUCKET/PREFIX with a non-empty prefix (for example s3://b/prompts)")
    return bucket, prefix + "/"


def read_manifest(export_dir: Path) -> dict[str, Any]:
    path = export_dir / MANIFEST
    if not path.is_file():
        raise UploadError(
            f"{export_dir} is not an export: it has no {MANIFEST}; "
            "export the prompts first (python launcher/export_prompts.py --out DIR)"
        )
    try:
        manifest = read_json_object(path, "manifest")
    except ConfigError as exc:
        raise UploadError(str(exc)) from None
    if not isinstance(manifest.get("fingerprint"), str) or not manifest["fingerprint"]:
        raise UploadError(f"{path} has no fingerprint; export again")
    return manifest


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise UploadError(f"S3 refused the request for {uri}: {error.get('Code')} {error.get('Message', '')}") from None
    except BotoCoreError as exc:  # no credentials, endpoint unreachable, ...
        raise UploadError(f"cannot talk to S3 for {uri}: {exc}") from None


def _remote_manifest(s3: Any, bucket: str, prefix: str) -> dict[str, Any] | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=prefix + MANIFEST)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    try:
        manifest = json.loads(body)
    except json.JSONDecodeError:
        return {}
    return manifest if isinstance(manifest, dict) else {}


def remote_fingerprint(s3: Any, s3_uri: str) -> str:
    """The fingerprint of the export under ``s3_uri``, read from its manifest (a read-only call)."""
    bucket, prefix = parse_s3_uri(s3_uri)
    uri = f"s3://{bucket}/{prefix}"
    remote = _remote_manifest(s3, bucket, prefix)  # S3's own refusals (access, a missing bucket) are AWS failures
    if not remote or not isinstance(remote.get("fingerprint"), str) or not remote["fingerprint"]:
        raise UploadError(
            f"{uri} holds no export ({MANIFEST} with a fingerprint is missing there); check the prefix, or upload "
            "one with `export_prompts.py --s3-uri` (or give the export folder, which submit.py uploads)"
        )
    return remote["fingerprint"]


def check_remote(s3_uri: str, fingerprint: str, *, force: bool = False, s3_client: Any = None) -> bool:
    """True when the prefix already holds this very export. Raises when it holds something else, unless force."""
    bucket, prefix = parse_s3_uri(s3_uri)
    uri = f"s3://{bucket}/{prefix}"
    with _s3_errors(uri):
        s3 = s3_client or _client()
        remote = _remote_manifest(s3, bucket, prefix)
        if remote is not None and remote.get("fingerprint") == fingerprint:
            return True
        if force:
            return False
        if remote is not None:
            theirs = str(remote.get("fingerprint") or "none")[:12]
            raise UploadError(
                f"{uri} holds a different export (fingerprint {theirs}…, this one {fingerprint[:12]}…); "
                "nothing was uploaded. Replace it with --force (force=True) or choose another prefix."
            )
        existing = list_keys(s3, bucket, prefix)
        if existing:
            raise UploadError(
                f"{uri} holds {len(existing)} object(s) but no {MANIFEST}, so it is not an export; nothing was "
                "uploaded. Choose another prefix, or replace them with --force (force=True)."
            )
    return False


def _client() -> Any:
    import boto3

    return boto3.client("s3")


def upload_export(export_dir: Path, s3_uri: str, *, force: bool = False, s3_client: Any = None) -> str:
    """Upload ``export_dir`` under the prefix of ``s3_uri`` and return the prefix's URI (ending in ``/``, so that a
    channel on it cannot take in a sibling prefix that shares its name's start)."""
    manifest = read_manifest(export_dir)
    bucket, prefix = parse_s3_uri(s3_uri)
    uri = f"s3://{bucket}/{prefix}"
    s3 = s3_client or _client()
    if check_remote(s3_uri, manifest["fingerprint"], force=force, s3_client=s3):
        logger.info(
            "%s already holds this export (fingerprint %s…); nothing uploaded", uri, manifest["fingerprint"][:12]
        )
        return uri
    files = {prefix + p.relative_to(export_dir).as_posix(): p for p in sorted(export_dir.rglob("*")) if p.is_file()}
    manifest_key = prefix + MANIFEST
    with _s3_errors(uri):
        s3.delete_object(Bucket=bucket, Key=manifest_key)
        for key, path in files.items():
            if key != manifest_key:
                s3.upload_file(str(path), bucket, key)
        stale = [key for key in list_keys(s3, bucket, prefix) if key not in files]
        for start in range(0, len(stale), 1000):
            batch = [{"Key": key} for key in stale[start : start + 1000]]
            s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        s3.upload_file(str(export_dir / MANIFEST), bucket, manifest_key)
    logger.info("uploaded %d files to %s (removed %d stale)", len(files), uri, len(stale))
    return uri
