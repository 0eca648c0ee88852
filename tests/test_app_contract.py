"""HTTP contract (design section 5): every route, response format and error code."""

# ruff: noqa: F811  (pytest fixtures imported from tests.test_app_support)

from __future__ import annotations

import base64
import struct

import numpy as np
import pytest

from app.formatting import segment_words, srt_body, vtt_body
from model_training.decoding import Transcript, WordTiming
from tests.test_app_support import (  # noqa: F401
    app_client,
    make_wav,
    metric_value,
    serve,
    test_settings,
    tiny_bundle_dir,
    tiny_upstream_bundle_dir,
    wav_file,
)

WAV = make_wav(1.5, seed=3)


async def test_health_ready_models(app_client):
    async with app_client() as (_, client):
        r = await client.get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
        r = await client.get("/readyz")
        assert r.status_code == 200 and r.json()["model"] == "tiny-test"
        r = await client.get("/v1/models")
        assert r.status_code == 200
        body = r.json()
        assert body["object"] == "list"
        (card,) = body["data"]
        assert card["id"] == "tiny-test" and card["object"] == "model"
        assert card["layers"] == ["cnn_proj", "lstm1", "lstm2"]
        assert (await client.get("/v1/models/tiny-test")).status_code == 200
        r = await client.get("/v1/models/nope")
        assert r.status_code == 404 and r.json()["error"]["param"] == "model"


async def test_request_id_echoed_or_generated(app_client):
    async with app_client() as (_, client):
        r = await client.get("/healthz", headers={"X-Request-ID": "abc-123"})
        assert r.headers["x-request-id"] == "abc-123"
        r = await client.get("/healthz", headers={"X-Request-ID": "bad id\n"})
        generated = r.headers["x-request-id"]
        assert generated != "bad id\n" and len(generated) == 32


async def test_transcription_formats(app_client):
    async with app_client() as (_, client):
        url = "/v1/audio/transcriptions"
        files = {"file": wav_file("a.wav", WAV)}

        r = await client.post(url, files=files, data={"model": "whatever"})
        assert r.status_code == 200
        text = r.json()["text"]
        assert isinstance(text, str) and r.json()["usage"]["seconds"] == 2

        r = await client.post(url, files=files, data={"response_format": "text"})
        assert r.status_code == 200 and r.text == text + "\n"
        assert r.headers["content-type"].startswith("text/plain")

        data = {"response_format": "verbose_json", "timestamp_granularities[]": ["word", "segment"]}
        r = await client.post(url, files=files, data=data)
        body = r.json()
        assert r.status_code == 200
        assert body["task"] == "transcribe" and body["duration"] == pytest.approx(1.5)
        assert body["text"] == text
        assert " ".join(w["word"] for w in body["words"]) == text
        assert " ".join(s["text"] for s in body["segments"]) == text
        for seg in body["segments"]:
            assert {"id", "start", "end", "text", "avg_logprob", "no_speech_prob"} <= set(seg)
            assert 0 <= seg["start"] <= seg["end"] <= 1.5
        starts = [w["start"] for w in body["words"]]
        assert starts == sorted(starts)

        r = await client.post(url, files=files, data={"response_format": "verbose_json"})
        assert "segments" in r.json() and "words" not in r.json()

        r = await client.post(url, files=files, data={"response_format": "srt"})
        assert r.status_code == 200
        if text:
            assert r.text.startswith("1\n00:00:") and " --> " in r.text
        r = await client.post(url, files=files, data={"response_format": "vtt"})
        assert r.status_code == 200 and r.text.startswith("WEBVTT\n")
        assert r.headers["content-type"].startswith("text/vtt")


