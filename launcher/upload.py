"""Upload an exported prompt dataset to S3 as the ``prompts`` channel.

A minimal version of the export tooling's uploader, with its signature and behaviour: the folder goes under the
S3 prefix, manifest.json last (so a half-finished upload never looks finished); a prefix that already holds the
same fingerprint is skipped, one that holds another fingerprint is refused unless ``force``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from launcher.aws import client_for, list_keys, split_s3_uri
from launcher.channels import MANIFEST, read_fingerprint

logger = logging.getLogger(__name__)


def upload_export(export_dir: Path, s3_uri: str, *, force: bool = False, s3_client: Any = None) -> str:
    """Upload ``export_dir`` under ``s3_uri``; returns the prefix URI (ending in ``/``)."""
    export_dir = Path(export_dir)
    fingerprint = read_fingerprint(export_dir)
    bucket, prefix = split_s3_uri(s3_uri)
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    s3 = s3_client or client_for("s3")
    try:
        there = json.loads(s3.get_object(Bucket=bucket, Key=prefix + MANIFEST)["Body"].read()).get("fingerprint")
    except s3.exceptions.NoSuchKey:
        there = None
    uri = f"s3://{bucket}/{prefix}"
    if there == fingerprint:
        logger.info("prompts %s already at %s; not uploading again", fingerprint[:12], uri)
        return uri
    if there and not force:
        raise ValueError(f"{uri} holds another export (fingerprint {there[:12]}); choose another prefix or force")
    files = sorted(p for p in export_dir.rglob("*") if p.is_file() and p.name != MANIFEST)
    stale = set(list_keys(s3, bucket, prefix)) - {prefix + p.relative_to(export_dir).as_posix() for p in files}
    for key in sorted(stale):  # files of the export this one replaces (force)
        s3.delete_object(Bucket=bucket, Key=key)
    for path in [*files, export_dir / MANIFEST]:
        s3.upload_file(str(path), bucket, prefix + path.relative_to(export_dir).as_posix())
    logger.info("uploaded prompts %s (%d files) to %s", fingerprint[:12], len(files) + 1, uri)
    return uri
