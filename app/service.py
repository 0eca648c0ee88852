"""What the lifespan builds and the routes use: settings, metrics, bundle, batcher, thread pools.

`Service` is the seam between HTTP and the model: routes decode uploads and submit waveforms
through it, and it maps batcher failures to API errors.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TypeVar

from fastapi import Request
from torch import Tensor

from app.admission import UploadGate
from app.audio import DecodedAudio, DecodeLimits, check_content_type, decode_audio
from app.batcher import BatcherStoppedError, BatcherTimeoutError, DynamicBatcher, QueueFullError
from app.errors import APIError, NotReadyError, OverloadedError, RequestTimeoutError
from app.inference import ItemResult
from app.metrics import Metrics
from app.settings import Settings
from app.torch_worker import TorchWorker
from model_training.bundle import Bundle

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: How often a waiting request checks whether its client is still connected.
DISCONNECT_POLL_S = 0.1


class ClientDisconnectedError(APIError):
    """The client went away while its request waited; nobody reads this response."""

    status_code = 499
    error_type = "client_closed_request"


@dataclass
class Service:
    """Per-app runtime state (one per `create_app`)."""

    settings: Settings
    metrics: Metrics
    bundle: Bundle | None = None
    batcher: DynamicBatcher[ItemResult] | None = None
    device: str = "cpu"
    ready: bool = False
    decode_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="hlstm-decode")
    )
    torch_worker: TorchWorker = field(default_factory=TorchWorker)
    upload_gate: UploadGate = field(default_factory=lambda: UploadGate(8, 64))

    def require_ready(self) -> tuple[Bundle, DynamicBatcher[ItemResult]]:
        """The bundle and batcher, or 503 while starting or draining (or the batcher died)."""
        if self.batcher is not None and self.batcher.failed:
            self.metrics.model_ready.set(0)
        if (
            not self.ready
            or self.bundle is None
            or self.batcher is None
            or not self.batcher.running
        ):
            raise NotReadyError("the model is not loaded yet (or the service is shutting down)")
        return self.bundle, self.batcher

    async def run_in_pool(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking work without torch operators (decoding, formatting) off the event loop.

        In a copy of the caller's context, so log lines from the pool carry the request id.
        """
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self.decode_pool, context.run, fn, *args
        )

    @asynccontextmanager
    async def deadline(self) -> AsyncIterator[float]:
        """One deadline for the rest of a request: decode, queue, inference, formatting.

        Yields the `time.monotonic()` instant it ends at (for work that checks it itself, like
        decoding); when it passes, the awaited work is cancelled and the request gets a 504.
        """
        timeout = self.settings.request_timeout_s
        ends = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout):
                yield ends
        except TimeoutError as exc:
            raise RequestTimeoutError(f"request not processed within {timeout:g} s") from exc

    async def run_torch(self, fn: Callable[..., T], *args: object) -> T:
        """Run torch work (model loading, CTC decoding) on the service's one torch thread."""
        return await self.torch_worker.run(fn, *args)

    def decode_limits(self, deadline: float | None = None) -> DecodeLimits:
        """The per-upload decoding budget from the settings (`deadline`: time.monotonic())."""
        s = self.settings
        return DecodeLimits(
            max_seconds=s.max_audio_seconds,
            min_sample_rate=s.min_sample_rate,
            max_sample_rate=s.max_sample_rate,
            max_channels=s.max_channels,
            max_decoded_samples=s.max_decoded_samples,
            deadline=deadline,
        )

    async def decode_upload(
        self,
        data: bytes,
        content_type: str | None,
        param: str = "file",
        deadline: float | None = None,
        max_seconds: float | None = None,
    ) -> DecodedAudio:
        """Check the media type; decode and resample (libsoxr, no torch) in the pool.

        `max_seconds` lowers the duration limit (a request's remaining audio budget). Counts
        decode failures by reason.
        """
        limits = self.decode_limits(deadline)
        if max_seconds is not None:
            limits = replace(limits, max_seconds=min(limits.max_seconds, max_seconds))
        try:
            check_content_type(content_type, param)
            return await self.run_in_pool(partial(decode_audio, data, limits, param=param))
        except APIError as exc:
            self.metrics.on_decode_failure(exc.reason)
            raise

    async def infer(self, waveform: Tensor, deadline: float | None = None) -> ItemResult:
        """Submit one waveform (S,) to the batcher; batcher failures become API errors.

        `deadline` (time.monotonic()) bounds queue + compute; default: the request timeout.
        """
        _, batcher = self.require_ready()
        timeout = self.settings.request_timeout_s
        if deadline is not None:
            timeout = max(deadline - time.monotonic(), 0.001)
        try:
            return await batcher.submit(waveform, timeout=timeout)
        except QueueFullError as exc:
            raise OverloadedError(
                f"server busy: {exc.queue_depth} requests waiting; retry later",
                retry_after_s=exc.retry_after_s,
            ) from exc
        except BatcherTimeoutError as exc:
            raise RequestTimeoutError(
                f"request not processed within {self.settings.request_timeout_s:g} s"
            ) from exc
        except BatcherStoppedError as exc:
            raise NotReadyError("the service is shutting down") from exc


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first (so queued items drop)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                logger.info("client disconnected; request abandoned")
                raise ClientDisconnectedError("client disconnected")
    finally:
        if not task.done():
            task.cancel()
