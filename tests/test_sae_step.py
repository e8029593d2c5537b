"""The lean TopK training step against SAE-Lens's own: the same loss, latents and gradients; and fused Adam."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.saes.sae import TrainStepInput

from container_src.sae_step import LeanTopKTrainingSAE, TopKEncode, set_adam_kernel

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


DEAD_SHARES = pytest.mark.parametrize("dead_share", [0.0, 0.05, 0.5], ids=["no-dead", "few-dead", "many-dead"])
DECODERS = pytest.mark.parametrize("gather", [True, False], ids=["gathered-decoder", "dense-decoder"])


def _dead(share: float) -> torch.Tensor | None:
    return (torch.rand(D_SAE, generator=torch.Generator().manual_seed(2)) < share) if share else None


@DEAD_SHARES
@DECODERS
def test_lean_step_matches_sae_lens(dead_share: float, gather: bool) -> None:
    """docs/configuration.md: "The loss and the updates are SAE-Lens's, to rounding".
    fp32: the same latents and hidden pre-activations exactly, the same losses (the dead-latent one included:
    fewer dead latents than d_in / 2 and more) and gradients to rounding, with either decoder."""
    ref, lean = _pair()
    lean.gather_decoder = gather
    x = torch.randn(TOKENS, D_IN, generator=torch.Generator().manual_seed(1)) * 2
    dead = _dead(dead_share)
    (out_ref, grads_ref), (out_lean, grads_lean) = _step(ref, x, dead), _step(lean, x, dead)

    assert lean.lean_step_applies(x)
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


def test_lean_step_without_b_dec_on_the_input() -> None:
    """docs/configuration.md: "The loss and the updates are SAE-Lens's, to rounding"; without b_dec on the input too."""
    ref, lean = _pair(apply_b_dec_to_input=False)
    x = torch.randn(TOKENS, D_IN, generator=torch.Generator().manual_seed(1))
    (out_ref, grads_ref), (out_lean, grads_lean) = _step(ref, x, _dead(0.5)), _step(lean, x, _dead(0.5))
    torch.testing.assert_close(out_lean.loss, out_ref.loss, rtol=1e-5, atol=0)
    for name, grad in grads_ref.items():
        torch.testing.assert_close(grads_lean[name], grad, rtol=2e-5, atol=1e-6, msg=name)


@DEAD_SHARES
@DECODERS
def test_lean_step_under_bf16_autocast_stays_with_sae_lens(dead_share: float, gather: bool) -> None:
    """docs/configuration.md: "The loss and the updates are SAE-Lens's, to rounding".
    bf16 autocast (as on a GPU): the latents exactly as SAE-Lens's, the loss too with the dense decoder (the one a
    GPU runs); the gradients apart only by bf16 rounding. Measured: W_enc and b_enc equal without dead latents
    (W_enc 1.5e-3 apart with them); b_dec 1e-4 apart (a matrix-vector product where SAE-Lens sums a bf16 matrix
    product); W_dec 1e-7 apart with the dense decoder, 1e-2 with the gathered one (bf16 rows summed one by one
    against a bf16 product), below bf16's own distance from fp32 here (5e-2)."""
    ref, lean = _pair()
    lean.gather_decoder = gather
    x = torch.randn(TOKENS, D_IN, generator=torch.Generator().manual_seed(1))
    dead = _dead(dead_share)
    (out_ref, grads_ref), (out_lean, grads_lean) = _step(ref, x, dead, True), _step(lean, x, dead, True)
    assert torch.equal(out_ref.feature_acts, out_lean.feature_acts)
    # the gathered decoder's bf16 sums round apart from the bf16 product's, and the dead-latent loss sees it
    torch.testing.assert_close(out_lean.loss, out_ref.loss, rtol=1e-3 if gather else 0, atol=0)
    bounds = {"W_enc": 3e-3 if dead_share else 0, "b_enc": 1e-6, "b_dec": 3e-4, "W_dec": 2e-2 if gather else 1e-5}
    for name, grad in grads_ref.items():
        relative = ((grads_lean[name] - grad).norm() / grad.norm()).item()
        assert relative <= bounds[name], (name, relative)


