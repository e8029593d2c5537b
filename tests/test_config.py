"""Configuration: types from SageMaker's strings, precedence, presets and refusals that name the key."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from container_src.config import BenchConfig, ConfigError, RunConfig, TrainConfig, VizConfig, resolve
from container_src.config_sources import list_presets, parse_cli, pick_mode
from container_src.paths import wandb_key


def test_hyperparameter_strings_become_field_types() -> None:
    """README: "string values, converted to each key's type"."""
    resolved = resolve(
        {
            "k": "32",
            "lr": "3e-4",
            "training_tokens": "2.048e8",
            "compile_sae": "False",
            "d_sae": "none",
            "wandb_entity": "null",
            "prompt_ratio": "0.25",
            "run_name": "censorship-1",
        }
    )
    cfg = resolved.config
    assert (cfg.k, cfg.lr, cfg.training_tokens) == (32, 3e-4, 204_800_000)
    assert cfg.compile_sae is False and cfg.d_sae is None and cfg.wandb_entity is None
    assert cfg.prompt_ratio == 0.25 and cfg.run_name == "censorship-1"
    assert isinstance(cfg.k, int) and isinstance(cfg.lr, float)


def test_json_quoted_values_and_platform_keys() -> None:
    """docs/container.md: "`sagemaker_*` hyperparameters that SageMaker may add are ignored, and JSON-quoted values".
    Some SageMaker clients JSON-encode each value and add their own sagemaker_* keys."""
    resolved = resolve(
        {
            "hook_name": '"blocks.1.mlp.hook_post"',
            "k": '"16"',
            "sagemaker_region": '"eu-west-1"',
            "mode": '"train"',
            "preset": '"smoke"',
        }
    )
    assert resolved.sources["context_size"] == "preset:smoke"
    assert resolved.config.hook_name == "blocks.1.mlp.hook_post" and resolved.config.k == 16
    assert pick_mode("train", {"mode": '"viz"'}, {}) == "viz"
    assert pick_mode("train", {"mode": "viz"}, {"mode": "bench"}) == "bench"
    assert "sagemaker_region" not in resolved.to_json()["values"]


def test_precedence_defaults_preset_config_hyperparameters_cli(tmp_path: Path) -> None:
    """docs/configuration.md: "Lowest precedence first; a later source overrides an earlier one key by key"."""
    config_file = tmp_path / "mine.json"
    config_file.write_text(json.dumps({"k": 16, "seed": 7, "lr": 0.002}))
    resolved = resolve(
        {"preset": "smoke", "config": str(config_file), "seed": "8", "lr": "0.003"},
        {"lr": "0.004"},
    )
    cfg, sources = resolved.config, resolved.sources
    assert cfg.context_size == 64 and sources["context_size"] == "preset:smoke"
    assert cfg.k == 16 and sources["k"] == f"config:{config_file}"
    assert cfg.seed == 8 and sources["seed"] == "hyperparameters"
    assert cfg.lr == 0.004 and sources["lr"] == "cli"
    assert cfg.hook_name == "blocks.2.mlp.hook_post"
    assert resolved.to_json()["sources"]["hook_name"] == "default"
    assert resolved.to_json()["layers"] == [
        "default",
        "preset:smoke",
        f"config:{config_file}",
        "hyperparameters",
        "cli",
    ]


def test_defaults_are_the_corrected_seed_plan() -> None:
    """docs/train.md: "The defaults are the seed's configuration wherever a key exists"."""
    cfg = resolve({}).config
    assert cfg.hook_name == "blocks.2.mlp.hook_post"
    assert cfg.sae_width(3072) == 24576  # d_in of hook_post is 4 × 768
    assert (cfg.k, cfg.lr, cfg.training_steps, cfg.train_batch_size_tokens) == (64, 1e-4, 50_000, 4096)
    assert (cfg.lr_warm_up_steps, cfg.lr_decay_steps) == (2_500, 10_000)
    assert (cfg.context_size, cfg.n_batches_in_buffer, cfg.n_checkpoints, cfg.seed) == (512, 512, 5, 42)
    assert cfg.wandb_project == "sae_tinystories" and cfg.architecture == "topk"
    # the seed's buffer: 16 store batches of 32 sequences of 512 tokens under the older SAE-Lens
    assert cfg.n_batches_in_buffer * cfg.context_size == 16 * 32 * 512 == 262_144
    assert (cfg.lr_scheduler_name, cfg.apply_b_dec_to_input, cfg.exclude_special_tokens) == ("constant", False, True)
    assert (cfg.log_every, cfg.evaluation_every) == (50, 10)  # 1,000 metric lines, an evaluation every 10: 100
    # a preset equal to the defaults would only be a second name for them
    assert list_presets() == ["qwen3-0.6b", "qwen3-8b-distill", "smoke", "tinystories-33m-mlp-out-published"]


def test_d_sae_overrides_expansion() -> None:
    """docs/configuration.md: "Explicit dictionary size; overrides expansion_factor"."""
    assert TrainConfig(d_sae=1000, k=10).sae_width(3072) == 1000


@pytest.mark.parametrize(
    ("hyperparameters", "names"),
    [
        ({"hook_layer": "2"}, ["hook_layer", "hook_name"]),
        ({"k": "many"}, ["k=", "int"]),
        ({"lr": "fast"}, ["lr=", "float"]),
        ({"compile_sae": "maybe"}, ["compile_sae", "true/false"]),
        ({"compile_llm": "true"}, ["'compile_llm'", "removed", "recompiling", "fused_lm"]),
        ({"k": "2.5"}, ["k=", "whole number"]),
        ({"architecture": "jumprelu"}, ["architecture", "topk, batchtopk"]),
        ({"lr_warm_up_fraction": "0.5", "lr_decay_fraction": "0.6"}, ["lr_decay_fraction", "exceed"]),
        ({"n_batches_in_buffer": "2", "context_size": "128"}, ["n_batches_in_buffer", "train_batch_size_tokens"]),
        ({"d_sae": "16", "k": "32"}, ["k=32", "d_sae=16"]),
        ({"prompt_ratio": "1"}, ["prompt_ratio", "negative control"]),
        ({"training_tokens": "100"}, ["training_tokens", "one batch"]),
        ({"training_tokens": "3000", "train_batch_size_tokens": "256"}, ["training_tokens", "2816"]),
        ({"lr": "inf"}, ["lr=inf", "positive number"]),
        ({"seed": "-1"}, ["seed=-1"]),
        ({"training_token": "4096"}, ["training_token", "Did you mean training_tokens"]),
        ({"precision": "fp16"}, ["precision", "auto, fp32, bf16"]),
        ({"device": "tpu"}, ["device"]),
        ({"preset": "huge"}, ["preset='huge'", "Available: qwen3-0.6b, qwen3-8b-distill, smoke, tinystories-33m"]),
        ({"lr_scheduler_name": "cosine"}, ["lr_scheduler_name='cosine'", "constant, cosineannealing"]),
        ({"lr_end": "0.01"}, ["lr_end=0.01", "between 0 and lr=0.0001"]),
        ({"lr_scheduler_name": "cosineannealing", "lr_end": "0"}, ["lr_end=0.0", "lr_decay_fraction"]),
        ({"eval_every_n_wandb_logs": "0"}, ["eval_every_n_wandb_logs=0", "about 100 evaluations"]),
        ({"wandb_api_key": "abc"}, ["wandb_api_key", "WANDB_SECRET_ID"]),
    ],
)
def test_bad_values_are_refused_naming_the_key(hyperparameters: dict[str, str], names: list[str]) -> None:
    """docs/configuration.md: "An unknown key, a wrong type or an impossible combination stops the run"."""
    with pytest.raises(ConfigError) as err:
        resolve(hyperparameters)
    for name in names:
        assert name in str(err.value)


def test_secret_values_never_echoed() -> None:
    """docs/train.md: "A key is never put in the configuration, hyperparameters, logs or artifacts"."""
    with pytest.raises(ConfigError) as err:
        resolve({"wandb_api_key": "planted-secret-1234"})
    assert "planted-secret-1234" not in str(err.value)


def test_config_file_errors(tmp_path: Path) -> None:
    """docs/configuration.md: "`mode`, `preset` and `config` are read only from the flags and the hyperparameters";
    a missing, malformed or non-object --config file is refused too."""
    with pytest.raises(ConfigError, match="does not exist"):
        resolve(cli={"config": str(tmp_path / "missing.json")})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve(cli={"config": str(bad)})
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        resolve(cli={"config": str(bad)})
    # a preset, mode or config named inside a file would otherwise be skipped without a word
    for key, value in (("preset", "smoke"), ("mode", "viz"), ("config", "other.json")):
        bad.write_text(json.dumps({key: value, "k": 16}))
        with pytest.raises(ConfigError, match=f"config:{re.escape(str(bad))}: key '{key}' is read only from the"):
            resolve(cli={"config": str(bad)})


def test_parse_cli() -> None:
    """docs/configuration.md: "`--key value` or `--key=value` flags (dashes in a key read as underscores)"."""
    assert parse_cli(["--k", "8", "--lr=0.1", "--hook-name", "blocks.0.hook_resid_post"]) == {
        "k": "8",
        "lr": "0.1",
        "hook_name": "blocks.0.hook_resid_post",
    }
    with pytest.raises(ConfigError, match="--k needs a value"):
        parse_cli(["--k"])
    with pytest.raises(ConfigError, match="unexpected argument 'eight'"):
        parse_cli(["--k", "8", "eight"])


def test_wandb_key_from_environment_only() -> None:
    """docs/train.md: "Locally the key comes from `WANDB_API_KEY`"."""
    assert wandb_key({}) is None
    assert wandb_key({"WANDB_API_KEY": "local-key"}) == "local-key"


def test_wandb_key_from_secrets_manager(moto_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/train.md: "in a SageMaker job only a Secrets Manager id comes in, `WANDB_SECRET_ID`".
    A job gets only WANDB_SECRET_ID; the key is read from Secrets Manager (a moto server on loopback)."""
    import boto3

    for name, value in moto_server.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("secretsmanager")
    client.create_secret(Name="wandb-bare", SecretString="bare-key-value")
    client.create_secret(Name="wandb-json", SecretString=json.dumps({"WANDB_API_KEY": "json-key-value"}))
    client.create_secret(Name="wandb-empty", SecretString=json.dumps({"other": "x"}))

    assert wandb_key({"WANDB_SECRET_ID": "wandb-bare"}) == "bare-key-value"
    assert wandb_key({"WANDB_SECRET_ID": "wandb-json"}) == "json-key-value"
    # a local key wins over a secret id
    assert wandb_key({"WANDB_API_KEY": "local", "WANDB_SECRET_ID": "wandb-json"}) == "local"
    with pytest.raises(ConfigError, match="WANDB_SECRET_ID=wandb-empty: the secret is empty"):
        wandb_key({"WANDB_SECRET_ID": "wandb-empty"})
    with pytest.raises(ConfigError, match=r"WANDB_SECRET_ID=missing: could not read the secret \(ResourceNotFound"):
        wandb_key({"WANDB_SECRET_ID": "missing"})
    # a region given only as AWS_REGION: boto3 reads AWS_DEFAULT_REGION alone, so the client is told
    region = moto_server["AWS_DEFAULT_REGION"]
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(ConfigError, match="could not read the secret"):
        wandb_key({"WANDB_SECRET_ID": "wandb-bare"})
    assert wandb_key({"WANDB_SECRET_ID": "wandb-bare", "AWS_REGION": region}) == "bare-key-value"


