"""The SageMaker container contract: where inputs are read and outputs written.

Everything hangs off ``SAGEMAKER_BASE_DIR`` (default ``/opt/ml``), read when a run starts:

    input/config/hyperparameters.json   all values are strings
    input/data/<channel>/               prompts, model, control, sae (tinystories: control's old name)
    model/                              final SAE and records; uploaded as model.tar.gz
    checkpoints/                        resumable state; synced with S3 for spot restarts
    output/failure                      one paragraph on why a run failed

and the W&B key, which reaches a run only through the environment (``wandb_key``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from container_src.config import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_BASE_DIR = "/opt/ml"
CHANNELS = ("prompts", "model", "control", "sae")
# Channels renamed, old name -> new: the old name is still read, with a warning, until the next release.
RENAMED_CHANNELS = {"tinystories": "control"}


@dataclass(frozen=True)
class ContainerPaths:
    base: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ContainerPaths:
        env = os.environ if env is None else env
        return cls(Path(env.get("SAGEMAKER_BASE_DIR") or DEFAULT_BASE_DIR))

    @property
    def hyperparameters_file(self) -> Path:
        return self.base / "input" / "config" / "hyperparameters.json"

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    @property
    def checkpoints_dir(self) -> Path:
        return self.base / "checkpoints"

    @property
    def output_dir(self) -> Path:
        return self.base / "output"

    @property
    def failure_file(self) -> Path:
        return self.output_dir / "failure"

    def archive_previous_model(self) -> Path | None:
        """Move what an earlier run left in model/ to ``model.previous/<UTC time>/``: a run that fails then leaves
        no SAE in model/ that could pass for its own, and nothing is lost. In a SageMaker job model/ starts empty."""
        shutil.rmtree(self.model_dir / ".staging", ignore_errors=True)  # a killed run's unfinished SAE
        entries = sorted(self.model_dir.iterdir()) if self.model_dir.is_dir() else []
        if not entries:
            return None
        archive = self.base / "model.previous" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        archive.mkdir(parents=True, exist_ok=True)
        for entry in entries:
            shutil.move(str(entry), str(archive / entry.name))  # copies when model/ is a separate mount
        return archive

    @property
    def resource_config_file(self) -> Path:
        return self.base / "input" / "config" / "resourceconfig.json"

    def in_job(self) -> bool:
        """Whether this runs as a SageMaker training job, which always writes ``resourceconfig.json``."""
        return self.resource_config_file.is_file()

    def instance_type(self) -> str | None:
        """The instance type of the SageMaker job this runs in (``resourceconfig.json``), or None outside a job."""
        try:
            value = json.loads(self.resource_config_file.read_text()).get("current_instance_type")
        except (OSError, json.JSONDecodeError, AttributeError):
            return None
        return value if isinstance(value, str) and value else None

    def channel(self, name: str) -> Path | None:
        """The channel's directory, or None when the job was given no such channel."""
        path = self.base / "input" / "data" / name
        if not path.exists():
            return None
        if not path.is_dir():
            raise ConfigError(f"channel {name}: {path} is not a directory")
        if not any(path.iterdir()):
            if name == "prompts":  # docker compose mounts this one, export or not: it counts only where it is used
                logger.info("channel prompts: %s is empty, so there are no prompts", path)
                return None
            raise ConfigError(f"channel {name}: {path} is empty; put the data in it, or remove it")
        return path

    def model_inputs(self, model_name: str) -> dict[str, Path | None]:
        """Channels ``prompts``, ``model`` and ``control``; ``model_name``: the weights' hub id. A ``model``
        channel (a hub cache, or a plain model folder) turns the hub off for the rest of the process, so it must
        come before the first import of the HF libraries, which read the setting once."""
        channels = {name: self.channel(name) for name in ("prompts", "model")}
        channels["control"] = self.control_channel()
        model_channel = channels["model"]
        if model_channel is not None:
            plain = (model_channel / "config.json").is_file()
            os.environ.update(hub_env(model_channel) if plain else hub_cache_env(model_channel, model_name))
            logger.info("channel model: loading %s from %s with the hub off", model_name, model_channel)
            if channels["control"] is None:
                raise ConfigError(
                    "channel model turns the Hugging Face hub off (a network-isolated job), so the control text "
                    "cannot be streamed from it: pass a local copy as channel `control` too"
                )
        return channels

    def control_channel(self) -> Path | None:
        """Channel ``control`` (the control text), or its old name ``tinystories``, read with a warning."""
        found = {name: self.channel(name) for name in ("control", *RENAMED_CHANNELS)}
        given = [name for name, path in found.items() if path is not None]
        if len(given) > 1:
            raise ConfigError(
                f"channels {' and '.join(given)} are both given: tinystories is the old name of control; keep control"
            )
        if given and given[0] in RENAMED_CHANNELS:
            logger.warning("channel %s is deprecated: name it control (read until the next release)", given[0])
        return found[given[0]] if given else None

    def read_hyperparameters(self) -> dict[str, str]:
        """SageMaker's hyperparameters.json, or {} when there is none (a local run driven by flags)."""
        path = self.hyperparameters_file
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text() or "{}")
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a JSON object of hyperparameter: value pairs")
        return data


