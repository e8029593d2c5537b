"""The control channel and the mixed stream, pinned where tests/test_data.py leaves a one-line change unseen: which
files a split reads, what the channel's identity covers, how prompts are ordered, what the cycled texts repeat. All
on small inputs, without a model."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

import pytest
from datasets import Dataset

from container_src.config import ConfigError
from container_src.data import (
    CountedRows,
    CycledTexts,
    channel_fingerprint,
    check_eval_split,
    load_control,
    mixed_stream,
    pack_documents,
)


def _jsonl(path: Path, *texts: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))


def _texts(channel: Path, split: str) -> list[str]:
    return [row["text"] for row in load_control(channel, "unused", split)[0]]


def test_docs_container_split_names_are_read_inside_the_channel_only(tmp_path: Path) -> None:
    """docs/container.md: "where file or folder names carry split names, such as `train-0000.parquet` or
    `data/validation/`, only those of `control_split` are read". Only names inside the channel count: a channel
    kept in a folder that happens to be named for a split (here `validation/`) is read as any other."""
    channel = tmp_path / "validation" / "control"
    _jsonl(channel / "train-0000.jsonl", "a train story")
    _jsonl(channel / "validation-0000.jsonl", "a held-out story")
    assert _texts(channel, "train") == ["a train story"]
    assert _texts(channel, "validation") == ["a held-out story"]

    unsplit = tmp_path / "validation" / "unsplit"
    _jsonl(unsplit / "stories.jsonl", "a story")
    with pytest.raises(ConfigError) as err:  # no file in it is named for the evaluation's split
        check_eval_split(unsplit, "validation", "train")
    assert str(err.value) == (
        f"channel control ({unsplit}): no data file or folder is named for split 'validation'. "
        "control_eval_split='validation': the evaluations read this split, held out from training; add it "
        "(TinyStories' hub repo has validation files), or set control_eval_split='train' to evaluate on training text"
    )


def test_docs_container_a_channels_identity_follows_which_file_holds_what(tmp_path: Path) -> None:
    """docs/container.md: "only those of `control_split` are read". Renaming a file changes which texts train reads,
    so it changes the channel's identity (part of the run id), even when every file's content is unchanged."""
    named = tmp_path / "named"
    _jsonl(named / "train.jsonl", "story one")
    _jsonl(named / "validation.jsonl", "story two")
    renamed = tmp_path / "renamed"
    _jsonl(renamed / "all.jsonl", "story one")  # sorted before validation.jsonl, as train.jsonl is: same bytes
    _jsonl(renamed / "validation.jsonl", "story two")
    assert _texts(named, "train") == ["story one"]
    assert _texts(renamed, "train") == ["story one", "story two"]  # no file named for train: every file
    assert load_control(named, "unused", "train")[1] != load_control(renamed, "unused", "train")[1]


def test_a_fingerprint_of_given_files_covers_those_files_only(tmp_path: Path) -> None:
    """Internal: the launcher names a channel's upload by the hash of the files it uploads; that hash is the one the
    container computes on a channel holding just those files, and another file beside them changes nothing."""
    upload = tmp_path / "upload"
    _jsonl(upload / "train.jsonl", "story one")
    _jsonl(upload / "data" / "validation.jsonl", "story two")
    files = [upload / "train.jsonl", upload / "data" / "validation.jsonl"]
    whole = channel_fingerprint(upload)
    _jsonl(upload / "notes.jsonl", "not uploaded")
    assert channel_fingerprint(upload, files) == whole
    assert channel_fingerprint(upload) != whole
    assert channel_fingerprint(upload, [files[0]]) != whole


def test_docs_train_prompts_cycle_in_an_order_that_depends_only_on_seed(tmp_path: Path) -> None:
    """docs/train.md: "Prompts cycle; the order depends only on" `seed`. The prompts come shuffled by the seed, not
    in the export's order (which groups them by category): each of the first 30 once, then the same order again."""
    prompts = Dataset.from_dict({"text": [f"prompt number {i}" for i in range(30)]})
    stories = Dataset.from_dict({"text": [f"story {i}" for i in range(1000)]})

    def prompt_order(seed: int) -> list[str]:
        rows = islice(mixed_stream(stories.to_iterable_dataset(), prompts, 0.5, seed=seed), 400)
        return [r["text"] for r in rows if r["source"] == "prompts"][:60]

    order = prompt_order(42)
    assert sorted(order[:30]) == sorted(prompts["text"]) and order[30:] == order[:30]
    assert order[:30] != prompts["text"]
    assert prompt_order(42) == order and prompt_order(43)[:30] != order[:30]


