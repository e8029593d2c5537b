"""The ablation check in viz: for the top features of each contrast, what removing the feature does to the next-token
loss on each side of the contrast (ablation.ablate does the computation; this module picks the rows and positions)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from container_src.ablation import TOP_DROPPED, AblationBatch, ablate
from container_src.contrasts import STORIES_SOURCE

if TYPE_CHECKING:
    import torch

    from container_src.contrast_stats import Plan
    from container_src.sequences import PromptRows

logger = logging.getLogger(__name__)


def _next_positions(part: torch.Tensor) -> torch.Tensor:
    """The positions whose next token is in ``part``: the loss there is the loss of predicting that token."""
    import torch

    shifted = torch.zeros_like(part)
    shifted[:, :-1] = part[:, 1:]
    return shifted


def contrast_batches(
    plan: Plan, index: int, rows: PromptRows, story_tokens: torch.Tensor, story_docs: torch.Tensor, batch_size: int
) -> list[AblationBatch]:
    """Batches of the rows of contrast ``index``'s two sides, with sides ``a`` and ``b`` marking the positions whose
    next token is one of that side's tokens. Prompt rows are documents by prompt; story rows by row (a row packs
    several stories), numbered after the prompts."""
    import torch

    masks: list[torch.Tensor] = []
    tokens: list[torch.Tensor] = []
    docs: list[torch.Tensor] = []
    sides = [plan.sides[i] for i in plan.pairs[index]]
    prompt_masks = []
    for side, i in zip(sides, plan.pairs[index], strict=True):
        if side.source == STORIES_SOURCE:
            prompt_masks.append(torch.zeros_like(rows.parts["prompt"]))
        else:
            member = plan.membership[i].bool().unsqueeze(1)
            prompt_masks.append(_next_positions(rows.parts[side.part] & member))
    used = (prompt_masks[0] | prompt_masks[1]).any(1).nonzero().flatten()
    if used.numel():
        tokens.append(rows.tokens[used])
        docs.append(used)
        masks.append(torch.stack([m[used] for m in prompt_masks], dim=1))
    stories = [s.source == STORIES_SOURCE for s in sides]
    if any(stories) and story_tokens.numel():
        on = _next_positions(story_docs >= 0)
        tokens.append(story_tokens)
        docs.append(torch.arange(story_tokens.shape[0]) + rows.n_prompts)
        masks.append(torch.stack([on if s else torch.zeros_like(on) for s in stories], dim=1))
    # prompt rows and story rows differ in width: each source in batches of its own
    return [
        AblationBatch(
            tokens=t[s : s + batch_size],
            sides={"a": m[s : s + batch_size, 0], "b": m[s : s + batch_size, 1]},
            docs=d[s : s + batch_size],
        )
        for t, d, m in zip(tokens, docs, masks, strict=True)
        for s in range(0, t.shape[0], batch_size)
    ]


def ablate_contrasts(
    lm: Any,
    sae: Any,
    hook_name: str,
    plan: Plan,
    rankings: dict[str, list[int]],
    data: tuple[PromptRows, torch.Tensor, torch.Tensor],
    top: int,
    batch_size: int,
) -> tuple[dict[str, dict[int, dict[str, Any]]], dict[str, dict[str, int]]]:
    """Per contrast that ran, its ``top`` features' loss change on each side (``a``, ``b``) and the next tokens
    whose log-probability fell most (``top_dropped``); and per contrast, how many features were ablated over how
    many token positions (the work done)."""
    rows, story_tokens, story_docs = data
    out: dict[str, dict[int, dict[str, Any]]] = {}
    work: dict[str, dict[str, int]] = {}
    if top == 0:
        return out, work
    for index, entry in enumerate(plan.contrasts):
        features = rankings.get(entry["name"], [])[:top]
        if entry["skipped"] or not features:
            continue
        batches = contrast_batches(plan, index, rows, story_tokens, story_docs, batch_size)
        positions = sum(b.tokens.numel() for b in batches)
        stories = story_tokens.numel() if STORIES_SOURCE in (plan.sides[i].source for i in plan.pairs[index]) else 0
        work[entry["name"]] = {"features": len(features), "positions": positions, "story_positions": stories}
        logger.info("ablating %d features of contrast %s over %d batches", len(features), entry["name"], len(batches))
        found = ablate(lm, sae, hook_name, batches, features)
        out[entry["name"]] = {f: {"a": r["a"], "b": r["b"], TOP_DROPPED: r[TOP_DROPPED]} for f, r in found.items()}
    return out, work


def attach_ablations(rows: list[dict[str, Any]], found: dict[str, dict[int, dict[str, Any]]]) -> None:
    """Each contrast's figures of a feature get its ablation (None where it was not ablated)."""
    for row in rows:
        for name, figures in row["contrasts"].items():
            if figures is not None:
                figures["ablation"] = found.get(name, {}).get(row["feature"])