async def test_embeddings_layers_pooling_encoding(app_client):
    async with app_client() as (_, client):
        url = "/v1/audio/embeddings"
        files = [("file", wav_file("a.wav", WAV)), ("file", wav_file("b.wav", make_wav(0.7, 4)))]

        r = await client.post(url, files=files)  # defaults: last layer, no pooling, float
        assert r.status_code == 200
        body = r.json()
        assert body["object"] == "list" and body["model"] == "tiny-test"
        assert [d["index"] for d in body["data"]] == [0, 1]
        assert [d["filename"] for d in body["data"]] == ["a.wav", "b.wav"]
        first = body["data"][0]
        assert first["frame_rate"] == 50.0 and first["duration"] == pytest.approx(1.5)
        (layer,) = first["layers"]
        assert layer["layer"] == 2 and layer["shape"] == [74, 24]
        values = np.array(layer["embedding"], dtype=np.float32)
        assert values.shape == (74, 24) and np.isfinite(values).all()
        assert body["data"][1]["layers"][0]["shape"][0] == 34  # 0.7 s -> 34 frames

        r = await client.post(url, files=files[:1], data={"layers": "all"})
        assert [(lay["layer"], lay["shape"]) for lay in r.json()["data"][0]["layers"]] == [
            (0, [74, 16]),
            (1, [74, 24]),
            (2, [74, 24]),
        ]
        r = await client.post(url, files=files[:1], data={"layers": "0,-1", "pooling": "mean"})
        pooled = r.json()["data"][0]["layers"]
        assert [lay["layer"] for lay in pooled] == [0, 2]
        assert pooled[1]["shape"] == [24]
        np.testing.assert_allclose(pooled[1]["embedding"], values.mean(axis=0), atol=1e-5)

        r = await client.post(url, files=files[:1], data={"encoding_format": "base64"})
        layer = r.json()["data"][0]["layers"][0]
        raw = base64.b64decode(layer["embedding"])
        decoded = np.frombuffer(raw, dtype="<f4").reshape(layer["shape"])
        np.testing.assert_allclose(decoded, values, atol=1e-6)


async def test_embeddings_only_bundle(tiny_upstream_bundle_dir):
    async with serve(test_settings(tiny_upstream_bundle_dir)) as (_, client):
        r = await client.post("/v1/audio/embeddings", files={"file": wav_file("a.wav", WAV)})
        assert r.status_code == 200
        r = await client.post("/v1/audio/transcriptions", files={"file": wav_file("a.wav", WAV)})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        caps = (await client.get("/v1/models")).json()["data"][0]["capabilities"]
        assert caps == ["embeddings"]


def _assert_error(r, status: int, param: str | None = None) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"type", "message", "param"} and err["message"]
    if param is not None:
        assert err["param"] == param
    return err


async def test_parameter_errors_400_and_422(app_client):
    async with app_client() as (_, client):
        emb, tr = "/v1/audio/embeddings", "/v1/audio/transcriptions"
        files = {"file": wav_file("a.wav", WAV)}
        _assert_error(await client.post(emb, files=files, data={"layers": "7"}), 400, "layers")
        _assert_error(await client.post(emb, files=files, data={"layers": "x"}), 400, "layers")
        _assert_error(await client.post(emb, files=files, data={"pooling": "max"}), 422, "pooling")
        r = await client.post(tr, files=files, data={"response_format": "xml"})
        _assert_error(r, 422, "response_format")
        _assert_error(await client.post(tr, data={"model": "m"}), 422, "file")
        _assert_error(await client.post(tr, json={"file": "x"}), 422)


async def test_auth_401(app_client):
    async with app_client(api_key="s3cret") as (_, client):
        files = {"file": wav_file("a.wav", WAV)}
        url = "/v1/audio/transcriptions"
        err = _assert_error(await client.post(url, files=files), 401)
        assert err["type"] == "authentication_error"
        r = await client.post(url, files=files, headers={"Authorization": "Bearer wrong"})
        _assert_error(r, 401)
        assert r.headers["www-authenticate"] == "Bearer"
        _assert_error(await client.get("/v1/models"), 401)
        r = await client.post(url, files=files, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        # Probes and scrapers need no key.
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).status_code == 200


