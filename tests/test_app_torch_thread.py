"""All torch compute in the service runs on one thread (see app/torch_worker.py for why)."""

# ruff: noqa: F811  (pytest fixtures imported from tests.test_app_support)

from __future__ import annotations

import asyncio
import threading

import app.audio
import app.routes.audio
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


async def test_load_warmup_batches_resampling_and_ctc_decoding_share_one_thread(
    app_client, monkeypatch
):
    threads: list[str] = []
    monkeypatch.setattr(
        app.audio.AF, "resample", _recording(app.audio.AF.resample, threads, "resample")
    )
    monkeypatch.setattr(
        app.routes.audio,
        "greedy_ctc_decode",
        _recording(app.routes.audio.greedy_ctc_decode, threads, "ctc_decode"),
    )

    def loader(path, device):
        threads.append(f"load@{threading.current_thread().name}")
        bundle = load_bundle(path, device)
        bundle.model.forward = _recording(bundle.model.forward, threads, "forward")
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
    assert kinds == {"load", "forward", "resample", "ctc_decode"}, threads
    names = {entry.split("@")[1] for entry in threads}
    assert len(names) == 1 and names.pop().startswith(THREAD_NAME_PREFIX), threads
