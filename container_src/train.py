"""`train` mode: a TopK (or BatchTopK) SAE with SAE-Lens on the mixed TinyStories + prompts stream.

    python -m container_src train --preset smoke                  # tiny CPU run
    SAGEMAKER_BASE_DIR=data/opt_ml python -m container_src train   # what `docker compose run train` does

Order of work: every cheap check first (config, channels, datasets), then the model, then training. Checkpoints go
to ``checkpoints/<run id>/<tokens>/``; a run that finds a complete one resumes from the newest. SIGTERM saves a full
checkpoint and ends the run with an error. The SAE and its records are assembled in ``output/sae-staging`` and moved
into ``model/`` only when everything is written, so a failed run leaves no half-written SAE there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from container_src import data, evaluate, model, plots, records
from container_src.config import ConfigError, Resolved, TrainConfig, wandb_key
from container_src.paths import ContainerPaths, hub_cache_env

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "checkpoint_complete.json"
METRIC_LOG = "training_log.jsonl"
# Fields that change how a run is recorded or how fast it goes, not what it trains: a restart that changes them
# still resumes the same run.
_NOT_IN_RUN_ID = {
    "log_every",
    "eval_batches",
    "log_to_wandb",
    "wandb_project",
    "wandb_entity",
    "run_name",
    "device",
    "compile_sae",
    "compile_llm",
    "n_checkpoints",
}


class Interrupted(BaseException):
    """The run was stopped by a signal; a checkpoint was saved when training had started.

    A BaseException, so that no library's ``except Exception`` (logging's emit, for one) swallows it.
    """


class _StopRequest:
    """SIGTERM handling. Outside the training loop the handler raises at once. Inside it, it only sets a flag
    that the loop checks after each step, so the signal never lands in the middle of a write."""

    in_training = False
    requested: str | None = None

    @classmethod
    def handle(cls, signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        logger.warning("received %s", name)
        if cls.in_training:
            cls.requested = name
            return
        raise Interrupted(f"stopped by {name} before training started; nothing to save")


def run_id(cfg: TrainConfig) -> str:
    """A stable id: the same configuration after a spot restart finds its own checkpoints and W&B run."""
    if cfg.run_name:
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in cfg.run_name)[:64]
    trained = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IN_RUN_ID}
    digest = hashlib.sha256(json.dumps(trained, sort_keys=True).encode()).hexdigest()[:10]
    return f"{cfg.architecture}-k{cfg.k}-{digest}"


def _checkpoint_tokens(path: Path) -> int:
    return int(path.name.removeprefix("final_"))


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint under ``run_dir`` that was written to the end (it carries the marker)."""
    if not run_dir.is_dir():
        return None
    complete = [
        p for p in run_dir.iterdir() if (p / COMPLETE_MARKER).is_file() and p.name.removeprefix("final_").isdigit()
    ]
    return max(complete, key=_checkpoint_tokens, default=None)


def _runner_class() -> type:
    """SAE-Lens's runner with full checkpoints on interrupt, completion markers and our metric log.

    Built on demand so importing this module stays cheap (SAE-Lens pulls in torch and transformers).
    """
    from sae_lens import LanguageModelSAETrainingRunner

    class Runner(LanguageModelSAETrainingRunner):
        metric_log: records.MetricLog
        log_every: int
        trainer: Any = None

        def run_trainer_with_interruption_handling(self, trainer: Any) -> Any:
            # SAE-Lens 6.54's own interrupt path saves only the store state, into a folder it never creates.
            self.trainer = trainer
            # SAE-Lens's periodic checkpoints are written before the step counter moves on; tokens are the truth
            trainer.n_training_steps = trainer.n_training_samples // trainer.cfg.train_batch_size_samples
            trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t > trainer.n_training_samples]
            self._instrument(trainer)
            _StopRequest.in_training = True
            try:
                return trainer.fit()
            except (KeyboardInterrupt, Interrupted):
                logger.warning("interrupted at step %d; saving a full checkpoint", trainer.n_training_steps)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the save short
                # the signal can land between counting a batch and counting its step; tokens are the truth
                trainer.n_training_steps = trainer.n_training_samples // trainer.cfg.train_batch_size_samples
                trainer.save_checkpoint(checkpoint_name=str(trainer.n_training_samples))
                raise Interrupted(
                    f"stopped by {_StopRequest.requested or 'a signal'} at step {trainer.n_training_steps}; "
                    f"checkpoint saved in {self.cfg.checkpoint_path}/{trainer.n_training_samples}. Run again to resume."
                ) from None
            finally:
                _StopRequest.in_training = False

        def _instrument(self, trainer: Any) -> None:
            step, total = trainer.step, trainer.cfg.total_training_samples

            def logged_step(batch: Any) -> Any:
                output = step(batch)
                done = trainer.n_training_steps + 1
                if done % self.log_every == 0 or trainer.n_training_samples >= total:
                    log_dict = trainer.build_train_step_log_dict(output, trainer.n_training_samples)
                    self.metric_log.record_step(done, trainer.n_training_samples, log_dict)
                # Stop between steps, after this one is counted: stopping before the step would land after the
                # trainer's sparsity-window reset, and a resume would then reset an empty window (0/0).
                if _StopRequest.requested:
                    raise Interrupted(_StopRequest.requested)
                return output

            trainer.step = logged_step

        def save_checkpoint(self, checkpoint_path: Path | None) -> None:
            super().save_checkpoint(checkpoint_path)
            if checkpoint_path is not None and self.trainer is not None:
                records.write_json(
                    Path(checkpoint_path) / COMPLETE_MARKER,
                    {"step": self.trainer.n_training_steps, "tokens": self.trainer.n_training_samples},
                )
                logger.info("checkpoint saved: %s", checkpoint_path)

    return Runner