def test_docs_train_the_held_out_prompts_are_cycled_from_the_first_each_time() -> None:
    """docs/train.md: "a few prompts are cycled until the". A store over a few prompts reads them in order, over and
    over, and every pass over it starts again at the first; no prompts at all is refused."""
    texts = CycledTexts(["first", "second", "third"])
    assert [r["text"] for r in islice(texts, 7)] == ["first", "second", "third"] * 2 + ["first"]
    assert [r["text"] for r in islice(texts, 2)] == ["first", "second"]
    with pytest.raises(ValueError, match="CycledTexts needs at least one text"):
        CycledTexts([])


def test_docs_train_each_source_counts_the_documents_with_tokens_in_the_rows_read(
    tmp_path: Path, tiny_assets: dict[str, Path]
) -> None:
    """docs/train.md: "each source says how many distinct prompts or stories it covered". An empty document puts no
    token in any row, so it is not counted; and a second, shorter pass over the same rows (each pass starts the
    stream afresh) does not lower the count of the first."""
    from container_src.config import TrainConfig
    from container_src.model import load_model, pick_runtime
    from container_src.runner import sae_lens_config

    lm = load_model("roneneldan/TinyStories-33M", "cpu")
    cfg = TrainConfig(context_size=64, train_batch_size_tokens=256, store_batch_size_prompts=4, training_tokens=256)
    runner_cfg = sae_lens_config(cfg, 256, 1024, pick_runtime("cpu", "auto"), "t", tmp_path / "r", tmp_path / "o", None)
    texts = [" ".join(["word"] * (5 + i % 30)) if i % 3 else "" for i in range(90)]  # every third one empty
    _, docs = pack_documents(lm.tokenizer, texts, 64, max_tokens=10**6)
    rows = CountedRows([{"text": t} for t in texts], lm, runner_cfg)
    for n_rows in (6, 2):
        assert len(list(islice(rows, n_rows))) == n_rows
    in_rows = {int(d) for d in docs[:6].flatten() if d >= 0}  # the documents with tokens in the first 6 rows
    assert rows.documents_covered == len(in_rows) == sum(1 for t in texts[: max(in_rows) + 1] if t)
    assert len(in_rows) < max(in_rows) + 1  # empty documents were passed over among them


class _WordLengths:
    """A whitespace 'tokenizer' whose ids are the words' lengths, with BOS and EOS of its own."""

    def __init__(self, bos: int | None, eos: int) -> None:
        self.bos_token_id, self.eos_token_id = bos, eos

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, list[list[int]]]:
        return {"input_ids": [[len(w) for w in t.split()] for t in texts]}


@pytest.mark.parametrize(("bos", "eos", "opener"), [(7, 9, 7), (None, 9, 9)], ids=["BOS", "no BOS: EOS"])
def test_docs_viz_packing_opens_rows_with_bos_or_else_eos(bos: int | None, eos: int, opener: int) -> None:
    """docs/viz.md: "TinyStories (`story_tokens`) is packed as in training". Rows open with the tokenizer's BOS,
    which also separates documents and pads the last row; a tokenizer without one (as Qwen's) uses its EOS."""
    tokens, docs = pack_documents(_WordLengths(bos, eos), ["a bb", "ccc"], context_size=4, max_tokens=100)
    assert tokens.tolist() == [[opener, 1, 2, opener], [opener, 3, opener, opener]]
    assert docs.tolist() == [[-1, 0, 0, -1], [-1, 1, -1, -1]]


def test_the_identity_of_streamed_control_text_names_its_path_split_and_column(tmp_path: Path) -> None:
    """Internal: without channel `control` the text is identified by `control_path` and the split (and a column
    other than `text`), so another split or column is other data and another run id. `control_path` here is a local
    folder, which `datasets` streams as it streams a hub repo (the hub cannot be reached in tests)."""
    folder = tmp_path / "stories"
    _jsonl(folder / "train.jsonl", "a train story")
    _jsonl(folder / "validation.jsonl", "a held-out story")
    stream, identity = load_control(None, str(folder), "validation")
    assert [row["text"] for row in stream] == ["a held-out story"]
    assert identity == f"hub {folder}:validation"
    assert load_control(None, str(folder), "train")[1] == f"hub {folder}:train"
