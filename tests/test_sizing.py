"""The GPU memory estimate (container_src/sizing.py): its model sizes against real models' parameter counts, the
presets' estimates and the instances they pick, the container's refusal of a GPU too small, and the forward pass
that stops at the hook's layer."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from container_src import sizing
from container_src.config import ConfigError, TrainConfig, resolve
from container_src.model_shapes import ARCHITECTURES
from tests.conftest import HF_HOME, ROOT

PRESET_INSTANCES = {"qwen3-8b-distill": "ml.p4de.24xlarge", "qwen3-0.6b": "ml.g5.xlarge"}
"""Each preset and the instance type the estimate picks, as README.md states it."""


def _parameters(lm: object) -> int:
    return sum(p.numel() for p in lm.parameters())  # type: ignore[attr-defined]


def test_model_sizes_match_the_loaded_models(tiny_assets: dict[str, Path], tmp_path: Path) -> None:
    """docs/train.md: "norms and biases are left out (under 2% of the tiny test models".
    The estimate's parameter count, from config.json alone, against the model TransformerLens builds (the
    formula leaves out norms and biases: well under 2% here, less on larger models)."""
    from container_src import model, weights
    from container_src.synthetic_qwen import write_qwen_folder

    qwen = write_qwen_folder(tmp_path / "qwen")
    prepared = weights.prepare("Qwen/Qwen3-1.7B", "", qwen, need_tokenizer=True)
    lm = model.load_model("Qwen/Qwen3-1.7B", "cpu", qwen, False, prepared.source, prepared.tokenizer)
    arch = sizing.read_architecture(qwen)
    assert (arch.model_type, arch.layers, arch.d_model, arch.d_mlp, arch.head_dim) == ("qwen3", 2, 64, 192, 16)
    assert sizing.model_parameters(arch) == pytest.approx(_parameters(lm), rel=0.02)

    snapshot = next((HF_HOME / "hub" / "models--roneneldan--TinyStories-33M" / "snapshots").iterdir())
    neo = sizing.read_architecture(snapshot)  # GPT-Neo's own key names (num_layers, num_heads, no intermediate_size)
    assert (neo.model_type, neo.d_mlp) == ("gpt_neo", 4 * neo.d_model)
    lm = model.load_model("roneneldan/TinyStories-33M", "cpu")
    assert sizing.model_parameters(neo) == pytest.approx(_parameters(lm), rel=0.02)
    # the published 8B: 8.2 billion parameters (its embedding and unembedding are separate matrices)
    assert sizing.model_parameters(ARCHITECTURES["Qwen/Qwen3-8B"]) == pytest.approx(8.19e9, rel=0.005)


def test_each_part_counts_what_it_says() -> None:
    """docs/train.md: "(2 × d_in × d_sae + d_sae + d_in) × 4 bytes × 4";
    each part counts what its formula says, and nothing is estimated outside the table or for another hook."""
    cfg = TrainConfig(model_name="Qwen/Qwen3-8B", hook_name="blocks.12.mlp.hook_post", expansion_factor=4)
    est = sizing.estimate_for(cfg)
    assert est is not None
    parts = {name: size for name, (size, _) in est.parts.items()}
    d_in, d_sae = 12288, 49152
    assert parts["SAE"] == 16 * (2 * d_in * d_sae + d_sae + d_in)  # 4 fp32 copies: weights, grads, Adam's two
    assert parts["activation buffer"] == 2 * 512 * 512 * d_in * 4  # n_batches_in_buffer × context_size tokens
    assert parts["forward pass"] == 2 * 16 * 512 * 151936 * 4  # the evaluation's logits outweigh one block
    assert est.total == sum(parts.values()) and parts["margin"] > 1.5 * sizing.GIB
    # the SAE grows with its width, the buffer with its tokens; the model's weights with neither
    wider = sizing.estimate_for(TrainConfig(**{**cfg.__dict__, "expansion_factor": 8}))
    assert wider is not None and wider.parts["SAE"][0] == pytest.approx(2 * parts["SAE"], rel=1e-4)
    assert wider.parts["model weights"] == est.parts["model weights"]
    # no estimate for an architecture outside the table, or a hook whose width only the model knows
    assert sizing.estimate_for(TrainConfig(model_name="Qwen/Qwen3-1.7B")) is None
    assert sizing.estimate_for(TrainConfig(hook_name="blocks.2.attn.hook_z")) is None


@pytest.mark.parametrize("preset", sorted(PRESET_INSTANCES))
def test_presets_resolve_and_pick_the_stated_instance(preset: str) -> None:
    """README: "The instance is the one the memory estimate picks (smallest GPU memory first"."""
    cfg = resolve({"preset": preset}).config
    assert isinstance(cfg, TrainConfig)
    est = sizing.estimate_for(cfg)
    assert est is not None
    assert sizing.fitting_instances(est.total)[0] == PRESET_INSTANCES[preset]
    readme = (ROOT / "README.md").read_text()
    stated = re.search(rf"`preset={re.escape(preset)}`.*?(?=\n- |\n\n)", readme, re.DOTALL)  # its list item
    assert stated and PRESET_INSTANCES[preset] in stated.group(0), f"README.md states no instance for {preset}"


def test_the_subject_preset_is_the_users_model_at_their_hook() -> None:
    """README: "`deepseek-ai/DeepSeek-R1-0528-Qwen3-8B`'s weights in the `Qwen/Qwen3-8B` architecture"."""
    cfg = resolve({"preset": "qwen3-8b-distill"}).config
    assert (cfg.model_name, cfg.model_weights, cfg.hook_name) == (
        "Qwen/Qwen3-8B",
        "deepseek-ai/DeepSeek-R1-0528-Qwen3-8B",
        "blocks.12.mlp.hook_post",
    )
    assert sizing.hook_width(ARCHITECTURES[cfg.model_name], cfg.hook_name) == 12288
    assert (cfg.precision, cfg.prompt_format) == ("bf16", "chat")
    assert "SlimPajama" in cfg.control_path


def test_a_gpu_too_small_is_refused_before_the_model_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/train.md: "a device too small stops the run with status 2".
    The container's check on a CUDA device. No GPU here: the device's properties are the one stub."""
    import torch

    from container_src.sizing import check_memory

    total = {"memory": 22 * sizing.GIB}
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda _device: SimpleNamespace(total_memory=total["memory"])
    )
    cfg = resolve({"preset": "qwen3-8b-distill"}).config
    assert isinstance(cfg, TrainConfig)
    inputs = SimpleNamespace(
        runtime=SimpleNamespace(device="cuda", device_name="NVIDIA A10G"), weights=SimpleNamespace(source=None)
    )
    with pytest.raises(ConfigError) as refused:
        check_memory(cfg, inputs)  # type: ignore[arg-type]
    message = str(refused.value)
    assert "NVIDIA A10G (cuda) has 22.0 GiB of GPU memory and the run needs about 69.9 GiB" in message
    assert "model weights: 30.5 GiB" in message and "SAE: 18.0 GiB" in message
    assert "ml.p4de.24xlarge" in message and "ml.g5.xlarge" not in message
    assert "expansion_factor" in message and "store_batch_size_prompts" in message
    total["memory"] = 80 * sizing.GIB
    record = check_memory(cfg, inputs)  # type: ignore[arg-type]
    assert record is not None and record["total"] == pytest.approx(69.9, abs=0.05)
    cpu = SimpleNamespace(runtime=SimpleNamespace(device="cpu", device_name="cpu"), weights=inputs.weights)
    assert check_memory(cfg, cpu) is None  # type: ignore[arg-type]


