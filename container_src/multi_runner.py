"""SAE-Lens's multi-SAE runner with what single `train`'s runner adds (container_src/runner.py): our packed store,
our SAE step's Adam kernel, a step log per SAE, full checkpoints on SIGTERM/SIGINT, and checkpoint markers.

Importing this module imports SAE-Lens; import it only after the run has set the HF environment.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import torch
from sae_lens import LanguageModelSAERunnerConfig, MultiSAETrainingRunner, MultiSAETrainingRunnerConfig
from sae_lens.util import get_special_token_ids

from container_src import checkpoints, data, records, sae_step
from container_src.interrupt import Interrupted, StopRequest
from container_src.runner import log_steps, save_on_stop, steps_done
from container_src.store import PackedStore, WorkerRows

_PER_SAE = {"output_path", "checkpoint_path", "resume_from_checkpoint"}
"""Fields of SAE-Lens's single-SAE runner config that the multi-SAE config sets otherwise."""


def multi_config(run_cfgs: dict[str, Any], hooks: dict[str, str], output: Path, run_dir: Path) -> Any:
    """The multi-SAE runner config: every shared field copied from the first SAE's single-SAE config (they agree
    on all of them, since only the per-SAE keys differ), the SAEs and their hooks by name."""
    first = next(iter(run_cfgs.values()))
    names = {f.name for f in dataclasses.fields(MultiSAETrainingRunnerConfig)}
    shared = {f.name for f in dataclasses.fields(LanguageModelSAERunnerConfig) if f.name in names} - _PER_SAE
    multi = MultiSAETrainingRunnerConfig(
        saes={name: run_cfg.sae for name, run_cfg in run_cfgs.items()},
        hook_names=hooks,
        output_path=str(output),
        resume_from_checkpoint=first.resume_from_checkpoint,
        **{key: getattr(first, key) for key in shared},
    )
    multi.checkpoint_path = str(run_dir)  # SAE-Lens appends logger.wandb_id to it, as in single train
    return multi


def multi_store(stream: Any, lm: Any, multi_cfg: Any, first: Any, worker: bool) -> PackedStore:
    """The multi-hook store over ``stream``'s documents packed into rows on the CPU (in a worker process if
    ``worker``): one forward pass gives every hook's activations."""
    packed: Any = data.PackedRows(stream, lm, first)
    rows: Any = WorkerRows(packed) if worker else packed
    hooks = list(dict.fromkeys(multi_cfg.hook_names_per_sae.values()))
    d_ins = {multi_cfg.hook_names_per_sae[name]: sae.d_in for name, sae in multi_cfg.saes.items()}
    store = PackedStore.from_config_multi_hook(
        lm,
        dataset=rows,
        hook_names=hooks,
        hook_d_ins=d_ins,
        streaming=True,
        context_size=first.context_size,
        n_batches_in_buffer=first.n_batches_in_buffer,
        total_training_tokens=first.training_tokens,
        store_batch_size_prompts=first.store_batch_size_prompts,
        train_batch_size_tokens=first.train_batch_size_tokens,
        prepend_bos=first.prepend_bos,
        device=first.act_store_device,
        dtype=first.dtype,
        autocast_lm=first.autocast_lm,
        seqpos_slice=first.seqpos_slice,
        sequence_separator_token=first.sequence_separator_token,
        activations_mixing_fraction=first.activations_mixing_fraction,
        exclude_special_tokens=_special_token_ids(first, lm),
    )
    return cast(PackedStore, store)


def _special_token_ids(run_cfg: Any, lm: Any) -> torch.Tensor | None:
    """The token ids left out of training, as SAE-Lens's single-hook ``from_config`` derives them from
    ``exclude_special_tokens`` (its multi-hook constructor takes them ready-made)."""
    ids = run_cfg.exclude_special_tokens
    if ids is False or ids is None:
        return None
    if ids is True:
        ids = get_special_token_ids(lm.tokenizer)
    return torch.tensor(ids, dtype=torch.long, device=torch.device(run_cfg.act_store_device))


class MultiRunner(MultiSAETrainingRunner):
    """SAE-Lens's multi-SAE runner with our step log, Adam kernel, stop handling and checkpoint markers."""

    trainer: Any = None

    def __init__(
        self,
        cfg: Any,
        *,
        logs: dict[str, records.MetricLog],
        log_every: int,
        lean_step: bool,
        **overrides: Any,
    ) -> None:
        super().__init__(cfg, **overrides)
        self.logs, self.log_every, self.lean_step = logs, log_every, lean_step

    def close_stores(self) -> None:
        """Stop the stores' iterations (and the data worker) now, not at garbage collection."""
        cast(PackedStore, self.activations_store).close()
        cast(PackedStore, self.evaluator.activations_store).close()

    # SAE-Lens's seam between loading a checkpoint and fitting (its own installs SAE-Lens's signal handlers)
    def _run_with_interruption_handling(self, trainer: Any) -> Any:
        self.trainer = trainer
        per_sae = list(trainer.trainers.values())
        for i, (name, sae_trainer) in enumerate(trainer.trainers.items()):
            sae_step.set_adam_kernel(sae_trainer.optimizer, fused=self.lean_step)
            # periodic checkpoints are written before the step counters move on: the token count is the truth
            sae_trainer.n_training_steps = steps_done(sae_trainer)
            # the last SAE of a step stops the run, once every SAE has taken that step
            log_steps(sae_trainer, self.logs[name], self.log_every, stop=i == len(per_sae) - 1)
        trainer.n_training_steps = steps_done(per_sae[0])
        trainer.checkpoint_thresholds = [t for t in trainer.checkpoint_thresholds if t > trainer.n_training_samples]
        save = trainer.save_checkpoint

        def marked_save(checkpoint_name: str, *args: Any, **kwargs: Any) -> None:
            checkpoints.clear_marker(Path(self.cfg.checkpoint_path or "") / checkpoint_name)
            save(checkpoint_name, *args, **kwargs)

        trainer.save_checkpoint = marked_save
        StopRequest.phase = "training"
        try:
            return trainer.fit()
        except (KeyboardInterrupt, Interrupted) as exc:
            for sae_trainer in per_sae:
                sae_trainer.n_training_steps = steps_done(sae_trainer)
            trainer.n_training_samples = per_sae[0].n_training_samples
            trainer.n_training_steps = steps_done(per_sae[0])
            raise save_on_stop(exc, trainer, self.cfg.checkpoint_path) from None

    def _save_runner_checkpoint_files(self, checkpoint_path: Path | None) -> None:
        # SAE-Lens calls this last, after every SAE's trainer has written its folder: the markers close them
        super()._save_runner_checkpoint_files(checkpoint_path)
        if checkpoint_path is None or self.trainer is None:
            return
        per_sae = next(iter(self.trainer.trainers.values()))
        step, tokens = steps_done(per_sae), per_sae.n_training_samples
        for name in self.trainer.trainers:
            checkpoints.write_marker(Path(checkpoint_path) / name, step, tokens)
        checkpoints.write_marker(Path(checkpoint_path), step, tokens)
