"""What a SageMaker training job is asked to do: hyperparameters, sweeps, instance checks, metric definitions,
and the CreateTrainingJob request itself.

The request is built with the SageMaker SDK v3's ``ModelTrainer`` and sent with boto3 (see :func:`build_request`).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from container_src import sizing
from container_src.config import SCHEMAS, ConfigError, looks_like_secret, read_json_object, resolve
from container_src.evaluate import SOURCE_METRICS, SOURCE_NAMES
from container_src.hardware import gpu_memory, gpu_without_cuda13, has_gpu, instance_has_bf16
from container_src.sae_set import PER_SAE_KEYS
from launcher.errors import LauncherError
from launcher.settings import Settings

logger = logging.getLogger(__name__)
MODES = tuple(SCHEMAS)  # the container's own table: a mode it lacks is refused here, before any AWS call
DEFAULT_INSTANCE = "ml.g5.xlarge"  # A10G: bf16, 24 GB
CHECKPOINT_DIR = "/opt/ml/checkpoints"
JOB_PREFIX = "sae"
MAX_NAME = 63  # SageMaker: ^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$
_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
# The container's [metric] lines (container_src/records.py): per step, then one final line.
STEP_METRICS = ("tokens", "loss", "explained_variance", "l0", "dead_features", "lr")
FINAL_METRICS = (
    "explained_variance",
    "ce_loss_score",
    "mse",
    "cossim",
    "l0",
    "dead_feature_fraction",
    *(f"{metric}_{source}" for source in SOURCE_NAMES for metric in SOURCE_METRICS),
)


def metric_definitions() -> list[dict[str, str]]:
    """MetricDefinitions that read the container's ``[metric] step=…`` and ``[metric] final=1 …`` lines."""
    step = [{"Name": f"train:{n}", "Regex": rf"\[metric\] step=.* {n}={_NUMBER}"} for n in STEP_METRICS]
    final = [{"Name": f"final:{n}", "Regex": rf"\[metric\] final=1.* {n}={_NUMBER}"} for n in FINAL_METRICS]
    return step + final


def parse_assignments(items: list[str], flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise LauncherError(f"{flag} {item!r}: expected key=value, for example {flag} k=32")
        if key.strip() in out:
            raise LauncherError(f"{flag} {key.strip()}: given twice ({out[key.strip()]!r} and {value!r}); keep one")
        out[key.strip()] = value
    return out


def parse_sweep(items: list[str]) -> dict[str, list[str]]:
    """``--sweep k=32,64 --sweep lr=1e-4,3e-4`` -> {"k": ["32", "64"], "lr": [...]}."""
    sweep: dict[str, list[str]] = {}
    for item in items:
        key, eq, raw = item.partition("=")
        values = [v.strip() for v in raw.split(",")]
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) or not all(values):
            raise LauncherError(
                f"--sweep {item!r}: expected key=v1,v2,… with no empty value, for example --sweep k=32,64"
            )
        if key in sweep:
            raise LauncherError(f"--sweep {key}: given twice; list all its values in one --sweep {key}=v1,v2")
        if len(set(values)) != len(values):
            raise LauncherError(f"--sweep {item!r}: a value is repeated")
        sweep[key] = values
    return sweep


def sweep_together(mode: str, sweep: dict[str, list[str]], sets: dict[str, str]) -> str:
    """``--sweep-together``: the sweep's combinations as one train job's `saes` list (one SAE each), trained on one
    forward pass of the model instead of one job per combination."""
    if mode != "train":
        raise LauncherError(f"--sweep-together trains several SAEs in one train job; it cannot be used with {mode}")
    if not sweep:
        raise LauncherError("--sweep-together needs a --sweep, for example --sweep k=32,64 --sweep-together")
    if "saes" in sets:
        raise LauncherError("--sweep-together writes `saes` itself; drop --set saes=… or --sweep-together")
    if others := sorted(set(sweep) - set(PER_SAE_KEYS)):
        raise LauncherError(
            f"--sweep-together: {', '.join(others)} cannot differ between the SAEs of one job (one trainer steps them "
            f"all); sweep only {', '.join(k for k in PER_SAE_KEYS if k != 'name')} together, or drop --sweep-together "
            "for one job per combination"
        )
    return json.dumps(combinations(sweep))


def combinations(sweep: dict[str, list[str]]) -> list[dict[str, str]]:
    keys = list(sweep)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*sweep.values())] or [{}]


def read_config_file(path: Path) -> dict[str, str]:
    """``--config FILE``: a JSON object whose values become string hyperparameters."""
    try:
        data = read_json_object(path, "--config")
    except ConfigError as exc:
        raise LauncherError(str(exc)) from None
    if nulls := sorted(k for k, v in data.items() if v is None):
        # as a hyperparameter null would be the text "null", which a text setting takes as its value
        raise LauncherError(f"--config {path}: {', '.join(nulls)}: null; leave the key out to keep its default")
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