def hub_cache_env(model_channel: Path, model_name: str) -> dict[str, str]:
    """Environment that makes the HF libraries load ``model_name`` from a hub-cache channel with the hub off.

    The channel may be an ``$HF_HOME`` (holding ``hub/models--…``) or a hub cache itself (holding ``models--…``).
    """
    hub = model_channel / "hub" if (model_channel / "hub").is_dir() else model_channel
    entry = hub_cache_entry(model_name)
    present = sorted(p.name for p in hub.glob("models--*"))
    if not present:
        raise ConfigError(
            f"channel model: {model_channel} is not a Hugging Face hub-cache layout "
            f"(expected {entry}/ with refs/ and snapshots/, directly or under hub/)"
        )
    if entry not in present:
        raise ConfigError(
            f"channel model: no entry for model_name={model_name!r} (looked for {entry}); "
            f"the channel holds {', '.join(present)}"
        )
    return hub_env(hub)


def hub_cache_entry(model_name: str) -> str:
    """The folder a hub cache keeps ``model_name`` in (``org/name`` -> ``models--org--name``)."""
    return "models--" + model_name.replace("/", "--")


def hub_env(hub: Path) -> dict[str, str]:
    """Environment that makes the HF libraries read models from the hub cache ``hub`` (``models--…`` folders) with
    the hub off. They read it once, at import, so it must be set before the first import."""
    return {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def wandb_key(env: Mapping[str, str] | None = None) -> str | None:
    """The W&B key: ``WANDB_API_KEY`` locally, or the Secrets Manager secret named by ``WANDB_SECRET_ID`` in a job.

    The value is returned to the caller only; it is never logged or written.
    """
    env = os.environ if env is None else env
    if env.get("WANDB_API_KEY"):
        return env["WANDB_API_KEY"]
    secret_id = env.get("WANDB_SECRET_ID")
    if not secret_id:
        return None
    import boto3

    try:
        region = env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None  # boto3 reads only the first
        response = boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=secret_id)
    except Exception as exc:  # any AWS failure means the same thing to the user
        raise ConfigError(
            f"WANDB_SECRET_ID={secret_id}: could not read the secret ({type(exc).__name__}). "
            "Check the id, the region and that the job role may call secretsmanager:GetSecretValue."
        ) from None
    secret = response.get("SecretString") or ""
    # A secret stored as JSON ({"WANDB_API_KEY": "..."}) or as the bare key both work.
    if secret.lstrip().startswith("{"):
        with contextlib.suppress(json.JSONDecodeError):
            secret = json.loads(secret).get("WANDB_API_KEY", "")
    if not secret:
        raise ConfigError(f"WANDB_SECRET_ID={secret_id}: the secret is empty, or JSON without a WANDB_API_KEY field")
    return secret
