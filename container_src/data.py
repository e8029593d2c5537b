"""The training stream: the control text (the negative control; TinyStories by default) interleaved with the
user's prompts.

Every row has ``text`` and ``source`` (``control`` or ``prompts``); ``PackedRows`` turns the texts into the
token rows SAE-Lens trains on. Prompts are drawn with probability ``prompt_ratio`` per document and cycled; the
stream ends when the control text is exhausted, and SAE-Lens then starts it again. The order is a function of ``seed``
alone, which is what lets a resumed run fast-forward.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Iterator
from functools import partial
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from container_src.config import ConfigError

if TYPE_CHECKING:
    import torch
    from datasets import Dataset, IterableDataset

logger = logging.getLogger(__name__)

# Plain .txt is left out on purpose: TinyStories' text files hold one story over many lines, and a line-per-row
# reading would silently train on fragments.
CONTROL = "control"  # the control text's source tag in the training stream, and its group in viz
NO_CATEGORY = "(none)"  # the name of the prompts without a category, in the export's manifest and in viz
_DATA_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json"}


def _find_saved_dataset(channel: Path) -> Path | None:
    """The ``save_to_disk`` folder in a channel: the channel itself or its only sub-folder."""
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if any((channel / m).exists() for m in markers):
        return channel
    subdirs = [p for p in channel.iterdir() if p.is_dir() and any((p / m).exists() for m in markers)]
    return subdirs[0] if len(subdirs) == 1 else None


def _split_files(channel: Path, files: list[Path], split: str) -> list[Path]:
    """Files of one split in a copy of a hub repo (``train-0000.parquet``, ``data/validation/…``): those with the
    split as a word of their path."""
    word = re.compile(rf"(^|[-_./]){re.escape(split)}([-_./]|$)")
    return [p for p in files if word.search(p.relative_to(channel).as_posix())]


def _data_files(channel: Path) -> list[Path]:
    return sorted(p for p in channel.rglob("*") if p.suffix in _DATA_FILE_BUILDERS)


def channel_files(channel: Path) -> list[Path]:
    """Every file in a channel's folder, in a stable order."""
    return sorted(p for p in channel.rglob("*") if p.is_file())


