"""`train` with the `saes` key: several SAEs trained together on one forward pass of the model, with SAE-Lens's
``MultiSAETrainingRunner`` (one optimiser and schedule per SAE, one activation stream for all).

Each SAE is built, evaluated and recorded as a single `train` run of its configuration would be, and published
to ``model/<name>/``; ``model/saes.json`` lists them. Checkpoints go to ``checkpoints/<run id>/<tokens>/<name>/``,
each SAE's folder and the checkpoint itself closed by a marker; a run resumes only from a checkpoint whose every
marker matches. What single `train` does that this cannot: compile the SAEs (refused in the config).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from container_src import checkpoints, data, model, records, sizing
from container_src.config import Resolved, TrainConfig
from container_src.interrupt import StopRequest
from container_src.paths import ContainerPaths
from container_src.sae_set import Member, members
from container_src.train import (
    METRIC_LOG,
    Inputs,
    Run,
    evaluate_run,
    evaluation_store,
    load_lm,
    prepare_inputs,
    publish,
    record_provenance,
    wandb_run_id,
    write_records,
)

logger = logging.getLogger(__name__)

SUMMARY = "saes.json"
"""The list of a multi-SAE job's SAEs, in model/ beside their folders: viz finds them there."""


@dataclass
class Job:
    """The model loaded and the job identified: each SAE's width and step log, the checkpoint it resumes."""

    members: list[Member]
    runs: dict[str, Run]
    """Each SAE's ``train.Run``: the shared model, run id and checkpoint, its own widths and step log."""
    rid: str
    run_dir: Path
    resume: Path | None


def latest_checkpoint(run_dir: Path, names: list[str]) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint whose own marker and every SAE's marker match their files; others are skipped."""
    if not run_dir.is_dir():
        return None
    found = [p for p in run_dir.iterdir() if p.is_dir() and p.name.removeprefix("final_").isdigit()]
    for path in sorted(found, key=checkpoints.checkpoint_tokens, reverse=True):
        marker = checkpoints.read_marker(path)
        if marker is not None and all(checkpoints.read_marker(path / name) is not None for name in names):
            return path, marker
        logger.warning("skipping incomplete checkpoint %s", path)
    return None


def _open_job(cfg: TrainConfig, group: list[Member], inputs: Inputs, paths: ContainerPaths) -> Job:
    """Load the model once, size each SAE at its hook, and find the job's id and newest whole checkpoint."""
    lm = load_lm(cfg, inputs)
    model.check_context(lm, cfg.context_size)
    share = data.token_share(lm.tokenizer, inputs.training_prompts, inputs.stories, cfg.prompt_ratio)
    # run_name only names the run (it is not in the digest): a job's id says it is one of several SAEs
    named = dataclasses.replace(cfg, run_name=cfg.run_name or f"multi{len(group)}")
    rid = checkpoints.run_id(named, f"{inputs.data_identity}|model:{model.weights_fingerprint(lm)}")
    run_dir = paths.checkpoints_dir / rid
    latest = latest_checkpoint(run_dir, [m.name for m in group])
    resume = latest[0] if latest else None
    runs = {}
    for m in group:
        d_in = model.hook_width(lm, m.config.hook_name)
        log = records.MetricLog(run_dir / "logs" / m.name / METRIC_LOG)
        log.truncate_after(latest[1]["step"] if latest else 0)
        runs[m.name] = Run(lm, d_in, m.config.sae_width(d_in), share, rid, run_dir, log, resume)
        logger.info("SAE %s: d_in=%d (read at %s), d_sae=%d", m.name, d_in, m.config.hook_name, runs[m.name].d_sae)
    if latest:
        logger.info("resuming from %s (step %d, %d tokens)", resume, latest[1]["step"], latest[1]["tokens"])
    others = sorted(p.name for p in paths.checkpoints_dir.glob("*/") if p.is_dir() and p.name != rid)
    if others:
        logger.warning("checkpoints of other configurations or data are ignored: %s", ", ".join(others))
    logger.info("run %s: %d SAEs on one forward pass, %d steps", rid, len(group), cfg.training_steps)
    return Job(group, runs, rid, run_dir, resume)


def _run_configs(cfg: TrainConfig, job: Job, inputs: Inputs, staging: Path) -> dict[str, Any]:
    """Each SAE's SAE-Lens runner config, as single `train` maps its configuration (sizes, evaluation stores)."""
    from container_src import runner

    wandb_id = wandb_run_id(job.run_dir, job.resume)
    return {
        m.name: runner.sae_lens_config(
            m.config, run.d_in, run.d_sae, inputs.runtime, wandb_id, job.run_dir, staging / m.name, job.resume
        )
        for m, run in zip(job.members, job.runs.values(), strict=True)
    }


def _training_saes(cfg: TrainConfig, run_cfgs: dict[str, Any]) -> dict[str, Any]:
    """Each SAE initialised as its single run initialises it (the seed set before each); torch's generator is then
    left where the first SAE's single run leaves it, so the shuffling buffer's order is that run's."""
    from container_src import sae_step

    saes, states = {}, []
    for name, run_cfg in run_cfgs.items():
        torch.manual_seed(cfg.seed)
        saes[name] = sae_step.training_sae(run_cfg, cfg.lean_step)
        states.append(torch.get_rng_state())
    torch.set_rng_state(states[0])
    return saes


