"""SAE-Lens's side of `train`: our configuration mapped onto SAE-Lens's, and its runner with our step, store,
checkpoint markers, metric log and signal handling.

Importing this module imports SAE-Lens (and with it the HF libraries), so import it only after the run has set the
HF environment (``paths.model_inputs``).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import torch
import torch._dynamo
from sae_lens import (
    BatchTopKTrainingSAEConfig,
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
    TopKTrainingSAEConfig,
)

from container_src import checkpoints, data, records, sae_step, training_evals
from container_src.config import TrainConfig
from container_src.interrupt import Interrupted, StopRequest
from container_src.model import Runtime
from container_src.store import PackedStore, packed_store

logger = logging.getLogger(__name__)


def steps_done(trainer: Any) -> int:
    """The trainer's steps, from its token count: SAE-Lens writes periodic checkpoints before its step counter moves
    on, so the token count is the truth."""
    return trainer.n_training_samples // trainer.cfg.train_batch_size_samples


def training_sae_config(cfg: TrainConfig, d_in: int, d_sae: int, device: str) -> Any:
    """SAE-Lens's config for the SAE itself: architecture and size; fp32 weights (autocast does the bf16 work)."""
    sae_cls = TopKTrainingSAEConfig if cfg.architecture == "topk" else BatchTopKTrainingSAEConfig
    return sae_cls(
        d_in=d_in,
        d_sae=d_sae,
        k=cfg.k,
        apply_b_dec_to_input=cfg.apply_b_dec_to_input,
        dtype="float32",
        device=device,
    )


def sae_lens_config(
    cfg: TrainConfig,
    d_in: int,
    d_sae: int,
    runtime: Runtime,
    wandb_id: str,
    run_dir: Path,
    output: Path,
    resume: Path | None,
) -> Any:
    """Map our flat config onto SAE-Lens's runner config."""
    runner_cfg = LanguageModelSAERunnerConfig(
        sae=training_sae_config(cfg, d_in, d_sae, runtime.device),
        model_name=cfg.model_name,
        hook_name=cfg.hook_name,
        dataset_path=cfg.control_path,
        streaming=True,
        is_dataset_tokenized=True,  # the store is given data.PackedRows
        context_size=cfg.context_size,
        training_tokens=cfg.training_tokens,
        train_batch_size_tokens=cfg.train_batch_size_tokens,
        store_batch_size_prompts=cfg.store_batch_size_prompts,
        n_batches_in_buffer=cfg.n_batches_in_buffer,
        lr=cfg.lr,
        lr_scheduler_name=cfg.lr_scheduler_name,
        lr_end=cfg.lr_end,
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
        exclude_special_tokens=cfg.exclude_special_tokens,
        logger=LoggingConfig(
            log_to_wandb=cfg.log_to_wandb,
            # weights stay out of W&B: hundreds of MB per checkpoint, and an upload can outlast SIGTERM's 120 s
            log_weights_to_wandb=False,
            wandb_project=cfg.wandb_project,
            wandb_entity=cfg.wandb_entity,
            wandb_id=wandb_id,
            run_name=run_dir.name,
            wandb_log_frequency=cfg.log_every,
            eval_every_n_wandb_logs=cfg.evaluation_every,
        ),
        verbose=False,
    )
    runner_cfg.checkpoint_path = str(run_dir)
    return runner_cfg


def log_steps(
    trainer: Any,
    metric_log: records.MetricLog,
    log_every: int,
    stop: bool,
    evaluate: Callable[[Any], dict[str, Any]] | None = None,
    eval_every: int = 0,
) -> None:
    """Wrap ``trainer.step`` (an SAE-Lens ``SAETrainer``'s): a line in ``metric_log`` every ``log_every`` steps and
    at the last, with ``evaluate``'s figures every ``eval_every`` steps, and, if ``stop``, a stop after the step when
    a signal has asked for one."""
    step, total = trainer.step, trainer.cfg.total_training_samples

    def logged_step(batch: Any) -> Any:
        output = step(batch)
        done = trainer.n_training_steps + 1
        if done % log_every == 0 or trainer.n_training_samples >= total:
            log_dict = trainer.build_train_step_log_dict(output, trainer.n_training_samples)
            evaluation = evaluate(trainer) if evaluate and eval_every and done % eval_every == 0 else {}
            metric_log.record_step(done, trainer.n_training_samples, log_dict, evaluation)
        # Stop between steps, after this one is counted: stopping before it would land after the trainer's
        # sparsity-window reset, and the resumed run would reset an empty window again (0/0).
        if stop and StopRequest.requested:
            raise Interrupted(StopRequest.requested.name, StopRequest.requested)
        return output

    trainer.step = logged_step


