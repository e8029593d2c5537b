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

from container_src import buffer, chat, checkpoints, data, evaluate, model, plots, records, sizing, weights
from container_src.config import ConfigError, Resolved, TrainConfig
from container_src.interrupt import StopRequest
from container_src.paths import ContainerPaths, wandb_key
from container_src.prompts import PromptSplit, load_prompts, prompts_fingerprint, split_prompts, write_heldout

logger = logging.getLogger(__name__)

METRIC_LOG = "training_log.jsonl"


@dataclass
class Inputs:
    """What the cheap checks produced: the training stream and how the run will compute and log."""

    stream: Any
    prompts: Any
    """Every prompt of the channel (None without prompts); ``training_prompts`` are those trained on."""
    training_prompts: Any
    split: PromptSplit | None
    stories: Any
    eval_stories: Any
    data_identity: str
    channels: dict[str, Path | None]
    runtime: model.Runtime
    wandb_mode: str
    weights: weights.Weights
    rendering: chat.Rendering
    memory: dict[str, float] | None = None
    """The GPU memory estimate, GiB per part (``sizing.check_memory``)."""


@dataclass
class Run:
    """The model loaded and the run identified: where its checkpoints and step log live, and what it resumes."""

    lm: Any
    d_in: int
    d_sae: int
    prompt_token_share: float
    rid: str
    run_dir: Path
    metric_log: records.MetricLog
    resume: Path | None


def wandb_run_id(run_dir: Path, resuming: object) -> str:
    """The W&B run id: kept beside the checkpoints and reused only when resuming them, so training the same
    configuration afresh (checkpoints cleared) starts a new W&B run rather than writing into the old one's steps."""
    id_file = run_dir / "wandb_id"
    if resuming and id_file.is_file():
        return id_file.read_text().strip()
    wandb_id = f"{run_dir.name}-{secrets.token_hex(3)}"
    records.write_text(id_file, wandb_id + "\n")
    return wandb_id


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


def prepare_inputs(cfg: TrainConfig, paths: ContainerPaths) -> Inputs:
    """Everything that can fail cheaply: channels, datasets, hardware, W&B. Nothing heavy is loaded yet."""
    channels = paths.model_inputs(cfg.model_weights or cfg.model_name)
    # the host first: a GPU the image cannot use ends the run before any data is read
    runtime = model.pick_runtime(cfg.device, cfg.precision, cfg.compile_sae, paths.instance_type())
    lm_weights = weights.prepare(cfg.model_name, cfg.model_weights, channels["model"], cfg.prompt_format != "plain")
    rendering = chat.choose(cfg.prompt_format, cfg.chat_thought, cfg.reasoning_markers, lm_weights.tokenizer)
    stories_channel, prompts_channel = channels["control"], channels["prompts"]
    if cfg.prompt_ratio > 0 and prompts_channel is None:
        raise ConfigError(
            f"prompt_ratio={cfg.prompt_ratio}: there is no prompts channel ({paths.base}/input/data/prompts is "
            "missing or empty). "
            "Export the prompt collection and pass it as channel `prompts`, or set prompt_ratio=0 to train on "
            "the control text alone."
        )
    renderer = chat.Renderer(rendering, lm_weights.tokenizer) if rendering.format == "chat" else None
    prompts = load_prompts(prompts_channel, renderer) if prompts_channel and cfg.prompt_ratio > 0 else None
    if prompts_channel and cfg.prompt_ratio == 0:
        logger.warning("prompt_ratio=0: the prompts channel is ignored")
    split = _split_prompts(cfg, prompts)
    training_prompts = prompts.select(split.train_rows) if prompts is not None and split is not None else None
    stories, stories_identity = data.load_control(
        stories_channel, cfg.control_path, cfg.control_split, cfg.control_text_column
    )
    return Inputs(
        stream=data.mixed_stream(stories, training_prompts, cfg.prompt_ratio, cfg.seed),
        prompts=prompts,
        training_prompts=training_prompts,
        split=split,
        stories=stories,
        eval_stories=_eval_stories(cfg, stories_channel),
        # "rows": the resume position counts packed rows (data.PackedRows); a checkpoint that counted documents is
        # another run
        data_identity=f"{stories_identity}|prompts:{prompts_fingerprint(prompts)}|rows",
        channels=channels,
        runtime=runtime,
        wandb_mode=_wandb_environment(cfg, paths.output_dir / "data" / "wandb"),
        weights=lm_weights,
        rendering=rendering,
    )


