"""`train`'s contract, function by function on small inputs (no training run): what the cheap checks decide, what
the evaluation stream reads, what the records beside the SAE say, and how the SAE is published."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset, DatasetDict

from container_src import records, train
from container_src.chat import Rendering
from container_src.config import ConfigError, Resolved, TrainConfig
from container_src.interrupt import StopRequest
from container_src.model import Runtime
from container_src.paths import ContainerPaths
from container_src.prompts import HELDOUT_FILE, PromptSplit
from container_src.synthetic import make_stories
from container_src.weights import Weights
from tests.conftest import SAMPLE_PROMPTS, TINY_RUN, write_hyperparameters

GREEK = "αβγδεζηθικλμνξοπρστυφχψω"
CYRILLIC = "абвгдежзийклмнопрстуфхцчшщыэюя"


def lettered(alphabet: str, i: int) -> str:
    """A text of letters of ``alphabet`` only, different for every ``i``."""
    words = [alphabet[(i * 5 + j) % len(alphabet)] + alphabet[(i + 2 * j) % len(alphabet)] * 2 for j in range(10)]
    return f"{alphabet[i % len(alphabet)]}{i} " + " ".join(words)


def tree(base: Path, tiny_assets: dict[str, Path], prompts: list[str] | None, stories: Path | None = None) -> Path:
    """A SageMaker tree with the tiny model, the stories (the session's, or ``stories``) and, unless None, a
    prompts channel of ``prompts`` (category `official` for all but every fourth, `refusal`)."""
    channels = base / "input" / "data"
    channels.mkdir(parents=True)
    (channels / "model").symlink_to(tiny_assets["hf_home"], target_is_directory=True)
    (channels / "control").symlink_to(stories or tiny_assets["stories"], target_is_directory=True)
    if prompts is not None:
        categories = ["refusal" if i % 4 == 0 else "official" for i in range(len(prompts))]
        ids = [f"p{i}" for i in range(len(prompts))]
        Dataset.from_dict({"id": ids, "text": prompts, "category": categories}).save_to_disk(str(channels / "prompts"))
    return base


def config(**values: Any) -> TrainConfig:
    return TrainConfig(device="cpu", log_to_wandb=False, **values)


def test_the_wandb_id_is_reused_only_by_a_resume(tmp_path: Path) -> None:
    """docs/train.md: "the W&B id is kept beside the checkpoints and reused only by a resume"."""
    run_dir = tmp_path / "topk-k8-abc"
    first = train.wandb_run_id(run_dir, None)
    assert first.startswith("topk-k8-abc-") and (run_dir / "wandb_id").read_text() == first + "\n"
    # a resume (a checkpoint to resume from) gets the same id back, exactly
    assert train.wandb_run_id(run_dir, run_dir / "4096") == first
    # trained afresh (no checkpoint to resume), with the old id still on disk: a new W&B run, kept for its resumes
    second = train.wandb_run_id(run_dir, None)
    assert second != first and (run_dir / "wandb_id").read_text() == second + "\n"
    assert train.wandb_run_id(run_dir, run_dir / "8192") == second
    # a resume whose id file is gone starts a W&B run of its own rather than failing
    (run_dir / "wandb_id").unlink()
    assert train.wandb_run_id(run_dir, run_dir / "8192") not in (first, second)


def test_prompt_ratio_above_zero_without_prompts_is_refused_and_zero_is_not(
    tmp_path: Path, tiny_assets: dict[str, Path]
) -> None:
    """docs/train.md: "`prompt_ratio > 0` without a prompts channel is an error, not a silent control-only run"."""
    paths = ContainerPaths(tree(tmp_path / "opt_ml", tiny_assets, None))
    with pytest.raises(ConfigError, match=r"prompt_ratio=0\.05: there is no prompts channel") as refused:
        train.prepare_inputs(config(prompt_ratio=0.05), paths)
    assert "set prompt_ratio=0 to train on the control text alone" in str(refused.value)

    inputs = train.prepare_inputs(config(prompt_ratio=0.0), paths)
    assert inputs.prompts is None and inputs.split is None and inputs.training_prompts is None
    assert inputs.channels["prompts"] is None and "|prompts:none|" in inputs.data_identity
    assert [row["source"] for row in inputs.stream.take(5)] == ["control"] * 5


def test_prompt_ratio_zero_ignores_the_prompts_channel_with_a_warning(
    tmp_path: Path, tiny_assets: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/configuration.md: "Share of documents drawn from the prompts channel (cycled); the rest are the control
    text." At 0 no prompt is read, and the log says the channel is ignored."""
    paths = ContainerPaths(tree(tmp_path / "opt_ml", tiny_assets, [lettered(GREEK, i) for i in range(8)]))
    with caplog.at_level(logging.WARNING, logger="container_src.train"):
        inputs = train.prepare_inputs(config(prompt_ratio=0.0), paths)
    assert "prompt_ratio=0: the prompts channel is ignored" in caplog.text
    assert inputs.prompts is None and inputs.split is None
    assert "|prompts:none|" in inputs.data_identity
    assert {row["source"] for row in inputs.stream.take(40)} == {"control"}


def test_the_run_identity_changes_with_the_prompt_texts_and_the_control_text(
    tmp_path: Path, tiny_assets: dict[str, Path]
) -> None:
    """docs/train.md: "and the data (the prompt texts, the content of the TinyStories copy or the hub id)"."""
    greek = [lettered(GREEK, i) for i in range(12)]
    other_stories = tmp_path / "other-stories"
    DatasetDict(
        train=Dataset.from_dict({"text": make_stories(50, seed=4)}),
        validation=Dataset.from_dict({"text": make_stories(10, seed=5)}),
    ).save_to_disk(str(other_stories))
    cfg = config(prompt_ratio=0.3)
    identities = {
        name: train.prepare_inputs(
            cfg, ContainerPaths(tree(tmp_path / name, tiny_assets, prompts, stories))
        ).data_identity
        for name, prompts, stories in (
            ("base", greek, None),
            ("same", list(greek), None),
            ("one-prompt-edited", [*greek[:-1], greek[-1] + "!"], None),
            ("other-stories", greek, other_stories),
        )
    }
    assert identities["same"] == identities["base"]
    assert identities["one-prompt-edited"] != identities["base"]
    assert identities["other-stories"] != identities["base"]
    # the identity also says that the resume position counts packed rows, not documents
    assert all(identity.endswith("|rows") for identity in identities.values())


def test_wandb_without_a_key_runs_offline_into_output_data_wandb(tmp_path: Path, tiny_assets: dict[str, Path]) -> None:
    """docs/train.md: "Without a key W&B runs **offline** and writes its run to ... `output/data/wandb/`"."""
    for name in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SECRET_ID", "WANDB_DIR"):
        os.environ.pop(name, None)  # the autouse fixture of conftest puts the environment back
    base = tree(tmp_path / "opt_ml", tiny_assets, None)
    inputs = train.prepare_inputs(TrainConfig(device="cpu", prompt_ratio=0.0), ContainerPaths(base))
    wandb_dir = base / "output" / "data" / "wandb"
    assert inputs.wandb_mode == "offline" and os.environ["WANDB_MODE"] == "offline"
    assert os.environ["WANDB_DIR"] == str(wandb_dir) and wandb_dir.is_dir()
    assert os.environ["WANDB_SILENT"] == "true" and os.environ["WANDB_RESUME"] == "allow"


def test_an_evaluation_split_equal_to_the_training_split_is_warned_about(
    tmp_path: Path, tiny_assets: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/train.md: "`control_eval_split` (what the evaluations read, held out from training, default
    `validation`)"; naming the training split there is allowed, with a warning, and only then."""
    paths = ContainerPaths(tree(tmp_path / "opt_ml", tiny_assets, None))
    with caplog.at_level(logging.WARNING, logger="container_src.train"):
        train.prepare_inputs(config(prompt_ratio=0.0), paths)
    assert "is the training split" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="container_src.train"):
        inputs = train.prepare_inputs(config(prompt_ratio=0.0, control_eval_split="train"), paths)
    assert "control_eval_split='train' is the training split" in caplog.text
    first_trained = next(iter(inputs.stories))["text"]
    assert next(iter(inputs.eval_stories))["text"] == first_trained


