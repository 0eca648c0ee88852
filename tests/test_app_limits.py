"""Request-level limits (issue 17, items 3 and 4): header count, bounded uploads in progress
with a queue and 429, one deadline over decode + queue + inference + formatting, request ids
on error log lines, and the embeddings response bound."""

# ruff: noqa: F811  (pytest fixtures imported from tests.test_app_support)

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time

import httpx
import pytest

import app.routes.audio
import app.service
from model_training.bundle import load_bundle
from tests.test_app_support import (  # noqa: F401
    app_client,
    make_wav,
    tiny_bundle_dir,
    wav_file,
)

TR, EMB = "/v1/audio/transcriptions", "/v1/audio/embeddings"
WAV = make_wav(1.0, seed=2)


def _files(data: bytes = WAV) -> dict:
    return {"file": wav_file("a.wav", data)}


async def test_too_many_headers_is_431_before_anything_else(app_client):
    async with app_client(api_key="k", max_headers=20) as (_, client):
        headers = {f"x-h{i}": "v" for i in range(30)}
        r = await client.post(TR, files=_files(), headers=headers)
        assert r.status_code == 431 and r.json()["error"]["type"].startswith("request_header")
        assert (await client.get("/healthz")).status_code == 200


class BlockingDecode:
    """Wraps the pool's decode function; each call waits until `release()`."""

    def __init__(self, decode) -> None:
        self.decode = decode
        self.gate = threading.Event()
        self.started = 0

    def __call__(self, *args, **kwargs):
        self.started += 1
        assert self.gate.wait(30)
        return self.decode(*args, **kwargs)

    def release(self) -> None:
        self.gate.set()


async def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_uploads_in_progress_are_bounded_then_queued_then_429(app_client, monkeypatch):
    blocking = BlockingDecode(app.service.decode_audio)
    monkeypatch.setattr(app.service, "decode_audio", blocking)
    async with app_client(max_concurrent_uploads=1, upload_queue_limit=1) as (svc_app, client):
        first = asyncio.create_task(client.post(TR, files=_files()))
        await _wait_for(lambda: blocking.started == 1)
        queued = asyncio.create_task(client.post(TR, files=_files()))
        gate = svc_app.state.service.upload_gate
        await _wait_for(lambda: gate.waiting == 1)
        refused = await client.post(TR, files=_files())  # one decoding, one waiting: full
        assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
        assert blocking.started == 1  # neither the queued nor the refused one was decoded
        blocking.release()
        assert (await first).status_code == 200
        assert (await queued).status_code == 200
        assert gate.in_use == 0 and gate.waiting == 0


async def test_the_upload_slot_is_freed_when_decoding_ends_not_after_inference(app_client):
    """With one slot, a request waiting for its batch does not hold up the next upload."""
    settings = {"max_concurrent_uploads": 1, "upload_queue_limit": 0}
    async with app_client(max_batch_size=2, max_wait_ms=3000, **settings) as (_, client):
        first = asyncio.create_task(client.post(TR, files=_files()))
        await asyncio.sleep(0.5)  # decoded, now waiting up to 3 s for a second item
        second = await client.post(TR, files=_files(make_wav(0.8, seed=3)))
        assert second.status_code == 200
        assert (await first).status_code == 200


async def test_the_deadline_covers_decoding(app_client, monkeypatch):
    decode = app.service.decode_audio

    def slow_decode(*args, **kwargs):
        time.sleep(0.6)
        return decode(*args, **kwargs)

    monkeypatch.setattr(app.service, "decode_audio", slow_decode)
    async with app_client(request_timeout_s=0.3) as (_, client):
        r = await client.post(TR, files=_files())
        assert r.status_code == 504, r.text
        assert r.json()["error"]["type"] == "timeout_error"


async def test_the_deadline_covers_ctc_decoding_and_formatting(app_client):
    def slow_ctc_loader(path, device):
        bundle = load_bundle(path, device=device)
        ctc = bundle.decode

        def slow_ctc(log_probs):
            time.sleep(0.8)
            return ctc(log_probs)

        bundle.decode = slow_ctc
        return bundle

    async with app_client(slow_ctc_loader, request_timeout_s=0.5) as (_, client):
        r = await client.post(TR, files=_files())
        assert r.status_code == 504, r.text


