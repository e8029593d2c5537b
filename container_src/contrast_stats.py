"""Per contrast side, each feature's evidence counted both ways: on how many distinct prompts (story documents for
the stories) it fires, out of how many, and on how many tokens; and each contrast's prompt-level score."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from container_src.contrasts import STORIES_SOURCE, Contrast, Selection, members
from container_src.ranking import rounded, score

if TYPE_CHECKING:
    import torch

    from container_src.sequences import PromptRows

logger = logging.getLogger(__name__)
PART_ORDER = ("prompt", "question", "response")


@dataclass(frozen=True)
class Plan:
    """The distinct sides of the contrasts that run (``sides``), each contrast's sizes, and why any is skipped."""

    sides: list[Selection]
    membership: torch.Tensor
    """[sides, prompts] float: 1 where a prompt is in a prompts side and has tokens of its part."""
    docs: list[int]
    tokens: list[int]
    contrasts: list[dict[str, Any]]
    """What summary.json lists: per contrast its name, each side's selection and sizes, and ``skipped`` (a reason)."""
    pairs: list[tuple[int, int]]
    """Per contrast, the indices of its two sides in ``sides``."""


def plan(
    contrasts: list[Contrast],
    rows: list[dict[str, str]],
    prompt_rows: PromptRows,
    story_docs: int,
    story_tokens: int,
    min_prompts: int,
) -> Plan:
    """Sizes of every side before any model runs; a contrast with a side under ``min_prompts`` prompts is skipped."""
    import torch

    part_tokens = {p: prompt_rows.parts[p].sum(1) for p in PART_ORDER}
    sides: list[Selection] = []
    member_rows: list[torch.Tensor] = []
    sizes: dict[Selection, tuple[int, int]] = {}
    out, pairs = [], []
    for contrast in contrasts:
        entry: dict[str, Any] = {"name": contrast.name, "user": contrast.user, "skipped": None}
        for label, side in (("a", contrast.a), ("b", contrast.b)):
            if side not in sizes:
                if side.source == STORIES_SOURCE:
                    sizes[side] = (story_docs, story_tokens)
                    member = torch.zeros(prompt_rows.n_prompts)
                else:
                    tokens = part_tokens[side.part]
                    member = torch.tensor(members(side, rows), dtype=torch.bool) & (tokens > 0)
                    sizes[side] = (int(member.sum()), int(tokens[member].sum()))
                sides.append(side)
                member_rows.append(member.float())
            n_docs, n_tokens = sizes[side]
            unit = "story documents" if side.source == STORIES_SOURCE else "prompts"
            entry[label] = {"selection": str(side), "prompts": n_docs, "tokens": n_tokens, "unit": unit}
            if entry["skipped"] is None and n_docs < min_prompts:
                entry["skipped"] = (
                    f"side {label} ({side}) has {n_docs} {unit} with tokens, fewer than min_prompts={min_prompts}"
                )
        if entry["skipped"]:
            logger.warning("contrast %s skipped: %s", contrast.name, entry["skipped"])
        out.append(entry)
        pairs.append((sides.index(contrast.a), sides.index(contrast.b)))
    membership = torch.stack(member_rows) if member_rows else torch.zeros(0, prompt_rows.n_prompts)
    docs = [sizes[s][0] for s in sides]
    return Plan(sides, membership, docs, [sizes[s][1] for s in sides], out, pairs)