def test_weights_outside_the_table_are_sized_from_their_config_json(monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/train.md: "the weights' own config.json where the run can read it".
    An architecture outside the table, its weights a hub-cache entry: the container sizes the run from the
    cached config.json (no GPU here: the device's properties are the one stub)."""
    import torch

    from container_src.sizing import check_memory
    from container_src.synthetic_qwen import write_qwen_cache

    write_qwen_cache(HF_HOME, "someone/sized-qwen3")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda _d: SimpleNamespace(total_memory=sizing.GIB))
    cfg = TrainConfig(
        model_name="Qwen/Qwen3-1.7B", model_weights="someone/sized-qwen3", hook_name="blocks.1.mlp.hook_post"
    )
    assert sizing.estimate_for(cfg) is None  # the table alone knows nothing of it
    inputs = SimpleNamespace(
        runtime=SimpleNamespace(device="cuda", device_name="a GPU of 1 GiB"),
        weights=SimpleNamespace(source="someone/sized-qwen3"),
    )
    with pytest.raises(ConfigError, match=r"has 1\.0 GiB of GPU memory and the run needs about") as refused:
        check_memory(cfg, inputs)  # type: ignore[arg-type]
    assert "192×1536" in str(refused.value)  # d_in from the cached config.json's intermediate_size, × 8
    assert sizing.config_folder("someone/not-cached") is None


@pytest.mark.parametrize("fused", [False, True])
def test_the_forward_pass_stops_at_the_hooks_layer(tiny_assets: dict[str, Path], tmp_path: Path, fused: bool) -> None:
    """docs/train.md: "so the blocks after the hook's, the final norm and the unembedding do not run".
    Filling the activation buffer (SAE-Lens's get_activations, which our store inherits) runs the blocks up to
    the hook's and none after, so only they cost time; the weights of the rest stay loaded for the evaluation."""
    import torch

    from container_src.model import load_model, pick_runtime
    from container_src.runner import sae_lens_config
    from container_src.store import store_over

    lm = load_model("roneneldan/TinyStories-33M", "cpu", fused=fused)
    cfg = TrainConfig(
        hook_name="blocks.1.mlp.hook_post",
        context_size=64,
        train_batch_size_tokens=256,
        store_batch_size_prompts=4,
        training_tokens=256,
    )
    runner_cfg = sae_lens_config(cfg, 256, 1024, pick_runtime("cpu", "auto"), "t", tmp_path / "r", tmp_path / "o", None)
    store = store_over([{"input_ids": torch.zeros(64, dtype=torch.long)}], lm, runner_cfg)
    ran: list[str] = []

    def seen(name: str) -> Any:
        def record(tensor: torch.Tensor, *, hook: Any) -> torch.Tensor:
            ran.append(name)
            return tensor

        return record

    for i in range(lm.cfg.n_layers):
        lm.hook_dict[f"blocks.{i}.hook_resid_pre"].add_hook(seen(f"block {i}"))
    lm.hook_dict["ln_final.hook_normalized"].add_hook(seen("final norm"))
    acts = store.get_activations(torch.zeros((4, 64), dtype=torch.long))
    assert acts.shape == (4, 64, 256)
    assert ran == ["block 0", "block 1"]
    ran.clear()  # the counting hooks see a whole forward pass: the check above can fail
    lm(torch.zeros((1, 8), dtype=torch.long))
    assert ran == ["block 0", "block 1", "block 2", "block 3", "final norm"]
    lm.reset_hooks()


def test_the_table_of_gpu_memory_covers_the_suggested_instances() -> None:
    """README: "smallest GPU memory first"; the table of each instance's GPU memory, in that order."""
    from container_src.hardware import SUGGESTED_INSTANCES, gpu_memory

    sizes = [gpu_memory(name) for name in SUGGESTED_INSTANCES]
    assert all(sizes) and [s[1] for s in sizes if s] == sorted(s[1] for s in sizes if s)
    assert gpu_memory("ml.p4de.24xlarge") == ("A100", 79.1) and gpu_memory("ml.p4d.24xlarge") == ("A100", 39.4)
    assert gpu_memory("ml.p5e.48xlarge") == ("H200", 139.8) and gpu_memory("ml.m5.xlarge") is None


def test_a_multi_sae_job_counts_every_sae_and_the_model_once() -> None:
    """docs/train.md: "the model and its forward pass once, every SAE with its step, and one buffer per hook"."""
    base: dict[str, Any] = {"model_name": "Qwen/Qwen3-8B", "hook_name": "blocks.12.mlp.hook_post"}
    one = sizing.estimate_for(TrainConfig(**base, expansion_factor=4))
    other = sizing.estimate_for(TrainConfig(**base, expansion_factor=2, k=32))
    saes = '[{"expansion_factor": 4}, {"expansion_factor": 2, "k": 32}]'
    both = sizing.estimate_for(TrainConfig(**base, saes=saes))
    assert one is not None and other is not None and both is not None
    part = {name: [est.parts[name][0] for est in (one, other, both)] for name in one.parts}
    assert part["SAE"][2] == part["SAE"][0] + part["SAE"][1]
    assert part["SAE step"][2] == part["SAE step"][0] + part["SAE step"][1]
    for shared in ("model weights", "activation buffer", "forward pass"):  # one model, one hook: one buffer
        assert part[shared][2] == part[shared][0]
    assert both.total > one.total > other.total