async def test_upload_and_duration_limits_413(app_client):
    async with app_client(max_upload_mb=0.05, max_audio_seconds=1.0) as (_, client):
        url = "/v1/audio/transcriptions"
        big = make_wav(2.0, seed=1)  # 64 kB > 0.05 MiB
        err = _assert_error(await client.post(url, files={"file": wav_file("a.wav", big)}), 413)
        assert err["type"] == "payload_too_large"

        # Chunked upload without Content-Length: the streaming counter trips instead.
        async def chunks():
            yield b"--b\r\nContent-Disposition: form-data; name=file; filename=a.wav\r\n\r\n"
            for i in range(0, len(big), 8192):
                yield big[i : i + 8192]
            yield b"\r\n--b--\r\n"

        headers = {"Content-Type": "multipart/form-data; boundary=b"}
        r = await client.post(url, content=chunks(), headers=headers)
        _assert_error(r, 413)

        long = make_wav(1.2, seed=2, subtype="PCM_U8")  # small file, but over 1.0 s
        err = _assert_error(await client.post(url, files={"file": wav_file("a.wav", long)}), 413)
        assert "1.2" in err["message"]
        assert (await client.post(url, files={"file": wav_file("a.wav", make_wav(0.5))})).is_success


async def test_unsupported_media_415(app_client):
    async with app_client() as (_, client):
        r = await client.post(
            "/v1/audio/transcriptions", files={"file": ("a.txt", b"hello", "text/plain")}
        )
        assert _assert_error(r, 415)["type"] == "unsupported_media_type"


def _nan_wav() -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.full(8000, np.nan, np.float32), 16_000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def _hours_wav() -> bytes:
    data = bytearray(make_wav(0.5))
    pos = data.find(b"data")
    data[pos + 4 : pos + 8] = struct.pack("<I", 16_000 * 2 * 3600 * 4)
    return bytes(data)


def _flac(seconds: float) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.random.default_rng(0).standard_normal(int(seconds * 16_000)) * 0.1, 16_000,
             format="FLAC")  # fmt: skip
    return buf.getvalue()


BAD_INPUTS = {
    # These start with an MPEG sync word: sniffed as MP3, then undecodable (400).
    "random_bytes": (np.random.default_rng(1).bytes(10_000), 400),
    "random_bytes_no_magic": (np.random.default_rng(0).bytes(10_000), 415),
    "truncated_flac": (_flac(2.0)[:9000], 400),
    "zero_length": (b"", 400),
    "one_sample": (make_wav(1 / 16_000), 400),
    "nan_float_wav": (_nan_wav(), 400),
    "header_claims_hours": (_hours_wav(), 413),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
async def test_bad_inputs_give_4xx_and_service_survives(app_client, name):
    data, status = BAD_INPUTS[name]
    async with app_client() as (_, client):
        for url in ("/v1/audio/transcriptions", "/v1/audio/embeddings"):
            r = await client.post(url, files={"file": wav_file("x.wav", data)})
            _assert_error(r, status, "file" if url.endswith("transcriptions") else "file[0]")
            good = await client.post(url, files={"file": wav_file("a.wav", WAV)})
            assert good.status_code == 200
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "hlstm_decode_failures_total") == 2


async def test_not_ready_503(app_client):
    async with app_client() as (app, client):
        app.state.service.ready = False  # as while starting or draining
        _assert_error(await client.get("/readyz"), 503)
        r = await client.post("/v1/audio/transcriptions", files={"file": wav_file("a.wav", WAV)})
        assert _assert_error(r, 503)["type"] == "service_unavailable"
        assert (await client.get("/healthz")).status_code == 200
        app.state.service.ready = True


async def test_request_timeout_504(app_client):
    import time

    from model_training.bundle import load_bundle

    def slow_loader(path, device):
        bundle = load_bundle(path, device)
        forward = bundle.model.forward

        def slow_forward(*args, **kwargs):
            time.sleep(0.3)
            return forward(*args, **kwargs)

        bundle.model.forward = slow_forward
        return bundle

    async with app_client(loader=slow_loader, request_timeout_s=0.1, warmup=False) as (_, c):
        r = await c.post("/v1/audio/transcriptions", files={"file": wav_file("a.wav", WAV)})
        assert _assert_error(r, 504)["type"] == "timeout_error"


