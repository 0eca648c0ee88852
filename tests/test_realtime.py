"""`/v1/realtime` transcription sessions against a real uvicorn server on loopback.

The official `openai` client speaks both protocols (GA `client.realtime`, beta
`client.beta.realtime`); a raw `websockets` client sends what the official one cannot (bad
input, the subprotocol key, binary frames, extensions). The streaming bundle is a tiny
random causal student whose transcripts vary (`build_tiny_bundle(varied=True)`).
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.test_app_support)

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soxr
import torch
import websockets
from websockets.asyncio.client import connect as ws_connect

from app.main import create_app
from model_training.bundle import Bundle, load_bundle
from model_training.decoding import greedy_ctc_decode
from model_training.testing import build_tiny_bundle, test_signal
from tests.test_app_support import (  # noqa: F401
    metric_value,
    serve_in_thread,
    test_settings,
    tiny_bundle_dir,
)

openai = pytest.importorskip("openai")

API_KEY = "rt-key"
CAUSAL = "tiny-causal"
DELTA = "conversation.item.input_audio_transcription.delta"
COMPLETED = "conversation.item.input_audio_transcription.completed"


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rt") / "causal"
    return build_tiny_bundle(path, seed=3, causal=True, varied=True, name=CAUSAL)


@pytest.fixture(scope="module")
def causal(causal_dir: Path) -> Bundle:
    return load_bundle(causal_dir)


@pytest.fixture(scope="module")
def server(tiny_bundle_dir, causal_dir) -> Iterator[str]:
    """One server for the module: default bundle + streaming bundle, API key, 3 stream slots,
    2 s of audio waiting per stream, appends up to 200 kB."""
    settings = test_settings(
        tiny_bundle_dir,
        streaming_model_dir=causal_dir,
        api_key=API_KEY,
        max_streams=3,
        stream_max_buffer_s=2.0,
        realtime_max_append_bytes=200_000,
    )
    with serve_in_thread(create_app(settings)) as url:
        yield url


def ws_url(server: str, query: str = "intent=transcription") -> str:
    return server.replace("http://", "ws://") + "/v1/realtime?" + query


def pcm16(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


def as_pcm_float(data: bytes) -> np.ndarray:
    """What the server decodes from `data` (for offline references)."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def offline_text(bundle: Bundle, wave16k: np.ndarray) -> str:
    with torch.inference_mode():
        _, lp = bundle.model(torch.from_numpy(np.ascontiguousarray(wave16k))[None])
    return greedy_ctc_decode(lp[0], bundle.vocab, 1 / bundle.frame_rate).text


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def collect_until(conn, kind: str, timeout: float = 30.0) -> list:
    """Events (parsed by the official client) up to and including the first of `kind`."""
    events = []
    deadline = time.monotonic() + timeout
    while True:
        event = await asyncio.wait_for(conn.recv(), deadline - time.monotonic())
        events.append(event)
        if event.type == kind:
            return events


class Raw:
    """A raw JSON-over-WebSocket client."""

    def __init__(self, ws) -> None:
        self.ws = ws

    async def send(self, event: dict) -> None:
        await self.ws.send(json.dumps(event))

    async def recv(self, timeout: float = 30.0) -> dict:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def until(self, kind: str, timeout: float = 30.0) -> list[dict]:
        events = []
        while True:
            events.append(await self.recv(timeout))
            if events[-1]["type"] == kind:
                return events


def ga_update(rate: int = 16_000, turn_detection: dict | None = None, **extra) -> dict:
    """A GA session.update event for a transcription session."""
    audio_input = {"format": {"type": "audio/pcm", "rate": rate}, "turn_detection": turn_detection}
    session = {"type": "transcription", "audio": {"input": audio_input}, **extra}
    return {"type": "session.update", "session": session}


async def configure(c: Raw, **kwargs) -> dict:
    """Wait for session.created, send `ga_update(**kwargs)`, return session.updated."""
    await c.until("session.created")
    await c.send(ga_update(**kwargs))
    return (await c.until("session.updated"))[-1]


def raw_connect(server: str, query: str = "intent=transcription", **kwargs):
    headers = kwargs.pop("headers", {"Authorization": f"Bearer {API_KEY}"})
    return ws_connect(ws_url(server, query), additional_headers=headers, **kwargs)


