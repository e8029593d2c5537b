"""`train` mode: a TopK (or BatchTopK) SAE with SAE-Lens on the mixed TinyStories + prompts stream.

    python -m container_src train --preset smoke                   # tiny CPU run (make smoke)
    SAGEMAKER_BASE_DIR=/opt/ml python -m container_src train        # a SageMaker job: `train` in the image

Order of work: every cheap check first (config, channels, datasets), then the model, then training. Checkpoints go
to ``checkpoints/<run id>/<tokens>/``; a run that finds a whole one resumes from the newest. SIGTERM saves a full
checkpoint and ends the run with status 143. The SAE and its records are assembled in ``model/.staging`` and moved
into ``model/`` only when everything is written, so a failed run leaves no SAE there.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from container_src import checkpoints, data, evaluate, model, plots, records
from container_src.config import ConfigError, Resolved, TrainConfig, wandb_key
from container_src.paths import ContainerPaths

logger = logging.getLogger(__name__)

METRIC_LOG = "training_log.jsonl"


class Interrupted(BaseException):
    """The run was stopped by a signal. A BaseException, like KeyboardInterrupt, so that no library's
    ``except Exception`` (logging's emit, for one) swallows it."""

    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)
        self.signum = int(signum)


class _StopRequest:
    """SIGTERM/SIGINT handling. During training the handler only sets a flag, which the loop checks after each
    step, so the signal never lands in the middle of a write; the run then saves a checkpoint. Before and after
    training it ends the run at once, except while the SAE is being published (the signal is held back then) and
    after that (the run is done)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    phase = "setup"
    requested: signal.Signals | None = None

    @classmethod
    def install(cls) -> None:
        cls.phase, cls.requested = "setup", None
        for signum in cls.SIGNALS:
            signal.signal(signum, cls.handle)

    @classmethod
    def handle(cls, signum: int, _frame: Any) -> None:
        cls.requested = signal.Signals(signum)
        logger.warning("received %s during %s", cls.requested.name, cls.phase)
        if cls.phase == "setup":
            raise Interrupted(f"stopped by {cls.requested.name} before training started; nothing to save", signum)
        if cls.phase == "finishing":
            raise cls.after_training()

    @classmethod
    def after_training(cls) -> Interrupted:
        name = cls.requested.name if cls.requested else "a signal"
        return Interrupted(
            f"stopped by {name} after training; the final checkpoint is saved, so running again evaluates and "
            "publishes the SAE without retraining",
            cls.requested or signal.SIGTERM,
        )


@dataclass
class Inputs:
    """What the cheap checks produced: the training stream and how the run will compute and log."""

    stream: Any
    prompts: Any
    stories: Any
    eval_stories: Any
    data_identity: str
    channels: dict[str, Path | None]
    runtime: model.Runtime
    wandb_mode: str


def _runner_class() -> type:
    """SAE-Lens's runner with full checkpoints on interrupt, checkpoint markers, our metric log and our SAE step.

    Built on demand so importing this module stays cheap (SAE-Lens pulls in torch and transformers).
    """
    from sae_lens import LanguageModelSAETrainingRunner

    class Runner(LanguageModelSAETrainingRunner):
        metric_log: records.MetricLog
        log_every: int
        lean_step: bool
        trainer: Any = None

        def run_trainer_with_interruption_handling(self, trainer: Any) -> Any:
            # SAE-Lens 6.54's own interrupt path saves only the store state, into a folder it never creates.
            self.trainer = trainer
            from container_src.sae_step import set_adam_kernel

            set_adam_kernel(trainer.optimizer, fused=self.lean_step)  # after SAE-Lens loaded a checkpoint's state
            # SAE-Lens writes periodic checkpoints before its step counter moves on; the token count is the truth.
            trainer.n_training_steps = _steps_done(trainer)
            trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t > trainer.n_training_samples]
            self._instrument(trainer)
            _StopRequest.phase = "training"
            try:
                return trainer.fit()
            except (KeyboardInterrupt, Interrupted) as exc:
                for signum in _StopRequest.SIGNALS:  # a second signal must not cut the save short
                    signal.signal(signum, signal.SIG_IGN)
                stopped_by = _StopRequest.requested or (
                    signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM
                )
                trainer.n_training_steps = _steps_done(trainer)
                logger.warning("interrupted at step %d; saving a full checkpoint", trainer.n_training_steps)
                trainer.save_checkpoint(checkpoint_name=str(trainer.n_training_samples))
                raise Interrupted(
                    f"stopped by {stopped_by.name} at step {trainer.n_training_steps}; checkpoint saved in "
                    f"{self.cfg.checkpoint_path}/{trainer.n_training_samples}. Run again to resume.",
                    stopped_by,
                ) from None

        def _instrument(self, trainer: Any) -> None:
            step, save, total = trainer.step, trainer.save_checkpoint, trainer.cfg.total_training_samples

            def logged_step(batch: Any) -> Any:
                output = step(batch)
                done = trainer.n_training_steps + 1
                if done % self.log_every == 0 or trainer.n_training_samples >= total:
                    log_dict = trainer.build_train_step_log_dict(output, trainer.n_training_samples)
                    self.metric_log.record_step(done, trainer.n_training_samples, log_dict)
                # Stop between steps, after this one is counted: stopping before it would land after the trainer's
                # sparsity-window reset, and the resumed run would reset an empty window again (0/0).
                if _StopRequest.requested:
                    raise Interrupted(_StopRequest.requested.name, _StopRequest.requested)
                return output

            def marked_save(checkpoint_name: str, *args: Any, **kwargs: Any) -> None:
                checkpoints.clear_marker(Path(trainer.cfg.checkpoint_path) / checkpoint_name)
                save(checkpoint_name, *args, **kwargs)

            trainer.step, trainer.save_checkpoint = logged_step, marked_save

        def save_checkpoint(self, checkpoint_path: Path | None) -> None:
            # SAE-Lens calls this last, after the trainer has written weights and state: the marker closes it.
            super().save_checkpoint(checkpoint_path)
            if checkpoint_path is not None and self.trainer is not None:
                tokens = self.trainer.n_training_samples
                checkpoints.write_marker(Path(checkpoint_path), _steps_done(self.trainer), tokens)
                logger.info("checkpoint saved: %s", checkpoint_path)

    return Runner


def _wandb_id(run_dir: Path, resuming: object) -> str:
    """The W&B run id: kept beside the checkpoints and reused only when resuming them, so training the same
    configuration afresh (checkpoints cleared) starts a new W&B run rather than writing into the old one's steps."""
    id_file = run_dir / "wandb_id"
    if resuming and id_file.is_file():
        return id_file.read_text().strip()
    wandb_id = f"{run_dir.name}-{secrets.token_hex(3)}"
    records.write_text(id_file, wandb_id + "\n")
    return wandb_id


