"""What removing one SAE feature does to the model's next-token loss.

The SAE is spliced into the model at its hook with the reconstruction error kept, so that only the removed feature
changes: at the hook, x becomes x - f_i(x) * W_dec[i] (scaled as SAE-Lens's decode scales it), which equals
decode(f with f_i = 0) + (x - decode(f)). Where the feature is zero, x is left bit for bit as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformer_lens import HookedTransformer

logger = logging.getLogger(__name__)

TOP_DROPPED = "top_dropped"


@dataclass
class AblationBatch:
    """Sequences to ablate on, and which of their positions count for which side of a contrast."""

    tokens: torch.Tensor
    """LongTensor [B, T] of token ids, BOS first; padding, if any, after each row's last token."""
    sides: dict[str, torch.Tensor]
    """Side name -> BoolTensor [B, T]: the positions t whose next-token loss (predicting tokens[:, t+1]) counts."""
    docs: torch.Tensor
    """LongTensor [B]: the document (prompt or story) index of each row, from 0."""


def feature_delta(sae: Any, x: torch.Tensor, acts: torch.Tensor, features: list[int]) -> torch.Tensor:
    """What the features ``features`` add to the SAE's output at the activations ``x`` ([..., d_in], flattened as
    the SAE reads them), given their activations ``acts`` ([..., len(features)]): decode(f) - decode(f without
    them), with SAE-Lens's decoder-norm rescaling and run-time output normalisation applied as its decode does."""
    import torch

    x = x.to(sae.dtype)
    if not features:
        return torch.zeros_like(x)
    acts = acts.to(sae.dtype)
    rows = sae.W_dec[features]
    if getattr(sae.cfg, "rescale_acts_by_decoder_norm", False):  # TopK SAEs: as act_times_W_dec scales them
        acts = acts * (1 / rows.norm(dim=-1))
    delta = acts @ rows if len(features) > 1 else acts * rows[0]
    norm = sae.cfg.normalize_activations
    # SAE-Lens's run_time_activation_norm_fn_out; every other setting decodes without a run-time map.
    if norm == "constant_norm_rescale":
        delta = delta / ((sae.cfg.d_in**0.5) / x.norm(dim=-1, keepdim=True))
    elif norm == "layer_norm":
        delta = delta * (x - x.mean(dim=-1, keepdim=True)).std(dim=-1, keepdim=True)
    return delta