def test_each_mode_has_its_own_keys() -> None:
    """README: "Each mode has its own keys"."""
    from container_src.config import VizConfig

    viz = resolve({"features": "12, 873", "story_tokens": "5e3", "seed": "3"}, schema=VizConfig).config
    assert (viz.feature_ids, viz.story_tokens, viz.seed, viz.context_size) == ([12, 873], 5000, 3, None)
    with pytest.raises(ConfigError, match=r"'k' \(from the hyperparameters\) belongs to train and bench, not Viz"):
        resolve({"k": "16"}, schema=VizConfig)
    with pytest.raises(ConfigError, match=r"unknown configuration key 'kk' .* Did you mean k"):
        resolve({"kk": "16"}, schema=TrainConfig)


def test_a_shared_tree_leaves_other_modes_keys_to_them(caplog: pytest.LogCaptureFixture) -> None:
    """README: "leaves (with a warning) the keys of other modes".
    Locally every mode reads the tree's hyperparameters.json (and the preset it names): each takes its own keys."""
    from container_src.config import VizConfig

    shared = {"preset": "smoke", "k": "16", "n_features": "3", "seed": "5"}
    with caplog.at_level("INFO", logger="container_src.config_sources"):
        viz = resolve(shared, schema=VizConfig, shared_tree=True)
    assert (viz.config.n_features, viz.config.seed, viz.config.device) == (3, 5, "cpu")  # device from the preset
    assert "keys of other modes, left to them: " in caplog.text and "expansion_factor" in caplog.text
    train = resolve(shared, schema=TrainConfig, shared_tree=True).config
    assert (train.k, train.seed, train.expansion_factor) == (16, 5, 4)
    # a typo is no other mode's key, and flags are meant for the mode they are given to
    with pytest.raises(ConfigError, match="unknown configuration key 'kk'"):
        resolve({**shared, "kk": "16"}, schema=VizConfig, shared_tree=True)
    with pytest.raises(ConfigError, match=r"'k' \(from the command line\) belongs to train and bench"):
        resolve(shared, {"k": "16"}, schema=VizConfig, shared_tree=True)
    with pytest.raises(ConfigError, match="'x' is not a feature id"):
        resolve({"features": "1,x"}, schema=VizConfig)
    with pytest.raises(ConfigError, match="seed="):
        resolve({"seed": "-1"}, schema=VizConfig)


