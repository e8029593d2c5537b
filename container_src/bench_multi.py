"""How much faster a multi-SAE `train` job trains N SAEs than N separate `train` runs of the same SAEs.

    python -m container_src.bench_multi                          # tiny shape, seed configuration, N = 1, 2, 4
    python -m container_src.bench_multi --model_shape tinystories-33m --steps 6

Each run is a whole in-process `train` on the bench's stand-in tree (a random model of the shape, generated stories
and prompts), W&B and periodic checkpoints off. The figure is the training throughput of the steps after the warm-up:
model tokens per second between the end of the last warm-up step and the end of the last step (every SAE's step
done), from the metric lines' timestamps; model loading, buffer warm-up and the final evaluation are excluded. A
multi-SAE job trains N SAEs per model token, so its SAE-tokens per second are N × that; N separate runs' are the N
SAE-tokens over the N runs' summed times. A first, untimed run warms the process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from container_src.config import BenchConfig, TrainConfig, resolve
from container_src.model_shapes import SHAPES

logger = logging.getLogger(__name__)

K_VALUES = (64, 32, 16, 128)
"""The SAEs, by k, at the seed width: the first N form the N-SAE job and the N separate runs."""
_STEP = re.compile(r"\[metric\] step=(\d+) tokens=(\d+) ")


class StepTimes(logging.Handler):
    """The time each step's last metric line was logged (the step done for every SAE), by step."""

    def __init__(self) -> None:
        super().__init__()
        self.done: dict[int, float] = {}

    def emit(self, record: logging.LogRecord) -> None:
        if match := _STEP.search(record.getMessage()):
            self.done[int(match.group(1))] = record.created


def timed_run(root: Path, values: dict[str, str], warmup: int) -> tuple[int, float]:
    """Run `train` afresh in ``root`` (its checkpoints and model/ cleared) and return (model tokens, seconds) of
    the steps after ``warmup``."""
    from container_src.paths import ContainerPaths
    from container_src.train import run_train

    for leftover in ("checkpoints", "model"):
        shutil.rmtree(root / leftover, ignore_errors=True)
    times = StepTimes()
    records_logger = logging.getLogger("container_src.records")
    records_logger.addHandler(times)
    try:
        run_train(resolve(values, schema=TrainConfig), ContainerPaths(root))
    finally:
        records_logger.removeHandler(times)
    last = max(times.done)
    cfg = resolve(values, schema=TrainConfig).config
    return (last - warmup) * cfg.train_batch_size_tokens, times.done[last] - times.done[warmup]


def measure(root: Path, shape: str, steps: int, warmup: int, counts: list[int]) -> dict[str, Any]:
    """Every multi-SAE job and every separate run, and the ratios."""
    base = {
        "device": "cpu",
        "log_to_wandb": "false",
        "n_checkpoints": "0",
        "log_every": "1",
        "eval_batches": "1",
        "training_tokens": str((steps + warmup) * TrainConfig.train_batch_size_tokens),
    }
    # untimed: the process's one-time costs (imports, the worker's start-up, the allocator) would otherwise land
    # in the first timed run's steps, whichever it is
    timed_run(root, {**base, "k": str(K_VALUES[0])}, warmup)
    separate = [timed_run(root, {**base, "k": str(k)}, warmup) for k in K_VALUES[: max(counts)]]
    rows = []
    for n in counts:
        saes = json.dumps([{"k": k} for k in K_VALUES[:n]])
        tokens, seconds = timed_run(root, {**base, "saes": saes}, warmup)
        multi = n * tokens / seconds
        alone = sum(t for t, _ in separate[:n]) / sum(s for _, s in separate[:n])
        rows.append({"n_saes": n, "multi_sae_tokens_per_s": multi, "separate_sae_tokens_per_s": alone})
        rows[-1]["ratio"] = multi / alone
        logger.info(
            "N=%d: one multi-SAE job %.0f SAE-tokens/s, %d separate runs %.0f SAE-tokens/s, ratio %.2f",
            n,
            multi,
            n,
            alone,
            multi / alone,
        )
    return {"model_shape": shape, "timed_steps": steps, "warmup_steps": warmup, "k": K_VALUES, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run (after the warm-up)")
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--counts", default="1,2,4", help="the N of SAEs to compare, comma-separated (at most 4)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    counts = [int(n) for n in args.counts.split(",")]
    from container_src.bench import write_assets
    from container_src.paths import hub_env

    with tempfile.TemporaryDirectory(prefix="bench-multi-") as scratch:
        root = Path(scratch)
        # the HF libraries read their environment once, at import: the stand-in's cache, offline
        os.environ.update(hub_env(root / "input" / "data" / "model" / "hub") | {"HF_DATASETS_OFFLINE": "1"})
        stories_needed = max(2000, (args.steps + args.warmup_steps) * TrainConfig.train_batch_size_tokens // 60)
        cfg = BenchConfig(model_shape=args.model_shape, device="cpu")
        write_assets(root, cfg, stories_needed)
        figures = measure(root, args.model_shape, args.steps, args.warmup_steps, counts)
    for row in figures["rows"]:
        logger.info("result %s", json.dumps(row))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
