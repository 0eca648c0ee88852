"""Run the service under uvicorn with the connection-level limits the app cannot set itself.

- h11, not httptools: h11 bounds the request head (`HLSTM_MAX_HEADER_BYTES`, 400 beyond);
  httptools accepts a head of any size (a 100 MB header stalled the event loop for seconds).
- A header-read timeout (`HLSTM_HEADER_TIMEOUT_S`): uvicorn has none, so a client that opens a
  connection and sends its headers a byte at a time would hold it forever.
- Keep-alive timeout (`HLSTM_KEEP_ALIVE_TIMEOUT_S`) and the SIGTERM grace period
  (`HLSTM_SHUTDOWN_GRACE_S`): on SIGTERM uvicorn stops listening, lets in-flight requests
  finish within the grace period, then the lifespan drains the batcher; the process exits 0
  (uvicorn would re-raise the signal, and a pod killed by its own SIGTERM exits 143).

Body-read timeouts, header count, auth and upload admission are ASGI middleware
(`app/middleware.py`), so they hold under any server.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.settings import Settings

logger = logging.getLogger(__name__)

_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
)


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for receiving each request's headers.

    The timer runs while h11 waits for a request head (a fresh connection, or a keep-alive
    connection that started sending one); it is cancelled once the head is parsed.
    """

    header_timeout_s: float = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        if self._header_timer is None and self._awaiting_head():
            self._arm_header_timer()  # a keep-alive connection started its next request
        super().data_received(data)
        if self._header_timer is not None and not self._awaiting_head():
            self._header_timer.cancel()
            self._header_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)

    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and (
            self.cycle is None or self.cycle.response_complete
        )

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self._awaiting_head() and not self.transport.is_closing():
            logger.info("closing a connection that sent no complete request head in time")
            self.transport.write(_TIMEOUT_RESPONSE)
            self.transport.close()


def protocol_class(header_timeout_s: float) -> type[HeaderTimeoutH11Protocol]:
    """The protocol class with the given header timeout."""
    return type(
        "HeaderTimeoutH11Protocol",
        (HeaderTimeoutH11Protocol,),
        {"header_timeout_s": header_timeout_s},
    )


def uvicorn_config(settings: Settings, host: str, port: int) -> uvicorn.Config:
    """uvicorn's config for the app with the connection-level limits from `settings`."""
    return uvicorn.Config(
        "app.main:create_app",
        factory=True,
        host=host,
        port=port,
        http=protocol_class(settings.header_timeout_s),
        h11_max_incomplete_event_size=settings.max_header_bytes,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
        # The app configures logging (JSON with request ids) and writes the access log.
        log_config=None,
        access_log=False,
    )


def run(host: str, port: int) -> None:
    """Serve until SIGTERM or SIGINT; a SIGTERM shutdown returns normally (exit status 0)."""
    server = uvicorn.Server(uvicorn_config(Settings(), host, port))
    # uvicorn restores this handler after its graceful shutdown and re-raises the signal it
    # caught: with a no-op handler, SIGTERM ends in a normal exit.
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise SystemExit(3)  # as uvicorn.run: start-up failed
