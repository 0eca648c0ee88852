"""One realtime transcription session: client events in, server events out, no socket here.

The route (`app/routes/realtime.py`) feeds each text message to `handle_text` and sends
whatever `RealtimeSession` puts on its outgoing queue. Audio is decoded, resampled to 16 kHz
with a resampler that keeps its state, and pushed to the session's stream in the
`StepBatcher`; the session never waits for inference. A pump task turns the stream's
outputs into events:

- `conversation.item.input_audio_transcription.delta` as characters become final (the
  deltas of an item, joined, are its `completed.transcript`, which equals the offline
  transcript of the item's audio: each item starts from a fresh model state);
- `input_audio_buffer.speech_started` / `speech_stopped` from the CTC/energy VAD, which then
  commits the buffer as a client commit would;
- `...completed` with `usage: {type: "duration", seconds}` when an item's last frame is done;
- `hubert_lstm.embeddings` (opt-in): per-layer frames as base64 float32.

Deltas are sent as soon as they are final, so they can precede the item's `committed`
event; they carry its item id. Deltas already sent for a buffer that is then cleared stay
sent. Ids follow OpenAI's forms (`event_...`, `item_...`, `sess_...`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from app.pcm import MODEL_RATE, PCMError, StreamResampler, decode_pcm16
from app.realtime.config import EXTENSION, ProtocolError, SessionConfig
from app.step_batcher import (
    BufferFullError,
    StepOutput,
    StreamClosedError,
    StreamHandle,
)
from app.vad import CTCEnergyVAD, VadEvent

logger = logging.getLogger(__name__)

#: Client event types of the full Realtime API that a transcription session does not serve.
_CONVERSATION_EVENTS = (
    "response.create",
    "response.cancel",
    "conversation.item.create",
    "conversation.item.delete",
    "conversation.item.truncate",
    "conversation.item.retrieve",
    "output_audio_buffer.clear",
)


def new_id(prefix: str) -> str:
    """OpenAI-style id: prefix + 24 hex characters."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def error_event(exc: ProtocolError, client_event_id: str | None = None) -> str:
    """An `error` server event in OpenAI's shape, as JSON text."""
    error = {
        "type": exc.error_type,
        "code": exc.code,
        "message": exc.message,
        "param": exc.param,
        "event_id": client_event_id,
    }
    return orjson.dumps({"type": "error", "event_id": new_id("event"), "error": error}).decode()


_INTERNAL = ProtocolError("internal server error", code="internal_error", error_type="server_error")


@dataclass
class Outgoing:
    """An event to send, and when the audio that caused it arrived (delta-latency metric)."""

    data: str
    origin: float | None = None


