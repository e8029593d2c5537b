"""Each prompt as its own sequence: BOS, then the prompt, cut at the context size, padded with BOS. So a feature's
activation on a prompt never depends on another prompt, and each token's part (question or response) is known
exactly from the tokenizer's character offsets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PART_SPANS = {
    "question": ("question_start", "question_end"),
    "response": ("response_start", "response_end"),
    "thought": ("thought_start", "thought_end"),
}


@dataclass(frozen=True)
class PromptRows:
    """``tokens`` [n, context]; ``docs`` the row's prompt index on its prompt's tokens, -1 on BOS and padding;
    ``parts`` per part (prompt, question, response, thought) which positions belong to it."""

    tokens: torch.Tensor
    docs: torch.Tensor
    parts: dict[str, torch.Tensor]

    @property
    def n_prompts(self) -> int:
        return int(self.tokens.shape[0])


def _part_of(offsets: list[tuple[int, int]], start: int, end: int) -> list[bool]:
    """A token belongs to a part when its character range lies inside the part's span (unknown span: none do)."""
    if start < 0 or end < 0:
        return [False] * len(offsets)
    return [start <= a and b <= end and b > a for a, b in offsets]


def prompt_rows(
    tokenizer: Any, texts: list[str], spans: Sequence[Mapping[str, int]], context_size: int, max_tokens: int
) -> PromptRows:
    """One row per prompt, in order, until ``max_tokens`` prompt tokens (the last prompt taken may be cut). Rows are
    as wide as the longest prompt taken needs (at most ``context_size``): padding would cost model time for nothing."""
    import torch

    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    rows_tokens: list[list[int]] = []
    rows_parts: dict[str, list[list[bool]]] = {"prompt": [], **{part: [] for part in PART_SPANS}}
    taken = 0
    for start in range(0, len(texts), 256):
        if taken >= max_tokens:
            break
        chunk = texts[start : start + 256]
        encoded = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
        for i, (ids, offsets) in enumerate(zip(encoded["input_ids"], encoded["offset_mapping"], strict=True)):
            keep = min(len(ids), context_size - 1, max_tokens - taken)
            if keep <= 0:
                break
            rows_tokens.append([bos, *ids[:keep]])
            rows_parts["prompt"].append([False] + [True] * keep)
            span, kept = spans[start + i], [tuple(o) for o in offsets[:keep]]
            for part, (lo, hi) in PART_SPANS.items():  # a part the prompt lacks (no thought, say) is -1, -1
                rows_parts[part].append([False, *_part_of(kept, span.get(lo, -1), span.get(hi, -1))])
            taken += keep
    n, width = len(rows_tokens), max(map(len, rows_tokens), default=1)
    tokens = torch.tensor([r + [bos] * (width - len(r)) for r in rows_tokens], dtype=torch.long).view(n, width)
    parts = {
        p: torch.tensor([r + [False] * (width - len(r)) for r in m], dtype=torch.bool).view(n, width)
        for p, m in rows_parts.items()
    }
    docs = torch.where(parts["prompt"], torch.arange(n).unsqueeze(1), torch.tensor(-1))
    return PromptRows(tokens, docs, parts)


def pad_to(tokens: torch.Tensor, width: int) -> torch.Tensor:
    """Rows padded with their own first token (BOS) to ``width``: the dashboards read prompts and stories together."""
    import torch

    pad = tokens[:, :1].expand(-1, width - tokens.shape[1])
    return torch.cat([tokens, pad], dim=1)
