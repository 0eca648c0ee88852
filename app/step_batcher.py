"""Many live streams on few cores: every active stream's pending audio in one batched step.

Triton's sequence-batching idea for the causal student (`model_training/streaming.py`): each
open stream has a handle; clients `push` 16 kHz samples and `commit`/`clear` markers without
waiting (the event loop never blocks on inference). A collector task takes everything pending
across all streams and runs ONE `StreamingModel.step` with their stacked states on the
service's torch thread; while it runs, new audio gathers for the next step, and an idle
collector gives the other streams up to `max_wait_ms` to join a step (real-time clients send
their chunks at different instants: without the wait, a fast step would take one stream at a
time and stacking would only begin once the server falls behind). Outputs (frames,
text deltas, final words at a commit) go to each handle's queue in order.

Bounds: at most `max_streams` open handles (`StreamsFullError`), at most `max_pending_s` of
audio waiting per stream (`BufferFullError`), and a handle whose reader stopped reading is
refused more audio once `max_unread` outputs wait. `batched=False` runs one forward per
stream instead (the baseline `benchmarks/streaming_load.py` compares against).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch

from model_training.decoding import DecodeStep
from model_training.streaming import StreamingModel, StreamState, StreamStep

logger = logging.getLogger(__name__)


class StreamsFullError(Exception):
    """All `max_streams` slots are taken."""


class BufferFullError(Exception):
    """The stream's unprocessed audio (or unread output) is over its limit."""


class StreamClosedError(Exception):
    """The handle is closed (or the batcher stopped)."""


class StepObserver(Protocol):
    """Metrics hooks (`app.metrics.Metrics` implements them)."""

    def on_active_streams(self, count: int) -> None: ...

    def on_step(self, *, streams: int, audio_seconds: float, compute_seconds: float) -> None: ...


@dataclass
class Marker:
    """A buffer boundary in a stream: `commit` ends an item, `clear` drops it.

    `position` is the stream's sample count (16 kHz, since it was opened) at the marker.
    """

    kind: Literal["commit", "clear"]
    tag: object
    position: int = 0


@dataclass
class StepOutput:
    """One stream's share of one step, or a marker it reached.

    Attributes:
        step: the new frames and text (None for a marker output).
        origin: sample position (stream timeline) of the state's frame 0.
        first_char_arrival: `time.monotonic()` when the chunk completing the step's first new
            character arrived (for the delta-latency metric); None without characters.
        marker: the marker reached (its frames are all in earlier outputs).
        final: at a commit, the words that became final at the end of the item.
        item_samples: at a marker, the samples the item held.
        error: the step failed; the handle is closed (its state is lost).
    """

    step: StreamStep | None = None
    origin: int = 0
    first_char_arrival: float | None = None
    marker: Marker | None = None
    final: DecodeStep | None = None
    item_samples: int = 0
    error: str | None = None


@dataclass(eq=False)
class StreamHandle:
    """One open stream. Push audio and markers from the event loop; read `outputs`."""

    id: int
    batcher: StepBatcher
    max_pending: int | None  # samples; None = unbounded (whole uploads)
    outputs: asyncio.Queue[StepOutput] = field(default_factory=asyncio.Queue)
    pending: deque[np.ndarray | Marker] = field(default_factory=deque)
    pending_samples: int = 0
    pushed: int = 0  # samples pushed since open (the stream timeline)
    arrivals: deque[tuple[int, float]] = field(default_factory=deque)  # (end position, time)
    pending_since: float | None = None  # arrival of the oldest audio not yet taken
    state: StreamState | None = None  # touched on the torch thread only
    origin: int = 0  # stream position of the state's frame 0
    closed: bool = False

    def push(self, samples: np.ndarray) -> None:
        """Queue (S,) float32 16 kHz samples. Raises BufferFullError / StreamClosedError."""
        if self.closed:
            raise StreamClosedError("stream is closed")
        if self.max_pending is not None:
            if self.pending_samples + samples.size > self.max_pending:
                raise BufferFullError(
                    f"{(self.pending_samples + samples.size) / 16000:.1f} s of audio would "
                    f"wait for the model, over the limit of {self.max_pending / 16000:g} s"
                )
            if self.outputs.qsize() > self.batcher.max_unread:
                raise BufferFullError("the client is not reading the server's events")
        if samples.size == 0:
            return
        now = time.monotonic()
        self.pending.append(np.ascontiguousarray(samples, dtype=np.float32))
        self.pending_samples += samples.size
        self.pushed += samples.size
        self.arrivals.append((self.pushed, now))
        if self.pending_since is None:
            self.pending_since = now
        self.batcher.wake()

    def mark(self, kind: Literal["commit", "clear"], tag: object = None) -> None:
        """Queue a buffer boundary; its `StepOutput` follows the item's last frames."""
        if self.closed:
            raise StreamClosedError("stream is closed")
        if kind == "clear":  # this buffer's audio not yet taken is dropped right away
            while self.pending and not isinstance(self.pending[-1], Marker):
                self.pending_samples -= self.pending.pop().size  # type: ignore[union-attr]
        self.pending.append(Marker(kind, tag, self.pushed))
        self.batcher.wake()

    def close(self) -> None:
        """Free the slot; pending audio and outputs are dropped."""
        if not self.closed:
            self.closed = True
            self.batcher.release(self)


