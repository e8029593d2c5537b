"""Each prompt as its own sequence: BOS, then the prompt, cut at the context size, padded with BOS. So a feature's
activation on a prompt never depends on another prompt, and each token's part (question or response) is known
exactly from the tokenizer's character offsets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

PART_SPANS = {"question": ("question_start", "question_end"), "response": ("response_start", "response_end")}


@dataclass(frozen=True)
class PromptRows:
    """``tokens`` [n, context]; ``docs`` the row's prompt index on its prompt's tokens, -1 on BOS and padding;
    ``parts`` per part (prompt, question, response) which positions belong to it."""

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
    """One row per prompt, in order, until ``max_tokens`` prompt tokens (the last prompt taken may be cut)."""
    import torch

    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    rows_tokens: list[list[int]] = []
    rows_parts: dict[str, list[list[bool]]] = {"prompt": [], "question": [], "response": []}
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
            pad = context_size - 1 - keep
            rows_tokens.append([bos, *ids[:keep]] + [bos] * pad)
            rows_parts["prompt"].append([False] + [True] * keep + [False] * pad)
            span = spans[start + i]
            for part, (lo, hi) in PART_SPANS.items():
                inside = _part_of([tuple(o) for o in offsets[:keep]], span[lo], span[hi])
                rows_parts[part].append([False, *inside] + [False] * pad)
            taken += keep
    n = len(rows_tokens)
    tokens = torch.tensor(rows_tokens, dtype=torch.long).view(n, context_size)
    parts = {p: torch.tensor(m, dtype=torch.bool).view(n, context_size) for p, m in rows_parts.items()}
    docs = torch.where(parts["prompt"], torch.arange(n).unsqueeze(1), torch.tensor(-1))
    return PromptRows(tokens, docs, parts)
