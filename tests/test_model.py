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
    """README: "reads the hook's width from the model"."""
    hidden = tiny_model.cfg.d_model
    assert hidden == 64
    # TransformerLens gives GPT-Neo d_mlp = 4 × hidden: hook_post is four times wider than the residual stream
    assert hook_width(tiny_model, "blocks.2.mlp.hook_post") == 4 * hidden
    assert hook_width(tiny_model, "blocks.2.hook_resid_post") == hidden
    assert hook_width(tiny_model, "blocks.1.attn.hook_z") == hidden  # heads × d_head, flattened


def test_unknown_hook_lists_hooks_of_that_kind(tiny_model) -> None:
    """docs/train.md: "a hook the model lacks (the message lists the model's hooks of that kind)"."""
    with pytest.raises(ConfigError) as err:
        check_hook(tiny_model, "blocks.7.mlp.hook_post")
    message = str(err.value)
    assert "blocks.7.mlp.hook_post" in message
    for layer in range(4):
        assert f"blocks.{layer}.mlp.hook_post" in message


def test_misspelt_hook_suggests_close_names(tiny_model) -> None:
    """docs/train.md: "a hook the model lacks (the message lists the model's hooks of that kind)"."""
    with pytest.raises(ConfigError, match=r"closest hooks: .*blocks\.2\.mlp\.hook_post"):
        check_hook(tiny_model, "blocks.2.mlp.hook_pst")


def test_cpu_runtime_is_fp32_and_refuses_bf16() -> None:
    """docs/train.md: "`precision=bf16` on hardware without bf16 is refused"."""
    runtime = pick_runtime("auto", "auto")
    assert (runtime.device, runtime.autocast, runtime.precision) == ("cpu", False, "fp32")
    with pytest.raises(ConfigError, match="no bf16 support"):
        pick_runtime("cpu", "bf16")
    with pytest.raises(ConfigError, match="no CUDA device"):
        pick_runtime("cuda", "auto")


def test_a_gpu_job_without_cuda_does_not_fall_back_to_the_cpu() -> None:
    """docs/train.md: "`device=auto` stops with an error when torch sees no CUDA device".
    A SageMaker job on a GPU instance whose container sees no CUDA device (a driver too old for torch's CUDA
    build, say) stops at once, a host problem (exit 1), instead of training for hours on the CPU; elsewhere, and when
    asked, the CPU runs. More in test_gpu_start.py."""
    from container_src.gpu import HostError

    with pytest.raises(HostError, match=r"this job runs on ml.g5.xlarge, which has an NVIDIA GPU"):
        pick_runtime("auto", "auto", job_instance="ml.g5.xlarge")
    assert pick_runtime("auto", "auto", job_instance="ml.m5.xlarge").device == "cpu"
    assert pick_runtime("cpu", "auto", job_instance="ml.p4d.24xlarge").device == "cpu"


@pytest.mark.parametrize(
    ("gpu", "major", "precision", "autocast"),
    [("Tesla T4", 7, "auto", False), ("NVIDIA A10G", 8, "auto", True), ("NVIDIA H100", 9, "fp32", False)],
)
def test_gpu_precision_follows_the_card(
    monkeypatch: pytest.MonkeyPatch, gpu: str, major: int, precision: str, autocast: bool
) -> None:
    """docs/train.md: "bf16 autocast on a GPU that supports it (compute capability 8 or more".
    No GPU runs here: torch.cuda is stubbed to report the card (name and compute capability)."""
    import types

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda _d: types.SimpleNamespace(name=gpu, major=major, minor=0, total_memory=2**34),
    )
    runtime = pick_runtime("auto", precision)
    assert (runtime.device, runtime.device_name, runtime.autocast) == ("cuda", gpu, autocast)
    if major < 8:
        with pytest.raises(ConfigError, match=f"precision='bf16': {gpu} has no bf16 support"):
            pick_runtime("cuda", "bf16")


