"""Batching through HTTP: batched == one-at-a-time, overload, disconnects, metrics."""

# ruff: noqa: F811  (pytest fixtures imported from tests.test_app_support)

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np

from model_training.bundle import load_bundle
from tests.test_app_support import (  # noqa: F401
    app_client,
    make_wav,
    metric_value,
    tiny_bundle_dir,
    wav_file,
)

# 16 different files, 0.4 s to 2.65 s: batches mix lengths, so padding is exercised.
FILES = [make_wav(0.4 + 0.15 * i, seed=100 + i) for i in range(16)]


def counting_loader(seen_lengths: list[int], gate: threading.Event | None = None,
                    entered: threading.Event | None = None, delay_s: float = 0.0):  # fmt: skip
    """A bundle loader whose model records every computed row's length in samples."""

    def load(path, device):
        bundle = load_bundle(path, device)
        upstream = bundle.model.upstream
        forward = upstream.forward

        def recording_forward(waveforms, lengths=None):
            if entered is not None:
                entered.set()
            if gate is not None:
                gate.wait(10)
            if delay_s:
                time.sleep(delay_s)
            seen_lengths.extend(int(n) for n in lengths.tolist())
            return forward(waveforms, lengths)

        upstream.forward = recording_forward
        return bundle

    return load


async def _embed(client: httpx.AsyncClient, i: int) -> tuple[np.ndarray, ...]:
    r = await client.post(
        "/v1/audio/embeddings",
        files={"file": wav_file(f"{i}.wav", FILES[i])},
        data={"layers": "all"},
    )
    assert r.status_code == 200, r.text
    return tuple(np.array(x["embedding"], np.float32) for x in r.json()["data"][0]["layers"])


async def _transcribe(client: httpx.AsyncClient, i: int) -> dict:
    r = await client.post(
        "/v1/audio/transcriptions",
        files={"file": wav_file(f"{i}.wav", FILES[i])},
        data={"response_format": "verbose_json", "timestamp_granularities[]": "word"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return {"text": body["text"], "words": body["words"]}


async def test_concurrent_batched_equals_one_at_a_time(app_client):
    async with app_client(max_wait_ms=50, max_batch_size=16) as (app, client):
        batcher = app.state.service.batcher
        single_emb = [await _embed(client, i) for i in range(16)]
        single_tr = [await _transcribe(client, i) for i in range(16)]
        assert max(batcher.stats.batch_sizes) == 1

        batched_emb = await asyncio.gather(*(_embed(client, i) for i in range(16)))
        batched_tr = await asyncio.gather(*(_transcribe(client, i) for i in range(16)))
        assert max(list(batcher.stats.batch_sizes)[32:]) > 1, "requests were not batched"

        for one, many in zip(single_emb, batched_emb, strict=True):
            for a, b in zip(one, many, strict=True):
                assert a.shape == b.shape
                np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
        assert single_tr == batched_tr


async def test_overload_gives_429_and_stays_ready(app_client, tiny_bundle_dir):
    seen: list[int] = []
    loader = counting_loader(seen, delay_s=0.05)
    async with app_client(loader=loader, queue_limit=2, max_batch_size=1, max_wait_ms=0) as (
        _,
        client,
    ):
        url = "/v1/audio/transcriptions"
        responses = await asyncio.gather(
            *(client.post(url, files={"file": wav_file("a.wav", FILES[i % 4])}) for i in range(24))
        )
        statuses = [r.status_code for r in responses]
        assert all(s < 500 for s in statuses), statuses
        assert statuses.count(429) > 0 and statuses.count(200) > 0
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["type"] == "rate_limit_error"
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.post(url, files={"file": wav_file("a.wav", FILES[0])})).is_success
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "hlstm_requests_total", {"status": "429"}) == statuses.count(
            429
        )


def _multipart(data: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    request = httpx.Request(
        "POST", "http://test/v1/audio/transcriptions", files={"file": ("b.wav", data, "audio/wav")}
    )
    body = request.read()
    headers = [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]
    return body, headers


async def test_disconnected_client_is_not_computed(app_client):
    seen: list[int] = []
    gate, entered = threading.Event(), threading.Event()
    loader = counting_loader(seen, gate=gate, entered=entered)
    a, b, c = make_wav(1.0, 1), make_wav(1.5, 2), make_wav(2.0, 3)
    async with app_client(loader=loader, max_wait_ms=0) as (app, client):
        batcher = app.state.service.batcher
        url = "/v1/audio/transcriptions"
        first = asyncio.create_task(client.post(url, files={"file": wav_file("a.wav", a)}))
        while not entered.is_set():  # request A is now inside the (blocked) model
            await asyncio.sleep(0.01)

        # Request B over raw ASGI, so the test controls when its client disconnects.
        body, headers = _multipart(b)
        gone = asyncio.Event()
        sent = False

        async def receive():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        messages = []

        async def send(message):
            messages.append(message)

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
            "scheme": "http", "path": url, "raw_path": url.encode(), "query_string": b"",
            "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000),
            "server": ("test", 80), "state": {},
        }  # fmt: skip
        abandoned = asyncio.create_task(app(scope, receive, send))
        while batcher.queue_depth < 1:  # B is queued behind A
            await asyncio.sleep(0.01)
        gone.set()
        await asyncio.wait_for(abandoned, 10)

        third = asyncio.create_task(client.post(url, files={"file": wav_file("c.wav", c)}))
        while batcher.queue_depth < 1:
            await asyncio.sleep(0.01)
        gate.set()
        assert (await first).status_code == 200
        assert (await third).status_code == 200
    assert 16_000 in seen and 32_000 in seen
    assert 24_000 not in seen, "the disconnected request was computed"
    assert batcher.stats.items_dropped == 1


async def test_metrics_reflect_traffic(app_client):
    async with app_client(max_wait_ms=100, max_batch_size=16) as (_, client):
        before = (await client.get("/metrics")).text
        assert metric_value(before, "hlstm_model_ready") == 1
        assert metric_value(before, "hlstm_audio_seconds_total") == 0
        await asyncio.gather(*(_transcribe(client, i) for i in range(4)))
        r = await client.post(
            "/v1/audio/embeddings", files={"file": wav_file("x.txt", b"hi", "text/plain")}
        )
        assert r.status_code == 415
        text = (await client.get("/metrics")).text
        route = "/v1/audio/transcriptions"
        assert metric_value(text, "hlstm_requests_total", {"route": route, "status": "200"}) == 4
        assert metric_value(text, "hlstm_request_duration_seconds_count", {"route": route}) == 4
        expected_audio = sum(0.4 + 0.15 * i for i in range(4))
        assert abs(metric_value(text, "hlstm_audio_seconds_total") - expected_audio) < 1e-3
        assert metric_value(text, "hlstm_batch_size_sum") == 4
        assert metric_value(text, "hlstm_batch_size_count") < 4  # some batch held > 1 item
        assert metric_value(text, "hlstm_batch_padded_frames_count") >= 1
        assert metric_value(text, "hlstm_batch_padding_ratio_count") >= 1
        assert metric_value(text, "hlstm_inference_seconds_count") >= 1
        assert metric_value(text, "hlstm_queue_wait_seconds_count") == 4
        assert metric_value(text, "hlstm_queue_depth") == 0
        assert metric_value(text, "hlstm_errors_total", {"type": "unsupported_media_type"}) == 1
        reason = {"reason": "unsupported_media"}
        assert metric_value(text, "hlstm_decode_failures_total", reason) == 1