def test_the_published_run_preset_is_that_run() -> None:
    """README: "d_sae 12,288, k 96, 17,090 steps, cosine lr 3e-4".
    The published TinyStories-33M run: 17,090 steps of 4,096 tokens, cosine lr 3e-4, W&B every 50 steps and an
    evaluation every 10 logs."""
    cfg = resolve({"preset": "tinystories-33m-mlp-out-published"}).config
    assert (cfg.model_name, cfg.hook_name, cfg.architecture) == (
        "roneneldan/TinyStories-33M",
        "blocks.2.hook_mlp_out",
        "topk",
    )
    assert (cfg.sae_width(768), cfg.k, cfg.training_steps, cfg.train_batch_size_tokens) == (12288, 96, 17090, 4096)
    assert (cfg.lr, cfg.lr_scheduler_name, cfg.lr_warm_up_steps, cfg.lr_decay_steps) == (
        3e-4,
        "cosineannealing",
        854,
        3418,
    )
    assert (cfg.apply_b_dec_to_input, cfg.precision, cfg.seed, cfg.context_size) == (False, "bf16", 42, 512)
    assert (cfg.log_every, cfg.evaluation_every) == (50, 10)
    assert cfg.n_batches_in_buffer * cfg.context_size == 262_144  # its 16 store batches of 32 sequences