def test_sae_is_compiled_by_default_on_cuda_where_triton_finds_a_c_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/train.md: "where Triton finds a C compiler (the image has gcc) the SAE's training forward pass is compiled".
    No GPU runs here: torch.cuda is stubbed to report an H100, and the compiler lookup (shutil.which) to find
    every compiler or none."""
    import types

    import torch

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    assert not pick_runtime("cpu", "auto", None).compile_sae and pick_runtime("cpu", "auto", True).compile_sae
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(ConfigError, match=r"compile_sae=true: torch.compile on CPU needs a C\+\+ compiler"):
        pick_runtime("cpu", "auto", True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(
        torch.cuda,
        "get_device_properties",
        lambda _d: types.SimpleNamespace(name="H100", major=9, minor=0, total_memory=2**36),
    )
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/gcc" if name == "gcc" else None)
    assert pick_runtime("cuda", "auto", None).compile_sae and not pick_runtime("cuda", "auto", False).compile_sae
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert not pick_runtime("cuda", "auto", None).compile_sae
    with pytest.raises(ConfigError, match=r"compile_sae=true: .*needs a C compiler.*set compile_sae=false"):
        pick_runtime("cuda", "auto", True)
    monkeypatch.setattr("shutil.which", lambda name: name if name == "/opt/cc" else None)
    monkeypatch.setenv("CC", "/opt/cc")
    assert pick_runtime("cuda", "auto", None).compile_sae
    monkeypatch.setattr("shutil.which", lambda name: None if name == "/opt/missing-cc" else f"/usr/bin/{name}")
    for unusable in ("", "/opt/missing-cc"):  # Triton would run $CC as it is, not look for gcc
        monkeypatch.setenv("CC", unusable)
        assert not pick_runtime("cuda", "auto", None).compile_sae
        with pytest.raises(ConfigError, match=f"CC='{unusable}' is not one; fix or unset it"):
            pick_runtime("cuda", "auto", True)


def test_hub_cache_channel_layouts(tmp_path: Path, tiny_assets: dict[str, Path]) -> None:
    """docs/container.md: "the model in Hugging Face hub-cache layout"."""
    env = hub_cache_env(tiny_assets["hf_home"], "roneneldan/TinyStories-33M")
    assert env["HF_HUB_CACHE"] == str(tiny_assets["hf_home"] / "hub") and env["HF_HUB_OFFLINE"] == "1"
    # a channel that is the hub cache itself works too
    assert hub_cache_env(tiny_assets["hf_home"] / "hub", "roneneldan/TinyStories-33M")["HF_HUB_CACHE"].endswith("hub")
    with pytest.raises(ConfigError, match=r"no entry for model_name='org/other'.*models--roneneldan--TinyStories-33M"):
        hub_cache_env(tiny_assets["hf_home"], "org/other")
    (tmp_path / "weights.bin").write_text("x")
    with pytest.raises(ConfigError, match="not a Hugging Face hub-cache layout"):
        hub_cache_env(tmp_path, "roneneldan/TinyStories-33M")


@pytest.fixture
def fused_model(tiny_assets: dict[str, Path]):
    return load_model("roneneldan/TinyStories-33M", "cpu", fused=True)


def _count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    from torch.nn import functional

    calls: list[int] = []
    kernel = getattr(functional, name)

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(functional, name, counted)
    return calls


@pytest.fixture
def kernel_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of torch's fused attention kernel."""
    return _count_calls(monkeypatch, "scaled_dot_product_attention")