def _split_prompts(cfg: TrainConfig, prompts: Any) -> PromptSplit | None:
    """Hold out ``heldout_prompt_fraction`` of each category's prompts (seeded: a resumed run makes the same split)."""
    if prompts is None:
        return None
    split = split_prompts(prompts, cfg.heldout_prompt_fraction, cfg.seed)
    if cfg.heldout_prompt_fraction == 0:
        logger.warning(
            "heldout_prompt_fraction=0: every prompt is trained on, and viz and the final evaluation have no "
            "held-out prompts"
        )
    per_category = "; ".join(
        f"{category}: {n['train']} trained on, {n['heldout']} held out"
        for category, n in split.record["per_category"].items()
    )
    logger.info(
        "prompts: %d, %d trained on, %d held out (%s)",
        len(prompts),
        len(split.train_rows),
        len(split.heldout_rows),
        per_category,
    )
    return split


def _eval_stories(cfg: TrainConfig, channel: Path | None) -> Any:
    """The control text the evaluations read: split ``control_eval_split``, held out from training."""
    split = cfg.control_eval_split
    if split == cfg.control_split:
        logger.warning(
            "control_eval_split=%r is the training split: the evaluation reads control text the SAE trained on", split
        )
    if channel is not None:
        data.check_eval_split(channel, split, cfg.control_split)
    return data.open_control(channel, cfg.control_path, split, cfg.control_text_column)


def record_provenance(sae: Any, inputs: Inputs) -> None:
    """Beside SAE-Lens's model_name (the architecture) in the SAE's cfg.json: whose weights, and how the prompts
    were rendered."""
    sae.cfg.metadata.model_weights = inputs.weights.name
    sae.cfg.metadata.prompt_rendering = inputs.rendering.record()


def load_lm(cfg: TrainConfig, inputs: Inputs) -> Any:
    """The model, its weights from ``inputs.weights``, on the run's device."""
    runtime = inputs.runtime
    logger.info("loading %s on %s (%s)", cfg.model_name, runtime.device_name, runtime.precision)
    return model.load_model(
        cfg.model_name,
        runtime.device,
        inputs.channels["model"],
        cfg.fused_lm,
        inputs.weights.source,
        inputs.weights.tokenizer,
    )


def _open_run(cfg: TrainConfig, inputs: Inputs, paths: ContainerPaths) -> Run:
    """Load the model, derive the SAE's size, and find the run's id and its newest whole checkpoint."""
    lm = load_lm(cfg, inputs)
    d_in = model.hook_width(lm, cfg.hook_name)
    d_sae = cfg.sae_width(d_in)
    model.check_context(lm, cfg.context_size)

    prompt_token_share = data.token_share(lm.tokenizer, inputs.training_prompts, inputs.stories, cfg.prompt_ratio)
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
        if change := checkpoints.precision_change(latest[0], inputs.runtime.autocast):
            logger.warning("resuming on other hardware: %s", change)
    others = sorted(p.name for p in paths.checkpoints_dir.glob("*/") if p.is_dir() and p.name != rid)
    if others:
        logger.warning("checkpoints of other configurations or data are ignored: %s", ", ".join(others))
    logger.info("run %s: d_in=%d (read at %s), d_sae=%d, %d steps", rid, d_in, cfg.hook_name, d_sae, cfg.training_steps)
    buffer.describe(cfg, d_in)
    return Run(lm, d_in, d_sae, prompt_token_share, rid, run_dir, metric_log, resume)