def splice_hook(sae: Any, features: list[int]) -> Callable[..., torch.Tensor]:
    """A TransformerLens hook function for the SAE's hook that removes ``features`` from the activations (the
    reconstruction error kept): for ``model.run_with_hooks(tokens, fwd_hooks=[(hook_name, splice_hook(sae, [i]))])``.
    With no features it returns the activations unchanged."""

    def hook(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
        flat = x.flatten(2) if x.ndim == 4 else x  # attention heads, as SAE-Lens flattens them
        acts = sae.encode(flat)[..., features]
        return x - feature_delta(sae, flat, acts, features).reshape(x.shape).to(x.dtype)

    return hook


def ablate(
    model: HookedTransformer,
    sae: Any,
    hook_name: str,
    batches: list[AblationBatch],
    features: list[int],
    top_tokens: int = 10,
) -> dict[int, dict[str, Any]]:
    """Per feature, what removing it does to the next-token loss on each side (pooled over positions and per
    document) and which next tokens lose most log-probability. One clean forward per batch, then one per feature
    that fires in the batch (where it fires nowhere, removing it changes nothing). Runs in the model's precision;
    a caller's torch.autocast applies."""
    import torch

    _check(model, sae, hook_name, batches, features)
    sides = list(dict.fromkeys(name for batch in batches for name in batch.sides))
    n_docs = max((int(b.docs.max()) + 1 for b in batches if b.docs.numel()), default=0)
    device = model.cfg.device
    totals = _Totals(sides, len(features), n_docs, model.cfg.d_vocab, device)
    start = _start_layer(hook_name)
    with torch.inference_mode():
        for batch in batches:
            if batch.tokens.shape[1] < 2 or not features:
                continue  # no position has a next token
            tokens = batch.tokens.to(device)
            masks = {s: m[:, :-1].to(device) for s, m in batch.sides.items()}  # position T-1 predicts nothing
            docs, next_ids = batch.docs.to(device), tokens[:, 1:]
            totals.add_positions(masks, docs, next_ids)
            stream = tokens if start is None else model(tokens, stop_at_layer=start, padding_side="right")
            seen: list[torch.Tensor] = []
            clean = _next_token_nll(_forward(model, stream, start, hook_name, _capture(seen)), tokens)
            x = seen[0]
            flat = x.flatten(2) if x.ndim == 4 else x  # attention heads, as SAE-Lens flattens them
            acts = sae.encode(flat)[..., features]
            for j, feature in enumerate(features):
                if not acts[..., j].any():
                    continue  # x - 0 == x: the ablated pass would be the clean one, bit for bit
                delta = feature_delta(sae, flat, acts[..., j : j + 1], [feature]).reshape(x.shape).to(x.dtype)
                ablated = _next_token_nll(_forward(model, stream, start, hook_name, _subtract(delta)), tokens)
                totals.add_feature(j, masks, docs, next_ids, ablated - clean, acts[:, :-1, j] != 0)
    return {f: totals.result(j, top_tokens, model.tokenizer) for j, f in enumerate(features)}


def _forward(model: Any, stream: torch.Tensor, start: int | None, hook_name: str, hook: Any) -> torch.Tensor:
    """Logits from the hook's block on (from the tokens when the hook is outside the blocks); the padding
    setting keeps TransformerLens from masking BOS tokens as left padding."""
    return model.run_with_hooks(
        stream, start_at_layer=start, fwd_hooks=[(hook_name, hook)], return_type="logits", padding_side="right"
    )


def _capture(seen: list[torch.Tensor]) -> Callable[..., None]:
    def hook(x: torch.Tensor, hook: Any = None) -> None:
        seen.append(x)

    return hook


def _subtract(delta: torch.Tensor) -> Callable[..., torch.Tensor]:
    def hook(x: torch.Tensor, hook: Any = None) -> torch.Tensor:
        return x - delta

    return hook


def _check(model: Any, sae: Any, hook_name: str, batches: list[AblationBatch], features: list[int]) -> None:
    """Clear errors for inputs that would otherwise fail deep in a forward pass, or be counted wrongly."""
    import torch

    if hook_name not in model.hook_dict:
        raise ValueError(f"hook_name={hook_name!r}: the model has no such hook")
    d_sae = sae.cfg.d_sae
    if bad := [f for f in features if not 0 <= f < d_sae]:
        raise ValueError(f"features {bad} are out of range: this SAE has {d_sae} (0-{d_sae - 1})")
    for n, batch in enumerate(batches):
        shape = tuple(batch.tokens.shape)
        if batch.tokens.ndim != 2 or batch.tokens.dtype.is_floating_point:
            raise ValueError(f"batch {n}: tokens must be an integer tensor [B, T], got {batch.tokens.dtype} {shape}")
        if tuple(batch.docs.shape) != shape[:1] or bool((batch.docs < 0).any()):
            raise ValueError(f"batch {n}: docs must hold one document index >= 0 per row ({shape[0]} rows)")
        for name, mask in batch.sides.items():
            if name == TOP_DROPPED:
                raise ValueError(f"batch {n}: a side may not be named {TOP_DROPPED!r} (the result's own key)")
            if tuple(mask.shape) != shape or mask.dtype != torch.bool:
                raise ValueError(f"batch {n}: side {name!r} must be a bool mask shaped like tokens {shape}")


def _start_layer(hook_name: str) -> int | None:
    """The block the hook is in: the clean and the ablated passes share the residual stream up to it."""
    from sae_lens.util import extract_layer_from_tlens_hook_name

    return extract_layer_from_tlens_hook_name(hook_name) if hook_name.startswith("blocks.") else None


def _next_token_nll(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Per position t < T-1, -log p(tokens[:, t+1]), in fp32: [B, T-1]."""
    logits = logits[:, :-1].float()
    return logits.logsumexp(-1) - logits.gather(-1, tokens[:, 1:, None]).squeeze(-1)


def _round(value: float) -> float:
    return float(f"{value:.6g}")


def _union(masks: dict[str, torch.Tensor]) -> torch.Tensor:
    import functools
    import operator

    return functools.reduce(operator.or_, masks.values())


class _Totals:
    """Running sums on the device, one row per feature, turned into the result at the end."""

    def __init__(self, sides: list[str], n_features: int, n_docs: int, vocab: int, device: Any) -> None:
        import torch

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=torch.float64, device=device)

        self.sides = sides
        self.tokens = {s: zeros(1) for s in sides}
        self.delta = {s: zeros(n_features) for s in sides}
        self.fires = {s: zeros(n_features) for s in sides}
        self.doc_tokens = {s: zeros(n_docs) for s in sides}
        self.doc_delta = {s: zeros(n_features, n_docs) for s in sides}
        self.vocab_count = zeros(vocab)
        self.vocab_delta = zeros(n_features, vocab)

    def add_positions(self, masks: dict[str, torch.Tensor], docs: torch.Tensor, next_ids: torch.Tensor) -> None:
        """One batch's counted positions, the same for every feature."""
        for side, mask in masks.items():
            self.tokens[side] += mask.sum()
            self.doc_tokens[side].index_add_(0, docs, mask.sum(1).double())
        if masks:
            ids = next_ids[_union(masks)]
            self.vocab_count.index_add_(0, ids, self.vocab_count.new_ones(ids.shape))

    def add_feature(
        self,
        j: int,
        masks: dict[str, torch.Tensor],
        docs: torch.Tensor,
        next_ids: torch.Tensor,
        delta: torch.Tensor,
        fires: torch.Tensor,
    ) -> None:
        """Feature j's loss change [B, T-1] on one batch, and where it fired."""
        for side, mask in masks.items():
            counted = delta.double() * mask
            self.delta[side][j] += counted.sum()
            self.doc_delta[side][j].index_add_(0, docs, counted.sum(1))
            self.fires[side][j] += (fires & mask).sum()
        if masks:
            union = _union(masks)
            self.vocab_delta[j].index_add_(0, next_ids[union], -delta[union].double())

    def result(self, j: int, top_tokens: int, tokenizer: Any) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {}
        for side in self.sides:
            n, has = int(self.tokens[side].item()), self.doc_tokens[side] > 0
            doc_mean = self.doc_delta[side][j][has] / self.doc_tokens[side][has]
            out[side] = {
                "tokens": n,
                "mean_delta_loss": _round(self.delta[side][j].item() / n) if n else None,
                "prompts": int(has.sum()),
                "prompt_mean_delta_loss": _round(doc_mean.mean().item()) if doc_mean.numel() else None,
                "prompts_loss_up": int((doc_mean > 0).sum()),
                "fires_tokens": int(self.fires[side][j].item()),
            }
        seen = self.vocab_count > 0
        mean = torch.where(seen, self.vocab_delta[j] / self.vocab_count.clamp(min=1), torch.inf)
        order = torch.argsort(mean)[: max(0, top_tokens)]
        out[TOP_DROPPED] = [
            {
                "token": tokenizer.decode([t]) if tokenizer is not None else str(t),
                "id": t,
                "count": int(self.vocab_count[t].item()),
                "mean_delta_logprob": _round(mean[t].item()),
            }
            for t in order.tolist()
            if mean[t] < 0  # only tokens whose log-probability fell
        ]
        return out