async def _error_lines(app_client, capsys, request_id: str, **settings) -> list[dict]:
    """POST one upload with JSON logs on; return the ERROR log lines (and check the 500)."""
    root = logging.getLogger()
    level = root.level
    try:
        async with app_client(json_logs=True, **settings) as (svc_app, _):
            # Unhandled errors are re-raised after the 500 is sent; answer with the 500.
            transport = httpx.ASGITransport(app=svc_app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                r = await client.post(TR, files=_files(), headers={"X-Request-ID": request_id})
        assert r.status_code == 500
    finally:
        for handler in list(root.handlers):
            if handler.get_name() == "hlstm-json":
                root.removeHandler(handler)
        root.setLevel(level)
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    return [x for x in lines if x["level"] == "ERROR"]


async def test_error_log_lines_carry_the_request_id(app_client, capsys):
    def broken_ctc_loader(path, device):
        bundle = load_bundle(path, device=device)

        def broken(*args, **kwargs):
            raise RuntimeError("bug in decoding")

        bundle.decode = broken
        return bundle

    errors = await _error_lines(app_client, capsys, "req-42", loader=broken_ctc_loader)
    assert errors and all(x["request_id"] == "req-42" for x in errors), errors


async def test_failed_batch_log_lines_carry_the_request_id(app_client, capsys):
    def broken_loader(path, device):
        bundle = load_bundle(path, device)

        def broken_forward(*args, **kwargs):
            raise RuntimeError("model bug")

        bundle.model.forward = broken_forward
        return bundle

    errors = await _error_lines(app_client, capsys, "req-77", loader=broken_loader)
    assert any("batch of 1 failed" in x["message"] for x in errors), errors
    assert all(x["request_id"] == "req-77" for x in errors), errors


async def test_embeddings_response_bound_is_413_that_says_what_to_do(app_client):
    """The tiny bundle's layers are 16, 24, 24 wide: 1 s (49 frames) of all = 3136 values."""
    async with app_client(max_embedding_values=2000) as (_, client):
        r = await client.post(EMB, files=_files(), data={"layers": "all"})
        assert r.status_code == 413, r.text
        message = r.json()["error"]["message"]
        assert "pooling=mean" in message and "fewer layers" in message
        r = await client.post(EMB, files=_files(), data={"layers": "last"})
        assert r.status_code == 200  # 49 frames x 24 fits
        r = await client.post(EMB, files=_files(), data={"layers": "all", "pooling": "mean"})
        assert r.status_code == 200


async def test_embeddings_total_audio_per_request_is_bounded(app_client):
    async with app_client(max_request_audio_seconds=2.5) as (_, client):
        files = [("file", wav_file(f"{i}.wav", make_wav(1.0, seed=i))) for i in range(3)]
        r = await client.post(EMB, files=files, data={"pooling": "mean"})
        assert r.status_code == 413 and "together" in r.json()["error"]["message"], r.text
        r = await client.post(EMB, files=files[:2], data={"pooling": "mean"})
        assert r.status_code == 200


@pytest.mark.parametrize("pooling", ["none", "mean"])
async def test_embeddings_estimate_matches_the_response(app_client, pooling):
    """The bound is checked before inference from an estimate; it must not undercount (and
    overcounts by at most two frames: it ignores the CNN's 400-sample receptive field)."""
    async with app_client() as (svc_app, client):
        r = await client.post(EMB, files=_files(), data={"layers": "all", "pooling": pooling})
        assert r.status_code == 200
        bundle = svc_app.state.service.bundle
        got = sum(
            math.prod(layer["shape"]) for item in r.json()["data"] for layer in item["layers"]
        )
        decoded = app.service.decode_audio(WAV)
        expected = app.routes.audio._expected_values(
            bundle, [decoded], list(range(len(bundle.layer_names))), pooling == "mean"
        )
        width = 1 if pooling == "mean" else 2
        assert got <= expected <= got + width * sum(bundle.config["hidden_dims"])
