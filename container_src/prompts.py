"""The prompts channel: each prompt's text as the model reads it, where its question and response lie in that text,
and the seeded, per-category split into training and held-out prompts that `train` writes beside the SAE."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from container_src import records
from container_src.config import ConfigError
from container_src.data import NO_CATEGORY, load_local

if TYPE_CHECKING:
    from datasets import Dataset

logger = logging.getLogger(__name__)

HELDOUT_FILE = "heldout_prompts.json"  # beside the SAE in model/: which prompts train never saw
SPAN_COLUMNS = ("question_start", "question_end", "response_start", "response_end", "thought_start", "thought_end")
"""Character offsets into ``text``, end exclusive; -1 where a part is unknown (a text-only export) or absent (the
thought, outside chat rendering with ``chat_thought``)."""


def _text_and_spans(row: dict[str, Any], has_text: bool) -> dict[str, Any]:
    question = (row.get("question") or "").strip()
    response = (row.get("response") or "").strip()
    text = (row["text"] or "").strip() if has_text else f"{question}\n\n{response}".strip()
    spans = dict.fromkeys(SPAN_COLUMNS, -1)
    # A text column is used as written (the export's template may wrap the parts): the parts are found in it by
    # exact match, the question first and the response after it, or left unknown.
    q_at = text.find(question) if question else -1
    if q_at >= 0:
        spans["question_start"], spans["question_end"] = q_at, q_at + len(question)
    r_at = text.find(response, max(q_at, 0) + len(question)) if response else -1
    if r_at >= 0:
        spans["response_start"], spans["response_end"] = r_at, r_at + len(response)
    return {"text": text, **spans}


def load_prompts(channel: Path, render: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> Dataset:
    """The prompts channel with a ``text`` column (its own, else question, blank line, response), the span columns
    of ``SPAN_COLUMNS``, and every other column as exported (id, category, censored, subject, …). ``render`` (a
    :class:`container_src.chat.Renderer`) makes the text and spans of rows with a question and a response instead.

    Work stays in memory: a channel is input, and datasets would otherwise write cache files into it.
    """
    ds = load_local(channel, "prompts")
    columns = set(ds.column_names)
    for column in {"text", "question", "response"} & columns:
        dtype = getattr(ds.features[column], "dtype", type(ds.features[column]).__name__)
        if dtype not in ("string", "large_string", "null"):  # null: an empty column, reported below
            raise ConfigError(f"channel prompts: column `{column}` holds {dtype}, expected text")
    if "text" not in columns and not {"question", "response"} <= columns:
        raise ConfigError(
            f"channel prompts: no text column. Expected `text`, or `question` and `response`; "
            f"found {', '.join(sorted(columns)) or 'no columns'}"
        )
    clashing = [c for c in SPAN_COLUMNS if c in columns]
    if render is not None and not {"question", "response"} <= columns:
        logger.warning("channel prompts: no question and response columns, so the text is used as written")
        render = None
    ds = ds.map(
        lambda row: render(row) if render is not None else _text_and_spans(row, "text" in columns),
        remove_columns=clashing,
        keep_in_memory=True,
    )
    n_rows = len(ds)
    ds = ds.filter(lambda row: bool(row["text"]), keep_in_memory=True)
    if len(ds) == 0:
        raise ConfigError(
            f"channel prompts: {n_rows} rows but none has any text; export the collection again, or set "
            "prompt_ratio=0 to train on TinyStories alone"
        )
    if len(ds) < n_rows:
        logger.warning("channel prompts: skipped %d of %d rows with empty text", n_rows - len(ds), n_rows)
    logger.info("channel prompts: %d prompts", len(ds))
    return ds


def prompts_fingerprint(prompts: Dataset | None) -> str:
    """A short hash of the prompt texts: a new export is a new run, not a resume of the old one."""
    if prompts is None:
        return "none"
    digest = hashlib.sha256()
    for text in prompts["text"]:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def prompt_ids(prompts: Dataset) -> list[str]:
    """Each prompt's id: its ``id`` column, else its row number in the channel (as text)."""
    if "id" in prompts.column_names:
        return [str(v) for v in prompts["id"]]
    return [str(i) for i in range(len(prompts))]


def categories(prompts: Dataset) -> list[str]:
    """Each prompt's category, ``NO_CATEGORY`` where it has none."""
    if "category" not in prompts.column_names:
        return [NO_CATEGORY] * len(prompts)
    return [NO_CATEGORY if v in (None, "") else str(v) for v in prompts["category"]]


@dataclass(frozen=True)
class PromptSplit:
    """Row indices of the training and the held-out prompts, and the record written to ``HELDOUT_FILE``."""

    train_rows: list[int]
    heldout_rows: list[int]
    record: dict[str, Any]


def split_prompts(prompts: Dataset, fraction: float, seed: int) -> PromptSplit:
    """Hold out ``fraction`` of each category's prompts (rounded, seeded by ``seed`` and the category), so every
    category keeps its share on both sides. Refuses a split that leaves a category without training prompts, and
    warns when it holds out nothing."""
    ids = prompt_ids(prompts)
    if len(set(ids)) < len(ids):
        raise ConfigError("channel prompts: the `id` column repeats ids; held-out prompts are named by id")
    rows_of: dict[str, list[int]] = defaultdict(list)
    for row, category in enumerate(categories(prompts)):
        rows_of[category].append(row)
    held: list[int] = []
    counts = {}
    for category in sorted(rows_of):
        rows = list(rows_of[category])
        random.Random(f"{seed}:{category}").shuffle(rows)
        n_held = int(fraction * len(rows) + 0.5)
        if n_held >= len(rows) and fraction > 0:
            raise ConfigError(
                f"heldout_prompt_fraction={fraction}: would hold out all {len(rows)} prompts of category "
                f"{category!r}, leaving none to train on; lower the fraction or add prompts to that category"
            )
        held += rows[:n_held]
        counts[category] = {"train": len(rows) - n_held, "heldout": n_held}
    if fraction > 0 and not held:
        logger.warning(
            "heldout_prompt_fraction=%s holds out no prompt of %d (too few per category): every prompt is trained on, "
            "and viz and the final evaluation have no held-out prompts",
            fraction,
            len(ids),
        )
    held_set = set(held)
    record = {
        "fraction": fraction,
        "seed": seed,
        "stratified_by": "category",
        "id_column": "id" if "id" in prompts.column_names else "row number",
        "prompts": len(ids),
        "per_category": counts,
        "heldout_ids": [ids[r] for r in sorted(held_set)],
        "prompts_fingerprint": prompts_fingerprint(prompts),
    }
    train_rows = [r for r in range(len(ids)) if r not in held_set]
    return PromptSplit(train_rows=train_rows, heldout_rows=sorted(held_set), record=record)


def write_heldout(model_dir: Path, split: PromptSplit) -> None:
    records.write_json(model_dir / HELDOUT_FILE, split.record)


def read_heldout(sae_dir: Path) -> dict[str, Any] | None:
    """The held-out record beside an SAE, or None for an SAE trained without one."""
    path = sae_dir / HELDOUT_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON ({exc}); copy the SAE's folder again") from None
    if not isinstance(record, dict) or not isinstance(record.get("heldout_ids"), list):
        raise ConfigError(f"{path} has no heldout_ids list; copy the SAE's folder again")
    return record
