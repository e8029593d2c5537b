"""`train`'s learning-rate schedule and evaluation cadence: the checks of their keys, and the cadence they give."""

from __future__ import annotations

import math
from typing import Any

from container_src.config_sources import ConfigError

LR_SCHEDULERS = ("constant", "cosineannealing", "cosineannealingwarmrestarts")  # SAE-Lens 6.54's get_lr_scheduler
EVALUATIONS_PER_RUN = 100


def check(cfg: Any) -> None:
    """Refuse a scheduler SAE-Lens lacks, an ``lr_end`` outside [0, lr], and a decay that would start from 0."""
    if cfg.lr_scheduler_name not in LR_SCHEDULERS:
        raise ConfigError(f"lr_scheduler_name={cfg.lr_scheduler_name!r}: must be one of {', '.join(LR_SCHEDULERS)}")
    end = cfg.lr_end
    if end is not None and not (math.isfinite(end) and 0 <= end <= cfg.lr):
        raise ConfigError(f"lr_end={end!r}: must be between 0 and lr={cfg.lr}")
    if end == 0 and cfg.lr_decay_fraction > 0 and cfg.lr_scheduler_name != "constant":
        raise ConfigError(
            f"lr_end={end!r}: must be above 0 when lr_decay_fraction is above 0: the final decay starts from lr_end "
            "(or set lr_decay_fraction=0)"
        )
    if cfg.eval_every_n_wandb_logs is not None and cfg.eval_every_n_wandb_logs < 1:
        raise ConfigError(
            f"eval_every_n_wandb_logs={cfg.eval_every_n_wandb_logs!r}: must be at least 1, or empty for about "
            f"{EVALUATIONS_PER_RUN} evaluations over the run"
        )


def evaluation_every(cfg: Any) -> int:
    """Metric lines between evaluations: ``eval_every_n_wandb_logs``, or about 100 evaluations over the run (at
    every metric line for a run with fewer than 100)."""
    if cfg.eval_every_n_wandb_logs is not None:
        return int(cfg.eval_every_n_wandb_logs)
    return max(1, round(cfg.training_steps / (cfg.log_every * EVALUATIONS_PER_RUN)))