def _wandb_environment(cfg: TrainConfig, wandb_dir: Path) -> str:
    """Set W&B's environment; returns the mode. The key itself is only ever put in the environment."""
    if not cfg.log_to_wandb:
        return "disabled"
    key = wandb_key()
    wandb_dir.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_DIR"] = str(wandb_dir)
    os.environ["WANDB_RESUME"] = "allow"  # a restarted job continues the same run id
    os.environ["WANDB_SILENT"] = "true"
    if key:
        os.environ["WANDB_API_KEY"] = key
        os.environ.setdefault("WANDB_MODE", "online")
    else:
        os.environ["WANDB_MODE"] = "offline"
    return os.environ["WANDB_MODE"]


def _publish(staging: Path, model_dir: Path) -> None:
    """Move the assembled SAE into model/: weights and records first, cfg.json (what makes it loadable) last."""
    model_dir.mkdir(parents=True, exist_ok=True)
    entries = sorted(staging.iterdir(), key=lambda p: p.name == "cfg.json")
    for entry in entries:
        target = model_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        entry.replace(target)
    staging.rmdir()


def run_train(resolved: Resolved, paths: ContainerPaths) -> dict[str, Any]:
    """Train, evaluate and publish; returns the metrics written to model/metrics.json."""
    cfg = resolved.config
    started = time.monotonic()
    _StopRequest.requested = None
    signal.signal(signal.SIGTERM, _StopRequest.handle)

    # --- cheap checks: channels and data, before anything heavy is loaded
    model_channel = paths.channel("model")
    if model_channel is not None:
        # must precede the first import of the HF libraries, which read these once
        os.environ.update(hub_cache_env(model_channel, cfg.model_name))
        logger.info("channel model: loading %s from %s with the hub off", cfg.model_name, model_channel)
    prompts_channel = paths.channel("prompts")
    if cfg.prompt_ratio > 0 and prompts_channel is None:
        raise ConfigError(
            f"prompt_ratio={cfg.prompt_ratio}: there is no prompts channel ({paths.base}/input/data/prompts). "
            "Export the prompt collection and pass it as channel `prompts`, or set prompt_ratio=0 to train on "
            "TinyStories alone."
        )
    prompts = data.load_prompts(prompts_channel) if prompts_channel and cfg.prompt_ratio > 0 else None
    if prompts_channel and cfg.prompt_ratio == 0:
        logger.warning("prompt_ratio=0: the prompts channel is ignored")
    stories = data.load_stories(paths.channel("tinystories"), cfg.tinystories_path, cfg.tinystories_split)
    stream = data.mixed_stream(stories, prompts, cfg.prompt_ratio, cfg.seed)
    runtime = model.pick_runtime(cfg.device, cfg.precision)
    rid = run_id(cfg)
    wandb_mode = _wandb_environment(cfg, paths.output_dir / "data" / "wandb")

    # --- the model, and what it tells us about the hook
    logger.info("loading %s on %s (%s)", cfg.model_name, runtime.device_name, runtime.precision)
    lm = model.load_model(cfg.model_name, runtime.device)
    d_in = model.hook_width(lm, cfg.hook_name)
    d_sae = cfg.sae_width(d_in)
    if cfg.context_size > lm.cfg.n_ctx:
        raise ConfigError(f"context_size={cfg.context_size}: the model's context is only {lm.cfg.n_ctx} tokens")

    run_dir = paths.checkpoints_dir / rid
    resume = latest_checkpoint(run_dir)
    metric_log = records.MetricLog(run_dir / METRIC_LOG)
    if resume is not None:
        marker = json.loads((resume / COMPLETE_MARKER).read_text())
        metric_log.truncate_after(marker["step"])
        logger.info("resuming from %s (step %d, %d tokens)", resume, marker["step"], marker["tokens"])
    else:
        metric_log.truncate_after(0)
    others = [p.name for p in paths.checkpoints_dir.glob("*/") if p.is_dir() and p.name != rid]
    if others:
        logger.warning("checkpoints of other configurations are ignored: %s", ", ".join(sorted(others)))

    derived = {
        "run_id": rid,
        "d_in": d_in,
        "d_sae": d_sae,
        "training_steps": cfg.training_steps,
        "lr_warm_up_steps": cfg.lr_warm_up_steps,
        "lr_decay_steps": cfg.lr_decay_steps,
        "device": runtime.device,
        "device_name": runtime.device_name,
        "precision": runtime.precision,
        "wandb_mode": wandb_mode,
        "resumed_from": str(resume) if resume else None,
        "channels": {
            c: str(paths.channel(c)) if paths.channel(c) else None for c in ("prompts", "model", "tinystories")
        },
    }
    logger.info("run %s: d_in=%d (read at %s), d_sae=%d, %d steps", rid, d_in, cfg.hook_name, d_sae, cfg.training_steps)

    staging = paths.output_dir / "sae-staging"
    shutil.rmtree(staging, ignore_errors=True)
    runner_cfg = _sae_lens_config(cfg, d_in, d_sae, runtime, rid, paths.checkpoints_dir, staging, resume)
    runner = _runner_class()(runner_cfg, override_dataset=stream, override_model=lm)
    runner.metric_log, runner.log_every = metric_log, cfg.log_every
    sae = runner.run()

    # --- records, then publish
    trainer = runner.trainer
    metrics = evaluate.evaluate(sae, lm, runner.activations_store, cfg.eval_batches)
    dead = trainer.dead_neurons
    metrics.update(
        {
            "dead_features": int(dead.sum().item()),
            "dead_feature_fraction": float(dead.float().mean().item()),
            "dead_feature_window_steps": cfg.dead_feature_window,
            "d_in": d_in,
            "d_sae": d_sae,
            "tokens_trained": int(trainer.n_training_samples),
            "training_steps": int(trainer.n_training_steps),
            "wall_time_s": round(time.monotonic() - started, 2),
            "resumed_from_tokens": _checkpoint_tokens(resume) if resume else 0,
            "device_name": runtime.device_name,
            "precision": runtime.precision,
        }
    )
    records.emit_metrics({"final": 1, **{k: v for k, v in metrics.items() if isinstance(v, int | float)}})
    records.write_json(staging / "metrics.json", metrics)
    records.write_json(staging / "resolved_config.json", resolved.to_json(derived))
    shutil.copyfile(metric_log.path, staging / METRIC_LOG)
    plots.plot_curves(metric_log.read(), staging / "plots", title=f"{rid} · {cfg.hook_name}")
    _publish(staging, paths.model_dir)
    logger.info("SAE and records written to %s", paths.model_dir)
    return metrics