# ---------------------------------------------------------------------- official client
def test_ga_client_transcript_equals_offline_and_deltas(server, causal):
    wave = test_signal(1.6, seed=4).numpy()
    data = pcm16(wave)

    async def run() -> list:
        client = openai.AsyncOpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)
        async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
            created = await conn.recv()
            assert created.type == "session.created" and created.session.type == "transcription"
            await conn.session.update(
                session={
                    "type": "transcription",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 16000},
                            "turn_detection": None,
                        }
                    },
                }
            )
            updated = await conn.recv()
            assert updated.type == "session.updated"
            assert updated.session.audio.input.format.rate == 16000
            for pos in range(0, len(data), 3200):  # 100 ms chunks, paced
                await conn.input_audio_buffer.append(audio=b64(data[pos : pos + 3200]))
                await asyncio.sleep(0.03)
            await conn.input_audio_buffer.commit()
            return await collect_until(conn, COMPLETED)

    events = asyncio.run(run())
    committed = next(e for e in events if e.type == "input_audio_buffer.committed")
    completed = events[-1]
    deltas = [e for e in events if e.type == DELTA]
    assert completed.item_id == committed.item_id
    assert all(d.item_id == completed.item_id for d in deltas)
    assert len(deltas) > 3, "deltas must stream, not arrive as one"
    assert "".join(d.delta for d in deltas) == completed.transcript
    assert completed.transcript == offline_text(causal, as_pcm_float(data))
    assert completed.usage.type == "duration"
    assert completed.usage.seconds == pytest.approx(1.6)


def test_beta_client_24khz_resampled_statefully(server, causal):
    wave24 = test_signal(1.2, seed=6, sample_rate=24_000).numpy()
    data = pcm16(wave24)

    async def run() -> list:
        client = openai.AsyncOpenAI(
            base_url=f"{server}/v1",
            websocket_base_url=ws_url(server, "").split("/realtime")[0],
            api_key=API_KEY,
            max_retries=0,
        )
        manager = client.beta.realtime.connect(
            model=CAUSAL, extra_query={"intent": "transcription"}
        )
        async with manager as conn:
            created = await conn.recv()
            assert created.type == "transcription_session.created"
            await conn.send(
                {
                    "type": "transcription_session.update",
                    "session": {
                        "input_audio_format": "pcm16",
                        "input_audio_transcription": {"model": "gpt-4o-transcribe"},
                        "turn_detection": None,
                    },
                }
            )
            updated = await conn.recv()
            assert updated.type == "transcription_session.updated"
            assert updated.session.turn_detection is None
            assert updated.session.input_audio_transcription.model == "gpt-4o-transcribe"
            sizes = [1, 4801, 2, 999, 7200]  # odd cuts on purpose: 24 kHz, stateful soxr
            pos = 0
            while pos < len(data):
                size = 2 * sizes[pos % len(sizes)]
                await conn.input_audio_buffer.append(audio=b64(data[pos : pos + size]))
                pos += size
            await conn.input_audio_buffer.commit()
            return await collect_until(conn, COMPLETED)

    events = asyncio.run(run())
    completed = events[-1]
    reference = soxr.resample(as_pcm_float(data), 24_000, 16_000)
    assert completed.transcript == offline_text(causal, reference)
    assert "".join(e.delta for e in events if e.type == DELTA) == completed.transcript
    assert completed.usage.seconds == pytest.approx(1.2, abs=1e-3)


