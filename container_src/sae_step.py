"""A lean training step for SAE-Lens's TopK SAE: the same loss and gradients, without the dense decoder work.

SAE-Lens's ``TopKTrainingSAE`` scatters the top k latents into a dense [tokens × d_sae] tensor and multiplies it by
the whole decoder, although only k of d_sae latents are non-zero per token (64 of 24,576 in the seed configuration);
its backward pass runs the same dense products and element-wise passes again. ``LeanTopKTrainingSAE`` is that SAE
(SAE-Lens's config, initialisation, saving, inference format, trainer, statistics and dead-latent loss) with one
method replaced, ``training_forward_pass``:

- encoder: ``(x - b_dec) @ W_enc + b_enc``, scaled by the decoder's row norms, then the top k, as SAE-Lens does. Its
  backward pass builds the dense gradient once, from the k selected entries per token, and gets the gradients of
  ``b_enc``, ``b_dec`` and the norms from those entries alone (``b_dec``'s by one matrix-vector product instead of a
  matrix product);
- decoder: each token's k decoder rows gathered and summed with their weights (``embedding_bag``, as sparsify does)
  instead of a dense [tokens × d_sae] @ [d_sae × d_in] product.

Precision follows SAE-Lens's under autocast: the encoder's product and the decoder's rows and weights in the
autocast dtype with fp32 accumulation, everything else fp32; without autocast all is fp32 and the step matches
SAE-Lens's to rounding (tests/test_sae_step.py). Configurations it does not cover (activation normalisation,
hook_z reshaping, no decoder-norm rescaling, hooks attached to the SAE) take SAE-Lens's own step.
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens import TopKTrainingSAE
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput


class _TopKEncode(torch.autograd.Function):
    """``hidden_pre = ((x - b_dec) @ W_enc + b_enc) * norm`` and its top k per token.

    Returns the top values (before the ReLU), their indices and ``hidden_pre`` itself. ``hidden_pre`` is
    differentiable too (SAE-Lens's dead-latent loss reads it); when nothing reads it the backward pass touches the
    dense [tokens × d_sae] gradient once, to scatter the selected entries into it.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        w_enc: torch.Tensor,
        b_enc: torch.Tensor,
        b_dec: torch.Tensor | None,
        norm: torch.Tensor,
        k: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sae_in = x if b_dec is None else x - b_dec
        pre = sae_in @ w_enc  # under autocast: in its dtype, as SAE-Lens's encoder
        unscaled = pre + b_enc
        hidden_pre = unscaled * norm
        values, indices = hidden_pre.topk(k, dim=-1, sorted=False)
        ctx.save_for_backward(sae_in.to(pre.dtype), w_enc, norm, indices, unscaled)
        ctx.pre_dtype = pre.dtype
        ctx.mark_non_differentiable(indices)
        ctx.set_materialize_grads(False)
        return values, indices, hidden_pre

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_values: torch.Tensor | None, _grad_indices: Any, grad_hidden: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        sae_in, w_enc, norm, indices, unscaled = ctx.saved_tensors
        if grad_values is None:
            grad_values = torch.zeros(indices.shape, dtype=norm.dtype, device=norm.device)
        # hidden_pre = unscaled * norm, at the selected entries
        grad_selected = grad_values * norm[indices]
        grad_norm = torch.zeros_like(norm).index_add_(
            0, indices.flatten(), (grad_values * unscaled.gather(-1, indices)).flatten()
        )
        if grad_hidden is None:
            grad_b_enc = torch.zeros_like(norm).index_add_(0, indices.flatten(), grad_selected.flatten())
            grad_pre = torch.zeros(unscaled.shape, dtype=ctx.pre_dtype, device=unscaled.device)
            grad_pre.scatter_(-1, indices, grad_selected.to(ctx.pre_dtype))
        else:
            grad_unscaled = (grad_hidden * norm).scatter_add_(-1, indices, grad_selected)
            grad_norm += (grad_hidden * unscaled).sum(0)
            grad_b_enc = grad_unscaled.sum(0)
            grad_pre = grad_unscaled.to(ctx.pre_dtype)
        grad_w_enc = (sae_in.T @ grad_pre).to(w_enc.dtype)
        # d(loss)/d(sae_in) = grad_pre @ w_enc.T; b_dec needs only its sum over tokens, which is w_enc @ grad_b_enc
        grad_b_dec = -(w_enc @ grad_b_enc) if ctx.needs_input_grad[3] else None
        grad_x = (grad_pre @ w_enc.to(ctx.pre_dtype).T).float() if ctx.needs_input_grad[0] else None
        return grad_x, grad_w_enc, grad_b_enc, grad_b_dec, grad_norm, None


def sparse_decode(indices: torch.Tensor, weights: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    """``sum_j weights[t, j] * w_dec[indices[t, j]]`` for each token t: the decoder product of a TopK code, from its
    k rows. Under autocast the rows and weights are in the autocast dtype (SAE-Lens's dense product casts them
    likewise), accumulated in fp32."""
    device = w_dec.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else w_dec.dtype
    with torch.autocast(device_type=device, enabled=False):
        rows, weights = w_dec.to(dtype), weights.to(dtype)
        return torch.nn.functional.embedding_bag(indices, rows, per_sample_weights=weights, mode="sum")


class LeanTopKTrainingSAE(TopKTrainingSAE):
    """SAE-Lens's TopK training SAE with the lean training step described in this module's docstring."""

    def lean_step_applies(self) -> bool:
        """Whether this SAE's configuration is one the lean step reproduces; otherwise SAE-Lens's step runs."""
        cfg = self.cfg
        hooked = any(hook.fwd_hooks or hook.bwd_hooks for hook in self.hook_dict.values())
        return (
            cfg.rescale_acts_by_decoder_norm
            and cfg.normalize_activations == "none"
            and cfg.reshape_activations == "none"
            and not hooked
        )

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        if not self.lean_step_applies():
            return super().training_forward_pass(step_input)
        x = step_input.sae_in.to(self.dtype)
        norm = self.W_dec.norm(dim=-1)
        b_dec = self.b_dec if self.cfg.apply_b_dec_to_input else None
        values, indices, hidden_pre = _TopKEncode.apply(x, self.W_enc, self.b_enc, b_dec, norm, self.cfg.k)
        acts = values.relu()
        sae_out = sparse_decode(indices, acts * (1 / norm)[indices], self.W_dec) + self.b_dec
        mse_loss = self.mse_loss_fn(sae_out, step_input.sae_in).sum(dim=-1).mean()
        with torch.no_grad():  # what the trainer's statistics and logs read, as SAE-Lens gives it
            feature_acts = torch.zeros_like(hidden_pre).scatter_(-1, indices, acts)
        aux_losses = self.calculate_aux_loss(step_input, feature_acts, hidden_pre, sae_out)
        losses = {"mse_loss": mse_loss, **aux_losses}
        return TrainStepOutput(
            sae_in=step_input.sae_in,
            sae_out=sae_out,
            feature_acts=feature_acts,
            hidden_pre=hidden_pre,
            loss=sum(aux_losses.values(), mse_loss),
            losses=losses,
        )


def training_sae(runner_cfg: Any, lean: bool) -> Any:
    """The SAE that ``runner_cfg`` describes, as SAE-Lens's runner builds it; a TopK one with the lean step if
    ``lean``."""
    from sae_lens import TrainingSAE, TrainingSAEConfig

    sae_cfg = TrainingSAEConfig.from_dict(runner_cfg.get_training_sae_cfg_dict())
    if lean and sae_cfg.architecture() == "topk":
        return LeanTopKTrainingSAE(sae_cfg)  # type: ignore[arg-type]
    return TrainingSAE.from_dict(sae_cfg.to_dict())


def use_fused_adam(optimizer: torch.optim.Optimizer) -> None:
    """Switch SAE-Lens's Adam (built with its per-tensor ``foreach`` kernels) to the fused kernel: the same update in
    one pass over the parameters. Its step counts move to the parameters' device, where the fused kernel reads them;
    a checkpoint's optimizer state loads either way."""
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = True, False
        for param in group["params"]:
            state = optimizer.state.get(param)
            if state and "step" in state:
                state["step"] = state["step"].to(device=param.device, dtype=torch.float32)