def channel_fingerprint(channel: Path, files: list[Path] | None = None) -> str:
    """A hash of a channel's file names and contents (of ``files`` in it, when given; else of `channel_files`).
    Unlike datasets' own fingerprint it survives the fresh download SageMaker makes on a restart, which changes
    every file's modification time."""
    digest = hashlib.sha256()
    for path in sorted(files if files is not None else channel_files(channel)):
        digest.update(path.relative_to(channel).as_posix().encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def check_eval_split(channel: Path, split: str, train_split: str) -> None:
    """Refuse a ``control`` channel that lacks the evaluation's held-out split (without reading any data, so the
    launcher can check a folder before uploading it). A channel without splits serves any split to training."""
    if split == train_split:
        return
    saved = _find_saved_dataset(channel)
    if saved is None:
        named = _split_files(channel, _data_files(channel), split)
        why = None if named else f"no data file or folder is named for split {split!r}"
    elif not (saved / "dataset_dict.json").exists():
        why = f"{saved} holds one dataset, without splits, so no {split!r} split"
    else:
        try:
            splits = json.loads((saved / "dataset_dict.json").read_text()).get("splits", [])
        except (OSError, ValueError, AttributeError) as exc:
            raise ConfigError(f"channel control: {saved / 'dataset_dict.json'} is unreadable ({exc})") from None
        why = None if split in splits else f"the saved DatasetDict has no {split!r} split ({splits})"
    if why:
        raise ConfigError(
            f"channel control ({channel}): {why}. control_eval_split={split!r}: the evaluations read this "
            f"split, held out from training; add it (TinyStories' hub repo has validation files), or set "
            f"control_eval_split={train_split!r} to evaluate on training text"
        )


def load_local(channel: Path, name: str, split: str = "train") -> Dataset:
    """A dataset from a channel: a ``save_to_disk`` folder (Dataset or DatasetDict) or plain data files. A channel
    without splits (one Dataset, or files none of which is named for a split) serves any split."""
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

    saved = _find_saved_dataset(channel)
    try:
        if saved is not None:
            ds = load_from_disk(str(saved))
            if isinstance(ds, DatasetDict):
                if split not in ds:
                    raise ConfigError(f"channel {name}: the saved DatasetDict has no {split!r} split ({list(ds)})")
                ds = ds[split]
            return ds
        all_files = _data_files(channel)
        files = _split_files(channel, all_files, split) or all_files
        builders = {_DATA_FILE_BUILDERS[p.suffix] for p in files}
        if len(builders) != 1:
            found = sorted({p.suffix for p in files}) or "no data files"
            raise ConfigError(
                f"channel {name}: expected a datasets save_to_disk folder or files of one format "
                f"({', '.join(_DATA_FILE_BUILDERS)}); found {found} in {channel}"
            )
        loaded = load_dataset(builders.pop(), data_files=[str(p) for p in files], split="train")
        assert isinstance(loaded, Dataset)  # split= without streaming= always gives one Dataset
        return loaded
    except ConfigError:
        raise
    except Exception as exc:  # datasets raises many types for unreadable data; all mean the same to the user
        raise ConfigError(f"channel {name}: could not read a dataset from {channel}: {exc}") from None


def open_control(channel: Path | None, hub_path: str, split: str, column: str = "text") -> IterableDataset:
    """The control text as a stream of ``text`` (from column ``column``), from channel ``control`` when given, else
    streamed from the hub."""
    from datasets import IterableDataset, load_dataset

    if channel is not None:
        local = load_local(channel, "control", split)
        if len(local) == 0:
            raise ConfigError(f"channel control: the dataset in {channel} is empty")
        stream, where = local.to_iterable_dataset(), f"channel control ({len(local)} documents, split {split})"
    else:
        try:
            stream = load_dataset(hub_path, split=split, streaming=True)
            assert isinstance(stream, IterableDataset)  # split= with streaming= always gives one stream
        except Exception as exc:  # offline, missing split, private repo...
            raise ConfigError(
                f"control_path={hub_path!r}: could not stream split {split!r} from the hub ({exc}). "
                "Without network access, pass a local copy as channel `control`."
            ) from None
        where = f"hub {hub_path}:{split}"
    first = next(iter(stream), None)
    if first is None:
        raise ConfigError(f"{where}: the dataset is empty")
    if column not in first:
        raise ConfigError(
            f"{where}: no {column!r} column (found {', '.join(sorted(first))}); set control_text_column to one of them"
        )
    if not isinstance(first[column], str):
        raise ConfigError(f"{where}: column {column!r} holds {type(first[column]).__name__}, expected text")
    logger.info("control text from %s, column %s", where, column)
    stream = stream.select_columns([column])
    return stream if column == "text" else stream.rename_column(column, "text")


def load_control(channel: Path | None, hub_path: str, split: str, column: str = "text") -> tuple[IterableDataset, str]:
    """``open_control``, and what identifies the text: the local copy's fingerprint, or the hub id and split."""
    stream = open_control(channel, hub_path, split, column)
    where = f"channel:{channel_fingerprint(channel)}" if channel is not None else f"hub {hub_path}:{split}"
    return stream, where if column == "text" else f"{where} column {column}"


def token_share(tokenizer: Any, prompts: Dataset | None, stories: IterableDataset, prompt_ratio: float) -> float:
    """Expected share of training *tokens* that come from prompts, from the mean token length of up to 500 prompts
    and 500 stories: prompt_ratio counts documents, and prompts and stories differ in length."""
    if prompts is None or prompt_ratio == 0:
        return 0.0

    def mean_tokens(texts: list[str]) -> float:
        return sum(len(ids) for ids in tokenizer(texts)["input_ids"]) / max(len(texts), 1)

    prompt_len = mean_tokens(prompts.select(range(min(500, len(prompts))))["text"])
    story_len = mean_tokens([row["text"] for row in islice(stories, 500)])
    prompt_tokens = prompt_ratio * prompt_len
    return prompt_tokens / (prompt_tokens + (1 - prompt_ratio) * story_len)


def _tag(row: dict[str, Any], source: str) -> dict[str, str]:
    """A row of the mixed stream; a module-level function so that the stream can be sent to a worker process."""
    return {"text": row["text"], "source": source}


def mixed_stream(stories: IterableDataset, prompts: Dataset | None, prompt_ratio: float, seed: int) -> IterableDataset:
    """Interleave documents: a prompt with probability ``prompt_ratio``, else a story; prompts cycle."""
    from datasets import Features, Value, interleave_datasets

    features = Features({"text": Value("string"), "source": Value("string")})

    def tagged(stream: IterableDataset, source: str) -> IterableDataset:
        return stream.map(partial(_tag, source=source), features=features)

    if prompts is None or prompt_ratio == 0:
        return tagged(stories, CONTROL)
    return interleave_datasets(
        [
            tagged(stories, CONTROL),
            tagged(prompts.select_columns(["text"]).shuffle(seed=seed).to_iterable_dataset(), "prompts"),
        ],
        probabilities=[1 - prompt_ratio, prompt_ratio],
        seed=seed,
        stopping_strategy="all_exhausted",
    )


class PackedRows:
    """The training stream tokenised and packed on the CPU into rows of ``context_size`` token ids, the same rows
    SAE-Lens's activation store packs from text: each document tokenised as the model's ``to_tokens`` does (without
    BOS), and packed by SAE-Lens's own ``concat_and_batch_sequences`` with the store's BOS and separator settings.

    Why: given text, the store tokenises one document at a time onto the model's device and packs it there, a small
    host-to-device copy and several device round trips per document, which on a GPU starve the SAE. Here documents
    are tokenised in batches on the CPU, and ``store.PackedStore`` copies the rows to the device a model batch at a
    time. Its resume position then counts rows, not documents; each iteration starts the stream afresh, so
    fast-forwarding reproduces the same rows.
    """

    def __init__(self, stream: Iterable[dict[str, Any]], model: Any, runner_cfg: Any, batch: int = 256) -> None:
        from sae_lens.pretokenize_runner import get_special_token_from_cfg

        self.stream, self.tokenizer, self.batch = stream, model.tokenizer, batch
        # to_tokens(prepend_bos=False) drops the BOS of a tokenizer that adds one itself
        self.drop_first = bool(model.cfg.tokenizer_prepends_bos)
        self.context_size = runner_cfg.context_size
        self.disable_concat = runner_cfg.disable_concat_sequences
        self.begin = self.tokenizer.bos_token_id if runner_cfg.prepend_bos else None
        self.separator = get_special_token_from_cfg(runner_cfg.sequence_separator_token, self.tokenizer)

    def _documents(self) -> Iterator[torch.Tensor]:
        import torch

        rows = iter(self.stream)
        while chunk := [row["text"] for row in islice(rows, self.batch)]:
            for ids in self.tokenizer(chunk)["input_ids"]:
                yield torch.tensor(ids[1:] if self.drop_first else ids, dtype=torch.long)

    def _pack(self, documents: Iterator[torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
        from sae_lens.tokenization_and_batching import concat_and_batch_sequences

        rows = concat_and_batch_sequences(
            tokens_iterator=documents,
            context_size=self.context_size,
            begin_batch_token_id=self.begin,
            sequence_separator_token_id=self.separator,
            disable_concat_sequences=self.disable_concat,
        )
        for row in rows:
            yield {"input_ids": row}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self._pack(self._documents())


class CountedRows(PackedRows):
    """``PackedRows`` that count the documents with tokens in the rows served, for an evaluation to say what it
    covered. ``documents_covered`` is the most over the iterations (each starts the stream afresh, so the same
    documents in the same order): documents 0 … n-1 of the stream.

    The packer takes a document only once the one before is used up, so when a row is served the documents taken
    so far all have tokens in the rows served, except the last when the row ends with the separator put before it.
    """

    documents_covered = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        taken = 0

        def counted() -> Iterator[torch.Tensor]:
            nonlocal taken
            for document in self._documents():
                taken += len(document) > 0  # an empty document puts no token in any row
                yield document

        for row in self._pack(counted()):
            last = int(row["input_ids"][-1])
            covered = taken - int(self.separator is not None and last == self.separator)
            self.documents_covered = max(self.documents_covered, covered)
            yield row


class CycledTexts:
    """Texts as rows of ``text``, over and over in the same order: a store over a few prompts fills any number of
    rows (each iteration starts again at the first)."""

    def __init__(self, texts: list[str]) -> None:
        if not texts:
            raise ValueError("CycledTexts needs at least one text")
        self.texts = texts

    def __iter__(self) -> Iterator[dict[str, str]]:
        while True:
            for text in self.texts:
                yield {"text": text}


def pack_documents(
    tokenizer: Any, texts: Iterable[str], context_size: int, max_tokens: int, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenise documents and pack them the way SAE-Lens's training stream does: every sequence starts with BOS, and
    documents that share a sequence are separated by BOS (a document that opens a sequence gets no separator). Stops
    after ``max_tokens`` document tokens (the last document may be cut); the last sequence is padded with BOS.

    Returns ``tokens`` [n_seq, context_size] and ``doc`` of the same shape: the index of the document each token
    came from, -1 for BOS and padding, so that statistics count only the documents' own tokens.
    """
    import torch

    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    rows: list[tuple[list[int], list[int]]] = []
    row_tokens, row_docs = [bos], [-1]

    def put(token: int, doc: int) -> None:
        nonlocal row_tokens, row_docs
        row_tokens.append(token)
        row_docs.append(doc)
        if len(row_tokens) == context_size:
            rows.append((row_tokens, row_docs))
            row_tokens, row_docs = [bos], [-1]

    doc_tokens = 0
    texts = iter(texts)
    index = 0
    while doc_tokens < max_tokens and (chunk := list(islice(texts, batch))):
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            ids = ids[: max_tokens - doc_tokens]
            if ids and len(row_tokens) > 1:
                put(bos, -1)
            for token in ids:
                put(token, index)
            doc_tokens += len(ids)
            index += 1
            if doc_tokens >= max_tokens:
                break
    if len(row_tokens) > 1:
        pad = context_size - len(row_tokens)
        rows.append((row_tokens + [bos] * pad, row_docs + [-1] * pad))
    return (
        torch.tensor([r[0] for r in rows], dtype=torch.long).view(-1, context_size),
        torch.tensor([r[1] for r in rows], dtype=torch.long).view(-1, context_size),
    )
