"""Pure ASGI middleware: request ids + request metrics + access log, and the body-size limit."""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import UploadTooLarge, error_body
from app.logs import request_id_var
from app.metrics import Metrics

logger = logging.getLogger("app.access")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class RequestContextMiddleware:
    """Echo or create `X-Request-ID`, count requests by route template, log one line each."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = incoming if _VALID_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
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
            request_id_var.reset(token)


class BodySizeLimitMiddleware:
    """413 for bodies over `limit_bytes`: by Content-Length up front, else while streaming."""

    def __init__(self, app: ASGIApp, limit_bytes: int) -> None:
        self.app = app
        self.limit = limit_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._reject(send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Raised inside body parsing; FastAPI re-raises HTTPExceptions as they are.
                    raise UploadTooLarge(self.limit)
            return message

        await self.app(scope, limited_receive, send)

    async def _reject(self, send: Send) -> None:
        import json

        body = json.dumps(
            error_body(
                "payload_too_large",
                f"request body over the limit of {self.limit} bytes",
                "file",
            )
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
