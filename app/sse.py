"""`stream=true` transcriptions: server-sent events as the official `openai` client reads them.

    data: {"type": "transcript.text.delta", "delta": "HEL"}
    data: {"type": "transcript.text.delta", "delta": "LO WORLD"}
    data: {"type": "transcript.text.done", "text": "HELLO WORLD"}

A causal model streams the decoded upload through its step batcher (one stream, at most
`max_frames_per_step` frames per step, interleaved with the live streams), so deltas leave
while later audio is still being computed. Other models compute the file in one batch and
send one delta per word (computed before the response starts, so errors keep their HTTP
status). Either way the deltas joined are the `done` text, which is the
offline transcript. An error after the response started is sent as `data: {"error": ...}`,
which the official client raises as an APIError.

The request's deadline (`HLSTM_REQUEST_TIMEOUT_S`, from `Service.deadline`) holds here too:
before the response starts it is a 504; once events flow, a `timeout_error` error event
ends the stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
from fastapi import Request
from fastapi.responses import StreamingResponse

from app.audio import DecodedAudio
from app.errors import OverloadedError, RequestTimeoutError, error_body
from app.service import ServedModel, Service, unless_disconnected
from app.step_batcher import StreamHandle, StreamsFullError
from model_training.decoding import Transcript

MEDIA_TYPE = "text/event-stream"


def sse(event: dict) -> bytes:
    """One server-sent event carrying JSON."""
    return b"data: " + orjson.dumps(event) + b"\n\n"


def delta_event(text: str) -> bytes:
    return sse({"type": "transcript.text.delta", "delta": text})


def done_event(text: str) -> bytes:
    return sse({"type": "transcript.text.done", "text": text})


async def streamed_transcription(
    request: Request,
    service: Service,
    served: ServedModel,
    audio: DecodedAudio,
    deadline: float | None = None,
) -> StreamingResponse:
    """The SSE response for one decoded upload (see module docstring).

    `deadline` (`time.monotonic()`) is the request's; call this inside `service.deadline()`.
    """
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    if served.streams is None:  # compute first, so that errors keep their status codes
        bundle = served.bundle
        assert bundle.vocab is not None and bundle.decode is not None
        result = await unless_disconnected(
            request, service.infer(audio.waveform, served.name, deadline)
        )
        assert result.log_probs is not None
        transcript = await service.run_torch(bundle.decode, result.log_probs)
        return StreamingResponse(_word_events(transcript), media_type=MEDIA_TYPE, headers=headers)
    try:
        handle = served.streams.open(bounded=False)
    except StreamsFullError as exc:
        raise OverloadedError(f"server busy: {exc}", retry_after_s=1) from exc
    handle.push(audio.waveform.numpy())
    handle.mark("commit")
    events = _stream_events(handle, service, deadline)
    return StreamingResponse(events, media_type=MEDIA_TYPE, headers=headers)


async def _stream_events(
    handle: StreamHandle, service: Service, deadline: float | None
) -> AsyncIterator[bytes]:
    """Deltas as the step batcher computes them, until `deadline`; the slot is freed however
    this ends."""
    pieces: list[str] = []
    try:
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            try:
                out = await asyncio.wait_for(handle.outputs.get(), remaining)
            except TimeoutError:
                timeout = service.settings.request_timeout_s
                error = RequestTimeoutError(f"request not processed within {timeout:g} s")
                service.metrics.on_error(error.error_type)
                yield sse(error_body(error.error_type, error.message))
                return
            if out.error is not None:
                yield sse(error_body("server_error", f"transcription failed ({out.error})"))
                return
            if out.step is not None and out.step.text:
                pieces.append(out.step.text)
                yield delta_event(out.step.text)
            if out.marker is not None:
                yield done_event("".join(pieces))
                return
    finally:
        handle.close()


async def _word_events(transcript: Transcript) -> AsyncIterator[bytes]:
    """A model that cannot stream: its transcript, a delta per word."""
    for i, word in enumerate(transcript.words):
        yield delta_event(word.word if i == 0 else " " + word.word)
    yield done_event(transcript.text)
