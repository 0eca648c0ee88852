"""`GET /v1/realtime?intent=transcription`: OpenAI Realtime transcription over a WebSocket.

This route only does the socket: authentication, capacity, the receive loop with its idle
timeout, and one sender task; the protocol is `app.realtime.session.RealtimeSession`.

- Auth as for HTTP: `Authorization: Bearer <key>`, or the subprotocol
  `openai-insecure-api-key.<key>` that browsers use (no headers there). A bad key is refused
  before the upgrade with a 401 JSON error (close code 1008 where the server cannot send one).
- Beta or GA: the `OpenAI-Beta: realtime=v1` header (or the `openai-beta.realtime-v1`
  subprotocol) selects the beta event names; GA otherwise.
- `model` is optional: a served causal model's id, else the streaming bundle.
- Close codes: 1013 when every stream slot is taken (after an `error` event saying so),
  1000 after the idle timeout, 1008 when the client stops reading its events, 1011 when the
  stream fails, 1003 is never used: bad messages get `error` events and the session goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketState

from app.dependencies import offered_subprotocols, require_api_key
from app.errors import APIError, error_body
from app.metrics import Metrics
from app.realtime.config import ProtocolError
from app.realtime.session import Outgoing, RealtimeSession, error_event
from app.service import Service
from app.step_batcher import StreamsFullError

logger = logging.getLogger(__name__)

router = APIRouter(tags=["realtime"])

BETA_PROTOCOL = "openai-beta.realtime-v1"
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_ERROR, CLOSE_TRY_LATER = 1000, 1008, 1011, 1013


async def _deny(
    ws: WebSocket,
    status: int,
    error_type: str,
    message: str,
    headers: dict[str, str] | None = None,
) -> None:
    """Refuse the upgrade with an HTTP error (or a policy close if the server cannot)."""
    response = JSONResponse(
        error_body(error_type, message, None), status_code=status, headers=headers
    )
    try:
        await ws.send_denial_response(response)
    except RuntimeError:
        await ws.close(code=CLOSE_POLICY, reason=message[:120])


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket, intent: str | None = None, model: str | None = None) -> None:
    """A transcription session (see module docstring)."""
    service: Service = ws.app.state.service
    metrics = service.metrics
    try:
        require_api_key(ws, service.settings)
    except APIError as exc:
        metrics.streams_refused.labels(reason="auth").inc()
        await _deny(ws, exc.status_code, exc.error_type, exc.message, exc.headers)
        return
    if intent not in (None, "transcription"):
        await _deny(
            ws,
            400,
            "invalid_request_error",
            f"intent {intent!r} is not supported: use transcription",
        )
        return
    try:
        served = service.streaming_model(model)
    except APIError as exc:
        await _deny(ws, exc.status_code, exc.error_type, exc.message)
        return
    offered = offered_subprotocols(ws)
    beta = ws.headers.get("openai-beta", "").startswith("realtime=v1") or BETA_PROTOCOL in offered
    # Browsers require one of their offered subprotocols back; "realtime" is the usual one.
    subprotocol = "realtime" if "realtime" in offered else None
    await ws.accept(subprotocol=subprotocol)
    assert served.streams is not None
    try:
        handle = served.streams.open()
    except StreamsFullError as exc:
        metrics.streams_refused.labels(reason="full").inc()
        busy = ProtocolError(str(exc), code="server_busy", error_type="server_error")
        await ws.send_text(error_event(busy))
        await ws.close(code=CLOSE_TRY_LATER, reason="server full: try again later")
        return
    bundle = served.bundle
    session = RealtimeSession(
        handle,
        beta=beta,
        model_name=bundle.name,
        layer_names=bundle.layer_names,
        frame_rate=bundle.frame_rate,
        max_append_bytes=service.settings.realtime_max_append_bytes,
    )
    session.start()
    sender = asyncio.get_running_loop().create_task(_send_loop(ws, session, metrics))
    code, reason = CLOSE_NORMAL, ""
    try:
        code, reason = await _receive_loop(ws, session, service.settings.stream_idle_timeout_s)
    except WebSocketDisconnect:
        code = 0  # the client left; nothing to close
    finally:
        await session.close()
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender
        if code and ws.client_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await ws.close(code=code, reason=reason)
        logger.info("realtime session %s ended (%s)", session.id, reason or "client closed")


async def _receive_loop(ws: WebSocket, session: RealtimeSession, idle_s: float) -> tuple[int, str]:
    """Feed client messages to the session until it or the client ends it; (code, reason)."""
    while True:
        if session.closed is not None:
            return session.closed.code, session.closed.reason
        try:
            message = await asyncio.wait_for(ws.receive(), timeout=idle_s)
        except TimeoutError:
            session.error(
                ProtocolError(f"no client event for {idle_s:g} s; closing", code="idle_timeout")
            )
            await asyncio.sleep(0.05)  # let the sender deliver it
            return CLOSE_NORMAL, "idle timeout"
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        if message.get("text") is not None:
            session.handle_text(message["text"])
        elif message.get("bytes") is not None:
            session.handle_bytes()


async def _send_loop(ws: WebSocket, session: RealtimeSession, metrics: Metrics) -> None:
    """The only writer of the socket: events in order, delta latency recorded once sent."""
    while True:
        item: Outgoing = await session.outgoing.get()
        if item.data:
            await ws.send_text(item.data)
        if item.origin is not None:
            metrics.stream_delta_latency.observe(time.monotonic() - item.origin)
        if session.closed is not None and session.outgoing.empty():
            with contextlib.suppress(Exception):
                await ws.close(code=session.closed.code, reason=session.closed.reason)
            return
