"""DynamicBatcher without HTTP: closing rules, grouping by length, overload, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from torch import Tensor

from app.batcher import (
    BatcherStoppedError,
    BatcherTimeoutError,
    DynamicBatcher,
    QueueFullError,
    current_thread_is_worker,
)


class FakeModel:
    """Records each batch; returns per row a padding-sensitive summary of its valid samples."""

    def __init__(self, *, block: threading.Event | None = None, oom_above: int | None = None):
        self.calls: list[list[int]] = []  # lengths per batch
        self.seen_ids: list[float] = []  # first sample of each computed row (the item's id)
        self.threads_ok = True
        self.block = block
        self.oom_above = oom_above
        self.fail_next = False

    def __call__(self, waveforms: Tensor, lengths: Tensor) -> list[Tensor]:
        self.threads_ok &= current_thread_is_worker() and torch.is_inference_mode_enabled()
        if self.block is not None:
            self.block.wait(5)
        if self.oom_above is not None and waveforms.shape[0] > self.oom_above:
            raise torch.OutOfMemoryError("fake CUDA out of memory")
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("model exploded")
        self.calls.append(lengths.tolist())
        out = []
        for row, n in zip(waveforms, lengths.tolist(), strict=True):
            self.seen_ids.append(float(row[0]))
            # The sum over the whole padded row equals the valid sum only if padding is zero.
            out.append(torch.stack([row.sum(), row[:n].sum(), torch.tensor(float(n))]))
        return out


def wave(item_id: int, frames: int) -> Tensor:
    """A waveform whose first sample identifies it; `frames` x 320 samples."""
    w = torch.rand(frames * 320, generator=torch.Generator().manual_seed(item_id))
    w[0] = float(item_id)
    return w


def expected(w: Tensor) -> Tensor:
    return torch.stack([w.sum(), w.sum(), torch.tensor(float(w.numel()))])


@pytest.fixture
async def make_batcher():
    made: list[DynamicBatcher] = []

    def _make(model, **kwargs) -> DynamicBatcher:
        kwargs.setdefault("max_wait_ms", 20)
        b = DynamicBatcher(model, **kwargs)
        b.start()
        made.append(b)
        return b

    yield _make
    for b in made:
        await b.stop()


async def test_concurrent_items_are_batched_and_results_match(make_batcher):
    model = FakeModel()
    b = make_batcher(model, max_batch_size=8)
    waves = [wave(i, 5 + 3 * i) for i in range(12)]
    results = await asyncio.gather(*(b.submit(w) for w in waves))
    for w, r in zip(waves, results, strict=True):
        torch.testing.assert_close(r, expected(w))
    assert max(len(c) for c in model.calls) > 1
    assert all(len(c) <= 8 for c in model.calls)
    assert sum(len(c) for c in model.calls) == 12
    assert model.threads_ok, "model must run in the worker thread under inference_mode"


async def test_batch_closes_on_max_wait_when_alone(make_batcher):
    model = FakeModel()
    b = make_batcher(model, max_batch_size=64, max_wait_ms=30)
    t0 = time.monotonic()
    await b.submit(wave(1, 10))
    assert 0.025 <= time.monotonic() - t0 < 2.0
    assert model.calls == [[3200]]


async def test_padded_frame_budget_limits_batches(make_batcher):
    model = FakeModel()
    b = make_batcher(model, max_batch_size=16, max_batch_frames=100)
    frames = [30, 30, 30, 30, 30, 30, 120]  # 120 exceeds the budget alone: runs alone
    await asyncio.gather(*(b.submit(wave(i, f)) for i, f in enumerate(frames)))
    for lengths in model.calls:
        padded = max(lengths) // 320 * len(lengths)
        assert padded <= 100 or len(lengths) == 1
    assert [120 * 320] in model.calls


async def test_items_grouped_by_length(make_batcher):
    model = FakeModel()
    b = make_batcher(model, max_batch_size=2)
    frames = [100, 5] * 4
    await asyncio.gather(*(b.submit(wave(i, f)) for i, f in enumerate(frames)))
    for lengths in model.calls:
        assert len(set(lengths)) == 1, f"mixed lengths in a batch: {lengths}"


async def test_queue_full_raises_with_retry_after(make_batcher):
    gate = threading.Event()
    model = FakeModel(block=gate)
    b = make_batcher(model, max_batch_size=1, queue_limit=2, max_wait_ms=0)
    first = asyncio.create_task(b.submit(wave(0, 5)))
    await asyncio.sleep(0.05)  # first is now computing (blocked)
    waiting = [asyncio.create_task(b.submit(wave(i, 5))) for i in (1, 2)]
    await asyncio.sleep(0.01)
    with pytest.raises(QueueFullError) as info:
        await b.submit(wave(3, 5))
    assert info.value.retry_after_s >= 1
    gate.set()
    await asyncio.gather(first, *waiting)
    await b.submit(wave(4, 5))  # accepts again once drained


async def test_cancelled_item_is_not_computed(make_batcher):
    gate = threading.Event()
    model = FakeModel(block=gate)
    b = make_batcher(model, max_batch_size=4, max_wait_ms=0)
    first = asyncio.create_task(b.submit(wave(0, 5)))
    await asyncio.sleep(0.05)  # the worker is busy with item 0
    gone = asyncio.create_task(b.submit(wave(7, 5)))
    stays = asyncio.create_task(b.submit(wave(8, 5)))
    await asyncio.sleep(0.01)
    gone.cancel()  # the client disconnected before its batch ran
    gate.set()
    await first
    await stays
    assert 7.0 not in model.seen_ids
    assert 8.0 in model.seen_ids
    assert b.stats.items_dropped == 1


async def test_timeout_raises_and_drops_item(make_batcher):
    gate = threading.Event()
    model = FakeModel(block=gate)
    b = make_batcher(model, max_batch_size=4, max_wait_ms=0)
    first = asyncio.create_task(b.submit(wave(0, 5)))
    await asyncio.sleep(0.05)
    with pytest.raises(BatcherTimeoutError):
        await b.submit(wave(9, 5), timeout=0.05)
    gate.set()
    await first
    await asyncio.sleep(0.05)
    assert 9.0 not in model.seen_ids


async def test_oom_splits_batch_and_still_answers(make_batcher):
    model = FakeModel(oom_above=2)
    b = make_batcher(model, max_batch_size=8)
    waves = [wave(i, 4 + i) for i in range(8)]
    results = await asyncio.gather(*(b.submit(w) for w in waves))
    for w, r in zip(waves, results, strict=True):
        torch.testing.assert_close(r, expected(w))
    assert b.stats.oom_splits >= 1
    assert all(len(c) <= 2 for c in model.calls)


async def test_model_error_fails_only_its_batch(make_batcher):
    model = FakeModel()
    model.fail_next = True
    b = make_batcher(model, max_batch_size=4)
    with pytest.raises(RuntimeError, match="exploded"):
        await b.submit(wave(1, 5))
    r = await b.submit(wave(2, 5))
    torch.testing.assert_close(r, expected(wave(2, 5)))


async def test_event_loop_stays_free_while_model_runs(make_batcher):
    def slow(waveforms: Tensor, lengths: Tensor) -> list[int]:
        time.sleep(0.3)
        return [0] * waveforms.shape[0]

    b = make_batcher(slow, max_wait_ms=0)
    task = asyncio.create_task(b.submit(wave(1, 5)))
    ticks = 0
    while not task.done():
        await asyncio.sleep(0.01)
        ticks += 1
    assert ticks >= 5  # the loop kept running while the worker slept 0.3 s


async def test_submit_after_stop_and_bad_input():
    b = DynamicBatcher(FakeModel())
    with pytest.raises(BatcherStoppedError):
        await b.submit(wave(1, 5))
    b.start()
    with pytest.raises(ValueError, match="mono waveform"):
        await b.submit(torch.zeros(2, 100))
    await b.stop()
    with pytest.raises(BatcherStoppedError):
        await b.submit(wave(1, 5))


async def test_stop_lets_queued_items_finish():
    model = FakeModel()
    b = DynamicBatcher(model, max_batch_size=2, max_wait_ms=50)
    b.start()
    tasks = [asyncio.create_task(b.submit(wave(i, 5))) for i in range(5)]
    await asyncio.sleep(0)  # all five are queued
    await b.stop(drain_timeout_s=5)
    results = await asyncio.gather(*tasks)
    assert len(results) == 5 and b.stats.items_computed == 5


async def test_collector_crash_fails_waiters_instead_of_hanging(monkeypatch):
    b = DynamicBatcher(FakeModel(), max_wait_ms=0)

    def broken() -> list:
        raise RuntimeError("bug in batch selection")

    monkeypatch.setattr(b, "_take_batch", broken)
    b.start()
    with pytest.raises(BatcherStoppedError, match="crashed"):
        await b.submit(wave(1, 5), timeout=5)
    assert b.failed and not b.running
    await b.stop()
