"""What a submit will start, checked before any AWS call: the settings, each run's hyperparameters, the sweep, the
instance, the channels' sources and the job names. `prepare` returns it as a `Plan`."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from container_src import weights
from container_src.config import ConfigError
from container_src.data import channel_files, check_eval_split
from container_src.model_shapes import ARCHITECTURES
from container_src.paths import hub_cache_env
from container_src.sizing import read_architecture
from launcher import jobs
from launcher.channels import check_local_dir, check_sae_uri, model_files, s3_channel
from launcher.errors import LauncherError
from launcher.follow import download_target
from launcher.settings import Settings
from launcher.upload import verify_export

logger = logging.getLogger(__name__)
LOCAL_CHANNELS = ("prompts", "model", "control")


@dataclass(frozen=True)
class Plan:
    settings: Settings
    runs: list[dict[str, str]]
    """each run's --sweep values ([{}] without a sweep)"""
    values: list[dict[str, str]]
    """each run's hyperparameters"""
    names: list[str]
    """each run's job name"""
    max_wait: int | None
    sources: dict[str, str]
    """channel -> a local folder or an s3:// prefix ending in /, for those of LOCAL_CHANNELS the jobs read"""
    model_names: set[str] | None
    """the models a local --model folder must hold; None: every model in it"""

    def local(self, name: str) -> tuple[Path, list[Path]] | None:
        """Channel ``name``'s local folder and the files of it that go up, or None when it is not local."""
        source = self.sources.get(name)
        if not source or source.startswith("s3://"):
            return None
        folder = Path(source).resolve()
        return folder, model_files(folder, self.model_names) if name == "model" else channel_files(folder)


def _runs(args: argparse.Namespace) -> tuple[list[dict[str, str]], list[dict[str, str]], list[Any]]:
    """(each run's --sweep values, its hyperparameters, its config as the container will have it)."""
    base = jobs.read_config_file(args.config) if args.config else {}
    sets = jobs.parse_assignments(args.set, "--set")
    sweep = jobs.parse_sweep(args.sweep)
    if args.sweep_together:  # one job whose `saes` lists the combinations
        sets, sweep = {**sets, "saes": jobs.sweep_together(args.mode, sweep, sets)}, {}
    if both := sorted(set(sweep) & set(sets)):
        raise LauncherError(f"{', '.join(both)}: given in both --set and --sweep; keep one")
    runs = jobs.combinations(sweep)
    values = [jobs.hyperparameters(args.mode, base, {**sets, **run}) for run in runs]
    configs = [jobs.config_of(args.mode, v) for v in values]
    seen: dict[str, dict[str, str]] = {}
    for run, cfg in zip(runs, configs, strict=True):  # k=16 and k=16.0 are one configuration
        same = seen.setdefault(repr(cfg), run)
        if same is not run:
            raise LauncherError(f"--sweep: {same} and {run} are the same configuration; list each value once")
    return runs, values, configs


def _check_flags(args: argparse.Namespace, runs: list[dict[str, str]]) -> None:
    """The flags that go together, and those that do not."""
    if args.volume_gb < 1:
        raise LauncherError(f"--volume-gb {args.volume_gb}: must be at least 1 (GB of the job's storage volume)")
    if args.mode != "viz" and (args.from_job or args.sae):
        raise LauncherError("--from-job and --sae feed a viz job's sae channel; use them with --mode viz")
    if args.mode == "viz" and bool(args.from_job) == bool(args.sae):
        raise LauncherError("--mode viz needs its SAE: give --from-job TRAIN_JOB or --sae s3://…")
    if args.sae:
        check_sae_uri(args.sae)
    if args.resume_from and (args.mode != "train" or len(runs) > 1):
        raise LauncherError("--resume-from continues one train job; it cannot be used with viz, bench or a sweep")
    if args.download and not args.wait:
        raise LauncherError("--download needs --wait (or use `submit.py follow JOB --download DIR` later)")
    if args.dry_run and (args.wait or args.download):
        raise LauncherError("--dry-run sends nothing, so there is nothing to --wait for or --download")