# ---------------------------------------------------------------------- VAD
def test_server_vad_events_and_commits(server, causal):
    """Speech, 0.8 s of silence, speech: started/stopped/committed/completed, then again."""
    rate = 16_000
    speech1 = test_signal(1.0, seed=8).numpy()
    speech2 = test_signal(0.8, seed=9).numpy()
    audio = np.concatenate([np.zeros(rate // 2), speech1, np.zeros(int(0.8 * rate)), speech2])
    data = pcm16(audio.astype(np.float32))

    async def run() -> list[dict]:
        async with raw_connect(server) as ws:
            c = Raw(ws)
            vad = {"type": "server_vad", "silence_duration_ms": 300, "prefix_padding_ms": 200}
            await configure(c, turn_detection=vad)
            for pos in range(0, len(data), 3200):
                await c.send(
                    {"type": "input_audio_buffer.append", "audio": b64(data[pos : pos + 3200])}
                )
                await asyncio.sleep(0.02)  # within the 2 s buffer limit
            events = await c.until(COMPLETED)
            await c.send({"type": "input_audio_buffer.commit"})  # the rest, by hand
            return events + await c.until(COMPLETED)

    events = asyncio.run(run())
    kinds = [e["type"] for e in events if e["type"] != DELTA]
    assert kinds == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        COMPLETED,
        "input_audio_buffer.speech_started",
        "input_audio_buffer.committed",
        COMPLETED,
    ]
    started = next(e for e in events if e["type"].endswith("speech_started"))
    stopped = next(e for e in events if e["type"].endswith("speech_stopped"))
    # speech begins at 500 ms; reported 200 ms earlier (prefix padding), within a frame
    assert 280 <= started["audio_start_ms"] <= 320
    # speech ends at 1500 ms; stop is declared after 300 ms of silence
    assert 1780 <= stopped["audio_end_ms"] <= 1860
    first = next(e for e in events if e["type"] == COMPLETED)
    assert started["item_id"] == stopped["item_id"] == first["item_id"]
    second = [e for e in events if e["type"] == "input_audio_buffer.speech_started"][1]
    assert second["audio_start_ms"] >= stopped["audio_end_ms"] - 200
    for done in (first, events[-1]):
        text = "".join(
            e["delta"] for e in events if e["type"] == DELTA and e["item_id"] == done["item_id"]
        )
        assert text == done["transcript"] != ""
    assert first["usage"]["seconds"] == pytest.approx(stopped["audio_end_ms"] / 1000, abs=0.02)


# ---------------------------------------------------------------------- auth and bad input
def test_auth_bearer_subprotocol_and_refusal(server):
    async def run() -> None:
        key_protocol = f"openai-insecure-api-key.{API_KEY}"
        async with raw_connect(server, headers={}, subprotocols=["realtime", key_protocol]) as ws:
            assert ws.subprotocol == "realtime"
            assert (await Raw(ws).recv())["type"] == "session.created"
        with pytest.raises(websockets.InvalidStatus) as info:
            async with raw_connect(server, headers={"Authorization": "Bearer nope"}):
                pass
        assert info.value.response.status_code == 401
        assert b"authentication_error" in info.value.response.body
        with pytest.raises(websockets.InvalidStatus) as info:
            async with raw_connect(server, query="intent=conversation"):
                pass
        assert info.value.response.status_code == 400
        with pytest.raises(websockets.InvalidStatus) as info:  # the default bundle is not causal
            async with raw_connect(server, query="intent=transcription&model=tiny-test"):
                pass
        assert info.value.response.status_code == 400
        assert b"cannot stream" in info.value.response.body

    asyncio.run(run())


def test_bad_input_gets_error_events_and_the_session_lives_on(server, causal):
    good = pcm16(test_signal(0.5, seed=2).numpy())
    bad_events = [
        ("not json at all", "invalid_json"),
        (json.dumps([1, 2]), "invalid_event"),
        (json.dumps({"type": "no.such.event"}), "invalid_event"),
        (json.dumps({"type": "response.create"}), "unsupported_event"),
        (
            json.dumps({"type": "input_audio_buffer.append", "audio": "@@not base64@@"}),
            "invalid_base64",
        ),
        (
            json.dumps({"type": "input_audio_buffer.append", "audio": b64(b"\x01\x02\x03")}),
            "invalid_audio",
        ),
        (json.dumps({"type": "input_audio_buffer.append", "audio": 7}), "invalid_value"),
        (
            json.dumps({"type": "input_audio_buffer.append", "audio": "A" * 200_004}),
            "audio_too_large",
        ),
        (json.dumps({"type": "input_audio_buffer.commit"}), "input_audio_buffer_commit_empty"),
        (json.dumps(ga_update(rate=8000)), "invalid_value"),
        (json.dumps({"type": "session.update", "session": {"type": "realtime"}}), "invalid_value"),
        (
            json.dumps(
                {
                    "type": "transcription_session.update",
                    "session": {"input_audio_format": "g711_ulaw"},
                }
            ),
            "invalid_value",
        ),
    ]

    async def run() -> tuple[list[dict], dict, list[dict]]:
        async with raw_connect(server) as ws:
            c = Raw(ws)
            await c.until("session.created")
            errors = []
            for text, _ in bad_events:
                await ws.send(text)
                errors.append(await c.recv())
            await ws.send(b"\x00\x01binary")
            binary = await c.recv()
            # an append that would leave over 2 s waiting is refused, the audio dropped
            big = pcm16(np.zeros(16_000 * 3, dtype=np.float32))
            await c.send(ga_update())
            await c.until("session.updated")
            await c.send({"type": "input_audio_buffer.append", "audio": b64(big)})
            # then the session still transcribes
            await c.send({"type": "input_audio_buffer.clear"})
            refused = await c.until("input_audio_buffer.cleared")
            await c.send(
                {"type": "input_audio_buffer.append", "audio": b64(good), "event_id": "e1"}
            )
            await c.send({"type": "input_audio_buffer.commit"})
            return errors, binary, refused + await c.until(COMPLETED)

    errors, binary, tail = asyncio.run(run())
    for (_, code), event in zip(bad_events, errors, strict=True):
        assert event["type"] == "error", event
        assert event["error"]["code"] == code, event
        assert event["error"]["message"]
        assert set(event["error"]) == {"type", "code", "message", "param", "event_id"}
    assert binary["type"] == "error"
    full = [e for e in tail if e["type"] == "error"]
    assert full and all(e["error"]["code"] == "input_audio_buffer_full" for e in full)
    assert tail[-1]["transcript"] == offline_text(causal, as_pcm_float(good))


def test_full_server_refuses_with_1013_and_vanished_clients_free_slots(server):
    async def run() -> None:
        metrics_url = f"{server}/metrics"
        holders = []
        for _ in range(3):
            ws = await raw_connect(server)
            await Raw(ws).until("session.created")
            holders.append(ws)
        async with raw_connect(server) as extra:
            refusal = await Raw(extra).recv()
            assert refusal["error"]["code"] == "server_busy"
            with pytest.raises(websockets.ConnectionClosed):
                await extra.recv()
            assert extra.close_code == 1013
        # one client vanishes without a close handshake, one closes properly
        holders[0].transport.abort()
        await holders[1].close()
        import httpx

        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 10
            while True:
                text = (await http.get(metrics_url)).text
                if metric_value(text, "hlstm_active_streams") == 1:
                    break
                assert time.monotonic() < deadline, "slots were not freed"
                await asyncio.sleep(0.05)
        async with raw_connect(server) as again:
            assert (await Raw(again).recv())["type"] == "session.created"
        await holders[2].close()

    asyncio.run(run())


# ---------------------------------------------------------------------- extension, idle
def test_embedding_extension_frames_equal_offline_hidden_states(server, causal):
    wave = test_signal(0.9, seed=12).numpy()
    data = pcm16(wave)

    async def run() -> list[dict]:
        async with raw_connect(server) as ws:
            c = Raw(ws)
            updated = await configure(c, hubert_lstm={"embedding_layers": [0, -1], "timing": True})
            assert updated["session"]["hubert_lstm"]["embedding_layers"] == [0, 2]
            for pos in range(0, len(data), 1234):
                await c.send(
                    {"type": "input_audio_buffer.append", "audio": b64(data[pos : pos + 1234])}
                )
            await c.send({"type": "input_audio_buffer.commit"})
            return await c.until(COMPLETED)

    events = asyncio.run(run())
    with torch.inference_mode():
        out, _ = causal.model(torch.from_numpy(as_pcm_float(data))[None])
    for layer in (0, 2):
        chunks = [
            e for e in events if e["type"] == "hubert_lstm.embeddings" and e["layer"] == layer
        ]
        frames = np.concatenate(
            [np.frombuffer(base64.b64decode(e["data"]), "<f4").reshape(e["shape"]) for e in chunks]
        )
        assert [e["start_frame"] for e in chunks] == sorted(e["start_frame"] for e in chunks)
        np.testing.assert_allclose(frames, out.hidden_states[layer][0].numpy(), atol=1e-5)
    deltas = [e for e in events if e["type"] == DELTA]
    assert all(0 <= d["hubert_lstm"]["audio_ms"] <= 900 for d in deltas)


def test_idle_sessions_are_closed(tiny_bundle_dir, causal_dir):
    settings = test_settings(
        tiny_bundle_dir, streaming_model_dir=causal_dir, stream_idle_timeout_s=0.3
    )

    async def run(url: str) -> tuple[dict, int | None]:
        async with ws_connect(ws_url(url)) as ws:
            c = Raw(ws)
            await c.until("session.created")
            event = await c.recv(timeout=10)
            with pytest.raises(websockets.ConnectionClosed):
                await ws.recv()
            return event, ws.close_code

    with serve_in_thread(create_app(settings)) as url:
        event, code = asyncio.run(run(url))
    assert event["error"]["code"] == "idle_timeout"
    assert code == 1000


def test_models_lists_both_bundles_with_capabilities(server):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)
    models = {m.id: m for m in client.models.list().data}
    assert set(models) == {"tiny-test", CAUSAL}
    assert models["tiny-test"].capabilities == ["embeddings", "transcriptions"]
    assert models[CAUSAL].capabilities == ["embeddings", "transcriptions", "realtime"]
    assert models[CAUSAL].role == "streaming"


# ---------------------------------------------------------------------- stream=true uploads
def wav_bytes(wave: np.ndarray, rate: int = 16_000) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, wave, rate, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def test_transcriptions_stream_true_with_the_official_client(server, causal):
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=API_KEY, max_retries=0)
    wave = test_signal(12.0, seed=13).numpy()  # 6 steps of 100 frames: deltas while computing
    upload = ("long.wav", wav_bytes(wave), "audio/wav")

    events = list(client.audio.transcriptions.create(model=CAUSAL, file=upload, stream=True))
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert [e.type for e in events[len(deltas) :]] == ["transcript.text.done"]
    assert len(deltas) >= 3
    assert "".join(e.delta for e in deltas) == events[-1].text == offline_text(causal, wave)

    short = ("short.wav", wav_bytes(test_signal(2.0, seed=14).numpy()), "audio/wav")
    plain = client.audio.transcriptions.create(model="tiny-test", file=short)
    streamed = list(client.audio.transcriptions.create(model="tiny-test", file=short, stream=True))
    assert streamed[-1].type == "transcript.text.done" and streamed[-1].text == plain.text
    assert "".join(e.delta for e in streamed[:-1]) == plain.text

    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(
            model=CAUSAL, file=short, stream=True, response_format="srt"
        )


