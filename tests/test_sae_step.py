"""The lean TopK training step against SAE-Lens's own: the same loss, latents and gradients; and fused Adam."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput

from container_src.sae_step import LeanTopKTrainingSAE, _TopKEncode, use_fused_adam

D_IN, D_SAE, K, TOKENS = 48, 384, 16, 200


def _pair(**cfg: Any) -> tuple[TopKTrainingSAE, LeanTopKTrainingSAE]:
    """SAE-Lens's TopK SAE and ours with the same weights; the biases are made non-zero so their paths count."""
    torch.manual_seed(0)

    def config() -> TopKTrainingSAEConfig:
        return TopKTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, dtype="float32", device="cpu", **cfg)

    ref, lean = TopKTrainingSAE(config()), LeanTopKTrainingSAE(config())
    with torch.no_grad():
        ref.b_enc.normal_(0, 0.1)
        ref.b_dec.normal_(0, 0.1)
        ref.W_dec.mul_(torch.rand(D_SAE, 1) + 0.5)  # decoder rows of unequal norms
    lean.load_state_dict(ref.state_dict())
    return ref, lean


def _step(sae: TopKTrainingSAE, x: torch.Tensor, dead: torch.Tensor | None, autocast: bool = False) -> Any:
    sae.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = sae.training_forward_pass(
            TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False)
        )
    out.loss.backward()
    return out, {name: torch.clone(p.grad) for name, p in sae.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dead_share", [0.0, 0.05, 0.5], ids=["no-dead", "few-dead", "many-dead"])
def test_lean_step_matches_sae_lens(dead_share: float) -> None:
    """fp32: the same latents and hidden pre-activations exactly, the same losses (the dead-latent one included:
    fewer dead latents than d_in / 2 and more) and gradients to rounding."""
    ref, lean = _pair()
    x = torch.randn(TOKENS, D_IN, generator=torch.Generator().manual_seed(1)) * 2
    dead = (torch.rand(D_SAE, generator=torch.Generator().manual_seed(2)) < dead_share) if dead_share else None
    (out_ref, grads_ref), (out_lean, grads_lean) = _step(ref, x, dead), _step(lean, x, dead)

    assert lean.lean_step_applies()
    assert torch.equal(out_ref.feature_acts, out_lean.feature_acts)
    assert torch.equal(out_ref.hidden_pre, out_lean.hidden_pre)
    assert (out_lean.feature_acts > 0).sum(-1).max() <= K
    torch.testing.assert_close(out_lean.sae_out, out_ref.sae_out, rtol=1e-5, atol=1e-5)
    assert out_ref.losses.keys() == out_lean.losses.keys()
    for name, loss in out_ref.losses.items():
        torch.testing.assert_close(out_lean.losses[name], loss, rtol=1e-5, atol=1e-6)
    assert (out_lean.losses["auxiliary_reconstruction_loss"] > 0) == bool(dead_share)
    for name, grad in grads_ref.items():
        assert grad.abs().max() > 0, name
        torch.testing.assert_close(grads_lean[name], grad, rtol=2e-5, atol=1e-6, msg=name)


def test_lean_step_under_bf16_autocast_stays_with_sae_lens() -> None:
    """bf16 autocast (as on a GPU): the latents and the loss as SAE-Lens's; the gradients differ only by bf16
    rounding, the decoder's (gathered rows against a dense product) by about bf16's precision."""
    ref, lean = _pair()
    x = torch.randn(TOKENS, D_IN, generator=torch.Generator().manual_seed(1))
    (out_ref, grads_ref), (out_lean, grads_lean) = _step(ref, x, None, True), _step(lean, x, None, True)
    assert torch.equal(out_ref.feature_acts, out_lean.feature_acts)
    torch.testing.assert_close(out_lean.loss, out_ref.loss, rtol=1e-3, atol=0)
    for name, grad in grads_ref.items():
        relative = ((grads_lean[name] - grad).norm() / grad.norm()).item()
        assert relative < 2e-2, (name, relative)


def test_encoder_gradients_against_finite_differences() -> None:
    """The hand-written backward pass, checked numerically in float64 (every input differentiable, with and without
    a gradient arriving through hidden_pre)."""
    torch.manual_seed(3)
    d_in, d_sae, k, n = 5, 12, 3, 4
    inputs = (
        torch.randn(n, d_in, dtype=torch.float64, requires_grad=True),
        torch.randn(d_in, d_sae, dtype=torch.float64, requires_grad=True),
        torch.randn(d_sae, dtype=torch.float64, requires_grad=True),
        torch.randn(d_in, dtype=torch.float64, requires_grad=True),
        (torch.rand(d_sae, dtype=torch.float64) + 0.5).requires_grad_(),
    )

    def values_only(*args: torch.Tensor) -> torch.Tensor:
        return _TopKEncode.apply(*args, k)[0]

    def values_and_hidden(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, _, hidden = _TopKEncode.apply(*args, k)
        return values, hidden

    assert torch.autograd.gradcheck(values_only, inputs)
    assert torch.autograd.gradcheck(values_and_hidden, inputs)


def test_configurations_it_does_not_cover_take_sae_lens_step() -> None:
    ref, lean = _pair(rescale_acts_by_decoder_norm=False)
    assert not lean.lean_step_applies()
    x = torch.randn(TOKENS, D_IN)
    (out_ref, grads_ref), (out_lean, grads_lean) = _step(ref, x, None), _step(lean, x, None)
    assert torch.equal(out_ref.loss, out_lean.loss)
    assert all(torch.equal(grads_lean[name], grad) for name, grad in grads_ref.items())

    _, hooked = _pair()
    hooked.hook_sae_acts_post.add_hook(lambda tensor, *, hook: tensor)
    assert not hooked.lean_step_applies()  # a hook must see the dense latents, as SAE-Lens's step gives them


def test_fused_adam_updates_as_sae_lens_adam_and_takes_its_state() -> None:
    """use_fused_adam switches an Adam built as SAE-Lens builds it (and one loaded from such an optimiser's
    state) to the fused kernel: the same updates, to rounding."""
    torch.manual_seed(4)
    start = [torch.randn(30, 20), torch.randn(20)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(5)]

    def train(fuse_after: int | None) -> list[torch.Tensor]:
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = torch.optim.Adam(params, lr=1e-2, betas=(0.9, 0.999))
        for step, step_grads in enumerate(grads):
            if step == fuse_after:
                resumed = torch.optim.Adam(params, lr=1e-2, betas=(0.9, 0.999))
                resumed.load_state_dict(optimizer.state_dict())  # as a resumed run: foreach state, then fused
                optimizer = resumed
                use_fused_adam(optimizer)
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
        assert all(group["fused"] for group in optimizer.param_groups) == (fuse_after is not None)
        return [p.detach() for p in params]

    foreach = train(None)
    for fuse_after in (0, 2):
        for fused, expected in zip(train(fuse_after), foreach, strict=True):
            torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-6)