def test_evaluation_cadence_defaults_to_about_100_evaluations() -> None:
    # (steps, log_every) -> evaluations over the run; a run of fewer than 100 metric lines evaluates at each
    """docs/configuration.md: "when empty, about 100 evaluations over the run"."""
    for (steps, log_every), evaluations in {
        (50_000, 50): 100,
        (17_090, 50): 113,
        (2_000, 10): 100,
        (64, 4): 16,
    }.items():
        cfg = TrainConfig(training_tokens=steps * 4096, log_every=log_every)
        assert steps // (log_every * cfg.evaluation_every) == evaluations, (steps, log_every)
    assert TrainConfig(eval_every_n_wandb_logs=3).evaluation_every == 3


# A small, valid train config the boundary cases below change one key of: 10 batches of 256 tokens, 64-token rows.
SMALL = {"train_batch_size_tokens": 256, "training_tokens": 2560, "context_size": 64, "n_batches_in_buffer": 4}
AT_LEAST_1 = "must be at least 1"
TRAIN_BOUNDS: list[tuple[dict[str, Any], str | None]] = [
    ({"precision": "bf16"}, None),
    ({"precision": "fp16"}, "precision='fp16': must be one of auto, fp32, bf16"),
    *(({"device": device}, None) for device in ("auto", "cpu", "cuda", "cuda:1")),
    ({"device": "tpu"}, "device='tpu': must be auto, cpu, cuda or cuda:N"),
    ({"seed": 0}, None),
    ({"seed": 2**32 - 1}, None),
    ({"seed": -1}, "seed=-1: must be between 0 and 2**32 - 1"),
    ({"seed": 2**32}, "seed=4294967296: must be between 0 and 2**32 - 1"),
    ({"control_text_column": ""}, "control_text_column='': must name a column, such as text"),
    ({"prompt_format": "plain"}, None),
    ({"prompt_format": "xml"}, "prompt_format='xml': must be one of auto, chat, plain"),
    ({"architecture": "batchtopk"}, None),
    ({"architecture": "jumprelu"}, "architecture='jumprelu': must be one of topk, batchtopk"),
    ({"expansion_factor": 1}, None),
    ({"expansion_factor": 0}, f"expansion_factor=0: {AT_LEAST_1}"),
    ({"d_sae": 1, "k": 1}, None),
    ({"d_sae": 0, "k": 1}, f"d_sae=0: {AT_LEAST_1}"),
    ({"k": 1}, None),
    ({"k": 0}, f"k=0: {AT_LEAST_1}"),
    ({"d_sae": 16, "k": 16}, None),
    ({"d_sae": 16, "k": 17}, "k=17: must not exceed d_sae=16"),
    ({"lr": 1e-9}, None),
    *(({"lr": lr}, f"lr={lr!r}: must be a positive number") for lr in (0.0, -1.0, math.inf, math.nan)),
    ({"lr_warm_up_fraction": 0.0, "lr_decay_fraction": 1.0}, None),
    ({"lr_warm_up_fraction": 1.0, "lr_decay_fraction": 0.0}, None),
    ({"lr_warm_up_fraction": -0.1}, "lr_warm_up_fraction=-0.1: must be between 0 and 1"),
    ({"lr_warm_up_fraction": 1.1, "lr_decay_fraction": 0.0}, "lr_warm_up_fraction=1.1: must be between 0 and 1"),
    ({"lr_decay_fraction": -0.1}, "lr_decay_fraction=-0.1: must be between 0 and 1"),
    ({"lr_warm_up_fraction": 0.0, "lr_decay_fraction": 1.1}, "lr_decay_fraction=1.1: must be between 0 and 1"),
    ({"lr_warm_up_fraction": 0.5, "lr_decay_fraction": 0.5}, None),
    (
        {"lr_warm_up_fraction": 0.5, "lr_decay_fraction": 0.6},
        "lr_decay_fraction=0.6: warm-up (0.5) and decay together exceed the whole run",
    ),
    ({"train_batch_size_tokens": 1, "n_batches_in_buffer": 1}, None),
    ({"train_batch_size_tokens": 0}, f"train_batch_size_tokens=0: {AT_LEAST_1}"),
    ({"training_tokens": 256}, None),
    ({"training_tokens": 255}, "training_tokens=255: must be at least one batch (train_batch_size_tokens=256)"),
    ({"context_size": 2, "n_batches_in_buffer": 128}, None),
    ({"context_size": 1, "n_batches_in_buffer": 256}, "context_size=1: must be at least 2"),
    ({"store_batch_size_prompts": 1}, None),
    ({"store_batch_size_prompts": 0}, f"store_batch_size_prompts=0: {AT_LEAST_1}"),
    ({"prefetch_llm_batches": 0}, None),
    ({"prefetch_llm_batches": -1}, "prefetch_llm_batches=-1: must be 0 (off) or more"),
    (
        {"n_batches_in_buffer": 3},
        "n_batches_in_buffer=3: n_batches_in_buffer × context_size (3 × 64) must be at least train_batch_size_tokens "
        "(256)",
    ),
    (
        {"training_tokens": 2600},
        "training_tokens=2600: must be a whole number of batches of train_batch_size_tokens=256 (for example 2560)",
    ),
    ({"n_checkpoints": 0}, None),
    ({"n_checkpoints": -1}, "n_checkpoints=-1: must not be negative"),
    ({"prompt_ratio": 0.0}, None),
    ({"prompt_ratio": 0.99}, None),
    *(
        ({"prompt_ratio": r}, f"prompt_ratio={r}: must be in [0, 1): the control text is the negative control")
        for r in (-0.01, 1.0)
    ),
    ({"heldout_prompt_fraction": 0.0}, None),
    *(
        (
            {"heldout_prompt_fraction": f},
            f"heldout_prompt_fraction={f}: must be in [0, 1): 0 trains on every prompt, and some prompts must remain "
            "to train on",
        )
        for f in (-0.1, 1.0)
    ),
    *(({key: 1}, None) for key in ("dead_feature_window", "feature_sampling_window", "log_every", "eval_batches")),
    *(
        ({key: 0}, f"{key}=0: {AT_LEAST_1}")
        for key in ("dead_feature_window", "feature_sampling_window", "log_every", "eval_batches")
    ),
    ({"control_eval_split": ""}, "control_eval_split='': must name a split, such as validation"),
    ({"hook_name": "a.b"}, None),
    ({"hook_name": "blocks"}, "hook_name='blocks': must be a TransformerLens hook such as blocks.2.mlp.hook_post"),
]