def marked_stories(path: Path) -> Path:
    """Stories whose training split carries "~" and whose validation split carries "^", each never the other."""
    DatasetDict(
        train=Dataset.from_dict({"text": [f"{s} ~ ~" for s in make_stories(200)]}),
        validation=Dataset.from_dict({"text": [f"{s} ^ ^" for s in make_stories(60, seed=9)]}),
    ).save_to_disk(str(path))
    return path


def test_the_evaluation_stream_reads_held_out_stories_and_only_the_training_prompts(
    tmp_path: Path, tiny_assets: dict[str, Path]
) -> None:
    """docs/train.md: "the same mix with seed + 1, of stories from the control text's `validation` split
    (`control_eval_split`), held out from training, and the training prompts". Proved by the tokens the store
    serves: the held-out prompts are Cyrillic, the training prompts Greek, the training stories carry "~" and the
    validation stories "^"."""
    from container_src.model import load_model, pick_runtime
    from container_src.runner import sae_lens_config

    prompts = [lettered(GREEK, i) for i in range(40)]
    base = tree(tmp_path / "opt_ml", tiny_assets, prompts, marked_stories(tmp_path / "stories"))
    cfg = config(
        prompt_ratio=0.4, heldout_prompt_fraction=0.25, seed=5, context_size=64, train_batch_size_tokens=256,
        store_batch_size_prompts=4, training_tokens=256,
    )  # fmt: skip
    inputs = train.prepare_inputs(cfg, ContainerPaths(base))
    assert inputs.split is not None
    held = set(inputs.split.heldout_rows)
    assert len(held) == 11  # a quarter of each category, rounded up: 8 of 30 official, 3 of 10 refusal
    # the held-out prompts become Cyrillic (the split is by id, category and seed, never by text)
    texts = [lettered(CYRILLIC, i) if i in held else text for i, text in enumerate(prompts)]
    inputs.prompts = inputs.prompts.map(lambda row, i: {"text": texts[i]}, with_indices=True)
    inputs.training_prompts = inputs.prompts.select(inputs.split.train_rows)

    lm = load_model("roneneldan/TinyStories-33M", "cpu")
    runner_cfg = sae_lens_config(cfg, 256, 1024, pick_runtime("cpu", "auto"), "t", tmp_path / "r", tmp_path / "o", None)
    store = train.evaluation_store(cfg, inputs, lm, runner_cfg)
    try:
        seen = {int(t) for _ in range(12) for t in store.get_batch_tokens().flatten()}
    finally:
        store.close()

    tokenizer: Any = lm.tokenizer

    def tokens(text: str) -> set[int]:
        return set(tokenizer(text, add_special_tokens=False)["input_ids"])

    story_tokens = tokens(" ".join(make_stories(200)))
    only_cyrillic = tokens(CYRILLIC) - tokens(GREEK) - story_tokens
    only_greek = tokens(GREEK) - tokens(CYRILLIC) - story_tokens
    (trained_mark,), (held_out_mark,) = tokens("~"), tokens("^")
    assert only_cyrillic and only_greek
    assert held_out_mark in seen and trained_mark not in seen, "the evaluation read training stories"
    assert only_greek & seen, "the evaluation stream holds no training prompt"
    assert not only_cyrillic & seen, "a held-out prompt reached the evaluation stream"