@pytest.fixture
def norm_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the calls of torch's layer norm kernel, which TransformerLens's own LayerNorm never calls."""
    return _count_calls(monkeypatch, "layer_norm")


def _tokens(model, positions: int):
    import torch

    return torch.randint(0, model.cfg.d_vocab, (3, positions), generator=torch.Generator().manual_seed(0))


def test_fused_kernels_give_transformer_lens_activations(tiny_model, fused_model, kernel_calls, norm_calls) -> None:
    """docs/configuration.md: "The activations are TransformerLens's, to rounding"."""
    import torch

    from container_src.fused import FusedAttention, FusedLayerNorm, gelu_tanh

    for fused, model in ((4, fused_model), (0, tiny_model)):
        assert sum(isinstance(m, FusedAttention) for m in model.modules()) == fused
        assert sum(getattr(m, "act_fn", None) is gelu_tanh for m in model.modules()) == fused
        assert sum(isinstance(m, FusedLayerNorm) for m in model.modules()) == (2 * fused + 1 if fused else 0)
    tokens = _tokens(tiny_model, 320)  # longer than the local layers' window of 256: their band matters
    names = [f"blocks.{layer}.{point}" for layer in range(4) for point in ("mlp.hook_post", "attn.hook_z")]
    names += ["blocks.3.ln2.hook_normalized"]
    with torch.no_grad():
        logits, cache = tiny_model.run_with_cache(tokens, names_filter=names)
        assert not kernel_calls and not norm_calls
        fused_logits, fused_cache = fused_model.run_with_cache(tokens, names_filter=names)
    assert len(kernel_calls) == 4  # every layer took the fused path, global and local
    assert len(norm_calls) == 4 * 4 + 1  # per layer ln1 three times (queries, keys, values) and ln2; ln_final
    for name in names:
        torch.testing.assert_close(fused_cache[name], cache[name], rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(fused_logits, logits, rtol=1e-4, atol=1e-4)
    # training's forward pass: stopped after the hook's layer, under bf16 autocast where the GPU has it
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        _, cache = tiny_model.run_with_cache(tokens, names_filter=names[4], stop_at_layer=3)
        _, fused_cache = fused_model.run_with_cache(tokens, names_filter=names[4], stop_at_layer=3)
    assert fused_cache[names[4]].dtype == cache[names[4]].dtype
    torch.testing.assert_close(fused_cache[names[4]].float(), cache[names[4]].float(), rtol=0.05, atol=0.05)
    assert len(norm_calls) == 17 + 3 * 4  # the norms of layers 0 to 2


def test_fused_gelu_is_gelu_new_with_its_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/configuration.md: "each norm and GELU is one kernel instead of several".
    The same function and the same output dtype: fp32, bf16, and bf16 under autocast. CUDA autocast runs
    ``torch.pow`` in fp32 (gelu_new's result is then fp32); no GPU here, so a ``pow`` that answers fp32, as CUDA
    autocast's does, stands in for it."""
    import torch
    from transformer_lens.utils import gelu_new

    from container_src.fused import gelu_tanh

    x = torch.linspace(-8, 8, 4001)
    half = x.to(torch.bfloat16)
    torch.testing.assert_close(gelu_tanh(x), gelu_new(x), rtol=1e-6, atol=1e-6)
    for inputs in (half, half.reshape(1, -1)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=inputs.dim() == 2):
            assert gelu_tanh(inputs).dtype == gelu_new(inputs).dtype == torch.bfloat16
            torch.testing.assert_close(gelu_tanh(inputs).float(), gelu_new(inputs).float(), rtol=2e-2, atol=2e-2)
    pow_ = torch.pow
    monkeypatch.setattr(torch, "pow", lambda a, b: pow_(a.float(), b))
    assert gelu_tanh(half).dtype == gelu_new(half).dtype == torch.float32
    torch.testing.assert_close(gelu_tanh(half), gelu_new(half), rtol=1e-6, atol=1e-6)


def test_fused_kernels_leave_hooked_patterns_scales_and_masks_to_transformer_lens(
    tiny_model, fused_model, kernel_calls, norm_calls
) -> None:
    """Pins: with fused_lm a hooked pattern, score or norm scale is still TransformerLens's (not in the docs).
    A hooked pattern, score or norm scale still exists, from TransformerLens's code, and so does a padding
    mask's effect."""
    import torch

    tokens = _tokens(tiny_model, 64)
    names = ["blocks.1.attn.hook_pattern", "blocks.2.attn.hook_attn_scores", "blocks.1.ln2.hook_scale"]
    names += ["blocks.3.mlp.hook_post"]
    with torch.no_grad():
        _, cache = tiny_model.run_with_cache(tokens, names_filter=names)
        _, fused_cache = fused_model.run_with_cache(tokens, names_filter=names)
        assert len(kernel_calls) == 2  # layers 0 and 3
        assert len(norm_calls) == 17 - 1  # all but the hooked one
        for name in names:  # layer 0 was fused: what follows agrees to rounding
            torch.testing.assert_close(fused_cache[name], cache[name], rtol=1e-4, atol=1e-5, msg=name)
        kernel_calls.clear()
        padding = torch.ones_like(tokens)
        padding[:, :5] = 0
        expected = tiny_model(tokens, attention_mask=padding)
        got = fused_model(tokens, attention_mask=padding)
    assert not kernel_calls
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # the GELU is fused still