class SessionClosed(Exception):
    """The session cannot continue (its stream failed or the client stopped reading)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass
class _Item:
    """A buffer of audio that becomes one conversation item."""

    id: str
    start: int  # stream sample position (16 kHz) where its audio begins
    text: list[str] = field(default_factory=list)


class RealtimeSession:
    """Protocol state of one connection (see module docstring).

    Args:
        handle: the session's stream in the step batcher.
        beta: speak the beta protocol (`transcription_session.*`); GA otherwise.
        model_name: the bundle transcribing.
        layer_names: the bundle's hidden-state names (for the embeddings extension).
        frame_rate: model frames per second.
        max_append_bytes: largest `audio` field accepted in one append (base64 characters).
        max_outgoing: events waiting to be sent before the session is closed as too slow.
    """

    def __init__(
        self,
        handle: StreamHandle,
        *,
        beta: bool,
        model_name: str,
        layer_names: list[str],
        frame_rate: float,
        max_append_bytes: int,
        max_outgoing: int = 4096,
    ) -> None:
        self.handle = handle
        self.beta = beta
        self.model_name = model_name
        self.layer_names = layer_names
        self.frame_rate = frame_rate
        self.max_append_bytes = max_append_bytes
        self.id = new_id("sess")
        self.config = SessionConfig()
        self.outgoing: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize=max_outgoing)
        self.closed: SessionClosed | None = None
        self._resampler = StreamResampler(self.config.sample_rate)
        self._vad = self._make_vad()
        self._open = _Item(new_id("item"), 0)  # the item receiving audio
        self._items: deque[_Item] = deque([self._open])  # items the pump has not finished
        self._previous_item_id: str | None = None
        self._buffer_samples = 0  # 16 kHz samples in the open item
        self._pump: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Send `*.created` and start turning stream outputs into events."""
        created = "transcription_session.created" if self.beta else "session.created"
        self._send({"type": created, "session": self._session_object()})
        self._pump = asyncio.get_running_loop().create_task(self._run_pump(), name="rt-pump")

    async def close(self) -> None:
        """Free the stream slot and stop the pump."""
        self.handle.close()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump

    # ------------------------------------------------------------------ client events
    def handle_text(self, text: str) -> None:
        """One client message; protocol errors become `error` events."""
        event_id = None
        try:
            try:
                event = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise ProtocolError("message is not valid JSON", code="invalid_json") from None
            if not isinstance(event, dict):
                raise ProtocolError("an event must be a JSON object", code="invalid_event")
            event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
            self._dispatch(event)
        except ProtocolError as exc:
            self.error(exc, event_id)
        except Exception:  # a bug must cost this event, not the connection or the worker
            logger.exception("realtime session %s: event failed", self.id)
            self.error(_INTERNAL, event_id)

    def handle_bytes(self) -> None:
        """Binary frames are not part of the protocol."""
        self.error(
            ProtocolError(
                "binary messages are not supported: send JSON text events", code="invalid_event"
            )
        )

    def error(self, exc: ProtocolError, event_id: str | None = None) -> None:
        """Send an `error` event in OpenAI's shape."""
        self._send_nowait(Outgoing(error_event(exc, event_id)))

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if not isinstance(kind, str):
            raise ProtocolError("event has no type", code="invalid_event", param="type")
        if kind == "input_audio_buffer.append":
            self._append(event.get("audio"))
        elif kind == "input_audio_buffer.commit":
            self._commit()
        elif kind == "input_audio_buffer.clear":
            self._clear()
        elif kind in ("transcription_session.update", "session.update"):
            self._update(event.get("session"), beta=kind.startswith("transcription_session"))
        elif kind in _CONVERSATION_EVENTS:
            raise ProtocolError(
                f"{kind} is not available in a transcription session",
                code="unsupported_event",
                param="type",
            )
        else:
            raise ProtocolError(f"unknown event type {kind!r}", code="invalid_event", param="type")

    def _update(self, session: object, *, beta: bool) -> None:
        config = self.config.updated(session, beta=beta, num_layers=len(self.layer_names))
        if config.sample_rate != self.config.sample_rate:
            if self._buffer_samples:
                raise ProtocolError(
                    "the audio format cannot change while the buffer holds audio; "
                    "commit or clear it first",
                    param="session.audio.input.format",
                )
            self._resampler = StreamResampler(config.sample_rate)
        vad_changed = config.turn_detection != self.config.turn_detection
        self.config = config
        if vad_changed:
            self._vad = self._make_vad()
        updated = "transcription_session.updated" if beta else "session.updated"
        self._send({"type": updated, "session": self._session_object(beta=beta)})

    def _append(self, audio: object) -> None:
        try:
            samples = decode_pcm16(audio, self.max_append_bytes)
        except PCMError as exc:
            raise ProtocolError(str(exc), code=exc.code, param="audio") from None
        self._push(self._resampler(samples))

    def _push(self, samples: np.ndarray) -> None:
        try:
            self.handle.push(samples)
        except BufferFullError as exc:
            raise ProtocolError(
                f"audio dropped: {exc}", code="input_audio_buffer_full", param="audio"
            ) from None
        except StreamClosedError:
            raise ProtocolError(
                "the session's stream is closed", code="session_closed", error_type="server_error"
            ) from None
        self._buffer_samples += samples.size

    def _commit(self) -> None:
        """Client commit: the buffer ends here; its model state ends with it (so the item's
        transcript is the offline transcript of its audio)."""
        tail = self._resampler.flush()
        if tail.size:
            self._push(tail)
        if self._buffer_samples == 0:
            raise ProtocolError(
                "buffer too small: no audio was appended since the last commit",
                code="input_audio_buffer_commit_empty",
            )
        item = self._open
        self.handle.mark("commit", item.id)
        self._send_committed(item)
        self._next_open(self.handle.pushed)

    def _clear(self) -> None:
        self._resampler.flush()
        self.handle.mark("clear", self._open.id)
        self._next_open(self.handle.pushed)
        self._send({"type": "input_audio_buffer.cleared"})

    def _send_committed(self, item: _Item) -> None:
        self._send(
            {
                "type": "input_audio_buffer.committed",
                "previous_item_id": self._previous_item_id,
                "item_id": item.id,
            }
        )
        self._previous_item_id = item.id

    def _next_open(self, start: int) -> None:
        self._open = _Item(new_id("item"), start)
        self._items.append(self._open)
        self._buffer_samples = self.handle.pushed - start

    # ------------------------------------------------------------------ stream outputs
    async def _run_pump(self) -> None:
        try:
            while True:
                out = await self.handle.outputs.get()
                try:
                    self.on_output(out)
                except ProtocolError as exc:  # e.g. a VAD commit into a full buffer
                    self.error(exc)
        except SessionClosed as exc:
            self.closed = exc
        except Exception:
            logger.exception("realtime session %s: stream output failed", self.id)
            self.error(_INTERNAL)
            self.closed = SessionClosed(1011, "internal error")
        self.handle.close()
        self._send_nowait(Outgoing("", None))  # wake the sender so it can close

    def on_output(self, out: StepOutput) -> None:
        """Translate one stream output into events (event loop, no waiting)."""
        if out.error is not None:
            self.error(
                ProtocolError(
                    f"transcription failed ({out.error}); the session ends",
                    code="inference_failed",
                    error_type="server_error",
                )
            )
            raise SessionClosed(1011, "inference failed")
        if out.step is not None and out.step.num_frames:
            self._on_step(out)
        if out.marker is not None:
            item = self._items.popleft()
            if self._vad is not None:
                self._vad.reset()
            if out.marker.kind == "commit":
                self._send_completed(item, out.marker.position)

    def _on_step(self, out: StepOutput) -> None:
        """Deltas, embeddings and VAD events of one step, in frame order.

        A VAD stop ends the buffer after its frame: the model state runs on (no audio is
        computed twice), and later characters of the same step go to the next item.
        """
        step = out.step
        assert step is not None
        origin_ms = out.origin * 1000 / MODEL_RATE
        self._embeddings(self._items[0], step, origin_ms)
        vad_events: list[VadEvent] = []
        if self._vad is not None:
            floor_ms = self._items[0].start * 1000 / MODEL_RATE
            vad_events = self._vad.update(step, origin_ms, floor_ms)
        pending: list[str] = []
        first_ms: float | None = None
        latency_origin = out.first_char_arrival

        def flush() -> None:
            nonlocal first_ms, latency_origin
            if pending:
                self._send_delta(self._items[0], "".join(pending), first_ms, latency_origin)
                pending.clear()
                first_ms, latency_origin = None, None

        events = iter(vad_events)
        event = next(events, None)
        for char in step.chars:
            while event is not None and (
                event.frame < char.frame or (event.frame == char.frame and event.kind == "started")
            ):
                flush()
                self._on_vad(event, out.origin)
                event = next(events, None)
            item = self._items[0]
            piece = char.text if item.text or pending else char.text.lstrip()
            pending.append(piece)
            if first_ms is None:
                first_ms = origin_ms + char.time * 1000
        flush()
        while event is not None:
            self._on_vad(event, out.origin)
            event = next(events, None)

    def _send_delta(
        self, item: _Item, text: str, audio_ms: float | None, origin: float | None
    ) -> None:
        item.text.append(text)
        delta: dict[str, Any] = {
            "type": "conversation.item.input_audio_transcription.delta",
            "item_id": item.id,
            "content_index": 0,
            "delta": text,
        }
        if self.config.timing and audio_ms is not None:
            delta[EXTENSION] = {"audio_ms": round(audio_ms, 1)}
        self._send(delta, origin=origin)

    def _send_completed(self, item: _Item, end: int) -> None:
        self._send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item.id,
                "content_index": 0,
                "transcript": "".join(item.text),
                "usage": {"type": "duration", "seconds": (end - item.start) / MODEL_RATE},
            }
        )

    def _on_vad(self, event: VadEvent, origin: int) -> None:
        item = self._items[0]
        if event.kind == "started":
            self._send(
                {
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": event.ms,
                    "item_id": item.id,
                }
            )
            return
        self._send(
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": event.ms,
                "item_id": item.id,
            }
        )
        if item is not self._open:
            return  # a client commit already ended this buffer
        end = origin + (event.frame + 1) * self.handle.batcher.model.hop
        self._send_committed(item)
        self._send_completed(item, end)
        self._items.popleft()
        self._next_open(end)

    def _embeddings(self, item: _Item, step: Any, origin_ms: float) -> None:
        for layer in self.config.embedding_layers:
            frames = step.hidden_states[layer].contiguous().numpy().astype("<f4", copy=False)
            self._send(
                {
                    "type": f"{EXTENSION}.embeddings",
                    "item_id": item.id,
                    "layer": layer,
                    "name": self.layer_names[layer],
                    "start_frame": step.start_frame,
                    "start_ms": round(origin_ms + step.start_frame * 1000 / self.frame_rate, 1),
                    "frame_rate": self.frame_rate,
                    "shape": list(frames.shape),
                    "encoding": "base64_float32_le",
                    "data": base64.b64encode(frames.tobytes()).decode("ascii"),
                }
            )

    # ------------------------------------------------------------------ sending
    def _session_object(self, beta: bool | None = None) -> dict[str, Any]:
        beta = self.beta if beta is None else beta
        obj = self.config.beta_session(self.id) if beta else self.config.ga_session(self.id)
        obj["model"] = self.model_name
        return obj

    def _make_vad(self) -> CTCEnergyVAD | None:
        settings = self.config.turn_detection
        return None if settings is None else CTCEnergyVAD(settings, 1000.0 / self.frame_rate)

    def _send(self, event: dict[str, Any], origin: float | None = None) -> None:
        event = {"event_id": new_id("event"), **event}
        self._send_nowait(Outgoing(orjson.dumps(event).decode(), origin))

    def _send_nowait(self, item: Outgoing) -> None:
        try:
            self.outgoing.put_nowait(item)
        except asyncio.QueueFull:
            # The client is not reading; nothing more can be said to it.
            if self.closed is None:
                self.closed = SessionClosed(1008, "client is not reading events")
                self.handle.close()
