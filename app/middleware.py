"""Pure ASGI middleware: request ids + request metrics + access log, and admission (what is
decided from the headers before the body is read, and the limits on reading it)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.admission import SLOT_STATE_KEY, UploadGate, check_api_key
from app.errors import APIError, BodyReadTimeout, UploadTooLarge, error_body
from app.logs import request_id_var
from app.metrics import Metrics
from app.settings import Settings

logger = logging.getLogger("app.access")
error_logger = logging.getLogger("app.errors")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_ADMISSION_HEADERS = (b"authorization", b"content-type", b"content-length")
_MULTIPART = b"multipart/form-data"


def _request_id(scope: Scope) -> str:
    """The client's `X-Request-ID` when it is a sane token, else a new one."""
    incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
    return incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex


class RequestContextMiddleware:
    """Echo or create `X-Request-ID`, count requests by route template, log one line each.

    WebSockets get the request id too (echoed on the upgrade or its refusal, set for the
    session's log lines); their sessions are logged and counted by the realtime route.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        failed = False
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # Logged here, where the request id is still set (Starlette's outermost error
            # middleware, which turns this into the 500, runs after this context is gone).
            failed = True
            error_logger.exception(
                "unhandled error on %s %s", scope.get("method"), scope.get("path")
            )
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            # Templates, not raw paths, so labels stay few; unmatched paths share one label.
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(route=path, method=method, status=str(status)).inc()
            self.metrics.request_duration.labels(route=path).observe(elapsed)
            logger.info(
                "%s %s %d %.1f ms",
                method,
                scope.get("path", ""),
                status,
                elapsed * 1000,
                extra={"status": status, "duration_ms": round(elapsed * 1000, 1)},
            )
            if not failed:
                request_id_var.reset(token)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = _request_id(scope)
        token = request_id_var.set(request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] in ("websocket.accept", "websocket.http.response.start"):
                headers = list(message.get("headers") or [])
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


class AdmissionMiddleware:
    """Checks made before one byte of the body is read, in order of cost, then a guarded read.

    1. header count and size (431);
    2. the API key on /v1 routes (401), so unauthenticated uploads are never read;
    3. a declared Content-Length over the limit (413); on uploads (multipart POSTs to
       /v1/audio/...) a slot among `max_concurrent_uploads`, waiting in a queue of
       `upload_queue_limit` for at most `request_timeout_s` (429 + Retry-After beyond), held
       until the route has decoded them (`app.admission.release_upload_slot`);
    4. while the body is read: byte count (413), longest pause `body_idle_timeout_s` and whole
       body `body_timeout_s` (408).

    Responses sent here close the connection (the unread body is not drained).
    """

    def __init__(
        self,
        app: ASGIApp,
        settings: Settings,
        gate: UploadGate,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.app = app
        self.settings = settings
        self.gate = gate
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        s = self.settings
        headers = scope.get("headers") or []
        head_bytes = sum(len(k) + len(v) for k, v in headers)
        if len(headers) > s.max_headers or head_bytes > s.max_header_bytes:
            message = (
                f"request headers over the limit of {s.max_headers} headers or "
                f"{s.max_header_bytes} bytes"
            )
            await self._reject(send, 431, "request_header_fields_too_large", message)
            return
        values = {k: v for k, v in headers if k in _ADMISSION_HEADERS}
        path, method = scope.get("path", ""), scope.get("method", "")
        try:
            if path.startswith("/v1/"):
                check_api_key(values.get(b"authorization", b"").decode("latin-1"), s.api_key)
        except APIError as exc:
            await self._reject(send, exc.status_code, exc.error_type, exc.message, exc.headers)
            return
        declared = values.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > s.max_upload_bytes:
            message = f"request body over the limit of {s.max_upload_bytes} bytes"
            await self._reject(send, 413, "payload_too_large", message, param="file")
            return
        slot = None
        media = values.get(b"content-type", b"").split(b";")[0].strip().lower()
        if method == "POST" and path.startswith("/v1/audio/") and media == _MULTIPART:
            # Only multipart bodies carry uploads (other bodies are never parsed by the routes).
            slot = await self.gate.acquire(timeout=s.request_timeout_s)
            if slot is None:
                message = (
                    f"server busy: {self.gate.limit} uploads are being read and decoded and "
                    f"{self.gate.queue_limit} are waiting; retry later"
                )
                await self._reject(
                    send, 429, "rate_limit_error", message, headers={"Retry-After": "1"}
                )
                return
            scope.setdefault("state", {})[SLOT_STATE_KEY] = slot
        try:
            await self.app(scope, self._guarded_receive(receive), send)
        finally:
            if slot is not None:
                slot.release()

    def _guarded_receive(self, receive: Receive) -> Receive:
        """`receive` with the byte limit and the read timeouts, until the body is complete."""
        s = self.settings
        limit = s.max_upload_bytes
        body_deadline = time.monotonic() + s.body_timeout_s
        received, complete = 0, False

        async def guarded() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()
            budget = min(s.body_idle_timeout_s, body_deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), max(budget, 0.0))
            except TimeoutError:
                # Raised inside body parsing; FastAPI re-raises HTTPExceptions as they are.
                raise BodyReadTimeout(s.body_idle_timeout_s, s.body_timeout_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise UploadTooLarge(limit)
                complete = not message.get("more_body", False)
            else:
                complete = True
            return message

        return guarded

    async def _reject(
        self,
        send: Send,
        status: int,
        error_type: str,
        message: str,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        if self.on_error is not None:
            self.on_error(error_type)
        body = json.dumps(error_body(error_type, message, param)).encode()
        raw = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": body})