@pytest.mark.parametrize(("change", "message"), TRAIN_BOUNDS)
def test_readme_exit_2_names_the_key_train_limits_one_by_one(change: dict[str, Any], message: str | None) -> None:
    """README: exit status 2 is "a problem with the configuration or the inputs, with a message that names the key".
    Each train check at its boundary: the last value accepted, the first refused, and the whole message (the key, its
    value, and what it must be)."""
    if message is None:
        TrainConfig(**{**SMALL, **change})
        BenchConfig(**{**SMALL, **change})  # bench runs train's checks too
        return
    for schema in (TrainConfig, BenchConfig):
        with pytest.raises(ConfigError) as err:
            schema(**{**SMALL, **change})
        assert str(err.value) == message


VIZ_BOUNDS: list[tuple[dict[str, Any], str | None]] = [
    ({"precision": "fp16"}, "precision='fp16': must be one of auto, fp32, bf16"),  # the keys every mode shares
    ({"prompt_set": "all"}, None),
    ({"prompt_set": "some"}, "prompt_set='some': must be one of heldout, train, all"),
    ({"min_prompts": 1}, None),
    ({"min_prompts": 0}, f"min_prompts=0: {AT_LEAST_1}"),
    ({"contrasts": "a: b"}, "contrasts: 'a' needs exactly one ` vs ` between its two selections"),
    *(({key: 0}, None) for key in ("n_features", "top_snippets", "ablate_top")),
    *(({key: -1}, f"{key}=-1: must not be negative") for key in ("n_features", "top_snippets", "ablate_top")),
    *(({key: 1}, None) for key in ("prompt_tokens", "story_tokens", "batch_size")),
    *(({key: 0}, f"{key}=0: {AT_LEAST_1}") for key in ("prompt_tokens", "story_tokens", "batch_size")),
    ({"context_size": 2}, None),
    ({"context_size": 1}, "context_size=1: must be at least 2"),
    ({"features": "1,x"}, "features='1,x': 'x' is not a feature id; give ids like 12,873"),
    ({"features": "3,٣"}, "features='3,٣': '٣' is not a feature id; give ids like 12,873"),  # a non-ASCII digit
]


