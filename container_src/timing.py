"""Measuring tools for `bench`: a step clock over SAE-Lens's trainer, a peak-memory sampler, and a batch timer.

On a GPU, time is read from CUDA events recorded on the stream, so that measuring never makes the CPU wait for the
device where training itself would not.
"""

from __future__ import annotations

import contextlib
import gc
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class Speed:
    """One pipeline's throughput over the timed window, and its peak memory."""

    tokens_per_s: float
    tokens: int
    seconds: float
    cpu_seconds: float
    """CPU time of the whole process and its worker processes (``data_worker``) over the window: on a shared
    machine, less sensitive to the other load."""
    steps: int
    batch_tokens: int
    peak_memory_bytes: int
    memory_at_start_bytes: int
    """What was already held when the pipeline started (on CPU the resident set: RSS cannot be reset, so a pipeline
    that runs after another starts from what that one left); peak minus this is the pipeline's own."""

    def to_json(self) -> dict[str, Any]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.__dict__.items()}


class NoWholeCycleError(RuntimeError):
    """The steps after the warm-up hold fewer than two refills of the activation buffer, so no whole cycle to time."""


@contextlib.contextmanager
def replaced(owner: Any, **attributes: Any) -> Iterator[None]:
    """``owner``'s attributes set to ``attributes`` for the duration of a ``with`` (a library's method wrapped to
    measure it), the originals put back after."""
    originals = {name: getattr(owner, name) for name in attributes}
    for name, value in attributes.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in originals.items():
            setattr(owner, name, value)


class StepClock:
    """The end time of every SAE training step (once the device has finished it), and which steps are followed by
    a refill of the activation buffer.

    It wraps SAE-Lens's ``SAETrainer.step`` and ``ActivationsStore.get_raw_llm_batch`` for the duration of a
    ``with``, so our runner and the bare one are timed by the same code at the same points. The model runs in
    bursts: one refill feeds several steps (2 in the seed configuration, 4 with SAE-Lens's defaults), so a window
    that cut a burst in two would charge one pipeline more model work per token than the other. The timed window
    therefore runs from the first step after the warm-up that ends just before a refill to the last such step:
    whole refill cycles only.

    On a GPU each step's end is a CUDA event recorded on the stream, read once at the end: synchronising after every
    step would stall the CPU's queueing of the next step's kernels, which training itself never does.
    """

    def __init__(self, device: str) -> None:
        self.device = device
        self.ends: list[tuple[Any, float]] = []
        """(wall clock or CUDA event, CPU time of the process and its workers) at the end of each step."""
        self.worker_cpu: dict[int, float] = {}
        """The last CPU time read for each worker process, by pid: a worker that has ended keeps its share."""
        self.refill_after: set[int] = set()
        """Step counts after which the buffer was refilled (0: before the first step)."""

    def mark(self) -> Any:
        if not self.device.startswith("cuda"):
            return time.perf_counter()
        import torch

        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def cpu_seconds(self) -> float:
        """CPU time so far of this process and of the worker processes it has started (``data_worker``)."""
        import multiprocessing

        import psutil

        for pid in [child.pid for child in multiprocessing.active_children() if child.pid is not None]:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(pid).cpu_times()
                self.worker_cpu[pid] = times.user + times.system
        return time.process_time() + sum(self.worker_cpu.values())

    def seconds_between(self, start: Any, end: Any) -> float:
        if not self.device.startswith("cuda"):
            return end - start
        synchronize(self.device)
        return start.elapsed_time(end) / 1000

    @contextlib.contextmanager
    def installed(self) -> Iterator[StepClock]:
        from sae_lens.training.activations_store import ActivationsStore
        from sae_lens.training.sae_trainer import SAETrainer

        step, fetch = SAETrainer.step, ActivationsStore.get_raw_llm_batch

        def timed_step(trainer: Any, batch: Any) -> Any:
            output = step(trainer, batch)
            self.ends.append((self.mark(), self.cpu_seconds()))
            return output

        def noted_fetch(store: Any, *args: Any, **kwargs: Any) -> Any:
            self.refill_after.add(len(self.ends))
            return fetch(store, *args, **kwargs)

        self.ends, self.refill_after = [], set()
        with replaced(SAETrainer, step=timed_step), replaced(ActivationsStore, get_raw_llm_batch=noted_fetch):
            yield self

    def speed(self, warmup: int, batch_tokens: int, memory: PeakMemory) -> Speed:
        bounds = [n for n in sorted(self.refill_after) if warmup <= n < len(self.ends)]
        if len(bounds) < 2:
            raise NoWholeCycleError(
                f"no whole buffer refill cycle after the {warmup} warm-up steps ({len(self.ends)} steps, refills "
                f"after steps {sorted(self.refill_after)}): raise steps"
            )
        (start, cpu_start), (end, cpu_end) = self.ends[bounds[0] - 1], self.ends[bounds[-1] - 1]
        seconds = self.seconds_between(start, end)
        steps = bounds[-1] - bounds[0]
        tokens = steps * batch_tokens
        return Speed(
            tokens / seconds, tokens, seconds, cpu_end - cpu_start, steps, batch_tokens, memory.peak, memory.start
        )


class PeakMemory:
    """Peak memory during a ``with``: the CUDA allocator's peak on a GPU; on CPU the process's resident set,
    sampled every 20 ms (the process-wide peak would mix the pipelines up)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak = self.start = 0
        self.kind = "cuda_max_memory_allocated" if device.startswith("cuda") else "cpu_rss_sampled"

    @contextlib.contextmanager
    def measuring(self) -> Iterator[PeakMemory]:
        import torch

        release_memory(self.device)
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = int(torch.cuda.memory_allocated(self.device))
            yield self
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
            return
        import psutil

        process, stop = psutil.Process(), threading.Event()
        self.peak = self.start = process.memory_info().rss

        def sample() -> None:
            while not stop.wait(0.02):
                self.peak = max(self.peak, process.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            yield self
        finally:
            stop.set()
            sampler.join()
            self.peak = max(self.peak, process.memory_info().rss)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def release_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def time_batches(device: str, batches: int, run_batch: Callable[[], Any]) -> float:
    """Seconds for ``batches`` calls, after one untimed call."""
    run_batch()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(batches):
        run_batch()
    synchronize(device)
    return time.perf_counter() - start
