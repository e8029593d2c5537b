"""SAE-Lens's activation store fed with rows packed on the CPU (``data.PackedRows``): ``PackedStore`` copies each
batch of rows to the device in one go, and ``WorkerRows`` packs the rows in a process of its own. The tokens and
their order are those SAE-Lens's own store gives; only where and when they are packed and copied changes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Generator, Iterator
from itertools import islice
from multiprocessing import forkserver
from typing import Any

import torch
from sae_lens.training.activations_store import ActivationsStore, _get_input_token_device

from container_src import data


class PackedStore(ActivationsStore):
    """SAE-Lens's activation store over ``data.PackedRows``, with one asynchronous copy per batch of rows.

    SAE-Lens's store turns each row it reads into a tensor on the model's device. On a GPU that is a blocking copy
    from pageable memory, and torch waits for the stream to empty after such a copy: for every row, everything
    already queued has to finish. With prefetching the store runs in a thread beside the training step, on the same
    stream, so each of a model batch's rows would wait for the SAE step queued ahead of it. Here the rows stay on the
    CPU and each batch of them moves with one copy from pinned memory, which queues behind the SAE step instead.
    """

    def _iterate_tokenized_sequences(self) -> Generator[torch.Tensor, None, None]:
        # the rows are CPU tensors of context_size tokens already (SAE-Lens's own version copies each to the device)
        yield from self._iterate_raw_dataset()  # type: ignore[misc]

    def get_batch_tokens(
        self, batch_size: int | None = None, raise_at_epoch_end: bool = False, move_to_model_device: bool = True
    ) -> torch.Tensor:
        tokens = super().get_batch_tokens(batch_size, raise_at_epoch_end, move_to_model_device=False)
        if not move_to_model_device:
            return tokens
        device = _get_input_token_device(self.model)
        if device.type == "cuda":  # pinned: the copy is queued on the stream and the thread goes on
            return tokens.pin_memory().to(device, non_blocking=True)
        return tokens.to(device)

    def close(self) -> None:
        """End the current iteration of the rows now. With ``WorkerRows`` that stops the worker; left to the garbage
        collector (the store and its iteration refer to each other), the worker would be killed after 5 s."""
        self.iterable_sequences.close()  # type: ignore[union-attr]


_CHUNK_ROWS = 64
"""Rows per transfer from the worker: 32,768 tokens at context 512."""
_CHUNKS_AHEAD = 4


class _Chunks(torch.utils.data.IterableDataset):
    """What the worker runs: ``rows`` stacked into chunks of ``_CHUNK_ROWS``."""

    def __init__(self, rows: data.PackedRows) -> None:
        self.rows = rows

    def __iter__(self) -> Iterator[torch.Tensor]:
        rows = iter(self.rows)
        while chunk := [row["input_ids"] for row in islice(rows, _CHUNK_ROWS)]:
            yield torch.stack(chunk)


def _worker_start(_worker_id: int) -> None:
    # A process group of its own: a signal sent to the group (Ctrl-C in a terminal, a scheduler's SIGTERM) is the
    # training process's to handle, and it checkpoints before it stops; a worker gone first would leave it without
    # rows. The DataLoader still ends the worker by pid.
    os.setpgrp()
    # Like every forkserver child, the worker holds the pipe whose closing tells the forkserver that the training
    # process is gone. Letting go of it means that if training dies abruptly (SIGKILL, the OOM killer) the
    # forkserver ends, and then the worker, which torch ends when its parent changes; otherwise both would linger.
    server: Any = forkserver._forkserver  # the standard library keeps that pipe in its private singleton
    if getattr(server, "_forkserver_alive_fd", None) is not None:
        os.close(server._forkserver_alive_fd)
        server._forkserver_alive_fd = None


def _worker_context() -> Any:
    """A fresh interpreter per worker, forked from a server that has imported what the worker needs (forkserver);
    spawn where there is no forkserver. The server imports this module only where ``container_src`` is importable
    from the working folder or PYTHONPATH (the image sets it); elsewhere each worker start imports it afresh."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


class WorkerRows:
    """``data.PackedRows``' rows, packed in a worker process: the same rows in the same order. Each iteration starts
    a worker (and the stream) afresh, as each iteration of ``PackedRows`` starts the stream afresh.

    The packing (reading the stream, tokenising, packing) then neither holds the training process's interpreter
    lock, which the training step's kernel launches need, nor shares its cores. The worker is one torch
    ``DataLoader`` worker, started from a fresh interpreter (forkserver), so it inherits no threads, no CUDA context
    and no tokenizer thread pool; the rows come back in order, in chunks.
    """

    def __init__(self, rows: data.PackedRows) -> None:
        self.loader = torch.utils.data.DataLoader(
            _Chunks(rows),
            batch_size=None,
            num_workers=1,
            prefetch_factor=_CHUNKS_AHEAD,
            worker_init_fn=_worker_start,
            multiprocessing_context=_worker_context(),
            # each iteration draws the worker's seed from this generator: from torch's global one, it would change
            # the shuffling buffer's order, and so what is trained
            generator=torch.Generator(),
        )

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        chunks = iter(self.loader)
        try:
            for chunk in chunks:
                for row in chunk:
                    yield {"input_ids": row}
        finally:  # also after an error, whose traceback would otherwise keep the worker until garbage collection
            chunks._shutdown_workers()  # type: ignore[union-attr]


def packed_store(stream: Any, lm: Any, runner_cfg: Any, worker: bool = False) -> PackedStore:
    """The store over ``stream``'s documents packed into rows on the CPU, as training reads them; in a worker process
    if ``worker``."""
    rows: Any = data.PackedRows(stream, lm, runner_cfg)
    return store_over(WorkerRows(rows) if worker else rows, lm, runner_cfg)


def store_over(rows: Any, lm: Any, runner_cfg: Any) -> PackedStore:
    """The store over packed ``rows`` (``data.PackedRows``, or ``WorkerRows`` of them)."""
    store = PackedStore.from_config(lm, runner_cfg, override_dataset=rows)
    assert isinstance(store, PackedStore)  # from_config builds its own class
    return store
