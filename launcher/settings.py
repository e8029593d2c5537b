"""The launcher's account settings: a TOML file, overridden by environment variables.

    launcher/settings.toml        (git-ignored; copy launcher/settings.example.toml)
    --settings FILE or SAE_SETTINGS=FILE to use another file

Every key can be set or overridden by an environment variable (``SAE_`` + the key in capitals, for example
``SAE_ROLE_ARN``); the region also falls back to ``AWS_REGION`` / ``AWS_DEFAULT_REGION``. Nothing about an account is
built in: a setting an action needs and nobody gave is an error, raised before any AWS call.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from launcher.errors import LauncherError

DEFAULT_FILE = Path(__file__).resolve().parent / "settings.toml"


@dataclass(frozen=True)
class Settings:
    region: str = ""
    """AWS region of the jobs, the bucket, the ECR repository and the secret."""
    role_arn: str = ""
    """SageMaker execution role the jobs run as (arn:aws:iam::<account>:role/<name>)."""
    bucket: str = ""
    """S3 bucket for channels, checkpoints and model artifacts."""
    image_repository: str = ""
    """ECR repository name for the image (created on the first push)."""
    s3_prefix: str = "sae-censorship"
    """Key prefix inside the bucket."""
    wandb_secret_id: str = "sae-censorship/wandb"
    """Secrets Manager name of the W&B key; jobs get only this name, as WANDB_SECRET_ID."""
    source: str = ""
    """Where the settings were read from (for messages)."""

    @classmethod
    def load(cls, path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        explicit = path or (Path(env["SAE_SETTINGS"]) if env.get("SAE_SETTINGS") else None)
        file = explicit or DEFAULT_FILE
        values: dict[str, str] = {}
        if file.is_file():
            try:
                data = tomllib.loads(file.read_text())
            except tomllib.TOMLDecodeError as exc:
                raise LauncherError(f"settings file {file} is not valid TOML: {exc}") from None
            known = {f.name for f in fields(cls)} - {"source"}
            unknown = sorted(set(data) - known)
            if unknown:
                raise LauncherError(
                    f"settings file {file}: unknown key(s) {', '.join(unknown)}; known: {sorted(known)}"
                )
            values = {k: str(v) for k, v in data.items()}
        elif explicit:
            raise LauncherError(f"settings file {file} does not exist")
        for f in fields(cls):
            if env.get(f"SAE_{f.name.upper()}"):
                values[f.name] = env[f"SAE_{f.name.upper()}"]
        if not values.get("region"):
            values["region"] = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ""
        values.pop("source", None)
        return cls(**values, source=str(file) if file.is_file() else "environment")

    def require(self, *names: str) -> Settings:
        """Fail, naming every missing setting at once, unless all of ``names`` are set and well formed."""
        missing = [n for n in names if not getattr(self, n)]
        if missing:
            where = ", ".join(f"{n} (or SAE_{n.upper()})" for n in missing)
            raise LauncherError(
                f"missing setting(s): {where}. Put them in launcher/{DEFAULT_FILE.name} (copy "
                "launcher/settings.example.toml) or the environment; see docs/launcher.md, SageMaker set-up."
            )
        if "role_arn" in names and not re.fullmatch(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+", self.role_arn):
            raise LauncherError(
                f"role_arn={self.role_arn!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)"
            )
        if "bucket" in names and not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", self.bucket):
            raise LauncherError(f"bucket={self.bucket!r} is not an S3 bucket name (no s3:// and no slashes)")
        return self

    def s3_uri(self, *parts: str) -> str:
        return "s3://" + "/".join(p.strip("/") for p in (self.bucket, self.s3_prefix, *parts) if p.strip("/"))
