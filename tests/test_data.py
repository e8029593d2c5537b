"""The training stream: reading channels, building prompt text, and mixing at prompt_ratio."""

from __future__ import annotations

import json
import os
import shutil
from itertools import islice
from pathlib import Path
from typing import Any

import pytest
from datasets import Dataset, DatasetDict

from container_src.config import ConfigError
from container_src.data import (
    PackedRows,
    check_eval_split,
    load_control,
    mixed_stream,
    open_control,
    token_share,
)
from container_src.prompts import load_prompts
from container_src.synthetic import make_stories
from tests.conftest import SAMPLE_PROMPTS


@pytest.fixture(scope="module")
def many_stories() -> Dataset:
    return Dataset.from_dict({"text": make_stories(6000, seed=1)})


def _prompts(n: int = 95) -> Dataset:
    return Dataset.from_dict({"text": [f"prompt number {i}" for i in range(n)]})


def _tiny_lm_and_config(tmp_path: Path) -> tuple[Any, Any]:
    """The tiny model and SAE-Lens's runner config for 64-token rows, 4 rows per model batch."""
    from container_src.config import TrainConfig
    from container_src.model import load_model, pick_runtime
    from container_src.runner import sae_lens_config

    lm = load_model("roneneldan/TinyStories-33M", "cpu")
    cfg = TrainConfig(context_size=64, train_batch_size_tokens=256, store_batch_size_prompts=4, training_tokens=256)
    return lm, sae_lens_config(cfg, 256, 1024, pick_runtime("cpu", "auto"), "t", tmp_path / "r", tmp_path / "o", None)


@pytest.mark.parametrize("ratio", [0.1, 0.3])
def test_docs_train_each_document_a_prompt_with_probability_prompt_ratio(ratio: float) -> None:
    """docs/train.md: "each document is a prompt with probability `prompt_ratio` ... `prompt_ratio` is a share
    of *documents*". Measured over 120,000 documents (two seeds of 60,000): the binomial standard deviation is under
    0.0014 at 0.3 and 0.0009 at 0.1, so the 0.004 tolerance is three of them, and a share one percentage point off
    fails."""
    stories = Dataset.from_dict({"text": [f"story {i}" for i in range(100_000)]})  # never exhausted in 60,000 rows
    drawn = prompts = 0
    for seed in (42, 7):
        rows = list(islice(mixed_stream(stories.to_iterable_dataset(), _prompts(), ratio, seed=seed), 60_000))
        assert len(rows) == 60_000
        assert all(r["text"] for r in rows)
        drawn += len(rows)
        prompts += sum(r["source"] == "prompts" for r in rows)
    assert abs(prompts / drawn - ratio) < 0.004, prompts / drawn


def test_prompts_cycle_and_order_is_seeded(many_stories: Dataset) -> None:
    """docs/train.md: "Prompts cycle; the order depends only on `seed`"."""

    def first(seed: int) -> list[str]:
        stream = mixed_stream(many_stories.to_iterable_dataset(), _prompts(20), 0.5, seed=seed)
        return [r["text"] for r in islice(stream, 400)]

    run_a, run_b, other = first(42), first(42), first(43)
    assert run_a == run_b
    assert run_a != other
    prompt_rows = [t for t in run_a if t.startswith("prompt number")]
    assert len(prompt_rows) > 100  # 20 prompts, drawn about 200 times: they cycle
    assert len(set(prompt_rows)) == 20


def test_ratio_zero_is_stories_only(many_stories: Dataset) -> None:
    """docs/configuration.md: "drawn from the prompts channel (cycled); the rest are the control text"."""
    rows = list(islice(mixed_stream(many_stories.to_iterable_dataset(), None, 0.0, seed=1), 50))
    assert {r["source"] for r in rows} == {"control"}


