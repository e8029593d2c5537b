"""What viz reads, tokenised: each prompt in a row of its own (its category and parts known), the stories packed as
in training, and every contrast's sizes."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from container_src import contrast_stats, contrasts, data
from container_src.config import VizConfig
from container_src.prompts import SPAN_COLUMNS, categories, prompt_ids
from container_src.ranking import STORIES
from container_src.sequences import PromptRows, prompt_rows

if TYPE_CHECKING:
    import torch
    from datasets import Dataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Corpus:
    """Each prompt in a row of its own, the stories packed as in training; every prompt token knows its prompt,
    category and part."""

    rows: PromptRows
    story_tokens: torch.Tensor
    story_docs: torch.Tensor
    prompt_meta: list[dict[str, Any]]
    groups: list[str]
    """STORIES, then the categories, sorted: by position, so a category may even be called "control"."""
    doc_group: torch.Tensor
    """Per prompt, the index of its category in ``groups``."""
    by_category: dict[str, dict[str, int]]
    context_size: int
    columns: list[dict[str, str]]
    """Per prompt row, its column values as contrasts name them."""
    plan: contrast_stats.Plan

    @property
    def prompt_tokens(self) -> torch.Tensor:
        return self.rows.tokens

    @property
    def prompt_docs(self) -> torch.Tensor:
        return self.rows.docs


def _prompts_by_category(names: list[str], docs: Any) -> dict[str, dict[str, int]]:
    """Per category (sorted), how many of its prompts have tokens in ``docs`` (indices into ``names``, -1 for
    padding) and how many it has."""
    used = set((docs[docs >= 0]).unique().tolist())
    counts: dict[str, dict[str, int]] = {c: {"used": 0, "of": 0} for c in sorted(set(names))}
    for i, name in enumerate(names):
        counts[name]["of"] += 1
        counts[name]["used"] += i in used
    return counts


def pack_corpus(
    cfg: VizConfig,
    prompts: Dataset,
    stories: Iterable[dict[str, Any]],
    wanted: list[contrasts.Contrast],
    tokenizer: Any,
    context_size: int,
) -> Corpus:
    """Each prompt in its own row, in a seeded random order, so that a prompt_tokens cap takes a fair sample of the
    categories rather than the first rows; the stories packed as in training; every contrast's sizes."""
    import torch

    prompts = prompts.shuffle(seed=cfg.seed, keep_in_memory=True)
    cats = categories(prompts)
    prompt_meta = [{"prompt_id": i, "category": c} for i, c in zip(prompt_ids(prompts), cats, strict=True)]
    groups = [STORIES, *sorted(set(cats))]
    group_of = {c: i for i, c in enumerate(groups[1:], start=1)}
    spans: list[dict[str, int]] = [
        dict(zip(SPAN_COLUMNS, v, strict=True)) for v in zip(*(prompts[c] for c in SPAN_COLUMNS), strict=True)
    ]
    rows = prompt_rows(tokenizer, prompts["text"], spans, context_size, cfg.prompt_tokens)
    s_tokens, s_docs = data.pack_documents(tokenizer, (row["text"] for row in stories), context_size, cfg.story_tokens)
    doc_group = torch.tensor([group_of[m["category"]] for m in prompt_meta], dtype=torch.long)
    logger.info(
        "tokens: %d from %d of %d prompts (one row each), %d from stories; context %d",
        int(rows.parts["prompt"].sum()),
        rows.n_prompts,
        len(prompt_meta),
        int((s_docs >= 0).sum()),
        context_size,
    )
    by_category = _prompts_by_category(cats, rows.docs)
    for name, used in by_category.items():
        if used["used"] == 0:
            logger.warning(
                "category %r: none of its %d prompts fit in prompt_tokens=%d, so it has no scores; "
                "raise prompt_tokens to include it",
                name,
                used["of"],
                cfg.prompt_tokens,
            )
    values = {
        c: [contrasts.value_text(v) for v in prompts[c][: rows.n_prompts]] for c in contrasts.column_values(prompts)
    }
    columns = [dict(zip(values, v, strict=True)) for v in zip(*values.values(), strict=True)]
    plan = contrast_stats.plan(
        wanted,
        columns,
        rows,
        int(s_docs.max()) + 1 if s_docs.numel() else 0,
        int((s_docs >= 0).sum()),
        cfg.min_prompts,
    )
    return Corpus(rows, s_tokens, s_docs, prompt_meta, groups, doc_group, by_category, context_size, columns, plan)