def test_docs_configuration_features_is_a_comma_separated_list_of_ids() -> None:
    """docs/configuration.md, `features`: "Feature ids to render as well, comma-separated (for example `12,873`)"."""
    assert VizConfig(features="12, 873").feature_ids == [12, 873]
    assert VizConfig(features=",5,,7,").feature_ids == [5, 7]
    assert VizConfig().feature_ids == []


BENCH_BOUNDS: list[tuple[dict[str, Any], str | None]] = [
    *(({key: None}, None) for key in ("steps", "warmup_steps", "json", "profile")),
    *(({key: 1}, None) for key in ("steps", "warmup_steps", "lm_batches", "repeats")),
    *(({key: 0}, f"{key}=0: {AT_LEAST_1}") for key in ("steps", "lm_batches", "repeats")),
    (
        {"warmup_steps": 0},
        "warmup_steps=0: must be at least 1: the first step fills the activation buffer, and the timing starts after "
        "a step",
    ),
    *(({"model_shape": shape}, None) for shape in ("tiny", "tinystories-33m")),
    ({"model_shape": "huge"}, "model_shape='huge': must be one of tiny, tinystories-33m"),
    *(({key: "out.json"}, None) for key in ("json", "profile")),
    *(({key: " "}, f"{key}=' ': must be a file path") for key in ("json", "profile")),
]