@dataclass
class _Work:
    """What one handle contributes to a step (taken on the event loop)."""

    handle: StreamHandle
    chunk: np.ndarray
    markers: list[Marker]  # reached after `chunk` (at most one in practice)
    arrivals: list[tuple[int, float]]


class StepBatcher:
    """Advances all open streams of one `StreamingModel` together (see module docstring).

    Args:
        model: the streaming model.
        executor: the service's torch thread (`app/torch_worker.py`).
        max_streams: open handles allowed.
        max_pending_s: seconds of audio a (bounded) handle may have waiting.
        max_unread: outputs waiting to be read before `push` refuses more audio.
        max_wait_ms: how long the oldest waiting audio may wait for other streams' audio to
            join its step (while some open streams have none); 0 steps at once.
        batched: False runs one forward per stream (baseline).
        observer: metrics hooks.
    """

    def __init__(
        self,
        model: StreamingModel,
        executor: Executor,
        *,
        max_streams: int = 128,
        max_pending_s: float = 30.0,
        max_unread: int = 1000,
        max_wait_ms: float = 20.0,
        batched: bool = True,
        observer: StepObserver | None = None,
    ) -> None:
        if max_streams < 1 or max_pending_s <= 0:
            raise ValueError("max_streams must be >= 1 and max_pending_s > 0")
        self.model = model
        self.executor = executor
        self.max_streams = max_streams
        self.max_pending = int(max_pending_s * 16_000)
        self.max_unread = max_unread
        self.max_wait_s = max_wait_ms / 1000.0
        self.batched = batched
        self.observer = observer
        self.handles: dict[int, StreamHandle] = {}
        self.steps = 0
        self._ids = itertools.count()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._running = False
        self._rr = 0  # round-robin position (unbatched mode)

    # ------------------------------------------------------------------ lifecycle
    @property
    def running(self) -> bool:
        """True between `start()` and `stop()`."""
        return self._running

    @property
    def active(self) -> int:
        """Open streams."""
        return len(self.handles)

    def start(self) -> None:
        """Start the collector on the running loop."""
        if self._running:
            return
        self._wakeup = asyncio.Event()
        self._running = True
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="step-batcher")

    async def stop(self) -> None:
        """Close every handle and stop the collector (the step in flight finishes)."""
        self._running = False
        for handle in list(self.handles.values()):
            handle.close()
        if self._task is not None:
            self.wake()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def open(self, *, bounded: bool = True) -> StreamHandle:
        """A new stream. `bounded=False` lifts the pending-audio limit (whole uploads).

        Raises StreamsFullError when `max_streams` are open, StreamClosedError when stopped.
        """
        if not self._running:
            raise StreamClosedError("the stream batcher is not running")
        if len(self.handles) >= self.max_streams:
            raise StreamsFullError(f"all {self.max_streams} stream slots are in use")
        handle = StreamHandle(next(self._ids), self, self.max_pending if bounded else None)
        self.handles[handle.id] = handle
        self._report_active()
        return handle

    def release(self, handle: StreamHandle) -> None:
        """Called by `StreamHandle.close`."""
        if self.handles.pop(handle.id, None) is not None:
            handle.pending.clear()
            handle.pending_samples = 0
            self._report_active()

    def wake(self) -> None:
        """Tell the collector there is work."""
        if self._wakeup is not None:
            self._wakeup.set()

    def _report_active(self) -> None:
        if self.observer is not None:
            self.observer.on_active_streams(len(self.handles))

    # ------------------------------------------------------------------ collector
    def _has_work(self, handle: StreamHandle) -> bool:
        state = handle.state
        leftover = state is not None and self.model.ready_frames(state) > 0
        return bool(handle.pending) or leftover

    def _take(self, handle: StreamHandle) -> _Work:
        """Pop the handle's audio up to (and including) its first marker."""
        chunks: list[np.ndarray] = []
        markers: list[Marker] = []
        while handle.pending and not markers:
            item = handle.pending.popleft()
            if isinstance(item, Marker):
                markers.append(item)
            else:
                chunks.append(item)
                handle.pending_samples -= item.size
        chunk = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
        if not any(isinstance(item, np.ndarray) for item in handle.pending):
            handle.pending_since = None
        arrivals = list(handle.arrivals)
        return _Work(handle, chunk, markers, arrivals)

    async def _collect(self) -> None:
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        while self._running:
            ready = [h for h in self.handles.values() if self._has_work(h)]
            if not ready:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if await self._gather(ready):
                continue
            if self.batched:
                groups = [ready]
            else:  # one forward per stream, round-robin
                self._rr = (self._rr + 1) % len(ready)
                groups = [[h] for h in ready[self._rr :] + ready[: self._rr]]
            for group in groups:
                work = [self._take(h) for h in group]
                started = time.monotonic()
                try:
                    results = await loop.run_in_executor(self.executor, self._compute, work)
                except Exception:
                    logger.exception("streaming step over %d streams failed", len(work))
                    for w in work:  # the streams' states are unknown now: end them
                        w.handle.outputs.put_nowait(StepOutput(error="inference failed"))
                        w.handle.close()
                    continue
                self._deliver(work, results, time.monotonic() - started)

    async def _gather(self, ready: list[StreamHandle]) -> bool:
        """Batched mode: let streams without audio join this step until the oldest waiting
        audio has waited `max_wait_ms`. True when it waited (the caller looks again)."""
        if not self.batched or self.max_wait_s <= 0 or len(ready) >= len(self.handles):
            return False
        since = [h.pending_since for h in ready if h.pending_since is not None]
        if not since:
            return False
        remaining = min(since) + self.max_wait_s - time.monotonic()
        if remaining <= 0:
            return False
        assert self._wakeup is not None
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), remaining)
        return True

    def _compute(self, work: Sequence[_Work]) -> list[list[StepOutput]]:
        """Torch thread: one batched step, then the markers the streams reached."""
        for w in work:
            if w.handle.state is None:
                w.handle.state = self.model.new_state()
        states = [w.handle.state for w in work]
        chunks = [torch.from_numpy(w.chunk) for w in work]
        steps = self.model.step(states, chunks)  # type: ignore[arg-type]
        results: list[list[StepOutput]] = []
        for w, step in zip(work, steps, strict=True):
            handle, state = w.handle, w.handle.state
            assert state is not None
            out = [
                StepOutput(
                    step=step,
                    origin=handle.origin,
                    first_char_arrival=self._arrival(handle.origin, step, w.arrivals),
                )
            ]
            for marker in w.markers:
                # Frames the cap left behind are finished before the marker takes effect.
                while self.model.ready_frames(state):
                    extra = self.model.step([state])[0]
                    out.append(StepOutput(step=extra, origin=handle.origin))
                final = self.model.finish(state) if marker.kind == "commit" else None
                out.append(
                    StepOutput(
                        marker=marker,
                        origin=handle.origin,
                        final=final,
                        item_samples=marker.position - handle.origin,
                    )
                )
                handle.state = state = self.model.new_state()
                handle.origin = marker.position
            results.append(out)
        return results

    def _arrival(
        self, origin: int, step: StreamStep, arrivals: list[tuple[int, float]]
    ) -> float | None:
        """When the chunk holding the last sample of the step's first character's frame came."""
        if not step.chars:
            return None
        needed = origin + step.chars[0].frame * self.model.hop + self.model.receptive_field
        for end, arrived in arrivals:
            if end >= needed:
                return arrived
        return None

    def _deliver(
        self, work: Sequence[_Work], results: list[list[StepOutput]], elapsed: float
    ) -> None:
        """Event loop: hand outputs to their handles, trim arrival records, record the step."""
        self.steps += 1
        frames = 0
        for w, outs in zip(work, results, strict=True):
            handle = w.handle
            state = handle.state
            done = handle.origin + (state.frames * self.model.hop if state is not None else 0)
            while handle.arrivals and handle.arrivals[0][0] <= done:
                handle.arrivals.popleft()
            for out in outs:
                if out.step is not None:
                    frames += out.step.num_frames
                if not handle.closed:
                    handle.outputs.put_nowait(out)
        if self.observer is not None and frames:
            self.observer.on_step(
                streams=len(work),
                audio_seconds=frames * self.model.frame_seconds,
                compute_seconds=elapsed,
            )
