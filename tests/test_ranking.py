"""The firing statistics behind features.json and the index: counts that add up over batches and stay exact, and the
strongest prompt tokens kept across batches of any size."""

from __future__ import annotations

import pytest
import torch

from container_src.ranking import FeatureStats, rank
from container_src.snippets import top_snippets

EXACT_FLOAT32 = 2**24  # float32 holds every integer up to here, and not 2**24 + 1


def test_counts_add_up_over_batches_and_stay_exact_past_float32s_integers() -> None:
    """docs/viz.md: "the token-level columns as before (`score`, `freq_prompts`, `freq_stories`"
    Tokens and fires are counted in integers and activations summed in float64, over every batch: 2**24 + 1 story
    tokens in two batches and a prompt activation of 1e8 beside 1.0 (which a float32 sum would lose) come out exact.
    """
    stats = FeatureStats(2, ["control", "refusal"], top_k=0, device="cpu")
    stories = torch.zeros(EXACT_FLOAT32, 2)
    stories[:, 0] = 1.0  # feature 0 fires on every story token
    stories[: EXACT_FLOAT32 - 1, 1] = 1.0  # feature 1 on all but one of the first batch's
    stats.add(stories, torch.zeros(EXACT_FLOAT32, dtype=torch.long))
    stats.add(torch.tensor([[1.0, 0.0]]), torch.zeros(1, dtype=torch.long))
    stats.add(torch.tensor([[1e8, 0.0], [1.0, 0.0]]), torch.ones(2, dtype=torch.long))
    by_id = {r["feature"]: r for r in rank(stats)}
    assert by_id[0]["fires_stories"] == EXACT_FLOAT32 + 1
    assert by_id[0]["freq_stories"] == 1.0 and by_id[0]["mean_act_stories"] == 1.0
    assert by_id[1]["fires_stories"] == EXACT_FLOAT32 - 1
    assert by_id[1]["freq_stories"] == pytest.approx((EXACT_FLOAT32 - 1) / (EXACT_FLOAT32 + 1), rel=1e-12, abs=0)
    assert by_id[0]["mean_act_prompts"] == 50_000_000.5  # (1e8 + 1) / 2
    assert by_id[0]["categories"]["refusal"]["mean_act"] == 50_000_000.5


def test_one_category_with_a_single_prompt_token_is_ranked() -> None:
    """docs/viz.md: "per category `freq`/`mean_act`/`score`"
    One category is enough to rank, and one token's mean activation is that token's."""
    stats = FeatureStats(2, ["control", "refusal"], top_k=1, device="cpu")
    stats.add(torch.tensor([[0.0, 1.0]] * 4), torch.zeros(4, dtype=torch.long))
    stats.add(torch.tensor([[3.0, 0.0]]), torch.ones(1, dtype=torch.long), torch.tensor([0]))
    rows = rank(stats)
    assert [r["feature"] for r in rows] == [0, 1]
    assert rows[0]["mean_act_prompts"] == 3.0 and rows[0]["categories"]["refusal"]["mean_act"] == 3.0
    assert rows[0]["freq_prompts"] == 1.0 and rows[1]["mean_act_stories"] == 1.0


def test_strongest_prompt_tokens_are_kept_across_batches_smaller_than_top_k() -> None:
    """docs/viz.md: "up to `top_snippets` snippets from distinct prompts"
    Batches of two tokens, three kept per feature: the three strongest of all batches, with their positions, which
    index the prompt text."""
    stats = FeatureStats(4, ["control", "refusal"], top_k=3, device="cpu")
    stats.add(torch.ones(2, 4), torch.zeros(2, dtype=torch.long))
    values = torch.tensor(
        [[5.0, 0, 0, 0], [1.0, 0, 0, 0], [4.0, 0, 0, 0], [2.0, 0, 0, 0], [6.0, 0, 0, 0], [0.5, 0, 0, 0]]
    )
    for start in (0, 2, 4):
        stats.add(values[start : start + 2], torch.ones(2, dtype=torch.long), torch.arange(start, start + 2))
    assert stats.top_values[:, 0].tolist() == [6.0, 5.0, 4.0]
    assert stats.top_positions[:, 0].tolist() == [4, 0, 2]

    class Words:
        def decode(self, ids: list[int]) -> str:
            return "".join(f" w{i}" for i in ids)

    tokens, docs = torch.arange(6).reshape(1, 6), torch.tensor([[0, 0, 1, 1, 2, 2]])
    found = top_snippets(stats, tokens, docs, [{"id": "a"}, {"id": "b"}, {"id": "c"}], Words(), n=3)
    assert [(s["id"], s["activation"], s["token"]) for s in found[0]] == [
        ("c", 6.0, " w4"),
        ("a", 5.0, " w0"),
        ("b", 4.0, " w2"),
    ]
    assert found[1] == []  # a feature that never fired on a prompt has no snippet


def test_ranking_without_story_tokens_or_prompt_tokens_is_refused_with_the_reason() -> None:
    """Pins: viz cannot rank without both sides, and says so (not in the docs)."""
    for side in (0, 1):
        stats = FeatureStats(2, ["control", "refusal"], top_k=0, device="cpu")
        stats.add(torch.ones(3, 2), torch.full((3,), side))
        with pytest.raises(ValueError, match=r"^ranking needs tokens from both the prompts and the stories$"):
            rank(stats)
