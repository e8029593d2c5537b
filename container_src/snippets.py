"""Prompt text around a feature's strongest activations, for the index and the tables."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from container_src.ranking import FeatureStats

SNIPPET_BEFORE, SNIPPET_AFTER = 12, 4


def snippet(tokenizer: Any, tokens: list[int], docs: list[int], pos: int) -> dict[str, str]:
    """The text around token ``pos`` within its document, split into before, token and after. Byte-level BPE can cut
    a character (Chinese text often is) into several tokens: the token's span is widened to whole characters."""
    doc = docs[pos]
    first = pos
    while first > 0 and pos - first < SNIPPET_BEFORE and docs[first - 1] == doc:
        first -= 1
    end = pos + 1
    while end < len(docs) and end - pos <= SNIPPET_AFTER and docs[end] == doc:
        end += 1
    lo, hi = pos, pos + 1
    for extra in range(1, 7):  # a UTF-8 character is at most 4 bytes: take the narrowest whole span around pos
        if "\ufffd" not in tokenizer.decode(tokens[lo:hi]):
            break
        spans = [(pos - left, pos + 1 + extra - left) for left in range(extra + 1)]
        clean = [(a, b) for a, b in spans if a >= first and b <= end and "\ufffd" not in tokenizer.decode(tokens[a:b])]
        if clean:
            lo, hi = clean[0]
            break
    before = tokenizer.decode(tokens[first:lo]).lstrip("\ufffd")
    token, after = tokenizer.decode(tokens[lo:hi]), tokenizer.decode(tokens[hi:end]).rstrip("\ufffd")
    return {"before": before, "token": token, "after": after, "text": f"{before}[[{token}]]{after}"}


def top_snippets(
    stats: FeatureStats, tokens: torch.Tensor, docs: torch.Tensor, meta: list[dict[str, Any]], tokenizer: Any, n: int
) -> dict[int, list[dict[str, Any]]]:
    """Per feature, up to ``n`` distinct prompts where it fires most, with the text around the strongest token."""
    flat_tokens, flat_docs = tokens.flatten().tolist(), docs.flatten().tolist()
    values, positions = stats.top_values.cpu(), stats.top_positions.cpu()
    out: dict[int, list[dict[str, Any]]] = {}
    for feature in range(values.shape[1]):
        seen: set[int] = set()
        found = []
        for value, pos in zip(values[:, feature].tolist(), positions[:, feature].tolist(), strict=True):
            if value <= 0 or pos < 0 or len(found) == n:
                break
            doc = flat_docs[pos]
            if doc in seen:
                continue
            seen.add(doc)
            text = snippet(tokenizer, flat_tokens, flat_docs, pos)
            found.append({**meta[doc], "activation": round(value, 4), **text})
        out[feature] = found
    return out