def holds_wandb_key(text: str) -> bool:
    """Whether ``text`` contains this shell's ``WANDB_API_KEY`` (W&B keys are 40 characters or more; a value under 8
    characters is no key and would match ordinary text)."""
    key = os.environ.get("WANDB_API_KEY", "").strip()
    return len(key) >= 8 and key in text


def hyperparameters(mode: str, base: dict[str, str], overrides: dict[str, str]) -> dict[str, str]:
    """The job's hyperparameters, checked as the container will check them, before anything is sent.

    ``base`` is the ``--config`` file, ``overrides`` the ``--set`` and ``--sweep`` values.
    """
    if mode not in MODES:
        raise LauncherError(f"--mode {mode!r}: unknown mode; choose one of {', '.join(MODES)}")
    for source, given in (("--config", base), ("--set or --sweep", overrides)):
        if "mode" in given and given["mode"].strip().strip('"') != mode:
            raise LauncherError(
                f"mode={given['mode']} (from {source}) disagrees with --mode {mode}; the job's mode is --mode, "
                f"so remove mode from {source} or change --mode"
            )
        if "config" in given:
            raise LauncherError(
                f"config (from {source}): a path would be read inside the job, where only the image's files are; "
                "give the values themselves (in the --config FILE, or with --set), or preset=NAME"
            )
    values = {**base, **overrides, "mode": mode}
    for key, value in values.items():
        why = "names a credential" if looks_like_secret(key) else ""
        if not why and holds_wandb_key(value):
            why = "holds the value of WANDB_API_KEY"
        if why:
            raise LauncherError(
                f"{key}: secrets never go in hyperparameters (this one {why}); store the W&B key with "
                "`submit.py secret` and jobs get only its Secrets Manager id"
            )
    schema = SCHEMAS[mode]  # checked here exactly as the container will check them
    try:
        resolve(values, schema=schema)
    except ConfigError as exc:
        raise LauncherError(f"hyperparameters: {exc}") from None
    return values


def config_of(mode: str, values: dict[str, str]) -> Any:
    """``values`` as the container's config for ``mode`` (they passed :func:`hyperparameters`' check)."""
    return resolve(values, schema=SCHEMAS[mode]).config


def check_instance(mode: str, instance_type: str, cfg: Any) -> list[str]:
    """Refuse what cannot work for a run of ``mode`` with config ``cfg``; return warnings for what works badly."""
    if not re.fullmatch(r"ml\.[a-z0-9-]+\.[a-z0-9]+", instance_type):
        raise LauncherError(f"--instance-type {instance_type!r}: expected a SageMaker type such as {DEFAULT_INSTANCE}")
    gpu = has_gpu(instance_type)
    if mode == "train" and not gpu:
        raise LauncherError(
            f"--instance-type {instance_type}: has no NVIDIA GPU; training needs one (for example {DEFAULT_INSTANCE})"
        )
    old_gpu = gpu_without_cuda13(instance_type)
    if old_gpu and (mode == "train" or cfg.device != "cpu"):
        raise LauncherError(
            f"--instance-type {instance_type}: its {old_gpu} GPU predates Turing, which CUDA 13 (the image's torch "
            "build) no longer supports, so no driver or compatibility library can make it work; use a g4dn, g5, g6, "
            f"p4 or p5 type (for example {DEFAULT_INSTANCE})"
            + ("" if mode == "train" else f", or --set device=cpu to run {mode} on its CPU")
        )
    warnings = []
    if not gpu or old_gpu:
        warnings.append(f"{instance_type} has no usable GPU: {mode} will run on CPU, slowly")
    if gpu and not instance_has_bf16(instance_type) and cfg.precision == "bf16":
        raise LauncherError(
            f"precision=bf16: {instance_type} has no native bf16; use precision=auto or a g5/g6/p4 type"
        )
    if mode == "train" and not instance_has_bf16(instance_type):
        warnings.append(
            f"{instance_type} has no native bf16: training runs in fp32 (twice the memory, slower); "
            f"{DEFAULT_INSTANCE} (A10G) or ml.g6.xlarge (L4) train in bf16"
        )
    return warnings


def check_memory(instance_type: str, cfg: Any, folder: Path | None = None) -> None:
    """Refuse an instance type whose GPU cannot hold a `train` run's estimated memory, naming those that can
    (the container checks the same on the device). ``folder``: a local plain model folder, whose config.json gives
    the model's sizes; otherwise the table of published configs. An unknown size is left to the job, with a
    warning."""
    memory = gpu_memory(instance_type)
    est = sizing.estimate_for(cfg, folder)
    if memory is None or est is None:
        if memory is None and has_gpu(instance_type):
            logger.warning("%s: its GPU memory is not in the table; the job checks the estimate itself", instance_type)
        return
    gpu, gib = memory
    logger.info("GPU memory estimate for %s: %s", cfg.model_name, "; ".join(est.lines()))
    if why := sizing.shortfall(est, int(gib * sizing.GIB), f"--instance-type {instance_type} ({gpu})"):
        raise LauncherError(why)


