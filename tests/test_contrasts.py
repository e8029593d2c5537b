"""Contrasts: the `contrasts` syntax and its checks, per-prompt rows with exact parts, evidence counted per prompt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from container_src.config import ConfigError
from container_src.contrast_stats import PART_ORDER, SideStats, plan, score_contrasts
from container_src.contrasts import Contrast, Filter, Selection, check_against, defaults, parse
from container_src.sequences import PromptRows, prompt_rows


def test_parse_reads_names_filters_parts_and_stories() -> None:
    """docs/viz.md: "A selection is space-separated terms: `COLUMN=V1,V2`, `COLUMN!=V1,V2`" """
    found = parse(
        "refusal_resp: category=refusal part=response vs category!=refusal part=response; "
        'narr: "category=official narrative",refusal censored=true vs stories;'
    )
    assert [c.name for c in found] == ["refusal_resp", "narr"]
    assert found[0].a == Selection("prompts", (Filter("category", ("refusal",)),), "response")
    assert found[0].b == Selection("prompts", (Filter("category", ("refusal",), negate=True),), "response")
    assert found[1].a.filters == (Filter("category", ("official narrative", "refusal")), Filter("censored", ("true",)))
    assert found[1].b.source == "stories" and all(c.user for c in found)
    assert parse("") == [] and parse(" ; ") == []


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("category=refusal vs stories", "has no name"),
        ("x: category=refusal", "exactly one ` vs `"),
        ("x: category vs stories", "'category' is not a term"),
        ("x: part=answer vs stories", "part must be one of prompt, question, response"),
        ("x: stories vs category=refusal", "the stories can only be the second"),
        ("x: part=question vs stories; x: part=response vs stories", "used twice"),
        ("x:  vs stories", "an empty side"),
    ],
)
def test_parse_names_what_is_wrong(spec: str, message: str) -> None:
    """docs/viz.md: "`NAME: SELECTION vs SELECTION`, several separated by `;`"; each mistake is named."""
    with pytest.raises(ConfigError, match="contrasts: ") as info:
        parse(spec)
    assert message in str(info.value)


def test_a_column_or_value_that_does_not_exist_lists_those_present() -> None:
    """docs/viz.md: "stops the run before the model loads (exit 2), listing the columns and their values" """
    present = {"category": ["official narrative", "refusal"], "censored": ["true"], "subject": ["m1"]}
    with pytest.raises(ConfigError) as info:
        check_against(parse("x: topic=a vs stories"), present)
    assert "column 'topic', which the prompts lack" in str(info.value)
    assert "category: official narrative, refusal; censored: true; subject: m1" in str(info.value)
    with pytest.raises(ConfigError) as info:
        check_against(parse("x: category=refusal,deflection vs stories"), present)
    assert "has no value 'deflection'; values present: official narrative, refusal" in str(info.value)
    check_against(parse("x: category=refusal part=response vs censored!=true"), present)  # all present: no error


def test_defaults_cover_topic_categories_censorship_and_parts() -> None:
    """docs/viz.md: "`censored=true` vs `censored=false` (only where both exist)"; the defaults' list in order."""
    present = {"category": ["a", "b"], "censored": ["false", "true"]}
    names = [c.name for c in defaults(present, {"question": True, "response": True})]
    assert names == [
        "prompts_vs_stories",
        "category[a]_vs_others",
        "category[b]_vs_others",
        "censored_vs_uncensored",
        "response_vs_question",
        "response_vs_question[a]",
        "response_vs_question[b]",
    ]
    # all censored, parts unknown: the topic baseline and the categories only
    names = [
        c.name for c in defaults({"category": ["a", "b"], "censored": ["true"]}, {"question": False, "response": False})
    ]
    assert names == ["prompts_vs_stories", "category[a]_vs_others", "category[b]_vs_others"]


def test_each_prompt_is_its_own_row_with_exact_parts(tiny_assets: dict[str, Path]) -> None:
    """docs/viz.md: "A feature's activation on a prompt therefore never depends on another prompt" """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained("roneneldan/TinyStories-33M")
    question, response = "Why is the sky blue?", "I cannot answer that question."
    texts = [f"{question}\n\n{response}", "Only a question here"]
    spans = [
        {
            "question_start": 0,
            "question_end": len(question),
            "response_start": len(question) + 2,
            "response_end": len(texts[0]),
        },
        {"question_start": 0, "question_end": len(texts[1]), "response_start": -1, "response_end": -1},
    ]
    rows = prompt_rows(tokenizer, texts, spans, context_size=128, max_tokens=10_000)
    bos = tokenizer.bos_token_id
    longest = max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert rows.n_prompts == 2 and rows.tokens.shape[1] == longest + 1  # no wider than the longest prompt needs
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert rows.tokens[i, : len(ids) + 1].tolist() == [bos, *ids]  # BOS, then this prompt alone
        assert rows.tokens[i, len(ids) + 1 :].eq(bos).all() and not rows.parts["prompt"][i, len(ids) + 1 :].any()
        assert not any(rows.parts[p][i, 0] for p in PART_ORDER)  # BOS belongs to no part
        assert rows.docs[i].tolist() == [-1] + [i] * len(ids) + [-1] * (rows.tokens.shape[1] - 1 - len(ids))
    decode = lambda i, part: tokenizer.decode(rows.tokens[i][rows.parts[part][i]].tolist())  # noqa: E731
    assert decode(0, "question") == question and decode(0, "response").strip() == response
    # the blank line between them belongs to neither
    blank = rows.parts["prompt"][0] & ~rows.parts["question"][0] & ~rows.parts["response"][0]
    assert tokenizer.decode(rows.tokens[0][blank].tolist()).strip() == ""
    assert decode(1, "question") == texts[1] and not rows.parts["response"][1].any()
    # a cap cuts the last prompt taken, and the context cuts every prompt
    capped = prompt_rows(tokenizer, texts, spans, context_size=32, max_tokens=5)
    assert capped.n_prompts == 1 and int(capped.parts["prompt"].sum()) == 5
    short = prompt_rows(tokenizer, texts, spans, context_size=4, max_tokens=10_000)
    assert short.parts["prompt"].sum(1).tolist() == [3, 3]


