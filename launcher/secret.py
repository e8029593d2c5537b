"""Store the local W&B key in Secrets Manager, so that jobs get only the secret's id (``WANDB_SECRET_ID``).

The key comes from ``WANDB_API_KEY`` or, when that is unset, from a hidden prompt (so it stays out of the shell's
history); it is checked for W&B's key shape before any AWS call, and a stored key is replaced only with ``--force``.
"""

from __future__ import annotations

import getpass
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from launcher.errors import LauncherError

logger = logging.getLogger(__name__)
PROMPT = "W&B API key (from wandb.ai/authorize; input hidden): "

# W&B's own rule (wandb.sdk.lib.wbauth.validation.check_api_key): a JWT, or an optional "<prefix>-" (a local or
# on-prem server's keys) before a secret of at least 40 word characters.
_JWT = re.compile(r"[\w-]+\.[\w-]+\.[\w-]+")
_SECRET = re.compile(r"[\w-]+")
MIN_SECRET = 40


def key_problem(key: str) -> str | None:
    """What is wrong with the shape of ``key`` as a W&B API key, or None when it has one."""
    if not key:
        return "it is empty"
    if _JWT.fullmatch(key):
        return None
    secret = key.split("-", 1)[-1]
    if not _SECRET.fullmatch(secret):
        return "it may hold only letters, digits, underscores and a dash after a prefix"
    if len(secret) < MIN_SECRET:
        return f"it has {len(secret)} characters where a W&B key has {MIN_SECRET} or more"
    return None


def read_key(
    env: dict[str, str] | None = None,
    *,
    interactive: bool | None = None,
    prompt: Callable[[str], str] | None = None,
) -> str:
    """The key from ``WANDB_API_KEY`` or, when that is unset and stdin is a terminal, a hidden prompt; checked for
    its shape."""
    key = (env if env is not None else os.environ).get("WANDB_API_KEY", "").strip()
    source = "WANDB_API_KEY"
    if not key:
        if not (sys.stdin.isatty() if interactive is None else interactive):
            raise LauncherError(
                "WANDB_API_KEY is not set and there is no terminal to ask for the key on: run `submit.py secret` in "
                "a terminal (it asks for the key without showing it), or set WANDB_API_KEY"
            )
        key, source = (prompt or getpass.getpass)(PROMPT).strip(), "the key typed"
    if problem := key_problem(key):
        raise LauncherError(
            f"{source} is not a W&B API key ({problem}); nothing was stored. Copy the key from wandb.ai/authorize"
        )
    return key


def store_wandb_key(secrets: Any, secret_id: str, key: str, *, force: bool = False) -> str:
    """Create the secret holding ``key``, or with ``force`` replace the key an existing one holds; returns its ARN.
    An existing secret without ``force`` is refused: a good key is never replaced unawares. The key is never logged."""
    try:
        arn = secrets.describe_secret(SecretId=secret_id)["ARN"]
    except secrets.exceptions.ResourceNotFoundException:
        arn = secrets.create_secret(
            Name=secret_id, SecretString=key, Description="W&B API key for the SAE training jobs"
        )["ARN"]
        logger.info("created secret %s", secret_id)
        return arn
    if not force:
        raise LauncherError(
            f"secret {secret_id} already holds a W&B key; nothing was changed. To replace it, run "
            "`submit.py secret --force`"
        )
    secrets.put_secret_value(SecretId=secret_id, SecretString=key)
    logger.warning("replaced the W&B key stored in secret %s (--force)", secret_id)
    return arn


def secret_exists(secrets: Any, secret_id: str) -> bool:
    try:
        secrets.describe_secret(SecretId=secret_id)
    except secrets.exceptions.ResourceNotFoundException:
        return False
    return True