class SideStats:
    """Running per-side, per-feature counts: prompts (documents) fired on, tokens fired on, activation sums."""

    def __init__(self, plan: Plan, d_sae: int, device: str) -> None:
        import torch

        n = len(plan.sides)
        self.plan = plan
        self.membership = plan.membership.to(device)
        self.part_index = torch.tensor([PART_ORDER.index(s.part) for s in plan.sides], device=device)
        self.stories = [i for i, s in enumerate(plan.sides) if s.source == STORIES_SOURCE]
        self.docs_fired = torch.zeros(n, d_sae, dtype=torch.float64, device=device)
        self.tokens_fired = torch.zeros(n, d_sae, dtype=torch.float64, device=device)
        self.act_sum = torch.zeros(n, d_sae, dtype=torch.float64, device=device)
        self._last_story: tuple[int, torch.Tensor] | None = None

    def add_prompts(self, feats: torch.Tensor, rows: torch.Tensor, parts: torch.Tensor) -> None:
        """``feats`` [B, T, d_sae] of prompt rows ``rows`` [B]; ``parts`` [B, 3, T] float masks in PART_ORDER."""
        fired = (feats > 0).float()
        fires = parts @ fired  # [B, 3, d_sae]: per row and part, the tokens a feature fires on
        acts = parts @ feats
        weights = self.membership[:, rows]  # [sides, B]
        for p in range(len(PART_ORDER)):
            on = (self.part_index == p).nonzero().flatten()
            if on.numel() == 0:
                continue
            w = weights[on]
            self.tokens_fired[on] += (w @ fires[:, p]).double()
            self.docs_fired[on] += (w @ (fires[:, p] > 0).float()).double()
            self.act_sum[on] += (w @ acts[:, p]).double()

    def add_stories(self, feats: torch.Tensor, docs: torch.Tensor) -> None:
        """Story tokens ``feats`` [N, d_sae] (BOS and padding left out) of documents ``docs`` [N], in stream order: a
        document cut across batches is counted once."""
        import torch

        if not self.stories or feats.shape[0] == 0:
            return
        fired = feats > 0
        unique, inverse = docs.unique(sorted=True, return_inverse=True)
        per_doc = torch.zeros(unique.numel(), feats.shape[1], device=feats.device).index_add_(0, inverse, fired.float())
        per_doc = per_doc > 0
        new_docs = per_doc.sum(0).double()
        if self._last_story is not None and int(unique[0]) == self._last_story[0]:
            new_docs -= (per_doc[0] & self._last_story[1]).double()
            per_doc[0] |= self._last_story[1]
        self._last_story = (int(unique[-1]), per_doc[-1].clone())
        for i in self.stories:
            self.docs_fired[i] += new_docs
            self.tokens_fired[i] += fired.sum(0).double()
            self.act_sum[i] += feats.sum(0, dtype=torch.float64)


def score_contrasts(stats: SideStats) -> dict[str, dict[int, dict[str, Any]]]:
    """Per contrast that ran, per feature that fired on either side: the prompt-level score (ln of the 95% lower
    bound on the ratio of the shares of prompts it fires on), the token-level one, the counts, and its rank."""
    plan = stats.plan
    docs_fired, tokens_fired = stats.docs_fired.cpu().numpy(), stats.tokens_fired.cpu().numpy()
    act_sum = stats.act_sum.cpu().numpy()
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for entry, (a, b) in zip(plan.contrasts, plan.pairs, strict=True):
        if entry["skipped"]:
            continue
        n_a, n_b = plan.docs[a], plan.docs[b]
        t_a, t_b = plan.tokens[a], plan.tokens[b]
        prompt_score = score(docs_fired[a], n_a, docs_fired[b], n_b)
        token_score = score(tokens_fired[a], t_a, tokens_fired[b], t_b)
        live = ((docs_fired[a] + docs_fired[b]) > 0).nonzero()[0]
        figures = {}
        for f in live.tolist():
            figures[f] = {
                "score": rounded(float(prompt_score[f])),
                "prompts_fired_a": int(docs_fired[a, f]),
                "prompts_a": n_a,
                "prompts_fired_b": int(docs_fired[b, f]),
                "prompts_b": n_b,
                "tokens_fired_a": int(tokens_fired[a, f]),
                "tokens_fired_b": int(tokens_fired[b, f]),
                "token_score": rounded(float(token_score[f])),
                "mean_act_a": round(float(act_sum[a, f]) / max(t_a, 1), 6),
                "mean_act_b": round(float(act_sum[b, f]) / max(t_b, 1), 6),
            }
        order = sorted(figures, key=lambda f: (_key(figures[f]["score"]), _key(figures[f]["token_score"]), f))
        out[entry["name"]] = {f: {**figures[f], "rank": r} for r, f in enumerate(order, start=1)}
    return out


def _key(value: float | None) -> float:
    return float("inf") if value is None else -value
