"""A lean training step for SAE-Lens's TopK SAE: the same loss and gradients with less dense work (sparse encoder
gradients, a gathered decoder on CPU), and a switch to torch's fused Adam kernel. Where the lean step would not
reproduce SAE-Lens's, SAE-Lens's own step runs.
"""

from __future__ import annotations

from typing import Any

import torch
from sae_lens import TopKTrainingSAE
from sae_lens.saes.sae import TrainStepInput, TrainStepOutput


class TopKEncode(torch.autograd.Function):
    """``hidden_pre = ((x - b_dec) @ W_enc + b_enc) * norm`` and its top k per token.

    Returns the top values (before the ReLU), their indices and ``hidden_pre`` itself. ``hidden_pre`` is
    differentiable too (SAE-Lens's dead-latent loss reads it); when nothing reads it the backward pass touches the
    dense [tokens × d_sae] gradient once, to scatter the selected entries into it, and gets the gradients of
    ``b_enc``, ``b_dec`` and the norms from the k selected entries per token alone. SAE-Lens's autograd runs dense
    products and element-wise passes over all d_sae latents, although only k are non-zero per token.
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
        ctx.pre_dtype, ctx.x_dtype = pre.dtype, x.dtype
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
        grad_x = (grad_pre @ w_enc.to(ctx.pre_dtype).T).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        return grad_x, grad_w_enc, grad_b_enc, grad_b_dec, grad_norm, None


def decode(indices: torch.Tensor, weights: torch.Tensor, w_dec: torch.Tensor, gather: bool) -> torch.Tensor:
    """``sum_j weights[t, j] * w_dec[indices[t, j]]`` for each token t: the decoder product of a TopK code.

    ``gather``: each token's k rows gathered and summed (``embedding_bag``, as sparsify does), k / d_sae of the dense
    product's work. Otherwise the code is scattered into a dense [tokens × d_sae] matrix and multiplied, as
    SAE-Lens does, without its fp32 scaling and casting passes. Under autocast both work in the autocast dtype,
    accumulating in fp32, as SAE-Lens's product."""
    device = w_dec.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else w_dec.dtype
    weights = weights.to(dtype)
    if gather:
        with torch.autocast(device_type=device, enabled=False):
            return torch.nn.functional.embedding_bag(indices, w_dec.to(dtype), per_sample_weights=weights, mode="sum")
    code = torch.zeros(indices.shape[0], w_dec.shape[0], dtype=dtype, device=w_dec.device)
    return code.scatter_(-1, indices, weights) @ w_dec


class LeanTopKTrainingSAE(TopKTrainingSAE):
    """SAE-Lens's TopK training SAE (its config, initialisation, saving, inference format, trainer, statistics and
    dead-latent loss) with one method replaced, ``training_forward_pass``.

    Precision follows SAE-Lens's under autocast: the encoder's and decoder's products in the autocast dtype with
    fp32 accumulation, everything else fp32; without autocast all is fp32 and the step matches SAE-Lens's to
    rounding (tests/test_sae_step.py). On a GPU the norms' and ``b_enc``'s gradients are sums in no fixed order
    (atomic adds), so runs are not bit-repeatable there, as GPU training rarely is.
    """

    gather_decoder: bool | None = None
    """Decode by gathering each token's k decoder rows (see ``decode``); when None, on CPU only. On a GPU the dense
    product runs on tensor cores in bf16 and is likely the cheaper one: gathering tokens × k rows moves gigabytes
    (torch's ``embedding_bag`` backward also stages a [tokens·k × d_in] fp32 buffer), and some torch releases have
    no CUDA backward for bf16 ``embedding_bag`` weights."""

    def lean_step_applies(self, sae_in: torch.Tensor) -> bool:
        """Whether the lean step reproduces SAE-Lens's for this SAE and input; otherwise SAE-Lens's step runs
        (activation normalisation, hook_z reshaping, no decoder-norm rescaling, hooks attached to the SAE, inputs
        that are not [tokens × d_in])."""
        cfg = self.cfg
        hooked = any(
            hook.fwd_hooks
            or hook.bwd_hooks
            or hook._forward_hooks
            or hook._forward_pre_hooks
            or hook._backward_hooks
            or hook._backward_pre_hooks
            for hook in self.hook_dict.values()
        )
        return (
            cfg.rescale_acts_by_decoder_norm
            and cfg.normalize_activations == "none"
            and cfg.reshape_activations == "none"
            and sae_in.dim() == 2
            and not hooked
        )

    def training_forward_pass(self, step_input: TrainStepInput) -> TrainStepOutput:
        if not self.lean_step_applies(step_input.sae_in):
            return super().training_forward_pass(step_input)
        x = step_input.sae_in.to(self.dtype)
        norm = self.W_dec.norm(dim=-1)
        b_dec = self.b_dec if self.cfg.apply_b_dec_to_input else None
        values, indices, hidden_pre = TopKEncode.apply(x, self.W_enc, self.b_enc, b_dec, norm, self.cfg.k)
        acts = values.relu()
        gather = self.W_dec.device.type == "cpu" if self.gather_decoder is None else self.gather_decoder
        sae_out = decode(indices, acts * (1 / norm)[indices], self.W_dec, gather) + self.b_dec
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


def set_adam_kernel(optimizer: torch.optim.Optimizer, fused: bool) -> None:
    """Run SAE-Lens's Adam with the fused kernel (one pass over the parameters: the same update) or, if not
    ``fused``, with torch's default, the per-tensor kernels SAE-Lens builds it with. Set after a checkpoint's
    optimizer state is loaded, since loading restores the kernel it was saved with. Each kernel keeps its step counts
    where it reads them: the fused one on the parameters' device, the others on the CPU."""
    for group in optimizer.param_groups:
        group["fused"], group["foreach"] = (True, False) if fused else (None, None)
        for param in group["params"]:
            state = optimizer.state.get(param)
            if state and "step" in state:
                state["step"] = state["step"].to(device=param.device if fused else "cpu", dtype=torch.float32)