@pytest.mark.parametrize(
    ("schema", "change", "message"),
    [(VizConfig, *case) for case in VIZ_BOUNDS] + [(BenchConfig, *case) for case in BENCH_BOUNDS],
)
def test_readme_exit_2_names_the_key_viz_and_bench_limits_one_by_one(
    schema: type[RunConfig], change: dict[str, Any], message: str | None
) -> None:
    """README: exit status 2 is "a problem with the configuration or the inputs, with a message that names the key";
    each viz and bench check at its boundary, with its whole message."""
    if message is None:
        schema(**change)
        return
    with pytest.raises(ConfigError) as err:
        schema(**change)
    assert str(err.value) == message


def test_docs_train_sae_width_holds_k_up_to_d_sae() -> None:
    """docs/configuration.md: "d_sae = expansion_factor × d_in, unless d_sae is given"; k must not exceed it."""
    assert TrainConfig(k=64, expansion_factor=1).sae_width(64) == 64
    assert TrainConfig(k=64, expansion_factor=2).sae_width(48) == 96
    with pytest.raises(ConfigError) as err:
        TrainConfig(k=65, expansion_factor=1).sae_width(64)
    assert str(err.value) == "k=65: must not exceed d_sae=64"


def test_docs_train_resolved_config_holds_every_value_its_source_and_what_was_derived() -> None:
    """docs/train.md: "`resolved_config.json` holds every value, where it came from, and what was derived"."""
    resolved = resolve({"k": "8", "preset": "smoke"}, {"seed": "3"})
    record = resolved.to_json({"d_sae": 512})
    assert set(record) == {"mode", "layers", "values", "sources", "derived"}
    assert record["mode"] == "train"
    assert record["layers"] == ["default", "preset:smoke", "hyperparameters", "cli"]
    assert (record["values"]["k"], record["sources"]["k"]) == (8, "hyperparameters")
    assert (record["values"]["seed"], record["sources"]["seed"]) == (3, "cli")
    assert (record["sources"]["lr"], record["sources"]["architecture"]) == ("preset:smoke", "default")
    assert set(record["sources"]) == set(record["values"])
    assert record["derived"] == {"d_sae": 512}
    assert resolve().to_json()["derived"] == {}