def _steps_done(trainer: Any) -> int:
    return trainer.n_training_samples // trainer.cfg.train_batch_size_samples


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


def _prepare_inputs(cfg: TrainConfig, paths: ContainerPaths) -> Inputs:
    """Everything that can fail cheaply: channels, datasets, hardware, W&B. Nothing heavy is loaded yet."""
    channels = paths.model_inputs(cfg.model_name)
    stories_channel, prompts_channel = channels["tinystories"], channels["prompts"]
    if cfg.prompt_ratio > 0 and prompts_channel is None:
        raise ConfigError(
            f"prompt_ratio={cfg.prompt_ratio}: there is no prompts channel ({paths.base}/input/data/prompts is "
            "missing or empty). "
            "Export the prompt collection and pass it as channel `prompts`, or set prompt_ratio=0 to train on "
            "TinyStories alone."
        )
    prompts = data.load_prompts(prompts_channel) if prompts_channel and cfg.prompt_ratio > 0 else None
    if prompts_channel and cfg.prompt_ratio == 0:
        logger.warning("prompt_ratio=0: the prompts channel is ignored")
    stories, stories_identity = data.load_stories(stories_channel, cfg.tinystories_path, cfg.tinystories_split)
    return Inputs(
        stream=data.mixed_stream(stories, prompts, cfg.prompt_ratio, cfg.seed),
        prompts=prompts,
        stories=stories,
        eval_stories=_eval_stories(cfg, stories_channel),
        # "rows": the resume position counts packed rows (data.PackedRows), not documents as in older checkpoints
        data_identity=f"{stories_identity}|prompts:{data.prompts_fingerprint(prompts)}|rows",
        channels=channels,
        runtime=model.pick_runtime(cfg.device, cfg.precision, cfg.compile_sae, paths.instance_type()),
        wandb_mode=_wandb_environment(cfg, paths.output_dir / "data" / "wandb"),
    )


def _eval_stories(cfg: TrainConfig, channel: Path | None) -> Any:
    """The stories the evaluations read: split ``tinystories_eval_split``, held out from training."""
    split = cfg.tinystories_eval_split
    if split == cfg.tinystories_split:
        logger.warning(
            "tinystories_eval_split=%r is the training split: the evaluation reads stories the SAE trained on", split
        )
    if channel is not None:
        data.check_eval_split(channel, split, cfg.tinystories_split)
    return data.open_stories(channel, cfg.tinystories_path, split)


