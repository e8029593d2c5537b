"""The checks of `train`'s values (``config.TrainConfig`` runs them when it is made): each refusal names the key,
its value and what it must be."""

from __future__ import annotations

import math
from typing import Any

from container_src import schedule
from container_src.config_sources import ConfigError

ARCHITECTURES = ("topk", "batchtopk")
PROMPT_FORMATS = ("auto", "chat", "plain")


def refuse_unless(cfg: object, ok: bool, key: str, why: str) -> None:
    """Refuse ``key``'s value, saying ``why``, unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={getattr(cfg, key)!r}: {why}")


def check(cfg: Any) -> None:
    """Every check of a `train` configuration's values and their combinations."""

    def need(ok: bool, key: str, why: str) -> None:
        refuse_unless(cfg, ok, key, why)

    need(cfg.prompt_format in PROMPT_FORMATS, "prompt_format", f"must be one of {', '.join(PROMPT_FORMATS)}")
    need(cfg.architecture in ARCHITECTURES, "architecture", f"must be one of {', '.join(ARCHITECTURES)}")
    need(cfg.expansion_factor >= 1, "expansion_factor", "must be at least 1")
    need(cfg.d_sae is None or cfg.d_sae >= 1, "d_sae", "must be at least 1")
    need(cfg.k >= 1, "k", "must be at least 1")
    need(cfg.d_sae is None or cfg.k <= cfg.d_sae, "k", f"must not exceed d_sae={cfg.d_sae}")
    need(math.isfinite(cfg.lr) and cfg.lr > 0, "lr", "must be a positive number")
    need(0 <= cfg.lr_warm_up_fraction <= 1, "lr_warm_up_fraction", "must be between 0 and 1")
    need(0 <= cfg.lr_decay_fraction <= 1, "lr_decay_fraction", "must be between 0 and 1")
    need(
        cfg.lr_warm_up_fraction + cfg.lr_decay_fraction <= 1,
        "lr_decay_fraction",
        f"warm-up ({cfg.lr_warm_up_fraction}) and decay together exceed the whole run",
    )
    schedule.check(cfg)
    need(cfg.train_batch_size_tokens >= 1, "train_batch_size_tokens", "must be at least 1")
    need(
        cfg.training_tokens >= cfg.train_batch_size_tokens,
        "training_tokens",
        f"must be at least one batch (train_batch_size_tokens={cfg.train_batch_size_tokens})",
    )
    need(cfg.context_size >= 2, "context_size", "must be at least 2")
    need(cfg.store_batch_size_prompts >= 1, "store_batch_size_prompts", "must be at least 1")
    need(cfg.prefetch_llm_batches >= 0, "prefetch_llm_batches", "must be 0 (off) or more")
    need(
        cfg.n_batches_in_buffer * cfg.context_size >= cfg.train_batch_size_tokens,
        "n_batches_in_buffer",
        f"n_batches_in_buffer × context_size ({cfg.n_batches_in_buffer} × {cfg.context_size}) must be at "
        f"least train_batch_size_tokens ({cfg.train_batch_size_tokens})",
    )
    need(
        cfg.training_tokens % cfg.train_batch_size_tokens == 0,
        "training_tokens",
        f"must be a whole number of batches of train_batch_size_tokens={cfg.train_batch_size_tokens} "
        f"(for example {cfg.training_steps * cfg.train_batch_size_tokens or cfg.train_batch_size_tokens})",
    )
    need(cfg.n_checkpoints >= 0, "n_checkpoints", "must not be negative")
    need(0 <= cfg.prompt_ratio < 1, "prompt_ratio", "must be in [0, 1): the control text is the negative control")
    need(
        0 <= cfg.heldout_prompt_fraction < 1,
        "heldout_prompt_fraction",
        "must be in [0, 1): 0 trains on every prompt, and some prompts must remain to train on",
    )
    need(cfg.dead_feature_window >= 1, "dead_feature_window", "must be at least 1")
    need(cfg.feature_sampling_window >= 1, "feature_sampling_window", "must be at least 1")
    need(cfg.log_every >= 1, "log_every", "must be at least 1")
    need(cfg.eval_batches >= 1, "eval_batches", "must be at least 1")
    need(bool(cfg.control_eval_split), "control_eval_split", "must name a split, such as validation")
    need(cfg.hook_name.count(".") >= 1, "hook_name", "must be a TransformerLens hook such as blocks.2.mlp.hook_post")
    if cfg.saes:
        from container_src.sae_set import check_multi

        check_multi(cfg)