def job_names(mode: str, runs: list[dict[str, str]], now: float | None = None) -> list[str]:
    """Distinct, readable job names: ``sae-train-<UTC time>-<random>`` and, in a sweep, ``-<n>-<key><value>…``.

    Job names are unique per account and region, and the time is only to the second: the random part keeps two
    submits in the same second apart. A sweep's members share it and differ by their number, which stays whole when
    a long slug is cut to SageMaker's 63 characters.
    """
    stamp = time.strftime("%y%m%d-%H%M%S", time.gmtime(now))
    base = f"{JOB_PREFIX}-{mode}-{stamp}-{secrets.token_hex(3)}"
    if len(runs) == 1 and not runs[0]:
        return [base]
    names = []
    for i, run in enumerate(runs, 1):
        slug = "-".join(f"{k}{v}" for k, v in run.items())
        slug = re.sub(r"-+", "-", re.sub(r"[^A-Za-z0-9]", "-", slug)).strip("-")
        name = f"{base}-{i}-{slug}"[:MAX_NAME].rstrip("-")
        names.append(name)
    return names


@dataclass
class JobSpec:
    name: str
    mode: str
    image: str
    hyperparameters: dict[str, str]
    channels: dict[str, str]
    output_uri: str
    instance_type: str = DEFAULT_INSTANCE
    volume_gb: int = 50
    max_run: int = 24 * 3600
    spot: bool = False
    max_wait: int | None = None
    checkpoint_uri: str | None = None
    network_isolation: bool = False
    environment: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def check_timing(spot: bool, max_run: int, max_wait: int | None) -> int | None:
    if max_run < 60:
        raise LauncherError(f"--max-run {max_run}: must be at least 60 seconds")
    if not spot:
        if max_wait is not None:
            raise LauncherError("--max-wait applies only to --spot jobs")
        return None
    max_wait = max_wait if max_wait is not None else 2 * max_run
    if max_wait < max_run:
        raise LauncherError(
            f"--max-wait {max_wait}: must be at least --max-run ({max_run}); it includes the run itself"
        )
    return max_wait


def build_request(spec: JobSpec, settings: Settings) -> dict[str, Any]:
    """The CreateTrainingJob request, built by the SDK v3's ModelTrainer.

    ModelTrainer's own ``train()`` is not used to send it: it cannot show the request first (``--dry-run`` prints
    exactly what is sent), and it names jobs by the second, so a sweep's jobs would collide. Its serializer builds
    the request; boto3 sends it (see submit.py).
    """
    import boto3
    from sagemaker.core.helper.session_helper import Session
    from sagemaker.train.configs import (
        CheckpointConfig,
        Compute,
        InputData,
        MetricDefinition,
        Networking,
        OutputDataConfig,
        StoppingCondition,
        Tag,
    )
    from sagemaker.train.model_trainer import ModelTrainer

    logging.getLogger("sagemaker.config").setLevel(logging.WARNING)  # it sets its own level on import
    session = Session(boto_session=boto3.Session(region_name=settings.region))
    try:
        trainer = ModelTrainer(
            sagemaker_session=session,
            role=settings.role_arn,
            training_image=spec.image,
            base_job_name=spec.name,
            compute=Compute(
                instance_type=spec.instance_type,
                instance_count=1,
                volume_size_in_gb=spec.volume_gb,
                enable_managed_spot_training=spec.spot,
            ),
            stopping_condition=StoppingCondition(
                max_runtime_in_seconds=spec.max_run, max_wait_time_in_seconds=spec.max_wait if spec.spot else None
            ),
            output_data_config=OutputDataConfig(s3_output_path=spec.output_uri),
            checkpoint_config=(
                CheckpointConfig(s3_uri=spec.checkpoint_uri, local_path=CHECKPOINT_DIR) if spec.checkpoint_uri else None
            ),
            input_data_config=[InputData(channel_name=name, data_source=uri) for name, uri in spec.channels.items()],
            hyperparameters=dict(spec.hyperparameters),
            environment=dict(spec.environment),
            tags=[Tag(key=k, value=v) for k, v in spec.tags.items()],
            networking=Networking(enable_network_isolation=True) if spec.network_isolation else None,
        ).with_metric_definitions([MetricDefinition(name=m["Name"], regex=m["Regex"]) for m in metric_definitions()])
    except Exception as exc:  # the SDK validates the role with IAM while constructing
        raise LauncherError(
            f"the SageMaker SDK refused the job: {type(exc).__name__}: {str(exc)[:300]}. It checks role_arn with "
            "IAM (iam:GetRole, iam:SimulatePrincipalPolicy); against an endpoint without IAM (a local test "
            "server) set SAGEMAKER_VALIDATE_ROLE=false"
        ) from None
    request = trainer._create_training_job_args(boto3=True)  # pyright: ignore[reportPrivateUsage]
    request["TrainingJobName"] = spec.name
    return request