def _publish(staging: Path, model_dir: Path) -> None:
    """Move the assembled SAE into model/: weights and records first, cfg.json (what makes it loadable) last."""
    for entry in sorted(staging.iterdir(), key=lambda p: p.name == "cfg.json"):
        target = model_dir / entry.name
        if target.is_dir():
            shutil.rmtree(target)
        entry.replace(target)
    staging.rmdir()


def run_train(resolved: Resolved, paths: ContainerPaths) -> dict[str, Any]:
    """Train, evaluate and publish; returns the metrics written to model/metrics.json."""
    cfg = resolved.config
    started = time.monotonic()
    _StopRequest.install()
    inputs = _prepare_inputs(cfg, paths)
    runtime = inputs.runtime

    logger.info("loading %s on %s (%s)", cfg.model_name, runtime.device_name, runtime.precision)
    lm = model.load_model(cfg.model_name, runtime.device, inputs.channels["model"], cfg.fused_lm)
    d_in = model.hook_width(lm, cfg.hook_name)
    d_sae = cfg.sae_width(d_in)
    model.check_context(lm, cfg.context_size)

    prompt_token_share = data.token_share(lm.tokenizer, inputs.prompts, inputs.stories, cfg.prompt_ratio)
    logger.info(
        "prompts are %.1f%% of documents and about %.1f%% of tokens", 100 * cfg.prompt_ratio, 100 * prompt_token_share
    )
    rid = checkpoints.run_id(cfg, f"{inputs.data_identity}|model:{model.weights_fingerprint(lm)}")
    run_dir = paths.checkpoints_dir / rid
    metric_log = records.MetricLog(run_dir / METRIC_LOG)
    latest = checkpoints.latest_checkpoint(run_dir)
    resume = latest[0] if latest else None
    metric_log.truncate_after(latest[1]["step"] if latest else 0)
    if latest:
        logger.info("resuming from %s (step %d, %d tokens)", resume, latest[1]["step"], latest[1]["tokens"])
        if change := checkpoints.precision_change(latest[0], runtime.autocast):
            logger.warning("resuming on other hardware: %s", change)
    others = sorted(p.name for p in paths.checkpoints_dir.glob("*/") if p.is_dir() and p.name != rid)
    if others:
        logger.warning("checkpoints of other configurations or data are ignored: %s", ", ".join(others))
    logger.info("run %s: d_in=%d (read at %s), d_sae=%d, %d steps", rid, d_in, cfg.hook_name, d_sae, cfg.training_steps)

    staging = paths.model_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        runner_cfg = _sae_lens_config(cfg, d_in, d_sae, runtime, _wandb_id(run_dir, latest), run_dir, staging, resume)
        # SAE-Lens seeds nothing itself: the SAE's initial weights and the shuffling buffer's order come from torch's
        # global generators, so `seed` must set them for a run to be repeatable
        import torch

        torch.manual_seed(cfg.seed)
        if runtime.compile_sae and cfg.compile_sae is None:
            # compiled by default, not by request: a compile that fails (a toolchain the image lacks, say) then
            # runs the step eagerly, with torch's warning, instead of ending the job
            import torch._dynamo

            torch._dynamo.config.suppress_errors = True
        from container_src.sae_step import training_sae
        from container_src.store import packed_store

        sae = training_sae(runner_cfg, cfg.lean_step)
        rows: Any = data.PackedRows(inputs.stream, lm, runner_cfg)
        runner = _runner_class()(runner_cfg, override_dataset=rows, override_model=lm, override_sae=sae)
        # replaces SAE-Lens's own store
        runner.activations_store = packed_store(inputs.stream, lm, runner_cfg, worker=cfg.data_worker)
        runner.metric_log, runner.log_every, runner.lean_step = metric_log, cfg.log_every, cfg.lean_step
        # Evaluations (W&B's during training, ours at the end) read a stream of their own, of held-out stories, so
        # they never take rows from training: what trains is then the same with or without prefetching, and with or
        # without W&B.
        eval_stream = data.mixed_stream(inputs.eval_stories, inputs.prompts, cfg.prompt_ratio, cfg.seed + 1)
        eval_store = packed_store(eval_stream, lm, runner_cfg)
        runner.evaluator.activations_store = eval_store
        try:
            if resume is not None:
                # SAE-Lens 6.54 starts the prefetching thread on the stream before it fast-forwards that stream to
                # the checkpoint ("generator already executing"); done here first, its own fast-forward has nothing
                # to do
                runner.activations_store.load_from_checkpoint(resume)
            runner.run()
        finally:
            runner.activations_store.close()  # stops data_worker's worker now, not at garbage collection
        _StopRequest.phase = "finishing"
        if _StopRequest.requested:  # it came during the final save, when only the flag was set
            raise _StopRequest.after_training()

        from sae_lens import SAE

        # Evaluate what is shipped: a BatchTopK SAE is saved as JumpReLU, which is not the model that trained.
        shipped = SAE.load_from_disk(str(staging), device=runtime.device)
        metrics = evaluate.evaluate(shipped, lm, eval_store, cfg.eval_batches)
        trainer = runner.trainer
        dead = trainer.dead_neurons
        metrics |= {
            "dead_features": int(dead.sum().item()),
            "dead_feature_fraction": float(dead.float().mean().item()),
            "dead_feature_window_steps": cfg.dead_feature_window,
            "d_in": d_in,
            "d_sae": d_sae,
            "tokens_trained": int(trainer.n_training_samples),
            "training_steps": _steps_done(trainer),
            "wall_time_s": round(time.monotonic() - started, 2),
            "resumed_from_tokens": checkpoints.checkpoint_tokens(resume) if resume else 0,
            "device_name": runtime.device_name,
            "precision": runtime.precision,
        }
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
            "prompt_token_share_estimate": round(prompt_token_share, 4),
            "wandb_mode": inputs.wandb_mode,
            "data": inputs.data_identity,
            "resumed_from": str(resume) if resume else None,
            "channels": {name: str(path) if path else None for name, path in inputs.channels.items()},
        }
        records.emit_metrics({"final": 1, **{k: v for k, v in metrics.items() if isinstance(v, int | float)}})
        records.write_json(staging / "metrics.json", metrics)
        records.write_json(staging / "resolved_config.json", resolved.to_json(derived))
        shutil.copyfile(metric_log.path, staging / METRIC_LOG)
        plots.plot_curves(metric_log.read(), staging / "plots", title=f"{rid} · {cfg.hook_name}")
        # Hold signals back while the files move, so model/ is never left half-published; one that arrives
        # meanwhile is handled after, when the run is done.
        signal.pthread_sigmask(signal.SIG_BLOCK, _StopRequest.SIGNALS)
        try:
            _publish(staging, paths.model_dir)
            _StopRequest.phase = "done"
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _StopRequest.SIGNALS)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("SAE and records written to %s", paths.model_dir)
    return metrics