def _sources(args: argparse.Namespace, configs: list[Any]) -> tuple[dict[str, str], set[str] | None]:
    """The channels' sources the jobs read (local folders checked as the job would check them), and the models a
    local --model folder must hold."""
    needs_prompts = args.mode == "viz" or (args.mode == "train" and any(c.prompt_ratio > 0 for c in configs))
    if needs_prompts and not args.prompts.startswith("s3://"):
        verify_export(Path(args.prompts))  # a missing or edited export fails here, not after the image is pushed
    given = {"prompts": args.prompts if needs_prompts else None, "model": args.model, "control": args.control}
    sources: dict[str, str] = {}
    for name, source in given.items():
        if source and source.startswith("s3://"):
            sources[name] = s3_channel(f"--{name}", source)
        elif source:
            if name != "prompts":
                check_local_dir(name, Path(source))
            sources[name] = source
    model_names = None
    if args.model and not args.model.startswith("s3://"):
        model_names = _check_model_cache(Path(args.model), configs)
        if not model_files(Path(args.model).resolve(), model_names):
            raise LauncherError(
                f"--model {args.model}: no models--*/refs or snapshots files in it; give a Hugging Face hub cache "
                "(or $HF_HOME) that holds the model"
            )
    if args.mode == "train" and args.control and not args.control.startswith("s3://"):
        for cfg in configs:  # the job would refuse a folder without the evaluation's split, after starting
            try:
                check_eval_split(Path(args.control), cfg.control_eval_split, cfg.control_split)
            except ConfigError as exc:
                raise LauncherError(f"--control: {exc}") from None
    return sources, model_names


def _renamed_flags(args: argparse.Namespace) -> None:
    """--tinystories, the old name of --control, still works until the next release, with a warning."""
    old = getattr(args, "tinystories", None)
    if old is None:
        return
    if args.control is not None:
        raise LauncherError("--tinystories and --control are both given: --tinystories is the old name; keep --control")
    logger.warning("--tinystories is deprecated: use --control (the old name works until the next release)")
    args.control = old


def prepare(args: argparse.Namespace) -> Plan:
    """Every check that needs no AWS call: settings, hyperparameters, sweep, instance, channels, names."""
    _renamed_flags(args)
    settings = Settings.load(args.settings)
    settings.require("region", "role_arn", "bucket", *([] if args.image else ["image_repository"]))
    runs, values, configs = _runs(args)
    for warning in dict.fromkeys(w for c in configs for w in jobs.check_instance(args.mode, args.instance_type, c)):
        logger.warning("%s", warning)
    max_wait = jobs.check_timing(args.spot, args.max_run, args.max_wait)
    _check_flags(args, runs)
    sources, model_names = _sources(args, configs)
    if args.mode == "train":
        folder = Path(args.model) if args.model and _plain_folder(args.model) else None
        for cfg in configs:
            jobs.check_memory(args.instance_type, cfg, folder)
    if args.network_isolation and args.mode != "bench" and not (args.model and args.control):
        raise LauncherError("--network-isolation: the job cannot reach the hub, so give --model and --control")
    names = jobs.job_names(args.mode, runs)
    for name in names if args.download else []:
        download_target(args.download, name)
    return Plan(settings, runs, values, names, max_wait, sources, model_names)


def _check_model_cache(folder: Path, configs: list[Any]) -> set[str] | None:
    """A local --model folder must be a plain model folder (config.json at its top: every file is sent), or hold
    each run's weights (``model_weights``, else ``model_name``) in the hub-cache layout, which the job would check
    only once it had started. Returns the hub-cache entries the runs name, or None for a plain folder and when one
    names none (viz then takes the SAE's model, known only in the job)."""
    if (folder / "config.json").is_file():
        for cfg in configs:
            check_plain_folder(folder, getattr(cfg, "model_name", None))
        return None
    names: set[str] = set()
    for cfg in configs:
        model_name = getattr(cfg, "model_weights", None) or getattr(cfg, "model_name", None)
        if not model_name:
            return None
        try:
            hub_cache_env(folder, model_name)
        except ConfigError as exc:
            raise LauncherError(f"--model {folder}: {exc}") from None
        names.add(model_name)
    return names


def _plain_folder(model: str) -> bool:
    return not model.startswith("s3://") and (Path(model) / "config.json").is_file()


def check_plain_folder(folder: Path, model_name: str | None) -> None:
    """Refuse a plain model folder whose config.json is not ``model_name``'s architecture, naming what differs, as
    the job would once started; an architecture not in the table of published configs is left to the job."""
    expected = ARCHITECTURES.get(model_name or "")
    if expected is None:
        if model_name:
            logger.info(
                "--model %s: checked against %s in the job (its sizes are not in the table)", folder, model_name
            )
        return
    try:
        found = read_architecture(folder)
    except (ValueError, TypeError, KeyError) as exc:
        raise LauncherError(
            f"--model {folder}: config.json is not a model's config ({type(exc).__name__}: {exc})"
        ) from None
    keys = weights.SHAPE_KEYS
    diff = weights.differences({k: getattr(expected, k) for k in keys}, {k: getattr(found, k) for k in keys})
    if diff:
        raise LauncherError(
            f"--model {folder}: its config.json is not the architecture model_name={model_name!r}: {', '.join(diff)}. "
            "Name the architecture the weights are as model_name, or give weights of this one."
        )
