"""All torch compute in the service runs on one thread (see app/torch_worker.py for why)."""

# ruff: noqa: F811  (pytest fixtures imported from tests.test_app_support)

from __future__ import annotations

import asyncio
import threading

import numpy as np
import torch

from app.torch_worker import THREAD_NAME_PREFIX
from model_training.bundle import load_bundle
from tests.test_app_support import (  # noqa: F401
    app_client,
    make_wav,
    tiny_bundle_dir,
    wav_file,
)


def _recording(fn, threads: list[str], what: str):
    def wrapped(*args, **kwargs):
        threads.append(f"{what}@{threading.current_thread().name}")
        return fn(*args, **kwargs)

    return wrapped


async def test_load_warmup_batches_and_ctc_decoding_share_one_thread(app_client):
    threads: list[str] = []

    def loader(path, device):
        threads.append(f"load@{threading.current_thread().name}")
        bundle = load_bundle(path, device)
        bundle.model.forward = _recording(bundle.model.forward, threads, "forward")
        bundle.decode = _recording(bundle.decode, threads, "ctc_decode")
        return bundle

    async with app_client(loader, max_wait_ms=20) as (_, client):
        uploads = [
            make_wav(0.7, seed=1, rate=44_100),
            make_wav(0.5, seed=2),
            make_wav(1.1, seed=3, rate=8_000),
        ]
        responses = await asyncio.gather(
            *(
                client.post("/v1/audio/transcriptions", files={"file": wav_file(f"{i}.wav", data)})
                for i, data in enumerate(uploads)
            ),
            client.post("/v1/audio/embeddings", files={"file": wav_file("e.wav", uploads[0])}),
        )
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    kinds = {entry.split("@")[0] for entry in threads}
    assert kinds == {"load", "forward", "ctc_decode"}, threads
    names = {entry.split("@")[1] for entry in threads}
    assert len(names) == 1 and names.pop().startswith(THREAD_NAME_PREFIX), threads


async def test_cpu_bf16_autocasts_batches_and_stays_close_to_fp32(app_client):
    """HLSTM_CPU_BF16: batches run under CPU bf16 autocast; responses stay float32 and close."""
    autocast_seen: list[bool] = []

    def loader(path, device):
        bundle = load_bundle(path, device)
        forward = bundle.model.forward

        def recording(*args, **kwargs):
            autocast_seen.append(torch.is_autocast_enabled("cpu"))
            return forward(*args, **kwargs)

        bundle.model.forward = recording
        return bundle

    upload = make_wav(1.3, seed=4)

    async def embed(**settings) -> np.ndarray:
        async with app_client(loader, **settings) as (app, client):
            r = await client.post(
                "/v1/audio/embeddings",
                files={"file": wav_file("a.wav", upload)},
                data={"layers": "last", "pooling": "mean"},
            )
            assert r.status_code == 200, r.text
            precision = app.state.service.batcher.precision
        layer = r.json()["data"][0]["layers"][0]
        return precision, np.asarray(layer["embedding"], dtype=np.float32)

    p32, fp32 = await embed()
    assert p32 == "fp32" and autocast_seen and not any(autocast_seen)
    autocast_seen.clear()
    p16, bf16 = await embed(cpu_bf16=True)
    assert p16 == "bf16" and autocast_seen and all(autocast_seen)
    assert not np.array_equal(fp32, bf16)
    np.testing.assert_allclose(bf16, fp32, atol=0.05 * float(np.abs(fp32).max()) + 1e-3)
