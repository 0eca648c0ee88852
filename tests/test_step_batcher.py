"""`app.step_batcher.StepBatcher`: many streams, one batched step, bounded, exact."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from app.step_batcher import (
    BufferFullError,
    StepBatcher,
    StepOutput,
    StreamClosedError,
    StreamHandle,
    StreamsFullError,
)
from model_training.bundle import Bundle, load_bundle
from model_training.decoding import greedy_ctc_decode
from model_training.streaming import StreamingModel
from model_training.testing import build_tiny_bundle, test_signal


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    path = tmp_path_factory.mktemp("sb") / "causal"
    return load_bundle(build_tiny_bundle(path, seed=3, causal=True, varied=True))


@pytest.fixture
def executor():
    pool = ThreadPoolExecutor(1, thread_name_prefix="test-torch")
    yield pool
    pool.shutdown(wait=True)


def offline_text(bundle: Bundle, wave: np.ndarray) -> str:
    with torch.inference_mode():
        _, lp = bundle.model(torch.from_numpy(wave)[None])
    return greedy_ctc_decode(lp[0], bundle.vocab, 0.02).text


async def drain_item(handle: StreamHandle) -> tuple[str, list[StepOutput]]:
    """Outputs up to the next marker; the text they carry."""
    outs = []
    while True:
        out = await asyncio.wait_for(handle.outputs.get(), 30)
        outs.append(out)
        if out.marker is not None or out.error is not None:
            return "".join(o.step.text for o in outs if o.step is not None), outs


async def feed(handle: StreamHandle, wave: np.ndarray, chunk: int, pause: float) -> None:
    for pos in range(0, wave.size, chunk):
        handle.push(wave[pos : pos + chunk])
        await asyncio.sleep(pause)
    handle.mark("commit", "item")


@pytest.mark.parametrize("batched", [True, False])
async def test_concurrent_streams_equal_offline_and_share_steps(bundle, executor, batched):
    batcher = StepBatcher(StreamingModel(bundle), executor, max_streams=8, batched=batched)
    batcher.start()
    waves = [test_signal(1.0 + 0.2 * i, seed=i).numpy() for i in range(6)]
    handles = [batcher.open() for _ in waves]
    feeders = [feed(h, w, 1600, 0.005) for h, w in zip(handles, waves, strict=True)]
    results = await asyncio.gather(*feeders, *(drain_item(h) for h in handles))
    for wave, (text, outs) in zip(waves, results[len(waves) :], strict=True):
        assert text == offline_text(bundle, wave)
        assert outs[-1].marker.kind == "commit" and outs[-1].item_samples == wave.size
        assert outs[-1].final is not None
    pushes = sum(-(-w.size // 1600) for w in waves)
    if batched:
        assert batcher.steps < pushes / 2, "streams must share steps"
    else:
        assert batcher.steps >= len(waves)
    assert batcher.active == len(waves)
    for h in handles:
        h.close()
    assert batcher.active == 0
    await batcher.stop()


async def test_items_after_a_commit_start_from_a_fresh_state(bundle, executor):
    batcher = StepBatcher(StreamingModel(bundle), executor)
    batcher.start()
    handle = batcher.open()
    first, second = test_signal(0.8, seed=1).numpy(), test_signal(0.7, seed=2).numpy()
    handle.push(first)
    handle.mark("commit", "a")
    handle.push(second[:5000])
    handle.mark("clear", "b")  # dropped before or after compute: never in item c
    handle.push(second)
    handle.mark("commit", "c")
    text_a, outs_a = await drain_item(handle)
    _, outs_b = await drain_item(handle)
    text_c, outs_c = await drain_item(handle)
    assert (outs_a[-1].marker.tag, outs_b[-1].marker.kind, outs_c[-1].marker.tag) == (
        "a",
        "clear",
        "c",
    )
    assert text_a == offline_text(bundle, first) != ""
    assert text_c == offline_text(bundle, second)
    assert outs_c[-1].marker.position - outs_c[0].origin == second.size
    await batcher.stop()


async def test_limits_slots_buffers_and_closed_handles(bundle, executor):
    batcher = StepBatcher(StreamingModel(bundle), executor, max_streams=2, max_pending_s=1.0)
    batcher.start()
    a, b = batcher.open(), batcher.open()
    with pytest.raises(StreamsFullError):
        batcher.open()
    a.push(np.zeros(12_000, np.float32))
    with pytest.raises(BufferFullError):
        a.push(np.zeros(8_000, np.float32))  # 1.25 s would wait: over 1 s
    b.close()
    unbounded = batcher.open(bounded=False)
    unbounded.push(np.zeros(16_000 * 5, np.float32))  # whole uploads are not limited
    with pytest.raises(StreamClosedError):
        b.push(np.zeros(10, np.float32))
    await batcher.stop()
    with pytest.raises(StreamClosedError):
        batcher.open()


async def test_a_failing_step_ends_its_streams_not_the_batcher(bundle, executor, monkeypatch):
    model = StreamingModel(bundle)
    batcher = StepBatcher(model, executor)
    batcher.start()
    handle = batcher.open()
    real_step = model.step
    monkeypatch.setattr(model, "step", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("x")))
    handle.push(test_signal(0.5, seed=3).numpy())
    _, outs = await drain_item(handle)
    assert outs[-1].error == "inference failed" and handle.closed
    monkeypatch.setattr(model, "step", real_step)
    again = batcher.open()
    wave = test_signal(0.5, seed=4).numpy()
    again.push(wave)
    again.mark("commit")
    text, _ = await drain_item(again)
    assert text == offline_text(bundle, wave)
    await batcher.stop()


@pytest.mark.parametrize("wait_ms", [0.0, 200.0])
async def test_audio_arriving_within_the_wait_shares_one_step(bundle, executor, wait_ms):
    batcher = StepBatcher(StreamingModel(bundle), executor, max_wait_ms=wait_ms)
    batcher.start()
    handles = [batcher.open() for _ in range(3)]
    chunk = test_signal(0.1, seed=5).numpy()
    for h in handles:  # staggered like real-time clients
        h.push(chunk)
        await asyncio.sleep(0.03)
    outs = [await asyncio.wait_for(h.outputs.get(), 10) for h in handles]
    assert all(o.step is not None and o.step.num_frames == 4 for o in outs)
    if wait_ms:
        assert batcher.steps == 1
    else:
        assert batcher.steps == 3
    await batcher.stop()
