"""What `viz` costs: a whole viz run on a random model of a given shape, a random TopK SAE and copies of the shipped
sample prompts, timed by phase, and the model's own forward speed on the same machine, from which the run is
projected to a GPU (see docs/BENCHMARKS.md). Prints the figures as JSON.

    python -m container_src.viz_bench --shape tiny --prompts 400 --story_tokens 20000
    python -m container_src.viz_bench --shape tinystories-33m --prompts 200 --story_tokens 8000 --ablate_top 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from container_src.model_shapes import SHAPES

logger = logging.getLogger(__name__)
SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample_prompts"
MODEL_NAME = "roneneldan/TinyStories-33M"


def _write_tree(base: Path, args: argparse.Namespace) -> None:
    """Channels model, control and prompts (the sample, repeated to ``args.prompts`` rows with distinct ids), and
    a random TopK SAE in channel sae."""
    import torch
    from datasets import concatenate_datasets, load_from_disk
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from container_src.synthetic import make_stories, write_model_cache, write_story_dataset

    channels = base / "input" / "data"
    write_model_cache(channels / "model", MODEL_NAME, shape=args.shape, corpus=make_stories(400))
    write_story_dataset(channels / "control", n=max(400, args.story_tokens // 100))
    sample = load_from_disk(str(SAMPLE))
    copies = concatenate_datasets([sample] * (-(-args.prompts // len(sample)))).select(range(args.prompts))
    copies = copies.map(lambda row, i: {"id": f"{row['id']}-{i}"}, with_indices=True, keep_in_memory=True)
    copies.save_to_disk(str(channels / "prompts"))
    d_in = 4 * SHAPES[args.shape].hidden_size
    torch.manual_seed(0)
    metadata = SAEMetadata(model_name=MODEL_NAME, hook_name=args.hook, context_size=args.context_size)
    config = TopKSAEConfig(d_in=d_in, d_sae=args.expansion * d_in, k=args.k, rescale_acts_by_decoder_norm=True)
    config.metadata = metadata
    sae = TopKSAE(config)
    sae.save_model(str(channels / "sae"))


def _forward_rate(base: Path, context_size: int, batch_size: int) -> float:
    """The model's forward pass through all layers on this machine, tokens/s (the projection's yardstick)."""
    import torch

    from container_src.model import load_model

    lm = load_model(MODEL_NAME, "cpu", base / "input" / "data" / "model")
    tokens = torch.randint(0, lm.cfg.d_vocab, (batch_size, context_size))
    with torch.inference_mode():
        lm(tokens)
        started = time.perf_counter()
        for _ in range(3):
            lm(tokens)
    return 3 * tokens.numel() / (time.perf_counter() - started)


def measure(args: argparse.Namespace, root: Path) -> tuple[dict[str, Any], list[dict[str, int]]]:
    from container_src.__main__ import main

    try:
        base = root / "opt_ml"
        _write_tree(base, args)
        os.environ["SAGEMAKER_BASE_DIR"] = str(base)
        argv = ["viz", "--device", "cpu", "--prompt_set", "all", "--prompt_tokens", str(10**9)]
        argv += ["--story_tokens", str(args.story_tokens), "--ablate_top", str(args.ablate_top)]
        argv += ["--n_features", str(args.n_features), "--batch_size", str(args.batch_size)]
        started = time.perf_counter()
        if main(argv) != 0:
            raise SystemExit("viz failed; see the log above")
        wall = time.perf_counter() - started
        summary = json.loads((base / "model" / "dashboards" / "summary.json").read_text())
        rate = _forward_rate(base, args.context_size, args.batch_size)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    seconds, tokens = summary["seconds"], summary["tokens"]
    counted = tokens["prompts"] + tokens["stories"]
    # Σ over contrasts of features ablated × positions their rows hold: what the ablated forward passes read
    ablated = sum(c["ablated"]["features"] * c["ablated"]["positions"] for c in summary["contrasts"] if c["ablated"])
    work = [c["ablated"] for c in summary["contrasts"] if c["ablated"]]
    return {
        "shape": args.shape,
        "d_sae": summary["sae"]["d_sae"],
        "prompts": tokens["prompts_used"],
        "prompt_tokens": tokens["prompts"],
        "story_tokens": tokens["stories"],
        "contrasts_run": sum(not c["skipped"] for c in summary["contrasts"]),
        "ablate_top": args.ablate_top,
        "ablated_feature_tokens": ablated,
        "seconds": {**seconds, "wall": round(wall, 2)},
        "positions_counted": summary["positions"],
        "us_per_counted_token": round(1e6 * seconds["ranking"] / counted, 2),
        "us_per_ablated_feature_token": round(1e6 * seconds["ablation"] / max(ablated, 1), 3),
        "cpu_forward_tokens_per_s": round(rate, 1),
    }, work


def project(
    figures: dict[str, Any], work: list[dict[str, int]], gpu_forward: float, size: tuple[int, int, int]
) -> dict[str, Any]:
    """GPU seconds for ``size`` = (prompts, as long as those measured; story tokens; features ablated per contrast):
    the CPU costs per token, scaled up to the larger data (prompt and story positions each by its own factor) and
    down by the model's forward speed on the GPU over that on this CPU. The cost per ablated feature was measured
    with the clean pass of each batch shared by fewer features, so the ablation figure is an upper bound."""
    prompts, stories, features = size
    speedup = gpu_forward / figures["cpu_forward_tokens_per_s"]
    f_prompts, f_stories = prompts / figures["prompts"], stories / figures["story_tokens"]
    counted = figures["prompt_tokens"] * f_prompts + figures["story_tokens"] * f_stories
    ablated = sum(
        features * ((w["positions"] - w["story_positions"]) * f_prompts + w["story_positions"] * f_stories)
        for w in work
    )
    counting = counted * figures["us_per_counted_token"] / 1e6 / speedup
    ablation = ablated * figures["us_per_ablated_feature_token"] / 1e6 / speedup
    return {"speedup": round(speedup), "counting_s": round(counting, 1), "ablation_s": round(ablation, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--prompts", type=int, default=400)
    parser.add_argument("--story_tokens", type=int, default=20_000)
    parser.add_argument("--ablate_top", type=int, default=20)
    parser.add_argument("--n_features", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--context_size", type=int, default=128)
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--hook", default="blocks.2.mlp.hook_post")
    parser.add_argument("--target_features", type=int, default=20, help="ablated per contrast, for the projection")
    parser.add_argument("--gpu_forward", type=float, default=440_268.0, help="GPU forward tokens/s, all layers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = Path(tempfile.mkdtemp(prefix="viz-bench-"))
    # The HF libraries read where their cache is, and whether the hub is off, once at import: set before any is
    # imported, to the stand-in model's channel.
    hf_home = root / "opt_ml" / "input" / "data" / "model"
    os.environ.update({"HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HF_HUB_OFFLINE": "1"})
    os.environ.update({"TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TQDM_DISABLE": "1"})
    figures, work = measure(args, root)
    size = (5000, 200_000, args.target_features)
    figures[f"projection_5000_prompts_200k_stories_{args.target_features}_ablated"] = project(
        figures, work, args.gpu_forward, size
    )
    sys.stdout.write(json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
