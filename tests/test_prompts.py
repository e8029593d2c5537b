"""The prompts channel: loading, where question and response lie in each text, and the held-out split."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from container_src.config import ConfigError
from container_src.prompts import (
    HELDOUT_FILE,
    SPAN_COLUMNS,
    load_prompts,
    read_heldout,
    split_prompts,
    write_heldout,
)
from tests.conftest import SAMPLE_PROMPTS


def test_sample_prompts_load_with_text() -> None:
    """README: "`data/sample_prompts/` is a snapshot of the prompt collection (95 prompts" """
    before = sorted(p.name for p in SAMPLE_PROMPTS.iterdir())
    ds = load_prompts(SAMPLE_PROMPTS)
    assert sorted(p.name for p in SAMPLE_PROMPTS.iterdir()) == before  # the channel is never written to
    assert len(ds) == 95
    assert sorted(ds.column_names) == sorted(
        ["category", "censored", "id", "question", "response", "subject", "text", "timestamp", *SPAN_COLUMNS]
    )
    assert "\n\n" in ds[0]["text"]
    assert sorted(set(ds["category"])) == ["official narrative", "refusal"]


def test_prompt_text_built_from_question_and_response(tmp_path: Path) -> None:
    """docs/container.md: "or `question` and `response` (text = question, blank line, response)" """
    Dataset.from_dict(
        {"question": ["Q1?", "Q2?", "  "], "response": ["A1.", "", ""], "category": ["refusal"] * 3}
    ).save_to_disk(str(tmp_path / "p"))
    ds = load_prompts(tmp_path / "p")
    assert ds["text"] == ["Q1?\n\nA1.", "Q2?"]  # the row with neither is skipped


@pytest.mark.parametrize(
    ("dataset", "message"),
    [
        (Dataset.from_dict({"question": ["Q?"], "answer": ["A"]}), "no text column"),
        (
            Dataset.from_dict({"text": ["", "  "]}),
            "none has any text; export the collection again, or set prompt_ratio=0",
        ),
        (DatasetDict({"test": Dataset.from_dict({"text": ["x"]})}), "no 'train' split"),
        (Dataset.from_dict({"text": [1, 2]}), "column `text` holds int64"),
        (Dataset.from_dict({"question": ["q"], "response": [0.5]}), "column `response` holds float64"),
    ],
)
def test_malformed_prompts_name_the_channel(tmp_path: Path, dataset: Dataset | DatasetDict, message: str) -> None:
    """README: "2 a problem with the configuration or the inputs, with a message that names the key or the channel" """
    dataset.save_to_disk(str(tmp_path / "p"))
    with pytest.raises(ConfigError) as err:
        load_prompts(tmp_path / "p")
    assert "channel prompts" in str(err.value) and message in str(err.value)


def test_unreadable_channel_names_the_channel(tmp_path: Path) -> None:
    """docs/container.md: "a `datasets` `save_to_disk` folder with a `text` column"; anything else names the channel."""
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "notes.md").write_text("not a dataset")
    with pytest.raises(ConfigError, match="channel prompts: expected a datasets save_to_disk folder"):
        load_prompts(tmp_path / "p")
    (tmp_path / "p" / "state.json").write_text("{broken")
    with pytest.raises(ConfigError, match="channel prompts: could not read a dataset"):
        load_prompts(tmp_path / "p")


def test_spans_locate_question_and_response_exactly() -> None:
    """docs/viz.md: "against the exact spans the prompts channel records" """
    ds = load_prompts(SAMPLE_PROMPTS)
    raw = {r["id"]: r for r in Dataset.load_from_disk(str(SAMPLE_PROMPTS)).to_list()}
    for row in ds.to_list():
        text, source = row["text"], raw[row["id"]]
        assert text[row["question_start"] : row["question_end"]] == source["question"].strip()
        assert text[row["response_start"] : row["response_end"]] == source["response"].strip()
        assert row["question_end"] <= row["response_start"]


def test_spans_inside_a_templated_text_and_unknown_without_parts(tmp_path: Path) -> None:
    """docs/viz.md: "or none (a part the prompts do not record, say)"; the response is found after the question."""
    Dataset.from_dict(
        {
            "text": ["User: Why? It is so.\nAssistant: It is so.", "just text"],
            "question": ["Why? It is so.", None],
            "response": ["It is so.", None],
        }
    ).save_to_disk(str(tmp_path / "p"))
    first, second = load_prompts(tmp_path / "p").to_list()
    # the response is searched for after the question, not inside it
    assert first["text"][first["question_start"] : first["question_end"]] == "Why? It is so."
    assert (first["response_start"], first["response_end"]) == (32, 41)
    assert [second[c] for c in SPAN_COLUMNS] == [-1] * len(SPAN_COLUMNS)


def _prompts(categories: dict[str, int]) -> Dataset:
    cats = [c for c, n in categories.items() for _ in range(n)]
    return Dataset.from_dict({"id": [f"p{i}" for i in range(len(cats))], "text": ["x"] * len(cats), "category": cats})


def test_split_holds_out_each_category_share_seeded() -> None:
    """docs/train.md: "of each category's prompts is held out, seeded by `seed` and rounded per category" """
    prompts = load_prompts(SAMPLE_PROMPTS)
    split = split_prompts(prompts, 0.1, seed=42)
    assert sorted(split.train_rows + split.heldout_rows) == list(range(95))
    assert not set(split.train_rows) & set(split.heldout_rows)
    rows = prompts.to_list()
    held = Counter(rows[r]["category"] for r in split.heldout_rows)
    assert held == {"official narrative": 9}  # 10% of 91, rounded; 10% of the 4 refusals rounds to none
    assert split.record["per_category"] == {
        "official narrative": {"train": 82, "heldout": 9},
        "refusal": {"train": 4, "heldout": 0},
    }
    assert split.record["heldout_ids"] == [rows[r]["id"] for r in split.heldout_rows]
    assert split_prompts(prompts, 0.1, seed=42) == split
    assert split_prompts(prompts, 0.1, seed=7).heldout_rows != split.heldout_rows
    assert split_prompts(prompts, 0.0, seed=42).heldout_rows == []


def test_split_refuses_to_leave_a_category_untrained() -> None:
    """docs/train.md: "A fraction that would leave a category with no training prompts ends the run" """
    with pytest.raises(ConfigError, match=r"all 1 prompts of category 'refusal'.*lower the fraction"):
        split_prompts(_prompts({"official": 10, "refusal": 1}), 0.5, seed=1)


def test_split_without_ids_or_categories_uses_rows(caplog: pytest.LogCaptureFixture) -> None:
    """docs/train.md: "or a fraction too small to hold out any prompt, trains on every prompt with a warning" """
    prompts = Dataset.from_dict({"text": [f"t{i}" for i in range(20)]})
    split = split_prompts(prompts, 0.25, seed=3)
    assert len(split.heldout_rows) == 5 and split.record["id_column"] == "row number"
    assert split.record["heldout_ids"] == [str(r) for r in split.heldout_rows]
    with caplog.at_level(logging.WARNING):
        assert split_prompts(prompts, 0.01, seed=3).heldout_rows == []
    assert "holds out no prompt of 20" in caplog.text


def test_split_refuses_repeated_ids() -> None:
    """Pins: prompts whose ids repeat are refused before the split (not in the docs)"""
    prompts = Dataset.from_dict({"id": ["a", "a"], "text": ["x", "y"]})
    with pytest.raises(ConfigError, match="repeats ids"):
        split_prompts(prompts, 0.5, seed=1)


def test_heldout_record_round_trip(tmp_path: Path) -> None:
    """docs/train.md: "The held-out ids go to `model/heldout_prompts.json`"; a broken record is refused."""
    assert read_heldout(tmp_path) is None
    split = split_prompts(_prompts({"a": 10}), 0.2, seed=1)
    write_heldout(tmp_path, split)
    assert read_heldout(tmp_path) == json.loads(json.dumps(split.record))
    (tmp_path / HELDOUT_FILE).write_text("{broken")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_heldout(tmp_path)