def training_sae_config(cfg: TrainConfig, d_in: int, d_sae: int, device: str) -> Any:
    """SAE-Lens's config for the SAE itself: architecture and size; fp32 weights (autocast does the bf16 work)."""
    from sae_lens import BatchTopKTrainingSAEConfig, TopKTrainingSAEConfig

    sae_cls = TopKTrainingSAEConfig if cfg.architecture == "topk" else BatchTopKTrainingSAEConfig
    return sae_cls(d_in=d_in, d_sae=d_sae, k=cfg.k, dtype="float32", device=device)


def _sae_lens_config(
    cfg: TrainConfig,
    d_in: int,
    d_sae: int,
    runtime: model.Runtime,
    wandb_id: str,
    run_dir: Path,
    output: Path,
    resume: Path | None,
) -> Any:
    """Map our flat config onto SAE-Lens's runner config."""
    from sae_lens import LanguageModelSAERunnerConfig, LoggingConfig

    runner_cfg = LanguageModelSAERunnerConfig(
        sae=training_sae_config(cfg, d_in, d_sae, runtime.device),
        model_name=cfg.model_name,
        hook_name=cfg.hook_name,
        dataset_path=cfg.tinystories_path,
        streaming=True,
        is_dataset_tokenized=True,  # the store is given data.PackedRows
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
        compile_sae=runtime.compile_sae,
        prefetch_llm_batches=cfg.prefetch_llm_batches,
        seed=cfg.seed,
        n_checkpoints=cfg.n_checkpoints,
        checkpoint_path=str(run_dir),  # replaced below: SAE-Lens appends logger.wandb_id to it
        # so an interruption during evaluation resumes without retraining; a resume from the final checkpoint
        # does not rewrite it (a kill during that rewrite would lose it)
        save_final_checkpoint=resume is None or not resume.name.startswith("final_"),
        output_path=str(output),
        resume_from_checkpoint=str(resume) if resume else None,
        n_eval_batches=cfg.eval_batches,
        logger=LoggingConfig(
            log_to_wandb=cfg.log_to_wandb,
            # weights stay out of W&B: hundreds of MB per checkpoint, and an upload can outlast SIGTERM's 120 s
            log_weights_to_wandb=False,
            wandb_project=cfg.wandb_project,
            wandb_entity=cfg.wandb_entity,
            wandb_id=wandb_id,
            run_name=run_dir.name,
            wandb_log_frequency=cfg.log_every,
        ),
        verbose=False,
    )
    runner_cfg.checkpoint_path = str(run_dir)
    return runner_cfg