async def test_cors_headers(app_client):
    async with app_client(cors_origins=["https://ui.example"]) as (_, client):
        r = await client.options(
            "/v1/audio/transcriptions",
            headers={
                "Origin": "https://ui.example",
                "Access-Control-Request-Method": "POST",
            },
        )
        assert r.headers["access-control-allow-origin"] == "https://ui.example"
        r = await client.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_segments_split_at_pauses_and_subtitles():
    words = [
        WordTiming("HELLO", 0.0, 0.4, 0.9),
        WordTiming("THERE", 0.5, 0.9, 0.8),
        WordTiming("GENERAL", 2.0, 2.6, 0.7),  # 1.1 s pause: new segment
        WordTiming("KENOBI", 2.7, 3.2, 0.6),
    ]
    segments = segment_words(words)
    assert [(s.start, s.end, s.text) for s in segments] == [
        (0.0, 0.9, "HELLO THERE"),
        (2.0, 3.2, "GENERAL KENOBI"),
    ]
    assert len(segment_words(words, max_words=1)) == 4
    t = Transcript("HELLO THERE GENERAL KENOBI", words, 3.5)
    assert srt_body(t) == (
        "1\n00:00:00,000 --> 00:00:00,900\nHELLO THERE\n\n"
        "2\n00:00:02,000 --> 00:00:03,200\nGENERAL KENOBI\n"
    )
    assert vtt_body(t).startswith("WEBVTT\n\n00:00:00.000 --> 00:00:00.900\nHELLO THERE\n")
    assert srt_body(Transcript("", [], 1.0)) == ""


async def test_json_logs_carry_request_id(app_client, capsys):
    import json
    import logging

    root = logging.getLogger()
    level = root.level
    try:
        async with app_client(json_logs=True) as (_, client):
            await client.get("/healthz", headers={"X-Request-ID": "log-me-1"})
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
        access = [x for x in lines if x.get("logger") == "app.access"]
        assert access and access[-1]["request_id"] == "log-me-1"
        assert access[-1]["status"] == 200 and "GET /healthz" in access[-1]["message"]
    finally:
        for handler in list(root.handlers):
            if handler.get_name() == "hlstm-json":
                root.removeHandler(handler)
        root.setLevel(level)


async def test_crashed_batcher_fails_health_and_never_hangs(app_client, monkeypatch):
    async with app_client() as (app, client):
        batcher = app.state.service.batcher

        def broken():
            raise RuntimeError("bug")

        monkeypatch.setattr(batcher, "_take_batch", broken)
        r = await client.post("/v1/audio/transcriptions", files={"file": wav_file("a.wav", WAV)})
        _assert_error(r, 503)
        _assert_error(await client.get("/healthz"), 503)
        _assert_error(await client.get("/readyz"), 503)
        assert metric_value((await client.get("/metrics")).text, "hlstm_model_ready") == 0


def test_max_batch_size_defaults_by_device(monkeypatch):
    """Unset: no batching on CPU (measured slower there), batches of 16 on CUDA."""
    from app.settings import Settings

    monkeypatch.delenv("HLSTM_MAX_BATCH_SIZE", raising=False)
    unset = Settings()
    assert unset.resolved_max_batch_size("cpu") == 1
    assert unset.resolved_max_batch_size("cuda") == 16
    monkeypatch.setenv("HLSTM_MAX_BATCH_SIZE", "8")
    assert Settings().resolved_max_batch_size("cpu") == 8


async def test_service_uses_the_resolved_batch_size(app_client, monkeypatch):
    monkeypatch.delenv("HLSTM_MAX_BATCH_SIZE", raising=False)
    async with app_client() as (app, _):
        assert app.state.service.batcher.max_batch_size == 1
    async with app_client(max_batch_size=6) as (app, _):
        assert app.state.service.batcher.max_batch_size == 6
