"""Torch's fused kernels for the model's attention, layer norms and GELU, in train's forward passes (filling the
activation buffer, and the evaluations). `fuse_model` swaps the classes of TransformerLens's modules in place. Each
takes the fused path only where it gives what TransformerLens gives, to rounding, and TransformerLens's own code
otherwise; a hook on what a fused kernel never computes (attention scores and pattern, a norm's scale) selects it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional
from transformer_lens.components import Attention, LayerNorm
from transformer_lens.utils import gelu_new

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer
    from transformer_lens.hook_points import HookPoint

logger = logging.getLogger(__name__)

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooked(point: HookPoint) -> bool:
    return any(getattr(point, name, None) for name in _HOOK_DICTS)


def _global_module_hooks() -> bool:
    from torch.nn.modules import module

    return any(getattr(module, f"_global{name}", None) for name in _HOOK_DICTS)


class FusedAttention(Attention):
    """TransformerLens's ``Attention`` with a fused path for what train's forward passes need.

    TransformerLens computes attention in the open so that its scores and pattern can be hooked: per layer it writes
    the [batch, head, query, key] scores, masks them, takes the softmax, clears NaNs and multiplies by the values,
    each a pass over that tensor. ``scaled_dot_product_attention`` reads queries, keys and values once and never
    writes the pattern. ``hook_q``, ``hook_k``, ``hook_v`` and ``hook_z`` run either way. The outputs agree with
    TransformerLens's to rounding: the kernel sums in another order, and under bf16 autocast it never rounds the
    scores to bf16, where TransformerLens does.
    """

    def fusable(self, **kwargs: Any) -> bool:
        """Whether the fused path gives what TransformerLens gives: causal attention with standard positional
        embeddings on one device; no cache, padding mask, extra mask, score cap, per-head result or 4-bit weights;
        nothing hooked on the scores or the pattern (``run_with_cache`` of ``hook_pattern`` then gets the pattern
        from TransformerLens's own code)."""
        cfg = self.cfg
        return (
            all(value is None for value in kwargs.values())
            and cfg.attention_dir == "causal"
            and cfg.positional_embedding_type == "standard"
            and cfg.dtype in (torch.float32, torch.float64)
            and not cfg.attn_scores_soft_cap > 0
            and not cfg.use_attn_result
            and not cfg.load_in_4bit
            and cfg.n_devices == 1
            and not _hooked(self.hook_attn_scores)
            and not _hooked(self.hook_pattern)
            and not _global_module_hooks()
        )

    def forward(  # type: ignore[override]
        self,
        query_input: torch.Tensor,
        key_input: torch.Tensor,
        value_input: torch.Tensor,
        past_kv_cache_entry: Any = None,
        additive_attention_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        extras = {
            "past_kv_cache_entry": past_kv_cache_entry,
            "additive_attention_mask": additive_attention_mask,
            "attention_mask": attention_mask,
            "position_bias": position_bias,
        }
        if not self.fusable(**extras):
            return super().forward(query_input, key_input, value_input, **extras)
        q, k, v = self.calculate_qkv_matrices(query_input, key_input, value_input)
        positions = q.shape[1]  # at most n_ctx, the mask's size: standard positional embeddings stop there
        # A global layer's mask is the causal one, which the kernel applies itself (and may then use flash
        # attention); a local layer's is banded. [batch, pos, head, d_head] -> [batch, head, pos, d_head] and back.
        causal = self.attn_type == "global"
        z = functional.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=None if causal else self.mask[-positions:, -positions:],
            is_causal=causal,
            scale=1.0 / self.attn_scale,
        )
        z = self.hook_z(z.transpose(1, 2))
        w_o = self.W_O.reshape(self.cfg.n_heads * self.cfg.d_head, self.cfg.d_model).T
        return functional.linear(z.reshape(z.shape[0], positions, -1), w_o, self.b_O)


class FusedLayerNorm(LayerNorm):
    """TransformerLens's ``LayerNorm`` through torch's one-kernel ``layer_norm`` rather than its nine passes (two
    means, a power, a square root and five elementwise operations): the same centring, biased variance, epsilon,
    weight and bias, and the same output dtype, where the input, the weights and ``cfg.dtype`` are all fp32 or all
    fp64 (otherwise TransformerLens's code runs). The model is loaded unfolded, so its norms have weights. It matters
    more than its size suggests: TransformerLens's block applies ``ln1`` three times, once each to the queries',
    keys' and values' input. ``hook_normalized`` runs either way; a hooked scale, which the kernel does not give,
    selects TransformerLens's code."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        dtype = self.cfg.dtype
        if dtype not in (torch.float32, torch.float64) or x.dtype != dtype or self.w.dtype != dtype:
            return super().forward(x)
        if _hooked(self.hook_scale) or _global_module_hooks():
            return super().forward(x)
        return self.hook_normalized(functional.layer_norm(x, (self.length,), self.w, self.b, self.eps))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """``gelu_new`` (GPT-2's and GPT-Neo's tanh approximation, six elementwise operations) as torch's one-kernel
    ``gelu(approximate="tanh")``, the same function, which TransformerLens itself uses for ``gelu_pytorch_tanh``;
    ``hook_pre`` and ``hook_post`` are unaffected. The output dtype is ``gelu_new``'s, which follows autocast: CUDA
    autocast runs ``gelu_new``'s ``torch.pow`` in fp32, and type promotion then makes the result fp32 for a bf16
    input, so the activations at ``hook_post`` that the SAE trains on are fp32 on a GPU; CPU autocast keeps ``pow``
    in bf16. The zero-size ``pow`` asks the dispatcher which applies here."""
    dtype = torch.promote_types(x.dtype, torch.pow(x.new_empty(0), 3.0).dtype)
    return functional.gelu(x.to(dtype), approximate="tanh")


def fuse_model(lm: HookedTransformer) -> None:
    """Give each plain ``Attention`` and ``LayerNorm`` module of ``lm`` the fused path, and each ``gelu_new`` MLP
    the fused GELU. Swapping the class keeps each module's parameters, buffers and hook points. Subclasses
    (grouped-query attention, say) keep their own forward."""
    attention = norms = activations = 0
    for module in lm.modules():
        if type(module) is Attention:
            module.__class__ = FusedAttention
            attention += 1
        elif type(module) is LayerNorm:
            module.__class__ = FusedLayerNorm
            norms += 1
        elif getattr(module, "act_fn", None) is gelu_new:
            setattr(module, "act_fn", gelu_tanh)  # noqa: B010 (a function, which nn.Module's typing omits)
            activations += 1
    logger.info("fused kernels: attention in %d modules, layer norm in %d, GELU in %d", attention, norms, activations)
