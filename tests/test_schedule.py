"""What `train` hands SAE-Lens: the shuffling buffer, the special tokens, the schedule and the evaluation cadence, as
the presets resolve them; and, by the data itself, that no BOS position reaches a training batch."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from container_src import buffer
from container_src.config import TrainConfig, resolve


def _runner_cfg(cfg: TrainConfig, tmp_path: Path, d_in: int = 768, d_sae: int = 12288) -> Any:
    from container_src.model import pick_runtime
    from container_src.runner import sae_lens_config

    runtime = pick_runtime("cpu", "auto")
    return sae_lens_config(cfg, d_in, d_sae, runtime, "t", tmp_path / "run", tmp_path / "out", None)


@pytest.mark.parametrize(
    ("preset", "scheduler", "special", "evaluate_every"),
    [
        (None, "constant", True, 10),  # the seed's configuration: 1,000 metric lines, an evaluation every 10
        ("tinystories-33m-mlp-out-published", "cosineannealing", False, 10),
    ],
)
def test_sae_lens_gets_the_buffer_the_schedule_and_the_special_tokens(
    tmp_path: Path, preset: str | None, scheduler: str, special: bool, evaluate_every: int
) -> None:
    """docs/train.md: "a metric line every 50 steps and an evaluation every 10 lines";
    SAE-Lens gets the buffer, the schedule (lr_end empty: lr / 10) and the special tokens as resolved."""
    cfg = resolve({"preset": preset} if preset else {}).config
    runner_cfg = _runner_cfg(cfg, tmp_path)
    assert runner_cfg.n_batches_in_buffer * runner_cfg.context_size >= 262_144  # SAE-Lens 6.54's buffer, in tokens
    assert runner_cfg.exclude_special_tokens is special
    assert runner_cfg.lr_scheduler_name == scheduler
    assert runner_cfg.sae.apply_b_dec_to_input is False
    assert runner_cfg.logger.wandb_log_frequency == 50
    assert runner_cfg.logger.eval_every_n_wandb_logs == evaluate_every
    assert runner_cfg.lr_warm_up_steps == cfg.lr_warm_up_steps and runner_cfg.lr_decay_steps == cfg.lr_decay_steps
    # SAE-Lens's own default for an empty lr_end: lr / 10, where the cosine ends and the final decay starts
    assert runner_cfg.lr_end == pytest.approx(cfg.lr / 10)


def test_keys_reach_sae_lens(tmp_path: Path) -> None:
    """docs/configuration.md: "Field names follow SAE-Lens where SAE-Lens has one"."""
    cfg = TrainConfig(
        lr=3e-4,
        lr_scheduler_name="cosineannealingwarmrestarts",
        lr_end=1e-5,
        apply_b_dec_to_input=True,
        exclude_special_tokens=False,
        eval_every_n_wandb_logs=7,
    )
    runner_cfg = _runner_cfg(cfg, tmp_path)
    assert (runner_cfg.lr_scheduler_name, runner_cfg.lr_end) == ("cosineannealingwarmrestarts", 1e-5)
    assert runner_cfg.sae.apply_b_dec_to_input is True and runner_cfg.exclude_special_tokens is False
    assert runner_cfg.logger.eval_every_n_wandb_logs == 7


def test_buffer_size_is_logged_and_a_small_one_warned(caplog: pytest.LogCaptureFixture) -> None:
    """docs/train.md: "warns when a batch would be drawn from fewer than 64 sequences"."""
    caplog.set_level(logging.INFO, logger="container_src.buffer")
    seed = TrainConfig()
    assert buffer.buffer_tokens(seed) == 262_144
    assert buffer.buffer_bytes(seed, 3072) == 262_144 * 3072 * 4  # float32 activations of hook_post
    assert buffer.buffer_bytes(seed, 3072, "bfloat16") == 262_144 * 3072 * 2
    buffer.describe(seed, 3072)
    assert "262144 tokens, 3072.0 MiB (d_in=3072, float32)" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    caplog.clear()
    buffer.describe(TrainConfig(n_batches_in_buffer=16), 3072)  # the seed's number under SAE-Lens 6.54
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "at most 16 sequences (fewer than 64)" in warning
    assert "rather than a shuffled sample" in warning and "raise n_batches_in_buffer to 64" in warning
    with pytest.raises(ValueError, match="dtype='int4'"):
        buffer.buffer_bytes(seed, 3072, "int4")


def _embedding_batches(tmp_path: Path, tiny_assets: dict[str, Path], exclude: bool, n: int) -> tuple[Any, Any]:
    """Training batches at ``hook_embed`` of the tiny model, where each activation is its token's embedding row:
    the data says which token each position held."""
    import torch

    from container_src import data
    from container_src.model import load_model
    from container_src.store import packed_store

    lm = load_model("roneneldan/TinyStories-33M", "cpu")
    cfg = TrainConfig(
        context_size=64,
        train_batch_size_tokens=256,
        store_batch_size_prompts=4,
        n_batches_in_buffer=64,
        training_tokens=256 * n,
        exclude_special_tokens=exclude,
    )
    cfg.hook_name = "hook_embed"  # no block to stop at; the checks want a block's hook, SAE-Lens takes any
    runner_cfg = _runner_cfg(cfg, tmp_path, d_in=lm.cfg.d_model, d_sae=4 * lm.cfg.d_model)
    stories, _ = data.load_control(tiny_assets["stories"], "unused", "train")
    store = packed_store(data.mixed_stream(stories, None, 0.0, seed=1), lm, runner_cfg)
    try:
        batches = torch.cat([store.next_batch() for _ in range(n)])
    finally:
        store.close()
    bos_id: Any = lm.tokenizer.bos_token_id  # type: ignore[union-attr]
    return batches, lm.W_E[int(bos_id)].detach()


def test_no_bos_position_reaches_a_training_batch(tmp_path: Path, tiny_assets: dict[str, Path]) -> None:
    """docs/train.md: "special tokens (BOS, EOS, padding) are left out of the training batches"."""
    import torch

    def bos_rows(batches: Any, bos: Any) -> int:
        return int(torch.isclose(batches, bos, atol=1e-6).all(dim=1).sum())

    batches, bos = _embedding_batches(tmp_path / "a", tiny_assets, exclude=True, n=24)
    assert batches.shape[0] == 24 * 256
    assert bos_rows(batches, bos) == 0
    # the same stream with the special tokens kept: every 64-token row opens with BOS, so about 1 in 64 positions
    kept, _ = _embedding_batches(tmp_path / "b", tiny_assets, exclude=False, n=24)
    assert bos_rows(kept, bos) >= kept.shape[0] // 64
