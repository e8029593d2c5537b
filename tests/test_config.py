"""Configuration: types from SageMaker's strings, precedence, presets and refusals that name the key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from container_src.config import ConfigError, TrainConfig, resolve
from container_src.config_sources import list_presets, parse_cli, pick_mode
from container_src.paths import wandb_key


def test_hyperparameter_strings_become_field_types() -> None:
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
    """Some SageMaker clients JSON-encode each value and add their own sagemaker_* keys."""
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
    with pytest.raises(ConfigError) as err:
        resolve(hyperparameters)
    for name in names:
        assert name in str(err.value)


def test_secret_values_never_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        resolve({"wandb_api_key": "planted-secret-1234"})
    assert "planted-secret-1234" not in str(err.value)


def test_config_file_errors(tmp_path: Path) -> None:
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
    assert wandb_key({}) is None
    assert wandb_key({"WANDB_API_KEY": "local-key"}) == "local-key"


def test_wandb_key_from_secrets_manager(moto_server: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A job gets only WANDB_SECRET_ID; the key is read from Secrets Manager (a moto server on loopback)."""
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
    from container_src.config import VizConfig

    viz = resolve({"features": "12, 873", "story_tokens": "5e3", "seed": "3"}, schema=VizConfig).config
    assert (viz.feature_ids, viz.story_tokens, viz.seed, viz.context_size) == ([12, 873], 5000, 3, None)
    with pytest.raises(ConfigError, match=r"'k' \(from the hyperparameters\) belongs to train and bench, not Viz"):
        resolve({"k": "16"}, schema=VizConfig)
    with pytest.raises(ConfigError, match=r"unknown configuration key 'kk' .* Did you mean k"):
        resolve({"kk": "16"}, schema=TrainConfig)


def test_a_shared_tree_leaves_other_modes_keys_to_them(caplog: pytest.LogCaptureFixture) -> None:
    """Locally every mode reads the tree's hyperparameters.json (and the preset it names): each takes its own keys."""
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
    """The published TinyStories-33M run: 17,090 steps of 4,096 tokens, cosine lr 3e-4, W&B every 50 steps and an
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
    for (steps, log_every), evaluations in {
        (50_000, 50): 100,
        (17_090, 50): 113,
        (2_000, 10): 100,
        (64, 4): 16,
    }.items():
        cfg = TrainConfig(training_tokens=steps * 4096, log_every=log_every)
        assert steps // (log_every * cfg.evaluation_every) == evaluations, (steps, log_every)
    assert TrainConfig(eval_every_n_wandb_logs=3).evaluation_every == 3