def test_stream_metrics_are_exported(server):
    import httpx

    data = pcm16(test_signal(1.0, seed=21).numpy())

    async def run() -> str:
        async with raw_connect(server) as ws:
            c = Raw(ws)
            await configure(c)
            for pos in range(0, len(data), 3200):
                await c.send(
                    {"type": "input_audio_buffer.append", "audio": b64(data[pos : pos + 3200])}
                )
                await asyncio.sleep(0.01)
            await c.send({"type": "input_audio_buffer.commit"})
            await c.until(COMPLETED)
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{server}/metrics")).text

    text = asyncio.run(run())
    assert metric_value(text, "hlstm_stream_delta_latency_seconds_count") > 0
    assert metric_value(text, "hlstm_stream_real_time_factor_count") > 0
    assert metric_value(text, "hlstm_stream_step_streams_count") > 0
    assert metric_value(text, "hlstm_active_streams") >= 0


async def test_stream_true_keeps_the_upload_limits_and_the_deadline(
    tiny_bundle_dir, causal_dir, monkeypatch
):
    """stream=true goes through the upload slot, the decode limits and the request deadline:
    before the events begin as HTTP errors, after as a `timeout_error` event."""
    import app.service
    from tests.test_app_support import serve

    wave = test_signal(12.0, seed=13).numpy()  # 6 steps of 100 frames
    settings = test_settings(tiny_bundle_dir, streaming_model_dir=causal_dir, max_audio_seconds=5)
    form = {"model": CAUSAL, "stream": "true"}
    async with serve(settings) as (svc_app, client):
        r = await client.post(
            "/v1/audio/transcriptions", data=form, files={"file": ("x.wav", b"not audio")}
        )
        assert r.status_code == 415, r.text
        r = await client.post(
            "/v1/audio/transcriptions", data=form, files={"file": ("l.wav", wav_bytes(wave))}
        )
        assert r.status_code == 413 and r.json()["error"]["type"] == "payload_too_large"
        assert svc_app.state.service.upload_gate.in_use == 0

    decode = app.service.decode_audio

    def slow_decode(*args, **kwargs):
        time.sleep(0.6)
        return decode(*args, **kwargs)

    settings = test_settings(tiny_bundle_dir, streaming_model_dir=causal_dir, request_timeout_s=0.3)
    with monkeypatch.context() as m:
        m.setattr(app.service, "decode_audio", slow_decode)
        async with serve(settings) as (_, client):
            r = await client.post(
                "/v1/audio/transcriptions", data=form, files={"file": ("l.wav", wav_bytes(wave))}
            )
            assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"

    settings = test_settings(tiny_bundle_dir, streaming_model_dir=causal_dir, request_timeout_s=2)
    async with serve(settings) as (svc_app, client):
        streams = svc_app.state.service.models[CAUSAL].streams
        step = streams.model.step

        def slow_step(*args, **kwargs):
            time.sleep(0.5)
            return step(*args, **kwargs)

        monkeypatch.setattr(streams.model, "step", slow_step)
        r = await client.post(
            "/v1/audio/transcriptions", data=form, files={"file": ("l.wav", wav_bytes(wave))}
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(x[6:]) for x in r.text.split("\n\n") if x.startswith("data: ")]
        assert events[-1]["error"]["type"] == "timeout_error", events
        assert all("error" not in e for e in events[:-1])
        await asyncio.sleep(0.1)
        assert not streams.handles  # the stream's slot is free
        metrics = (await client.get("/metrics")).text
        assert metric_value(metrics, "hlstm_errors_total", {"type": "timeout_error"}) == 1


