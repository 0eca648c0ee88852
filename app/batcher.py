"""Dynamic batching of variable-length waveforms, independent of HTTP (design section 6).

`DynamicBatcher.submit()` queues one mono waveform and awaits its own result. A collector task
on the event loop closes a batch when it reaches `max_batch_size`, when the padded-frame
budget (longest item x count) is full, or when the oldest item has waited `max_wait_ms`.
Within a window of the oldest waiting items, batches are grown around the oldest one by
length, so items of similar length share a batch and padding stays small. The model runs in
one dedicated worker thread so the event loop stays free; only one batch runs at a time, and
items arriving meanwhile gather into the next one.

`run_batch(waveforms (B, S), lengths (B,)) -> Sequence[R]` must return one result per row,
cut to that row's valid length, so results never depend on the batch an item landed in.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import torch
from torch import Tensor

from model_training.precision import inference_autocast

logger = logging.getLogger(__name__)

R = TypeVar("R")

#: Thread name prefix of the worker a batcher starts for itself.
WORKER_PREFIX = "hlstm-batcher"


class QueueFullError(Exception):
    """The queue holds `queue_limit` items; the caller should retry after `retry_after_s`."""

    def __init__(self, queue_depth: int, retry_after_s: int) -> None:
        super().__init__(f"batch queue full ({queue_depth} waiting); retry in {retry_after_s} s")
        self.queue_depth = queue_depth
        self.retry_after_s = retry_after_s


class BatcherTimeoutError(Exception):
    """An item was not computed within its timeout (queue wait + compute)."""


class BatcherStoppedError(Exception):
    """The batcher is not running (not started yet, or stopping)."""


class BatcherObserver(Protocol):
    """Metrics hooks; `app.metrics.Metrics` implements them with Prometheus."""

    def on_queue_depth(self, depth: int) -> None: ...

    def on_batch(
        self,
        *,
        size: int,
        padded_frames: int,
        padding_ratio: float,
        queue_waits: Sequence[float],
        inference_seconds: float,
        audio_seconds: float,
    ) -> None: ...

    def on_batch_error(self, error_type: str) -> None: ...


@dataclass
class BatcherStats:
    """Counters kept by the batcher itself (for tests and logs; metrics go to the observer)."""

    batches: int = 0
    items_computed: int = 0
    items_dropped: int = 0
    oom_splits: int = 0
    batch_sizes: deque[int] = field(default_factory=lambda: deque(maxlen=10_000))


@dataclass
class _Item:
    waveform: Tensor  # (S,) float32 on CPU
    num_samples: int
    num_frames: int
    future: asyncio.Future
    enqueued: float  # time.monotonic()
    # The submitter's context: log lines about this item carry its request id (if any).
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class DynamicBatcher(Generic[R]):
    """Collects `submit()`ted waveforms into padded batches and runs `run_batch` on them.

    Args:
        run_batch: `(waveforms (B, S) float32, lengths (B,) long) -> Sequence[R]` of length B,
            called in the worker thread with tensors already on `device`.
        max_batch_size: most items per batch.
        max_batch_frames: padded-frame budget per batch (longest item's frames x count); an
            item longer than the budget still runs alone.
        max_wait_ms: longest time the oldest waiting item waits for the batch to fill.
        queue_limit: most items waiting; `submit()` raises `QueueFullError` beyond it.
        samples_per_frame: samples per model frame (320 = 20 ms at 16 kHz).
        sample_rate: for audio-seconds metrics.
        device: where batches run; on CUDA the batch is built in pinned memory and copied
            with `non_blocking=True`.
        fp16: autocast to float16 (CUDA only).
        cpu_bf16: autocast to bfloat16 (CPU only).
        window: how many of the oldest items are considered when grouping by length;
            defaults to 4 x max_batch_size.
        observer: metrics hooks.
        executor: a single-thread executor to run batches on (the service passes its torch
            thread, `app/torch_worker.py`, so all its torch compute shares one thread); the
            batcher then leaves shutting it down to its owner. None: the batcher starts its own.
    """

    def __init__(
        self,
        run_batch: Callable[[Tensor, Tensor], Sequence[R]],
        *,
        max_batch_size: int = 16,
        max_batch_frames: int = 24_000,
        max_wait_ms: float = 10.0,
        queue_limit: int = 256,
        samples_per_frame: int = 320,
        sample_rate: int = 16_000,
        device: str | torch.device = "cpu",
        fp16: bool = False,
        cpu_bf16: bool = False,
        window: int | None = None,
        observer: BatcherObserver | None = None,
        executor: Executor | None = None,
    ) -> None:
        if max_batch_size < 1 or max_batch_frames < 1 or queue_limit < 1:
            raise ValueError(
                "max_batch_size, max_batch_frames and queue_limit must be >= 1, found "
                f"{max_batch_size}, {max_batch_frames}, {queue_limit}"
            )
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_frames = max_batch_frames
        self.max_wait_s = max_wait_ms / 1000.0
        self.queue_limit = queue_limit
        self.samples_per_frame = samples_per_frame
        self.sample_rate = sample_rate
        self.device = torch.device(device)
        self.fp16 = fp16 and self.device.type == "cuda"
        self.cpu_bf16 = cpu_bf16 and self.device.type == "cpu"
        self.window = window or 4 * max_batch_size
        self.observer = observer
        self.stats = BatcherStats()
        self._pending: deque[_Item] = deque()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: Executor | None = executor
        self._owns_executor = executor is None
        self._running = False
        self._failed = False
        # Exponential average of seconds per batch, for Retry-After estimates.
        self._batch_seconds_ema = 0.05

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        """True between `start()` and `stop()`."""
        return self._running

    @property
    def queue_depth(self) -> int:
        """Items waiting for a batch (not counting the batch being computed)."""
        return len(self._pending)

    def start(self) -> None:
        """Start the collector task on the running event loop and the worker thread."""
        if self._running:
            return
        self._wakeup = asyncio.Event()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=WORKER_PREFIX)
        self._running = True
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="batcher")

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Stop accepting items, let waiting ones finish (up to the timeout), then shut down.

        Items still waiting at the deadline fail with `BatcherStoppedError`.
        """
        if not self._running:
            return
        self._running = False
        assert self._wakeup is not None and self._task is not None
        self._wakeup.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), drain_timeout_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(BatcherStoppedError("service is shutting down"))
        self._report_depth()
        if self._owns_executor and self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # ------------------------------------------------------------------ submit
    @property
    def precision(self) -> str:
        """fp16 (CUDA), bf16 (CPU) or fp32: the autocast batches run under."""
        return "fp16" if self.fp16 else "bf16" if self.cpu_bf16 else "fp32"

    def frames_of(self, num_samples: int) -> int:
        """Frames the model produces for `num_samples` (for the budget; at least 1)."""
        return max(1, num_samples // self.samples_per_frame)

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained one batch's worth (at least 1)."""
        batches_ahead = math.ceil(len(self._pending) / self.max_batch_size)
        return max(1, math.ceil(batches_ahead * self._batch_seconds_ema))

    async def submit(self, waveform: Tensor, *, timeout: float | None = None) -> R:
        """Queue one mono waveform (S,) and wait for its result.

        Raises:
            QueueFullError: `queue_limit` items are already waiting.
            BatcherTimeoutError: no result within `timeout` seconds (the item is dropped if
                its batch has not started).
            BatcherStoppedError: the batcher is not running.
            Exception: whatever `run_batch` raised for this item's batch.
        """
        if not self._running or self._wakeup is None:
            raise BatcherStoppedError("batcher is not running")
        if waveform.dim() != 1 or waveform.numel() == 0:
            raise ValueError(
                f"expected a non-empty mono waveform (S,), found shape {tuple(waveform.shape)}"
            )
        if len(self._pending) >= self.queue_limit:
            raise QueueFullError(len(self._pending), self.retry_after_s())
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        n = int(waveform.numel())
        self._pending.append(
            _Item(waveform.float(), n, self.frames_of(n), future, time.monotonic())
        )
        self._report_depth()
        self._wakeup.set()
        try:
            # wait_for cancels `future` on timeout or when the caller is cancelled (client
            # gone); the collector then drops the item before compute.
            return await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            raise BatcherTimeoutError(f"no result within {timeout} s") from exc

    # ------------------------------------------------------------------ collector
    def _report_depth(self) -> None:
        if self.observer is not None:
            self.observer.on_queue_depth(len(self._pending))

    def _drop_abandoned(self) -> None:
        """Remove items whose future is already done (cancelled by a client or a timeout)."""
        if any(item.future.done() for item in self._pending):
            kept = [item for item in self._pending if not item.future.done()]
            self.stats.items_dropped += len(self._pending) - len(kept)
            self._pending = deque(kept)
            self._report_depth()

    def _budget_full(self) -> bool:
        """True when the waiting items already fill a batch (by count or padded frames)."""
        if len(self._pending) >= self.max_batch_size:
            return True
        longest = max(item.num_frames for item in self._pending)
        return longest * len(self._pending) >= self.max_batch_frames

    @property
    def failed(self) -> bool:
        """True when the collector task died on an unexpected error (the batcher is dead)."""
        return self._failed

    async def _collect(self) -> None:
        try:
            await self._collect_loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug here must not leave callers hanging until their timeout.
            logger.exception("batch collector crashed; failing waiting requests")
            self._failed, self._running = True, False
            while self._pending:
                item = self._pending.popleft()
                if not item.future.done():
                    item.future.set_exception(BatcherStoppedError("batcher crashed"))
            self._report_depth()

    async def _collect_loop(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while self._running or self._pending:
            self._drop_abandoned()
            if not self._pending:
                if not self._running:
                    break
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Wait for the batch to fill, up to max_wait after the oldest item arrived.
            while self._running:
                self._drop_abandoned()
                if not self._pending or self._budget_full():
                    break
                remaining = self._pending[0].enqueued + self.max_wait_s - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
            self._drop_abandoned()
            if not self._pending:
                continue
            batch = self._take_batch()
            self._report_depth()
            started = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, self._compute, batch)
            except Exception as exc:  # the batch failed; its callers get the error
                for i, item in enumerate(batch):  # one line per request, in its context
                    item.context.run(
                        logger.error,
                        "batch of %d failed: %s",
                        len(batch),
                        exc,
                        exc_info=exc if i == 0 else None,
                    )
                if self.observer is not None:
                    self.observer.on_batch_error(type(exc).__name__)
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            elapsed = time.monotonic() - started
            self._batch_seconds_ema = 0.8 * self._batch_seconds_ema + 0.2 * elapsed
            self._finish(batch, results, started, elapsed)

    def _take_batch(self) -> list[_Item]:
        """Pick the oldest item plus its nearest neighbours by length from the window.

        The batch grows one item at a time, taking the next-shorter or next-longer
        neighbour, whichever adds fewer padded frames, while size and budget allow.
        """
        window = [self._pending[i] for i in range(min(self.window, len(self._pending)))]
        anchor = window[0]
        ordered = sorted(window, key=lambda it: it.num_frames)
        pos = next(i for i, it in enumerate(ordered) if it is anchor)
        lo, hi = pos, pos  # inclusive range of `ordered` taken
        longest = anchor.num_frames
        while hi - lo + 1 < self.max_batch_size:
            count = hi - lo + 2
            options = []
            if lo > 0:  # shorter item: adds its own padding
                shorter = ordered[lo - 1]
                if longest * count <= self.max_batch_frames:
                    options.append((longest - shorter.num_frames, -1))
            if hi + 1 < len(ordered):  # longer item: pads everyone up to its length
                longer = ordered[hi + 1]
                if longer.num_frames * count <= self.max_batch_frames:
                    options.append(((longer.num_frames - longest) * (count - 1), +1))
            if not options:
                break
            _, side = min(options)
            if side < 0:
                lo -= 1
            else:
                hi += 1
                longest = ordered[hi].num_frames
        chosen = ordered[lo : hi + 1]
        chosen_ids = {id(it) for it in chosen}
        self._pending = deque(it for it in self._pending if id(it) not in chosen_ids)
        return chosen

    # ------------------------------------------------------------------ worker thread
    def _compute(self, batch: list[_Item]) -> list[R]:
        """Worker thread: pad, move to the device, run; split in halves on CUDA OOM."""
        try:
            return self._run_padded(batch)
        except torch.OutOfMemoryError:
            if len(batch) == 1:
                raise
        # Retry outside the except block: the traceback would keep the failed attempt's
        # device tensors alive during the retries.
        self.stats.oom_splits += 1
        logger.warning("out of memory on a batch of %d; splitting in halves", len(batch))
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        half = len(batch) // 2
        return self._compute(batch[:half]) + self._compute(batch[half:])

    def _run_padded(self, batch: list[_Item]) -> list[R]:
        longest = max(item.num_samples for item in batch)
        pin = self.device.type == "cuda"
        waveforms = torch.zeros(len(batch), longest, dtype=torch.float32, pin_memory=pin)
        for row, item in enumerate(batch):
            waveforms[row, : item.num_samples] = item.waveform
        lengths = torch.tensor([item.num_samples for item in batch], dtype=torch.long)
        if pin:
            lengths = lengths.pin_memory()
        waveforms = waveforms.to(self.device, non_blocking=True)
        lengths = lengths.to(self.device, non_blocking=True)
        with torch.inference_mode(), inference_autocast(self.device, self.precision):
            results = list(self._run_batch(waveforms, lengths))
        if len(results) != len(batch):
            raise ValueError(f"run_batch returned {len(results)} results for {len(batch)} items")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return results

    def _finish(self, batch: list[_Item], results: list[R], started: float, elapsed: float) -> None:
        """Event loop: hand out results and record the batch."""
        for item, result in zip(batch, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
        size = len(batch)
        longest = max(item.num_frames for item in batch)
        padded = longest * size
        valid = sum(item.num_frames for item in batch)
        self.stats.batches += 1
        self.stats.items_computed += size
        self.stats.batch_sizes.append(size)
        if self.observer is not None:
            self.observer.on_batch(
                size=size,
                padded_frames=padded,
                padding_ratio=1.0 - valid / padded,
                queue_waits=[started - item.enqueued for item in batch],
                inference_seconds=elapsed,
                audio_seconds=sum(item.num_samples for item in batch) / self.sample_rate,
            )


def current_thread_is_worker() -> bool:
    """True inside the batcher's worker thread (for assertions in tests)."""
    return threading.current_thread().name.startswith(WORKER_PREFIX)
