"""Small boto3 helpers shared by the launcher's modules.

Clients honour the usual AWS environment (credentials, ``AWS_ENDPOINT_URL`` for a local endpoint such as moto).
"""

from __future__ import annotations

import logging
from typing import Any

import boto3

from launcher.errors import LauncherError

logger = logging.getLogger(__name__)


def client_for(service: str, region: str | None = None) -> Any:
    return boto3.client(service, region_name=region or None)  # pyright: ignore[reportCallIssue, reportArgumentType]


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key/prefix`` -> (bucket, key/prefix), the key without slashes at its ends. A bucket alone is
    refused: a channel on a whole bucket would take in everything in it."""
    if not uri.startswith("s3://") or not uri[5:].split("/", 1)[0]:
        raise LauncherError(f"{uri!r} is not an S3 URI (s3://bucket/prefix)")
    bucket, _, key = uri[5:].partition("/")
    if not key.strip("/"):
        raise LauncherError(
            f"{uri!r}: expected s3://BUCKET/PREFIX with a non-empty prefix (for example s3://b/prompts)"
        )
    return bucket, key.strip("/")


def list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


def ensure_bucket(s3: Any, bucket: str, region: str, *, dry_run: bool = False) -> bool:
    """Create the bucket when it is missing (and we may), so a first run needs no console step; in a dry run only
    say so. True when it was (or would be) created."""
    try:
        s3.head_bucket(Bucket=bucket)
        return False
    except s3.exceptions.ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
            raise
    if dry_run:
        logger.info("bucket %s does not exist: a real run creates it in %s", bucket, region)
        return True
    logger.info("creating bucket %s in %s (it does not exist yet)", bucket, region)
    config = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **config)
    return True