def _fit(cfg: TrainConfig, job: Job, inputs: Inputs, staging: Path) -> tuple[Any, dict[str, Any]]:
    """Train every SAE together; SAE-Lens saves each into ``staging/<name>``. Returns the multi-SAE trainer and
    each SAE's runner config."""
    from container_src.multi_runner import MultiRunner, multi_config, multi_store

    run_cfgs = _run_configs(cfg, job, inputs, staging)
    first = next(iter(run_cfgs.values()))
    multi_cfg = multi_config(run_cfgs, {m.name: m.config.hook_name for m in job.members}, staging, job.run_dir)
    saes = _training_saes(cfg, run_cfgs)
    for sae in saes.values():
        record_provenance(sae, inputs)
    lm = next(iter(job.runs.values())).lm
    runner = MultiRunner(
        multi_cfg,
        logs={name: run.metric_log for name, run in job.runs.items()},
        log_every=cfg.log_every,
        lean_step=cfg.lean_step,
        override_dataset=data.PackedRows(inputs.stream, lm, first),
        override_model=lm,
        override_saes=saes,
    )
    runner.activations_store = multi_store(inputs.stream, lm, multi_cfg, first, cfg.data_worker)
    # W&B's evaluations during training read held-out stories, as single train's do
    runner.evaluator.activations_store = evaluation_store(cfg, inputs, lm, first)
    try:
        if job.resume is not None:  # before the prefetching thread starts on the stream (see train._fit)
            runner.activations_store.load_from_checkpoint(job.resume)
        runner.run()
    finally:
        runner.close_stores()
    StopRequest.phase = "finishing"
    if StopRequest.requested:
        raise StopRequest.after_training()
    return runner.trainer, run_cfgs


def _finish(
    resolved: Resolved[TrainConfig],
    job: Job,
    inputs: Inputs,
    fitted: tuple[Any, dict[str, Any]],
    staging: Path,
    started: float,
) -> dict[str, dict[str, Any]]:
    """Evaluate and record each SAE as single train does, on a fresh evaluation store of its own."""

    cfg, (trainer, run_cfgs) = resolved.config, fitted
    all_metrics = {}
    for m in job.members:
        run, run_cfg = job.runs[m.name], run_cfgs[m.name]
        store = evaluation_store(cfg, inputs, run.lm, run_cfg)
        try:
            fitted_one = (trainer.trainers[m.name], store, run_cfg)
            metrics = evaluate_run(m.config, inputs, run, fitted_one, staging / m.name, started)
        finally:
            store.close()
        sources = {**resolved.sources, **dict.fromkeys(m.overrides, "saes")}
        member = Resolved(config=m.config, sources=sources, mode=resolved.mode, layers=resolved.layers)
        write_records(member, inputs, run, metrics | {"trained_with": _trained_with(cfg, job, m)}, staging / m.name)
        all_metrics[m.name] = metrics
    records.write_json(staging / SUMMARY, _summary(cfg, job, all_metrics))
    return all_metrics


def _trained_with(cfg: TrainConfig, job: Job, m: Member) -> dict[str, Any]:
    return {"saes": cfg.saes, "others": [o.name for o in job.members if o.name != m.name], "run_id": job.rid}


def _summary(cfg: TrainConfig, job: Job, all_metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "saes": cfg.saes,
        "run_id": job.rid,
        "members": [
            {"name": m.name, "folder": m.name, "overrides": m.overrides, "hook_name": m.config.hook_name}
            | {key: all_metrics[m.name].get(key) for key in ("explained_variance", "l0", "dead_feature_fraction")}
            for m in job.members
        ],
    }


def run_multi_train(resolved: Resolved[TrainConfig], paths: ContainerPaths) -> dict[str, dict[str, Any]]:
    """Train, evaluate and publish every SAE of ``saes``; returns each one's metrics, by name."""
    cfg = resolved.config
    group = members(cfg)
    started = time.monotonic()
    StopRequest.install()
    inputs = prepare_inputs(cfg, paths)
    if inputs.runtime.compile_sae:  # only when compile_sae is empty: true is refused with the config
        logger.info("compile_sae: off for a multi-SAE job (SAE-Lens's multi-SAE trainer runs the SAEs eagerly)")
        inputs.runtime = dataclasses.replace(inputs.runtime, compile_sae=False)
    inputs.memory = sizing.check_memory(cfg, inputs)  # every SAE's share of the GPU, before the model loads
    job = _open_job(cfg, group, inputs, paths)
    staging = paths.model_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        fitted = _fit(cfg, job, inputs, staging)
        all_metrics = _finish(resolved, job, inputs, fitted, staging, started)
        publish(staging, paths.model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("%d SAEs and their records written to %s", len(group), paths.model_dir)
    return all_metrics
