"""The bench's figures for people: SageMaker prices, the cost of a full run projected from ours' speed, and the
printed table."""

from __future__ import annotations

import logging
from typing import Any

from container_src.config import BenchConfig, ConfigError
from container_src.paths import ContainerPaths

logger = logging.getLogger(__name__)

# On-demand prices of SageMaker training instances in us-east-1, USD per hour. Approximate: the list prices as
# commonly quoted, gathered on PRICES_DATE without access to AWS's page; check https://aws.amazon.com/sagemaker/pricing/
# before relying on a cost.
PRICES_DATE = "2026-11-27"
PRICES_USD_PER_HOUR = {
    "ml.m5.xlarge": 0.23,
    "ml.g4dn.xlarge": 0.736,
    "ml.g5.xlarge": 1.408,
    "ml.g5.2xlarge": 1.515,
    "ml.p4d.24xlarge": 37.688,
    "ml.p5.48xlarge": 113.068,
}
PRICES_NOTE = f"approximate on-demand SageMaker training prices, us-east-1, gathered {PRICES_DATE}"


def projection(cfg: BenchConfig, instance_type: str | None, tokens_per_s: float, device_name: str) -> dict[str, Any]:
    """``training_tokens`` at ours' speed measured here, priced at ``instance_type``'s rate: a cost for that instance
    only when this machine is one (a job's own, or the same GPU)."""
    wall_s = cfg.training_tokens / tokens_per_s
    price = PRICES_USD_PER_HOUR.get(instance_type) if instance_type else None
    return {
        "training_tokens": cfg.training_tokens,
        "wall_s": round(wall_s, 1),
        "wall_h": round(wall_s / 3600, 3),
        "instance_type": instance_type,
        "usd_per_hour": price,
        "usd": round(wall_s / 3600 * price, 2) if price is not None else None,
        "prices": PRICES_NOTE,
        "measured_on": device_name,
        "note": "training only, at the speed of ours measured on measured_on; the job's start, model loading and "
        "evaluation add to it",
    }


def priced_instance(cfg: BenchConfig, paths: ContainerPaths) -> str | None:
    """The instance type to price: the one given, else the SageMaker job's own. Checked before any work."""
    if cfg.instance_type:
        if cfg.instance_type not in PRICES_USD_PER_HOUR:
            raise ConfigError(
                f"instance_type={cfg.instance_type!r}: no price for it; known: {', '.join(PRICES_USD_PER_HOUR)}"
            )
        return cfg.instance_type
    in_job = paths.instance_type()
    if in_job and in_job not in PRICES_USD_PER_HOUR:
        logger.warning("no price for this job's instance type %s: the projection gives time only", in_job)
    return in_job


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def format_table(f: dict[str, Any]) -> str:
    """The figures as a short human-readable report."""
    memory = "GPU peak allocated (at start)" if f["peak_memory_kind"].startswith("cuda") else "peak RSS (at start)"
    lines = [
        f"bench: {f['device_name']} ({f['device']}, {f['precision']}, {f['cpu_threads']} CPU threads), "
        f"{f['model_shape']} shape, random weights",
        f"  SAE {f['architecture']} {f['hook_name']} d_in={f['d_in']} d_sae={f['d_sae']} k={f['k']}; "
        f"{f['warmup_steps']} warm-up + {f['steps']} steps each, timed over whole buffer refill cycles within "
        f"them; best of {f['repeats']}",
        f"  {'':30}{'tokens/s':>12}{'batch':>8}{'timed':>7}{'seconds':>10}{'CPU s':>10}  {memory}",
    ]
    bare_name = "bare SAE-Lens defaults"
    if f["bare_precision"]:
        bare_name += " (fp32)" if f["bare_precision"]["dtype"] == "float32" else f" ({f['bare_precision']['dtype']})"
    rows = (
        ("ours (train)", "ours"),
        (bare_name, "bare"),
        ("SAE-Lens best settings", "tuned"),
        ("sparsify", "sparsify"),
    )
    for name, key in rows:
        if f.get(key):
            s = f[key]
            lines.append(
                f"  {name:30}{s['tokens_per_s']:>12,.0f}{s['batch_tokens']:>8}{s['steps']:>7}{s['seconds']:>10.2f}"
                f"{s['cpu_seconds']:>10.2f}  "
                f"{_gib(s['peak_memory_bytes'])} ({_gib(s['memory_at_start_bytes'])})"
            )
        elif key in f["untimed"]:
            lines.append(f"  {name:30}not timed: {f['untimed'][key]}")
    for key, name in (("bare", "bare"), ("tuned", "SAE-Lens best settings"), ("sparsify", "sparsify")):
        if f.get(f"ratio_ours_to_{key}") is not None:
            lines.append(
                f"  ratio ours / {name}: {f[f'ratio_ours_to_{key}']:.3f} "
                f"(by CPU time: {f[f'ratio_ours_to_{key}_cpu_time']:.3f})"
            )
    lm = f["lm"]
    lines.append(
        f"  model alone: {lm['tokens_per_s']:,.0f} tokens/s from text to the hook; forward pass alone "
        f"{lm['forward_to_hook_tokens_per_s']:,.0f} tokens/s to the hook, {lm['full_forward_tokens_per_s']:,.0f} "
        "through all layers"
    )
    lines.append(
        f"  SAE step alone: {f['sae_alone']['tokens_per_s']:,.0f} tokens/s as train runs it, "
        f"{f['sae_lens_step_alone']['tokens_per_s']:,.0f} with SAE-Lens's own step (no model, no data pipeline)"
    )
    if p := f["projection"]:
        cost = (
            f", ${p['usd']:,.2f} at {p['instance_type']}'s ${p['usd_per_hour']}/h ({p['prices']})"
            if p["usd"] is not None
            else " (no price: give --instance_type)"
        )
        lines.append(
            f"  projection at ours' speed on {p['measured_on']}: {p['training_tokens']:,} tokens in "
            f"{p['wall_h']:.2f} h{cost}"
        )
    return "\n".join(lines) + "\n"