def _rows(n: int, length: int) -> PromptRows:
    """``n`` prompts of ``length`` tokens after BOS: the first half of each its question, the rest its response."""
    context = length + 1
    prompt = torch.zeros(n, context, dtype=torch.bool)
    prompt[:, 1:] = True
    question = torch.zeros_like(prompt)
    question[:, 1 : 1 + length // 2] = True
    docs = torch.where(prompt, torch.arange(n).unsqueeze(1), torch.tensor(-1))
    return PromptRows(
        torch.zeros(n, context, dtype=torch.long),
        docs,
        {"prompt": prompt, "question": question, "response": prompt & ~question},
    )


def _feed(stats: SideStats, rows: PromptRows, feats: torch.Tensor) -> None:
    parts = torch.stack([rows.parts[p] for p in PART_ORDER], dim=1).float()
    for start in range(0, rows.n_prompts, 7):  # in batches, as viz runs them
        end = min(start + 7, rows.n_prompts)
        stats.add_prompts(feats[start:end], torch.arange(start, end), parts[start:end])


def test_many_prompts_outrank_many_tokens_of_one_prompt() -> None:
    """docs/viz.md: "ranks below one that fires on a few tokens of each of many prompts"
    Feature 0 fires on every token of ONE refusal prompt (40 tokens); feature 1 on 2 tokens of each of 15 of the
    20 refusal prompts (30 tokens): 1 ranks first by the per-prompt score, though 0 has more tokens."""
    n, length = 40, 40
    rows = _rows(n, length)
    columns = [{"category": "refusal" if i < 20 else "other"} for i in range(n)]
    contrast = Contrast(
        "refusal",
        Selection(filters=(Filter("category", ("refusal",)),)),
        Selection(filters=(Filter("category", ("refusal",), negate=True),)),
    )
    layout = plan([contrast], columns, rows, story_docs=0, story_tokens=0, min_prompts=5)
    assert layout.contrasts[0]["a"]["prompts"] == 20 and layout.contrasts[0]["a"]["tokens"] == 20 * length
    feats = torch.zeros(n, length + 1, 3)
    feats[3, 1:, 0] = 1.0
    feats[:15, 5:7, 1] = 0.5
    feats[0, 0, 2] = 9.0  # on BOS only: never counted
    stats = SideStats(layout, 3, "cpu")
    _feed(stats, rows, feats)
    figures = score_contrasts(stats)["refusal"]
    assert 2 not in figures  # fired on no counted token
    assert figures[0]["prompts_fired_a"] == 1 and figures[0]["tokens_fired_a"] == 40
    assert figures[1]["prompts_fired_a"] == 15 and figures[1]["tokens_fired_a"] == 30
    assert figures[1]["prompts_a"] == figures[1]["prompts_b"] == 20 and figures[1]["prompts_fired_b"] == 0
    assert figures[1]["rank"] == 1 and figures[0]["rank"] == 2
    assert figures[1]["score"] > 0 > figures[0]["score"]
    assert figures[0]["token_score"] > figures[1]["token_score"]  # the token count says the opposite


def test_parts_and_skipped_sides() -> None:
    """docs/viz.md: "A side with fewer than `min_prompts` (default 5) prompts"
    Response tokens against question tokens of the same prompts; a side with too few prompts is skipped, its
    reason given."""
    n, length = 10, 8
    rows = _rows(n, length)
    columns = [{"category": "a" if i < 8 else "b"} for i in range(n)]
    wanted = [
        Contrast("resp", Selection(part="response"), Selection(part="question")),
        Contrast("b_only", Selection(filters=(Filter("category", ("b",)),)), Selection(source="stories")),
    ]
    layout = plan(wanted, columns, rows, story_docs=3, story_tokens=300, min_prompts=5)
    assert layout.contrasts[0]["skipped"] is None
    assert layout.contrasts[0]["a"] == {"selection": "part=response", "prompts": 10, "tokens": 40, "unit": "prompts"}
    assert "side a (category=b) has 2 prompts with tokens, fewer than min_prompts=5" in layout.contrasts[1]["skipped"]
    feats = torch.zeros(n, length + 1, 1)
    feats[:, 6, 0] = 1.0  # a response token of every prompt
    stats = SideStats(layout, 1, "cpu")
    _feed(stats, rows, feats)
    out = score_contrasts(stats)
    assert set(out) == {"resp"}
    assert out["resp"][0]["prompts_fired_a"] == 10 and out["resp"][0]["prompts_fired_b"] == 0


def test_story_documents_cut_across_batches_count_once() -> None:
    """docs/viz.md: "counts the prompts (story documents for the stories) the feature fires on" """
    layout = plan([Contrast("p", Selection(), Selection(source="stories"))], [{}], _rows(1, 4), 3, 9, 1)
    stats = SideStats(layout, 2, "cpu")
    fired = torch.tensor([[1.0, 0], [0, 0], [1, 0], [0, 1]])
    stats.add_stories(fired[:2], torch.tensor([0, 1]))
    stats.add_stories(fired[2:], torch.tensor([1, 2]))  # document 1 goes on: feature 0 fires on it once more
    stories = layout.sides.index(Selection(source="stories"))
    assert stats.docs_fired[stories].tolist() == [2.0, 1.0] and stats.tokens_fired[stories].tolist() == [2.0, 1.0]