def _fit(cfg: TrainConfig, inputs: Inputs, run: Run, staging: Path) -> tuple[Any, Any, Any]:
    """Train with SAE-Lens, which saves the SAE into ``staging``; returns the trainer, the evaluation store and
    SAE-Lens's runner config."""
    # SAE-Lens and the store import the HF libraries, which must not come before prepare_inputs set their environment
    from container_src import runner

    wandb_id = wandb_run_id(run.run_dir, run.resume)
    runner_cfg = runner.sae_lens_config(
        cfg, run.d_in, run.d_sae, inputs.runtime, wandb_id, run.run_dir, staging, run.resume
    )
    sae_runner = runner.make_runner(cfg, runner_cfg, inputs.runtime, run.lm, inputs.stream, run.metric_log)
    record_provenance(sae_runner.sae, inputs)
    # Evaluations (W&B's during training, ours at the end) read a stream of their own, of held-out stories, so
    # they never take rows from training: what trains is then the same with or without prefetching, and with or
    # without W&B. Its prompts are the training prompts: the held-out ones are evaluated by themselves at the end.
    eval_store = evaluation_store(cfg, inputs, run.lm, runner_cfg)
    sae_runner.evaluator.activations_store = eval_store
    try:
        if run.resume is not None:
            # SAE-Lens 6.54 starts the prefetching thread on the stream before it fast-forwards that stream to
            # the checkpoint ("generator already executing"); done here first, its own fast-forward has nothing
            # to do
            sae_runner.activations_store.load_from_checkpoint(run.resume)
        sae_runner.run()
    finally:
        sae_runner.close_store()
        eval_store.close()
    StopRequest.phase = "finishing"
    if StopRequest.requested:  # it came during the final save, when only the flag was set
        raise StopRequest.after_training()
    # the final evaluation reads the evaluation stream from its start, whatever the evaluations during training read
    return sae_runner.trainer, evaluation_store(cfg, inputs, run.lm, runner_cfg), runner_cfg


def evaluation_store(cfg: TrainConfig, inputs: Inputs, lm: Any, runner_cfg: Any) -> Any:
    """A store of the evaluation stream from its start: the held-out control text mixed with the training prompts
    (seed + 1), packed as training packs."""
    from container_src.store import packed_store

    stream = data.mixed_stream(inputs.eval_stories, inputs.training_prompts, cfg.prompt_ratio, cfg.seed + 1)
    return packed_store(stream, lm, runner_cfg)


def evaluate_run(
    cfg: TrainConfig, inputs: Inputs, run: Run, fitted: tuple[Any, Any, Any], staging: Path, started: float
) -> dict[str, Any]:
    """The metrics of model/metrics.json: SAE-Lens's evaluation of the saved SAE, on the mixed evaluation stream and
    on each source by itself, and the run's own figures."""
    from sae_lens import SAE

    from container_src.runner import steps_done

    trainer, eval_store, runner_cfg = fitted
    runtime = inputs.runtime
    # Evaluate what is shipped: a BatchTopK SAE is saved as JumpReLU, which is not the model that trained.
    shipped = SAE.load_from_disk(str(staging), device=runtime.device)
    metrics = evaluate.evaluate(shipped, run.lm, eval_store, cfg.eval_batches)
    heldout_rows = inputs.split.heldout_rows if inputs.split else []
    sources = evaluate.sources(cfg, inputs.eval_stories, inputs.prompts, heldout_rows)
    by_source = evaluate.evaluate_sources(shipped, run.lm, runner_cfg, sources, cfg.eval_batches)
    dead = trainer.dead_neurons
    return metrics | {
        "evaluation_data": (
            f"the top-level figures: the control text's split {cfg.control_eval_split!r} mixed with the training "
            f"prompts at prompt_ratio={cfg.prompt_ratio}, as in training; evaluation_by_source has each by itself"
        ),
        "evaluation_by_source": by_source,
        "dead_features": int(dead.sum().item()),
        "dead_feature_fraction": float(dead.float().mean().item()),
        "dead_feature_window_steps": cfg.dead_feature_window,
        "d_in": run.d_in,
        "d_sae": run.d_sae,
        "tokens_trained": int(trainer.n_training_samples),
        "training_steps": steps_done(trainer),
        "wall_time_s": round(time.monotonic() - started, 2),
        "resumed_from_tokens": checkpoints.checkpoint_tokens(run.resume) if run.resume else 0,
        "device_name": runtime.device_name,
        "precision": runtime.precision,
    }