def test_auth_uses_require_api_key(server):
    """Missing key: hardening's 401 message and WWW-Authenticate; a wrong header with the
    right subprotocol key is accepted, a wrong subprotocol key is not."""

    async def run() -> None:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with raw_connect(server, headers={}):
                pass
        assert info.value.response.status_code == 401
        assert info.value.response.headers["www-authenticate"] == "Bearer"
        assert b"missing API key" in info.value.response.body
        key_protocol = f"openai-insecure-api-key.{API_KEY}"
        headers = {"Authorization": "Bearer nope"}
        protocols = ["realtime", key_protocol]
        async with raw_connect(server, headers=headers, subprotocols=protocols) as ws:
            assert (await Raw(ws).recv())["type"] == "session.created"
        with pytest.raises(websockets.InvalidStatus) as info:
            async with raw_connect(
                server, headers={}, subprotocols=["realtime", "openai-insecure-api-key.nope"]
            ):
                pass
        assert info.value.response.status_code == 401

    asyncio.run(run())


def test_request_ids_on_the_upgrade_and_its_refusal(server):
    async def run() -> None:
        headers = {"Authorization": f"Bearer {API_KEY}", "X-Request-ID": "rt-req-1"}
        async with raw_connect(server, headers=headers) as ws:
            assert ws.response.headers["x-request-id"] == "rt-req-1"
        with pytest.raises(websockets.InvalidStatus) as info:
            async with raw_connect(server, headers={"X-Request-ID": "rt-req-2"}):
                pass
        assert info.value.response.headers["x-request-id"] == "rt-req-2"
        async with raw_connect(server) as ws:  # none sent: one is made
            assert len(ws.response.headers["x-request-id"]) == 32

    asyncio.run(run())


async def test_a_non_causal_streaming_bundle_fails_start_up(tiny_bundle_dir):
    from model_training.streaming import StreamingNotSupportedError
    from tests.test_app_support import serve

    settings = test_settings(tiny_bundle_dir, streaming_model_dir=tiny_bundle_dir)
    with pytest.raises(StreamingNotSupportedError, match="not causal"):
        async with serve(settings):
            pass