def staged_inputs(split: PromptSplit | None) -> train.Inputs:
    """Inputs as the cheap checks leave them, for a run on CPU; nothing of them is read but what the records say."""
    return train.Inputs(
        stream=None,
        prompts=None,
        training_prompts=None,
        split=split,
        stories=None,
        eval_stories=None,
        data_identity="channel:abc|prompts:def|rows",
        channels={"prompts": Path("/opt/ml/input/data/prompts"), "model": None, "control": Path("/c")},
        runtime=Runtime("cpu", "CPU (2 threads)", autocast=False),
        wandb_mode="offline",
        weights=Weights("roneneldan/TinyStories-33M", "someone/tiny-weights", "/weights/folder", None),
        rendering=Rendering("chat", True, ("<t>", "</t>")),
        memory={"total": 1.5},
    )


BY_SOURCE = {
    "stories": {"explained_variance": 0.5, "l0": 7.0, "ce_loss_score": 0.9},
    "training_prompts": {"explained_variance": 0.75, "l0": 6.0, "ce_loss_score": 0.8},
    "heldout_prompts": {"explained_variance": None, "l0": None, "ce_loss_score": None, "skipped": "no prompts"},
}


def test_the_records_beside_the_sae_say_what_the_run_did(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """docs/train.md: "`resolved_config.json` holds every value, where it came from, and what was derived: d_in,
    d_sae, steps, device, precision, run id"; also metrics.json as evaluated, the step log, the held-out ids, and
    the final metric line with each evaluated source's figures."""
    cfg = TrainConfig(
        training_tokens=40960, train_batch_size_tokens=256, log_every=5, eval_every_n_wandb_logs=3,
        lr_warm_up_fraction=0.25, lr_decay_fraction=0.5, n_batches_in_buffer=16, context_size=64,
    )  # fmt: skip
    resolved = Resolved(cfg, {"k": "hyperparameters"})
    split = PromptSplit([0, 2, 3], [1], {"heldout_ids": ["p1"], "fraction": 0.25})
    log = records.MetricLog(tmp_path / "checkpoints" / "rid" / "training_log.jsonl")
    for step in (5, 10):
        log.append({"step": step, "tokens": 256 * step, "loss": 1.0 / step, "ce_loss_score": 0.5})
    resume = tmp_path / "checkpoints" / "rid" / "2560"
    run = train.Run(None, 96, 384, 0.123456, "topk-k8-0123", log.path.parent, log, resume)
    metrics = {"explained_variance": 0.6, "l0": 7.5, "evaluation_data": "words", "evaluation_by_source": BY_SOURCE}
    staging = tmp_path / "model" / ".staging"
    staging.mkdir(parents=True)

    with caplog.at_level(logging.INFO):
        train.write_records(resolved, staged_inputs(split), run, metrics, staging)

    assert json.loads((staging / "metrics.json").read_text()) == metrics
    assert json.loads((staging / HELDOUT_FILE).read_text()) == split.record
    assert (staging / "training_log.jsonl").read_text() == log.path.read_text()
    assert (staging / "plots" / "loss.png").is_file()
    written = json.loads((staging / "resolved_config.json").read_text())
    assert written["values"]["training_tokens"] == 40960 and written["sources"]["k"] == "hyperparameters"
    assert written["derived"] == {
        "run_id": "topk-k8-0123",
        "d_in": 96,
        "d_sae": 384,
        "training_steps": 160,
        "lr_warm_up_steps": 40,
        "lr_decay_steps": 80,
        "evaluations_every_steps": 15,
        "buffer_tokens": 16 * 64,
        "buffer_bytes": 16 * 64 * 96 * 4,
        "device": "cpu",
        "device_name": "CPU (2 threads)",
        "precision": "fp32",
        "prompt_token_share_estimate": 0.1235,
        "wandb_mode": "offline",
        "data": "channel:abc|prompts:def|rows",
        "resumed_from": str(resume),
        "prompts_trained_on": 3,
        "prompts_held_out": 1,
        "channels": {"prompts": "/opt/ml/input/data/prompts", "model": None, "control": "/c"},
        "model_weights": "someone/tiny-weights",
        "weights_source": "/weights/folder",
        "prompt_rendering": {"format": "chat", "thought": True, "markers": ["<t>", "</t>"]},
        "gpu_memory_estimate_gib": {"total": 1.5},
    }
    (final,) = [r.getMessage() for r in caplog.records if "final=1" in r.getMessage()]
    assert final.startswith("[metric] final=1 ")
    for field in ("explained_variance=0.6", "l0=7.5", "explained_variance_stories=0.5", "l0_training_prompts=6"):
        assert f" {field}" in final, field
    assert "heldout_prompts" not in final and "evaluation_data" not in final


def test_records_without_prompts_have_no_heldout_file_and_say_zero_prompts(tmp_path: Path) -> None:
    """docs/train.md: "The held-out ids go to `model/heldout_prompts.json`"; a run without prompts has no held-out
    ids to write, and its resolved config counts no prompts; a run that resumed nothing says so."""
    log = records.MetricLog(tmp_path / "run" / "training_log.jsonl")
    log.append({"step": 1, "tokens": 256, "loss": 1.0})
    run = train.Run(None, 96, 384, 0.0, "rid", log.path.parent, log, None)
    inputs = staged_inputs(None)
    inputs.weights = Weights("roneneldan/TinyStories-33M", "roneneldan/TinyStories-33M", None, None)
    staging = tmp_path / "staging"
    staging.mkdir()
    train.write_records(Resolved(TrainConfig()), inputs, run, {"evaluation_by_source": BY_SOURCE}, staging)
    assert not (staging / HELDOUT_FILE).exists()
    derived = json.loads((staging / "resolved_config.json").read_text())["derived"]
    assert derived["prompts_trained_on"] == derived["prompts_held_out"] == 0
    assert derived["resumed_from"] is None and derived["weights_source"] == "roneneldan/TinyStories-33M"


def test_a_signal_during_publishing_waits_until_the_sae_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/train.md: "A signal that arrives while the finished SAE is being moved into `model/` waits until the
    move is done". A SIGTERM sent as the first file moves does not stop the run: every file is published and the
    run counts as done. Another thread is alive, as in a real run (the data worker's, W&B's, torch's): the kernel
    may hand the signal to it, and Python still runs the handler in the main thread."""
    staging, model_dir = tmp_path / "model" / ".staging", tmp_path / "model"
    staging.mkdir(parents=True)
    for name in ("cfg.json", "sae_weights.safetensors", "metrics.json"):
        (staging / name).write_text(name)
    StopRequest.install()
    StopRequest.phase = "finishing"  # as after training: a signal now would end the run at once
    replace, sent = Path.replace, []

    def signalled(self: Path, target: Path) -> Path:
        if not sent:
            sent.append(self.name)
            os.kill(os.getpid(), signal.SIGTERM)
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", signalled)
    done = threading.Event()
    other = threading.Thread(target=done.wait)
    other.start()
    try:
        train.publish(staging, model_dir)
    finally:
        done.set()
        other.join()
    assert sent and sorted(p.name for p in model_dir.iterdir()) == [
        "cfg.json",
        "metrics.json",
        "sae_weights.safetensors",
    ]
    assert StopRequest.requested == signal.SIGTERM  # it arrived, and was handled after the move
    assert StopRequest.phase == "done"


@pytest.mark.slow
def test_the_evaluations_during_training_read_held_out_stories_and_a_signal_then_ends_the_run(
    opt_ml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/train.md: "W&B's evaluations during training read it too, so evaluation never takes rows from training".
    Proved by the tokens SAE-Lens's evaluator fetched (training stories carry "~", validation stories "^"). The
    same run gets a SIGTERM during its final evaluation: docs/train.md, "a SIGTERM during the final evaluation, also
    143", with no SAE published."""
    import sae_lens.llm_sae_training_runner as runner_module
    from transformers import AutoTokenizer

    import container_src.evaluate
    from container_src.__main__ import main

    stories = opt_ml / "input" / "data" / "control"
    stories.unlink()
    marked_stories(stories)
    tokenizer: Any = AutoTokenizer.from_pretrained("roneneldan/TinyStories-33M")
    (trained_mark,), (held_out_mark,) = tokenizer.encode("~"), tokenizer.encode("^")

    read_by_evaluator: list[set[int]] = []
    evaluator_call = runner_module.LLMSaeEvaluator.__call__

    def recording(self: Any, *args: Any, **kwargs: Any) -> Any:
        fetch = self.activations_store.get_batch_tokens

        def noted(*fetch_args: Any, **fetch_kwargs: Any) -> Any:
            tokens = fetch(*fetch_args, **fetch_kwargs)
            read_by_evaluator.append(set(tokens.flatten().tolist()))
            return tokens

        self.activations_store.get_batch_tokens = noted
        try:
            return evaluator_call(self, *args, **kwargs)
        finally:
            self.activations_store.get_batch_tokens = fetch

    final_evaluation = container_src.evaluate.evaluate

    def stopped(*args: Any, **kwargs: Any) -> Any:
        os.kill(os.getpid(), signal.SIGTERM)
        return final_evaluation(*args, **kwargs)

    monkeypatch.setattr(runner_module.LLMSaeEvaluator, "__call__", recording)
    monkeypatch.setattr(container_src.evaluate, "evaluate", stopped)
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(opt_ml))
    write_hyperparameters(opt_ml, {**TINY_RUN, "training_tokens": "4096"})
    assert main(["train"]) == 143
    assert read_by_evaluator, "no evaluation ran during training"
    seen = set().union(*read_by_evaluator)
    assert held_out_mark in seen and trained_mark not in seen
    assert "stopped by SIGTERM after training" in (opt_ml / "output" / "failure").read_text()
    assert not (opt_ml / "model" / "cfg.json").exists() and not (opt_ml / "model" / ".staging").exists()


def test_auto_renders_prompts_with_the_chat_template_of_a_models_own_tokenizer(
    tmp_path: Path, tiny_assets: dict[str, Path]
) -> None:
    """docs/train.md: "With `prompt_format=auto` (the default), a model whose tokenizer has a chat template reads
    each prompt rendered with it". Here the model's own weights (no `model_weights`), from the channel's hub cache:
    its tokenizer is read for the template although nothing else needs it before the model loads."""
    from container_src.synthetic_qwen import write_qwen_cache

    own = "someone/tiny-qwen3-own-weights"
    write_qwen_cache(tiny_assets["hf_home"], own)
    base = tree(tmp_path / "opt_ml", tiny_assets, None)
    shutil.copytree(SAMPLE_PROMPTS, base / "input" / "data" / "prompts")  # with question and response columns
    inputs = train.prepare_inputs(config(model_name=own, prompt_ratio=0.5), ContainerPaths(base))
    assert inputs.weights.source is None and inputs.rendering.format == "chat"
    assert inputs.prompts is not None
    assert inputs.prompts[0]["text"].startswith("<|im_start|>user\n")
    plain = train.prepare_inputs(config(model_name=own, prompt_ratio=0.5, prompt_format="plain"), ContainerPaths(base))
    assert plain.rendering.format == "plain" and not plain.prompts[0]["text"].startswith("<|im_start|>")


def test_the_log_gives_the_split_per_category_and_warns_only_when_nothing_is_held_out(
    tmp_path: Path, tiny_assets: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """docs/train.md: "training only ever reads the rest, and the log gives the sizes per category"; only
    `heldout_prompt_fraction=0` says that every prompt is trained on."""
    paths = ContainerPaths(tree(tmp_path / "opt_ml", tiny_assets, [lettered(GREEK, i) for i in range(12)]))
    with caplog.at_level(logging.INFO, logger="container_src.train"):
        train.prepare_inputs(config(prompt_ratio=0.3, heldout_prompt_fraction=0.25), paths)
    assert (
        "prompts: 12, 9 trained on, 3 held out (official: 7 trained on, 2 held out; refusal: 2 trained on, 1 held out)"
        in caplog.text
    )
    assert "every prompt is trained on" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="container_src.train"):
        inputs = train.prepare_inputs(config(prompt_ratio=0.3, heldout_prompt_fraction=0.0), paths)
    assert "heldout_prompt_fraction=0: every prompt is trained on" in caplog.text
    assert "prompts: 12, 12 trained on, 0 held out" in caplog.text
    assert inputs.training_prompts is not None and len(inputs.training_prompts) == 12


@pytest.mark.slow
def test_metrics_json_says_what_was_evaluated_and_what_the_run_did(
    opt_ml: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/train.md: "latents that did not fire in the last `dead_feature_window` steps"; and each figure of
    metrics.json with what it counts: `eval_batches` batches for the top-level figures and for each source, the
    tokens and steps trained, the hardware, and which data the top-level figures are."""
    from container_src.__main__ import main

    write_hyperparameters(
        opt_ml, {**TINY_RUN, "training_tokens": "4096", "eval_batches": "3", "dead_feature_window": "5"}
    )
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(opt_ml))
    assert main(["train"]) == 0
    metrics = json.loads((opt_ml / "model" / "metrics.json").read_text())
    derived = json.loads((opt_ml / "model" / "resolved_config.json").read_text())["derived"]
    rows_of_3_batches = 3 * 4 * 64  # eval_batches × the smoke preset's 4 rows of 64 tokens
    assert metrics["eval_tokens"] == metrics["ce_loss_eval_tokens"] == rows_of_3_batches
    for name in ("stories", "training_prompts", "heldout_prompts"):
        assert metrics["evaluation_by_source"][name]["tokens_evaluated"] == rows_of_3_batches, name
    assert metrics["dead_feature_window_steps"] == 5
    assert metrics["d_sae"] == derived["d_sae"] == 1024 and metrics["d_in"] == 256
    assert metrics["dead_features"] == round(metrics["dead_feature_fraction"] * 1024)
    assert (metrics["tokens_trained"], metrics["training_steps"], metrics["resumed_from_tokens"]) == (4096, 16, 0)
    assert metrics["device_name"] == derived["device_name"] and metrics["precision"] == "fp32"
    assert metrics["wall_time_s"] > 0
    assert "split 'validation' mixed with the training prompts at prompt_ratio=0.1" in metrics["evaluation_data"]