def save_on_stop(exc: BaseException, trainer: Any, checkpoint_dir: Any) -> Interrupted:
    """After a stop (``exc``) during training: save a full checkpoint with ``trainer`` (whose step count is set)
    and return the ``Interrupted`` that ends the run, naming where it went."""
    for signum in StopRequest.SIGNALS:  # a second signal must not cut the save short
        signal.signal(signum, signal.SIG_IGN)
    stopped_by = StopRequest.requested or (signal.SIGINT if isinstance(exc, KeyboardInterrupt) else signal.SIGTERM)
    logger.warning("interrupted at step %d; saving a full checkpoint", trainer.n_training_steps)
    trainer.save_checkpoint(checkpoint_name=str(trainer.n_training_samples))
    return Interrupted(
        f"stopped by {stopped_by.name} at step {trainer.n_training_steps}; checkpoint saved in "
        f"{checkpoint_dir}/{trainer.n_training_samples}. Run again to resume.",
        stopped_by,
    )


class Runner(LanguageModelSAETrainingRunner):
    """SAE-Lens's runner with full checkpoints on interrupt, checkpoint markers, our metric log and our SAE step."""

    trainer: Any = None

    def __init__(
        self, runner_cfg: Any, *, metric_log: records.MetricLog, log_every: int, lean_step: bool, **overrides: Any
    ) -> None:
        super().__init__(runner_cfg, **overrides)
        self.metric_log, self.log_every, self.lean_step = metric_log, log_every, lean_step

    def close_store(self) -> None:
        """Stop data_worker's worker now, not at garbage collection."""
        cast(PackedStore, self.activations_store).close()  # make_runner put ours in place of SAE-Lens's own

    def run_trainer_with_interruption_handling(self, trainer: Any) -> Any:
        # SAE-Lens 6.54's own interrupt path saves only the store state, into a folder it never creates.
        self.trainer = trainer
        sae_step.set_adam_kernel(trainer.optimizer, fused=self.lean_step)  # after SAE-Lens loaded a checkpoint's state
        trainer.n_training_steps = steps_done(trainer)
        trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t > trainer.n_training_samples]
        self._instrument(trainer)
        StopRequest.phase = "training"
        try:
            return trainer.fit()
        except (KeyboardInterrupt, Interrupted) as exc:
            trainer.n_training_steps = steps_done(trainer)
            raise save_on_stop(exc, trainer, self.cfg.checkpoint_path) from None

    def _instrument(self, trainer: Any) -> None:
        eval_every = self.log_every * trainer.cfg.logger.eval_every_n_wandb_logs
        # the evaluations run here, with W&B or without it, so SAE-Lens's own (W&B only) must not run them again
        trainer._run_and_log_evals = lambda: None
        log_steps(trainer, self.metric_log, self.log_every, stop=True, evaluate=self._evaluate, eval_every=eval_every)
        save = trainer.save_checkpoint

        def marked_save(checkpoint_name: str, *args: Any, **kwargs: Any) -> None:
            checkpoints.clear_marker(Path(trainer.cfg.checkpoint_path) / checkpoint_name)
            save(checkpoint_name, *args, **kwargs)

        trainer.save_checkpoint = marked_save

    def _evaluate(self, trainer: Any) -> dict[str, Any]:
        """SAE-Lens's evaluation (to W&B when it logs there) and the sparsity window, for this step's record."""
        figures, grouped = training_evals.evaluation_record(trainer)
        if trainer.cfg.logger.log_to_wandb:
            import wandb

            histograms = {key: wandb.Histogram(value) for key, value in trainer.sae.log_histograms().items()}
            wandb.log(grouped | histograms, step=trainer.n_training_steps)
        return figures

    def save_checkpoint(self, checkpoint_path: Path | None) -> None:
        # SAE-Lens calls this last, after the trainer has written weights and state: the marker closes it.
        super().save_checkpoint(checkpoint_path)
        if checkpoint_path is not None and self.trainer is not None:
            tokens = self.trainer.n_training_samples
            checkpoints.write_marker(Path(checkpoint_path), steps_done(self.trainer), tokens)
            logger.info("checkpoint saved: %s", checkpoint_path)


def make_runner(
    cfg: TrainConfig, runner_cfg: Any, runtime: Runtime, lm: Any, stream: Any, metric_log: records.MetricLog
) -> Runner:
    """The runner for ``runner_cfg``, seeded: our SAE step (``lean_step``) and our packed store over ``stream``."""
    # SAE-Lens seeds nothing itself: the SAE's initial weights and the shuffling buffer's order come from torch's
    # global generators, so `seed` must set them for a run to be repeatable
    torch.manual_seed(cfg.seed)
    if runtime.compile_sae and cfg.compile_sae is None:
        # compiled by default, not by request: a compile that fails (a toolchain the image lacks, say) then
        # runs the step eagerly, with torch's warning, instead of ending the job
        torch._dynamo.config.suppress_errors = True
    sae = sae_step.training_sae(runner_cfg, cfg.lean_step)
    rows: Any = data.PackedRows(stream, lm, runner_cfg)
    runner = Runner(
        runner_cfg,
        metric_log=metric_log,
        log_every=cfg.log_every,
        lean_step=cfg.lean_step,
        override_dataset=rows,
        override_model=lm,
        override_sae=sae,
    )
    # replaces SAE-Lens's own store
    runner.activations_store = packed_store(stream, lm, runner_cfg, worker=cfg.data_worker)
    return runner
