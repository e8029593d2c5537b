"""Model loading from a hub-cache channel, d_in at the hook, hook errors, and device/precision choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from container_src.config import ConfigError
from container_src.model import check_hook, hook_width, load_model, pick_runtime
from container_src.paths import hub_cache_env


@pytest.fixture(scope="module")
def tiny_model(tiny_assets: dict[str, Path]):
    return load_model("roneneldan/TinyStories-33M", "cpu")


def test_d_in_is_read_from_the_model(tiny_model) -> None:
    hidden = tiny_model.cfg.d_model
    assert hidden == 64
    # TransformerLens gives GPT-Neo d_mlp = 4 × hidden: hook_post is four times wider than the residual stream
    assert hook_width(tiny_model, "blocks.2.mlp.hook_post") == 4 * hidden
    assert hook_width(tiny_model, "blocks.2.hook_resid_post") == hidden
    assert hook_width(tiny_model, "blocks.1.attn.hook_z") == hidden  # heads × d_head, flattened


def test_unknown_hook_lists_hooks_of_that_kind(tiny_model) -> None:
    with pytest.raises(ConfigError) as err:
        check_hook(tiny_model, "blocks.7.mlp.hook_post")
    message = str(err.value)
    assert "blocks.7.mlp.hook_post" in message
    for layer in range(4):
        assert f"blocks.{layer}.mlp.hook_post" in message


def test_misspelt_hook_suggests_close_names(tiny_model) -> None:
    with pytest.raises(ConfigError, match=r"closest hooks: .*blocks\.2\.mlp\.hook_post"):
        check_hook(tiny_model, "blocks.2.mlp.hook_pst")


def test_cpu_runtime_is_fp32_and_refuses_bf16() -> None:
    runtime = pick_runtime("auto", "auto")
    assert (runtime.device, runtime.autocast, runtime.precision) == ("cpu", False, "fp32")
    with pytest.raises(ConfigError, match="no bf16 support"):
        pick_runtime("cpu", "bf16")
    with pytest.raises(ConfigError, match="no CUDA device"):
        pick_runtime("cuda", "auto")


@pytest.mark.parametrize(
    ("gpu", "major", "precision", "autocast"),
    [("Tesla T4", 7, "auto", False), ("NVIDIA A10G", 8, "auto", True), ("NVIDIA H100", 9, "fp32", False)],
)
def test_gpu_precision_follows_the_card(
    monkeypatch: pytest.MonkeyPatch, gpu: str, major: int, precision: str, autocast: bool
) -> None:
    """No GPU runs here: torch.cuda is stubbed to report the card (name and compute capability)."""
    import types

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _d: types.SimpleNamespace(name=gpu, major=major))
    runtime = pick_runtime("auto", precision)
    assert (runtime.device, runtime.device_name, runtime.autocast) == ("cuda", gpu, autocast)
    if major < 8:
        with pytest.raises(ConfigError, match=f"precision='bf16': {gpu} has no bf16 support"):
            pick_runtime("cuda", "bf16")


def test_hub_cache_channel_layouts(tmp_path: Path, tiny_assets: dict[str, Path]) -> None:
    env = hub_cache_env(tiny_assets["hf_home"], "roneneldan/TinyStories-33M")
    assert env["HF_HUB_CACHE"] == str(tiny_assets["hf_home"] / "hub") and env["HF_HUB_OFFLINE"] == "1"
    # a channel that is the hub cache itself works too
    assert hub_cache_env(tiny_assets["hf_home"] / "hub", "roneneldan/TinyStories-33M")["HF_HUB_CACHE"].endswith("hub")
    with pytest.raises(ConfigError, match=r"no entry for model_name='org/other'.*models--roneneldan--TinyStories-33M"):
        hub_cache_env(tiny_assets["hf_home"], "org/other")
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ConfigError, match="not a Hugging Face hub-cache layout"):
        hub_cache_env(tmp_path, "roneneldan/TinyStories-33M")
