"""What is decided about a request before its body is read: the API key, and a slot among the
uploads being read and decoded at once.

Used by `app.middleware.AdmissionMiddleware` (HTTP) and `app.dependencies.require_api_key`
(routes that take no body through the middleware, e.g. WebSockets).
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque

from pydantic import SecretStr
from starlette.requests import HTTPConnection

from app.errors import AuthenticationError

#: Key under which the middleware leaves the request's slot in the ASGI scope state.
SLOT_STATE_KEY = "upload_slot"


def check_api_key(authorization: str, expected: SecretStr | None) -> None:
    """Raise 401 unless `authorization` is `Bearer <expected>` (nothing to check without a key).

    Raises:
        AuthenticationError (401): missing or wrong key.
    """
    if expected is None:
        return
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthenticationError(
            "missing API key: send `Authorization: Bearer <key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(token.strip().encode(), expected.get_secret_value().encode()):
        raise AuthenticationError("invalid API key", headers={"WWW-Authenticate": "Bearer"})


class UploadSlot:
    """One admitted upload; `release()` is idempotent (the route releases it after decoding,
    the middleware again when the response is done)."""

    def __init__(self, gate: UploadGate) -> None:
        self._gate: UploadGate | None = gate

    def release(self) -> None:
        if self._gate is not None:
            self._gate._release()
            self._gate = None


class UploadGate:
    """At most `limit` uploads read and decoded at once, `queue_limit` more waiting (FIFO) for
    a slot; beyond that, or after waiting `timeout` seconds, the caller gets None (a 429).

    Used from the event loop only.
    """

    def __init__(self, limit: int, queue_limit: int = 0) -> None:
        if limit < 1 or queue_limit < 0:
            raise ValueError(f"need limit >= 1 and queue_limit >= 0, found {limit}, {queue_limit}")
        self.limit = limit
        self.queue_limit = queue_limit
        self.in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return sum(1 for f in self._waiters if not f.done())

    async def acquire(self, timeout: float) -> UploadSlot | None:
        """A slot, at once or after waiting up to `timeout` s; None when the queue is full or
        the wait timed out."""
        if self.in_use < self.limit and not self.waiting:
            self.in_use += 1
            return UploadSlot(self)
        if self.waiting >= self.queue_limit:
            return None
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        except asyncio.CancelledError:  # the request went away while waiting
            if waiter.done():
                self._release()  # it had just been handed a slot: pass it on
            waiter.cancel()
            raise
        if not waiter.done():  # timed out: give up the place in the queue
            waiter.cancel()
            return None
        return UploadSlot(self)

    def _release(self) -> None:
        """Hand the slot to the oldest waiter, or free it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; in_use is unchanged
                return
        self.in_use -= 1


def release_upload_slot(connection: HTTPConnection) -> None:
    """Give the request's upload slot back (once its uploads are decoded)."""
    slot = connection.scope.get("state", {}).get(SLOT_STATE_KEY)
    if slot is not None:
        slot.release()