@pytest.mark.parametrize(
    ("settings", "fused_layers"),
    [
        ({}, 2),  # GPT-2's layout: scores scaled by 1/sqrt(d_head), which GPT-Neo's attention leaves out
        ({"scale_attn_by_inverse_layer_idx": True}, 2),
        ({"positional_embedding_type": "rotary", "rotary_dim": 8}, 0),
        ({"attn_scores_soft_cap": 5.0}, 0),
        ({"attention_dir": "bidirectional"}, 0),
    ],
)
def test_fused_attention_on_other_layouts(kernel_calls, settings: dict, fused_layers: int) -> None:
    """docs/configuration.md: "The activations are TransformerLens's, to rounding".
    Randomly initialised TransformerLens models of other layouts: what the fused path admits gives
    TransformerLens's output, and what it does not admit runs TransformerLens's code."""
    import copy

    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from container_src.fused import fuse_model

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=64, d_vocab=50, act_fn="gelu_new", seed=0, **settings
    )
    reference = HookedTransformer(cfg)
    with torch.no_grad():  # TransformerLens starts its norms at weight 1 and bias 0, which would hide their misuse
        for name, param in reference.named_parameters():
            if ".ln" in f".{name}":
                param.normal_(generator=torch.Generator().manual_seed(len(name)))
    model = copy.deepcopy(reference)
    fuse_model(model)
    tokens = torch.randint(0, 50, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(tokens)
        kernel_calls.clear()
        got = model(tokens)
    assert len(kernel_calls) == fused_layers
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_global_module_hooks_see_every_module_transformer_lens_calls(
    tiny_model, fused_model, kernel_calls, norm_calls
) -> None:
    """Pins: with fused_lm a global module hook sees every module TransformerLens calls (not in the docs).
    A module hook registered for all modules sees the fused model call what TransformerLens's calls (the score,
    pattern and scale hook points included), because the fused paths step aside for it."""
    import torch
    from torch.nn.modules.module import register_module_forward_hook

    tokens = _tokens(tiny_model, 16)
    calls: list[str] = []
    handle = register_module_forward_hook(lambda module, _in, _out: calls.append(getattr(module, "name", "")))
    try:
        with torch.no_grad():
            tiny_model(tokens)
            expected = calls.copy()
            calls.clear()
            fused_model(tokens)
    finally:
        handle.remove()
    assert not kernel_calls and not norm_calls
    names = calls
    assert names == expected
    assert "blocks.0.attn.hook_pattern" in names and "blocks.0.ln1.hook_scale" in names


def test_fused_layer_norm_leaves_other_dtypes_to_transformer_lens(norm_calls) -> None:
    """docs/configuration.md: "The activations are TransformerLens's, to rounding".
    A norm whose weights were cast after loading (cfg.dtype still fp32), or given a bf16 input outside autocast,
    runs TransformerLens's code, which returns cfg.dtype."""
    import copy

    import torch
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.components import LayerNorm

    from container_src.fused import FusedLayerNorm

    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_heads=2, d_head=8, n_ctx=8, d_vocab=10, act_fn="relu")
    x = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(0))
    for weights, inputs in ((torch.bfloat16, x), (torch.bfloat16, x.bfloat16()), (torch.float32, x.bfloat16())):
        reference = LayerNorm(cfg).to(weights)
        fused = copy.deepcopy(reference)
        fused.__class__ = FusedLayerNorm
        expected, got = reference(inputs), fused(inputs)
        assert got.dtype == expected.dtype == torch.float32 and not norm_calls
        torch.testing.assert_close(got, expected)