def test_stories_from_jsonl_files(tmp_path: Path) -> None:
    """docs/container.md: "or parquet/json/jsonl/arrow files with a text column"."""
    channel = tmp_path / "control"
    channel.mkdir()
    (channel / "train-0.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in make_stories(5)))
    (channel / "validation-0.jsonl").write_text(json.dumps({"text": "held out"}) + "\n")
    stream, identity = load_control(channel, "unused/hub-id", "train")
    rows = list(stream)
    assert len(rows) == 5 and rows[0]["text"].startswith("Once upon a time")  # the validation file is left out
    assert identity.startswith("channel:")


def test_split_files_and_a_fingerprint_that_survives_a_fresh_copy(tmp_path: Path) -> None:
    """docs/container.md: "or `data/validation/`, only those of `control_split` are read"; and the channel's
    identity follows its content, not its files' times."""
    channel = tmp_path / "control"
    (channel / "data" / "train").mkdir(parents=True)
    (channel / "data" / "validation").mkdir(parents=True)
    (channel / "data" / "train" / "part-0.jsonl").write_text(json.dumps({"text": "a train story"}) + "\n")
    (channel / "data" / "validation" / "part-0.jsonl").write_text(json.dumps({"text": "held out"}) + "\n")
    (channel / "constraints.jsonl").write_text(json.dumps({"text": "not a split name"}) + "\n")
    stream, identity = load_control(channel, "unused", "train")
    assert [r["text"] for r in stream] == ["a train story"]

    # SageMaker downloads a channel anew on a restart: new modification times, same content, same identity
    copy = tmp_path / "copy"
    shutil.copytree(channel, copy, copy_function=shutil.copy)
    for path in copy.rglob("*.jsonl"):
        os.utime(path, (1, 1))
    assert load_control(copy, "unused", "train")[1] == identity
    (copy / "data" / "train" / "part-0.jsonl").write_text(json.dumps({"text": "another story"}) + "\n")
    assert load_control(copy, "unused", "train")[1] != identity


def test_the_evaluation_split_must_be_there(tmp_path: Path) -> None:
    """docs/container.md: "a `DatasetDict` with that split, or files named for it".
    The evaluation's held-out split: a channel without splits serves training, never the evaluation."""
    files = tmp_path / "files"
    files.mkdir()
    (files / "stories.jsonl").write_text(json.dumps({"text": "a story"}) + "\n")
    assert [r["text"] for r in open_control(files, "unused", "validation")] == ["a story"]
    check_eval_split(files, "train", "train")  # evaluating on the training split is allowed (with a warning)
    with pytest.raises(ConfigError, match="no data file or folder is named for split 'validation'"):
        check_eval_split(files, "validation", "train")
    (files / "validation.jsonl").write_text(json.dumps({"text": "held out"}) + "\n")
    check_eval_split(files, "validation", "train")
    assert [r["text"] for r in open_control(files, "unused", "validation")] == ["held out"]
    Dataset.from_dict({"text": ["x"]}).save_to_disk(str(tmp_path / "one"))
    with pytest.raises(ConfigError, match="holds one dataset, without splits, so no 'validation' split"):
        check_eval_split(tmp_path / "one", "validation", "train")
    DatasetDict(train=Dataset.from_dict({"text": ["x"]})).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(ConfigError, match=r"has no 'validation' split \(\['train'\]\).*control_eval_split='train'"):
        check_eval_split(tmp_path / "dict", "validation", "train")
    DatasetDict(train=Dataset.from_dict({"text": ["x"]}), validation=Dataset.from_dict({"text": ["y"]})).save_to_disk(
        str(tmp_path / "both")
    )
    check_eval_split(tmp_path / "both", "validation", "train")
    assert [r["text"] for r in open_control(tmp_path / "both", "unused", "validation")] == ["y"]


def test_stories_without_text_column(tmp_path: Path) -> None:
    """docs/train.md: "A column that is missing or does not hold text ends the run before the model loads"."""
    Dataset.from_dict({"story": ["x"]}).save_to_disk(str(tmp_path / "s"))
    with pytest.raises(ConfigError, match="no 'text' column"):
        load_control(tmp_path / "s", "unused", "train")
    Dataset.from_dict({"text": [[1, 2]]}).save_to_disk(str(tmp_path / "n"))
    with pytest.raises(ConfigError, match="column 'text' holds list"):
        load_control(tmp_path / "n", "unused", "train")
    Dataset.from_dict({"text": []}).save_to_disk(str(tmp_path / "e"))
    with pytest.raises(ConfigError, match=r"channel control: .* is empty"):
        load_control(tmp_path / "e", "unused", "train")


def test_hub_stories_offline_says_what_to_do() -> None:
    """README: "turns the hub off (network isolation), and then needs `control`"."""
    with pytest.raises(ConfigError) as err:
        load_control(None, "roneneldan/TinyStories", "train")
    assert "channel `control`" in str(err.value)


def test_token_share_weighs_documents_by_length(many_stories: Dataset) -> None:
    """docs/train.md: "which is higher when prompts are longer than stories"."""

    def words(texts: list[str]) -> dict[str, list[list[str]]]:  # a whitespace "tokenizer"
        return {"input_ids": [t.split() for t in texts]}

    long_prompts = Dataset.from_dict({"text": [" ".join(["word"] * 400)] * 10})
    story_words = sum(len(t.split()) for t in many_stories[:500]["text"]) / 500
    share = token_share(words, long_prompts, many_stories.to_iterable_dataset(), 0.1)
    assert share == pytest.approx(0.1 * 400 / (0.1 * 400 + 0.9 * story_words))
    assert share > 0.1  # these prompts are longer than the stories
    assert token_share(words, None, many_stories.to_iterable_dataset(), 0.1) == 0.0


def test_packed_rows_are_the_tokens_sae_lens_packs_from_text(
    tiny_assets: dict[str, Path], many_stories: Dataset, tmp_path: Path
) -> None:
    """docs/train.md: "BOS opens every packed row and separates the documents in it".
    Training feeds SAE-Lens rows packed on the CPU (PackedRows) instead of text: the store must see the very
    tokens it would have packed from the text itself, documents split across rows and BOS separators included."""
    import torch
    from sae_lens.training.activations_store import ActivationsStore

    from container_src.store import PackedStore

    lm, runner_cfg = _tiny_lm_and_config(tmp_path)
    stream = mixed_stream(many_stories.to_iterable_dataset(), _prompts(), 0.3, seed=7)
    rows = PackedRows(stream, lm, runner_cfg)
    from_text = ActivationsStore.from_config(lm, runner_cfg, override_dataset=stream)
    from_rows = PackedStore.from_config(lm, runner_cfg, override_dataset=rows)  # type: ignore[arg-type]
    assert from_rows.is_dataset_tokenized and not from_text.is_dataset_tokenized

    assert lm.tokenizer is not None
    batches = []
    for _ in range(30):  # 120 rows of 64 tokens, about 90 documents
        expected, got = from_text.get_batch_tokens(), from_rows.get_batch_tokens()
        assert got.shape == (4, 64) and got.device.type == "cpu"
        assert torch.equal(got, expected)
        batches.append(got)
    assert all(bool((batch[:, 0] == lm.tokenizer.bos_token_id).all()) for batch in batches)
    # the resume position counts rows (SAE-Lens counts a row once the next one is asked for: 120 served, 119
    # counted); each iteration starts the stream afresh, which is what fast-forwarding relies on
    assert from_rows.n_dataset_processed == 119
    fresh = [row["input_ids"] for row in islice(iter(rows), 8)]
    assert torch.equal(torch.stack(fresh), torch.cat(batches[:2]))


def test_worker_rows_are_packed_rows_in_order(tiny_assets: dict[str, Path], tmp_path: Path) -> None:
    """docs/configuration.md: "The worker hands the rows back in order, so the rows are the same".
    data_worker packs in a process of its own: the same rows in the same order, iteration after iteration
    (SAE-Lens starts each epoch with a fresh iteration), from the channels as train reads them, and the worker
    stops when the store is closed."""
    import multiprocessing

    import torch

    from container_src.store import WorkerRows, packed_store

    lm, runner_cfg = _tiny_lm_and_config(tmp_path)
    stories, _ = load_control(tiny_assets["stories"], "unused", "train")
    stream = mixed_stream(stories, load_prompts(SAMPLE_PROMPTS), 0.3, seed=7)
    rows = PackedRows(stream, lm, runner_cfg)
    expected = torch.stack([row["input_ids"] for row in rows])
    assert expected.shape[0] > 64  # more than one chunk from the worker
    for _ in range(2):
        got = torch.stack([row["input_ids"] for row in WorkerRows(rows)])
        assert torch.equal(got, expected)

    store = packed_store(stream, lm, runner_cfg, worker=True)
    assert torch.equal(store.get_batch_tokens(), expected[:4])
    assert len(multiprocessing.active_children()) == 1
    store.close()
    assert multiprocessing.active_children() == []


def test_an_error_in_the_worker_reaches_training(tiny_assets: dict[str, Path], tmp_path: Path) -> None:
    """docs/configuration.md: "An error in the worker fails the run with that error"
    A document the worker cannot tokenise fails the training process's read, with the worker's error, instead of
    leaving it waiting for rows."""
    from container_src.store import WorkerRows

    lm, runner_cfg = _tiny_lm_and_config(tmp_path)
    texts: list[Any] = make_stories(200)
    texts[150] = 12345  # not text: the tokenizer refuses it
    rows = WorkerRows(PackedRows([{"text": t} for t in texts], lm, runner_cfg))
    with pytest.raises(TypeError, match=r"(?s)in DataLoader worker process 0.*TextEncodeInput"):
        for _ in rows:
            pass


_HOLDER = """
import multiprocessing, sys, time
from pathlib import Path
from container_src.data import PackedRows
from container_src.store import WorkerRows
from tests.test_data import _tiny_lm_and_config

if __name__ == "__main__":
    lm, runner_cfg = _tiny_lm_and_config(Path(sys.argv[1]))
    rows = iter(WorkerRows(PackedRows([{"text": "Once upon a time, a cat sat."}] * 20000, lm, runner_cfg)))
    next(rows)
    print("workers:", *[child.pid for child in multiprocessing.active_children()], flush=True)
    time.sleep(600)
"""


def test_the_worker_ends_when_training_is_killed(tiny_assets: dict[str, Path], tmp_path: Path) -> None:
    """docs/configuration.md: "the worker ends with the training process, even when that is killed"
    SIGKILL (or the OOM killer) gives the training process no chance to stop its worker: the worker and the
    forkserver it came from must end by themselves instead of lingering with their memory."""
    import subprocess
    import sys
    import time

    import psutil

    from tests.conftest import ROOT

    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        line = next(line for line in holder.stdout if line.startswith("workers:"))  # the model's loader prints too
        pids = [int(pid) for pid in line.split()[1:]]
        assert len(pids) == 1, pids
        worker = psutil.Process(pids[0])
        server = worker.parent()
        assert server is not None and server.pid != holder.pid  # the forkserver, not the training process
    finally:
        holder.kill()
        holder.wait()

    def ended(process: psutil.Process) -> bool:
        try:
            return process.status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + 30  # torch's worker checks its parent every 5 s
    while not (ended(worker) and ended(server)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ended(server) and ended(worker)


def test_docs_container_control_channel_save_to_disk_or_files_of_one_format(tmp_path: Path) -> None:
    """docs/container.md, channel `control`: "`save_to_disk`, or parquet/json/jsonl/arrow files with a text column"
    (the saved folder may be the channel's only sub-folder); a `DatasetDict` must hold the split asked for."""
    saved = tmp_path / "sub" / "control"
    DatasetDict(train=Dataset.from_dict({"text": ["saved story"]})).save_to_disk(str(saved / "stories"))
    assert [r["text"] for r in open_control(saved, "unused", "train")] == ["saved story"]
    with pytest.raises(ConfigError) as err:
        open_control(saved, "unused", "validation")
    assert str(err.value) == "channel control: the saved DatasetDict has no 'validation' split (['train'])"

    # two saved folders: neither is taken as the dataset, and their files (arrow data, json records) are no one format
    Dataset.from_dict({"text": ["other"]}).save_to_disk(str(saved / "more"))
    with pytest.raises(ConfigError) as err:
        open_control(saved, "unused", "train")
    assert str(err.value).endswith(f"found ['.arrow', '.json'] in {saved}")

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.jsonl").write_text(json.dumps({"text": "a"}) + "\n")
    Dataset.from_dict({"text": ["b"]}).to_parquet(str(mixed / "b.parquet"))
    with pytest.raises(ConfigError) as err:
        open_control(mixed, "unused", "train")
    assert str(err.value) == (
        "channel control: expected a datasets save_to_disk folder or files of one format (.parquet, .arrow, .json, "
        f".jsonl); found ['.jsonl', '.parquet'] in {mixed}"
    )
    (mixed / "a.jsonl").unlink()
    assert [r["text"] for r in open_control(mixed, "unused", "train")] == ["b"]

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError) as err:
        open_control(empty, "unused", "train")
    assert str(err.value).endswith(f"found no data files in {empty}")

    (mixed / "b.parquet").write_text("not parquet")
    with pytest.raises(ConfigError, match=rf"channel control: could not read a dataset from {mixed}: "):
        open_control(mixed, "unused", "train")


def test_docs_train_the_evaluation_split_an_unreadable_split_list_is_named(tmp_path: Path) -> None:
    """docs/container.md: "the evaluation's `control_eval_split` must be there too: a `DatasetDict` with that split";
    a damaged record of its splits is named, not taken for a missing split."""
    DatasetDict(train=Dataset.from_dict({"text": ["x"]})).save_to_disk(str(tmp_path / "dict"))
    (tmp_path / "dict" / "dataset_dict.json").write_text("{not json")
    with pytest.raises(ConfigError) as err:
        check_eval_split(tmp_path / "dict", "validation", "train")
    assert str(err.value).startswith(f"channel control: {tmp_path / 'dict' / 'dataset_dict.json'} is unreadable (")


def test_docs_train_token_share_reads_up_to_500_documents_of_each(many_stories: Dataset) -> None:
    """docs/train.md: "the log and `resolved_config.json` give the estimated share of" tokens; from the mean length of
    up to 500 prompts and 500 stories (the first of each)."""

    def words(texts: list[str]) -> dict[str, list[list[str]]]:
        return {"input_ids": [t.split() for t in texts]}

    # 500 prompts of 10 words, then 500 of 1000: only the first 500 are read
    prompts = Dataset.from_dict({"text": [" ".join(["w"] * 10)] * 500 + [" ".join(["w"] * 1000)] * 500})
    stories = Dataset.from_dict({"text": ["a b c d e f g h i j"] * 500 + [" ".join(["s"] * 1000)] * 500})
    assert token_share(words, prompts, stories.to_iterable_dataset(), 0.25) == pytest.approx(0.25)
    assert token_share(words, prompts, stories.to_iterable_dataset(), 0.0) == 0.0
    one_prompt = Dataset.from_dict({"text": [" ".join(["w"] * 10)]})  # a mean over one document is that document
    assert token_share(words, one_prompt, stories.to_iterable_dataset(), 0.25) == pytest.approx(0.25)