def write_records(
    resolved: Resolved[TrainConfig], inputs: Inputs, run: Run, metrics: dict[str, Any], staging: Path
) -> None:
    """The final metric line, and the records beside the SAE: metrics, resolved config, step log, plots."""
    cfg, runtime = resolved.config, inputs.runtime
    derived = {
        "run_id": run.rid,
        "d_in": run.d_in,
        "d_sae": run.d_sae,
        "training_steps": cfg.training_steps,
        "lr_warm_up_steps": cfg.lr_warm_up_steps,
        "lr_decay_steps": cfg.lr_decay_steps,
        "evaluations_every_steps": cfg.log_every * cfg.evaluation_every,
        "buffer_tokens": buffer.buffer_tokens(cfg),
        "buffer_bytes": buffer.buffer_bytes(cfg, run.d_in),
        "device": runtime.device,
        "device_name": runtime.device_name,
        "precision": runtime.precision,
        "prompt_token_share_estimate": round(run.prompt_token_share, 4),
        "wandb_mode": inputs.wandb_mode,
        "data": inputs.data_identity,
        "resumed_from": str(run.resume) if run.resume else None,
        "prompts_trained_on": len(inputs.split.train_rows) if inputs.split else 0,
        "prompts_held_out": len(inputs.split.heldout_rows) if inputs.split else 0,
        "channels": {name: str(path) if path else None for name, path in inputs.channels.items()},
        "model_weights": inputs.weights.name,
        "weights_source": inputs.weights.source or inputs.weights.name,
        "prompt_rendering": inputs.rendering.record(),
        "gpu_memory_estimate_gib": inputs.memory,
    }
    flat = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    records.emit_metrics({"final": 1, **flat, **evaluate.metric_fields(metrics["evaluation_by_source"])})
    records.write_json(staging / "metrics.json", metrics)
    if inputs.split is not None:  # which prompts were never trained on, beside the SAE for viz and users
        write_heldout(staging, inputs.split)
    records.write_json(staging / "resolved_config.json", resolved.to_json(derived))
    shutil.copyfile(run.metric_log.path, staging / METRIC_LOG)
    plots.plot_curves(run.metric_log.read(), staging / "plots", title=f"{run.rid} · {cfg.hook_name}")


def publish(staging: Path, model_dir: Path) -> None:
    """Move the assembled SAE into model/: weights and records first, cfg.json (what makes it loadable) last; a
    folder (plots/) replaces an earlier one whole. Signals are held back meanwhile, so model/ is never left
    half-published; one that arrives meanwhile is handled after, when the run is done."""
    signal.pthread_sigmask(signal.SIG_BLOCK, StopRequest.SIGNALS)
    # the mask holds back only what the kernel hands this thread; one handed to another thread (the data worker's,
    # W&B's) still runs the handler here, which in this phase only notes it
    StopRequest.phase = "publishing"
    try:
        for entry in sorted(staging.iterdir(), key=lambda p: p.name == "cfg.json"):
            target = model_dir / entry.name
            if target.is_dir():
                records.replace_dir(entry, target)
            else:
                entry.replace(target)
        staging.rmdir()
        StopRequest.phase = "done"
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, StopRequest.SIGNALS)


def run_train(resolved: Resolved[TrainConfig], paths: ContainerPaths) -> dict[str, Any]:
    """Train, evaluate and publish; returns the metrics written to model/metrics.json."""
    cfg = resolved.config
    if cfg.saes:  # several SAEs on one forward pass: container_src/multi.py
        from container_src.multi import run_multi_train

        return run_multi_train(resolved, paths)
    started = time.monotonic()
    StopRequest.install()
    inputs = prepare_inputs(cfg, paths)
    inputs.memory = sizing.check_memory(cfg, inputs)
    run = _open_run(cfg, inputs, paths)
    staging = paths.model_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        fitted = _fit(cfg, inputs, run, staging)
        metrics = evaluate_run(cfg, inputs, run, fitted, staging, started)
        write_records(resolved, inputs, run, metrics, staging)
        publish(staging, paths.model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("SAE and records written to %s", paths.model_dir)
    return metrics