def _sae_lens_config(
    cfg: TrainConfig,
    d_in: int,
    d_sae: int,
    runtime: model.Runtime,
    rid: str,
    checkpoints: Path,
    output: Path,
    resume: Path | None,
) -> Any:
    """Map our flat config onto SAE-Lens's runner config."""
    from sae_lens import BatchTopKTrainingSAEConfig, LanguageModelSAERunnerConfig, LoggingConfig, TopKTrainingSAEConfig

    sae_cls = TopKTrainingSAEConfig if cfg.architecture == "topk" else BatchTopKTrainingSAEConfig
    return LanguageModelSAERunnerConfig(
        sae=sae_cls(d_in=d_in, d_sae=d_sae, k=cfg.k, dtype="float32", device=runtime.device),
        model_name=cfg.model_name,
        hook_name=cfg.hook_name,
        dataset_path=cfg.tinystories_path,
        streaming=True,
        is_dataset_tokenized=False,
        context_size=cfg.context_size,
        training_tokens=cfg.training_tokens,
        train_batch_size_tokens=cfg.train_batch_size_tokens,
        store_batch_size_prompts=cfg.store_batch_size_prompts,
        n_batches_in_buffer=cfg.n_batches_in_buffer,
        lr=cfg.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=cfg.lr_warm_up_steps,
        lr_decay_steps=cfg.lr_decay_steps,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=cfg.feature_sampling_window,
        device=runtime.device,
        dtype="float32",
        autocast=runtime.autocast,
        autocast_lm=runtime.autocast,
        compile_sae=cfg.compile_sae,
        compile_llm=cfg.compile_llm,
        seed=cfg.seed,
        n_checkpoints=cfg.n_checkpoints,
        checkpoint_path=str(checkpoints),  # SAE-Lens appends logger.wandb_id: checkpoints/<run id>/
        save_final_checkpoint=True,  # so an interruption during evaluation resumes without retraining
        output_path=str(output),
        resume_from_checkpoint=str(resume) if resume else None,
        n_eval_batches=cfg.eval_batches,
        logger=LoggingConfig(
            log_to_wandb=cfg.log_to_wandb,
            wandb_project=cfg.wandb_project,
            wandb_entity=cfg.wandb_entity,
            wandb_id=rid,
            run_name=cfg.run_name or rid,
            wandb_log_frequency=cfg.log_every,
        ),
        verbose=False,
    )