def test_encoder_gradients_against_finite_differences() -> None:
    """Internal: the hand-written backward pass against finite differences.
    The hand-written backward pass, checked numerically in float64 (every input differentiable, with and without
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
        return TopKEncode.apply(*args, k)[0]

    def values_and_hidden(*args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, _, hidden = TopKEncode.apply(*args, k)
        return values, hidden

    assert torch.autograd.gradcheck(values_only, inputs)
    assert torch.autograd.gradcheck(values_and_hidden, inputs)


def test_what_it_does_not_cover_takes_sae_lens_step() -> None:
    """Internal: an SAE the lean step does not cover takes SAE-Lens's own step, unchanged."""
    ref, lean = _pair(rescale_acts_by_decoder_norm=False)
    x = torch.randn(TOKENS, D_IN)
    assert not lean.lean_step_applies(x)
    (out_ref, grads_ref), (out_lean, grads_lean) = _step(ref, x, None), _step(lean, x, None)
    assert torch.equal(out_ref.loss, out_lean.loss)
    assert all(torch.equal(grads_lean[name], grad) for name, grad in grads_ref.items())

    _, lean = _pair()
    assert lean.lean_step_applies(x) and not lean.lean_step_applies(x.reshape(8, TOKENS // 8, D_IN))
    # a hook must see the dense latents, as SAE-Lens's step gives them: TransformerLens's hooks and torch's
    lean.hook_sae_acts_post.add_hook(lambda tensor, *, hook: tensor)
    assert not lean.lean_step_applies(x)
    for register in ("register_forward_hook", "register_forward_pre_hook"):
        _, lean = _pair()
        getattr(lean.hook_sae_recons, register)(lambda module, *args: None)
        assert not lean.lean_step_applies(x), register


def test_decoder_rows_are_gathered_on_cpu_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Internal: which decoder product each device runs by default.
    gather_decoder=None: the gathered decoder on CPU (where it is the cheaper one), the dense product elsewhere."""
    gathered: list[int] = []
    embedding_bag = torch.nn.functional.embedding_bag

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        gathered.append(1)
        return embedding_bag(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "embedding_bag", counted)
    _, lean = _pair()
    x = torch.randn(TOKENS, D_IN)
    assert lean.gather_decoder is None
    _step(lean, x, None)
    assert gathered == [1]
    lean.gather_decoder = False
    _step(lean, x, None)
    assert gathered == [1]


def _adam(params: list[torch.nn.Parameter]) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=1e-2, betas=(0.9, 0.999))  # as SAE-Lens's trainer builds it


def test_adam_kernel_switch_keeps_the_updates_and_survives_checkpoints(tmp_path: Path) -> None:
    """docs/configuration.md: "Ours uses Adam's fused kernel".
    set_adam_kernel on an Adam built as SAE-Lens builds it, and on one loaded from a checkpoint written with either
    kernel (loading restores the saved kernel, so the switch comes after it): the same updates, to rounding."""
    torch.manual_seed(4)
    start = [torch.randn(30, 20), torch.randn(20)]
    grads = [[torch.randn_like(p) for p in start] for _ in range(6)]

    def train(kernels: list[bool | None]) -> list[torch.Tensor]:
        """One step per entry; None keeps SAE-Lens's Adam untouched, a bool first saves the optimiser to a file,
        loads it into a fresh one (a resumed run) and sets the kernel."""
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = _adam(params)
        for step_grads, fused in zip(grads, kernels, strict=True):
            if fused is not None:
                torch.save(optimizer.state_dict(), tmp_path / "optimizer.pt")
                optimizer = _adam(params)
                optimizer.load_state_dict(torch.load(tmp_path / "optimizer.pt"))
                set_adam_kernel(optimizer, fused)
                flags = (True, False) if fused else (None, None)  # SAE-Lens's Adam: torch's default kernel
                assert all((g["fused"], g["foreach"]) == flags for g in optimizer.param_groups)
                # (on CPU both kernels keep the step counts on the CPU; a GPU moves the fused ones to the device)
                assert all(s["step"].dtype == torch.float32 for s in optimizer.state.values())
            for p, g in zip(params, step_grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
        return [p.detach() for p in params]

    untouched = train([None] * 6)
    assert not all(torch.equal(a, b) for a, b in zip(untouched, start, strict=True))
    for kernels in ([True, None, None, None, None, None], [None, None, True, None, False, True]):
        for switched, expected in zip(train(kernels), untouched, strict=True):
            torch.testing.assert_close(switched, expected, rtol=1e-5, atol=1e-6)
