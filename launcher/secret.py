"""Store the local W&B key in Secrets Manager, so that jobs get only the secret's id (``WANDB_SECRET_ID``)."""

from __future__ import annotations

import logging
import os
from typing import Any

from launcher.errors import LauncherError

logger = logging.getLogger(__name__)


def store_wandb_key(secrets: Any, secret_id: str, env: dict[str, str] | None = None) -> str:
    """Create or update the secret from ``WANDB_API_KEY``; returns its ARN. The key itself is never logged."""
    key = (env if env is not None else os.environ).get("WANDB_API_KEY", "").strip()
    if not key:
        raise LauncherError(
            "WANDB_API_KEY is not set: export it in this shell (from wandb.ai/authorize), then run again"
        )
    try:
        arn = secrets.describe_secret(SecretId=secret_id)["ARN"]
        secrets.put_secret_value(SecretId=secret_id, SecretString=key)
        logger.info("updated secret %s", secret_id)
    except secrets.exceptions.ResourceNotFoundException:
        arn = secrets.create_secret(
            Name=secret_id, SecretString=key, Description="W&B API key for the SAE training jobs"
        )["ARN"]
        logger.info("created secret %s", secret_id)
    return arn


def secret_exists(secrets: Any, secret_id: str) -> bool:
    try:
        secrets.describe_secret(SecretId=secret_id)
    except secrets.exceptions.ResourceNotFoundException:
        return False
    return True
