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
from app.step_batcher import StepBatcher
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


class ModelNotFoundError(APIError):
    """404: no model with that id."""

    status_code = 404
    error_type = "not_found_error"


class StreamingUnavailableError(APIError):
    """400: the chosen model (or every served model) cannot stream."""


@dataclass
class ServedModel:
    """One loaded bundle with its batcher, and its stream batcher when it can stream."""

    bundle: Bundle
    batcher: DynamicBatcher[ItemResult]
    streams: StepBatcher | None = None
    role: str = "default"  # "default" (HLSTM_MODEL_DIR) or "streaming"

    @property
    def name(self) -> str:
        """The model id clients use."""
        return self.bundle.name


@dataclass
class Service:
    """Per-app runtime state (one per `create_app`).

    `bundle` and `batcher` are the default model's; `models` holds every served model by id.
    """

    settings: Settings
    metrics: Metrics
    bundle: Bundle | None = None
    batcher: DynamicBatcher[ItemResult] | None = None
    models: dict[str, ServedModel] = field(default_factory=dict)
    device: str = "cpu"
    ready: bool = False
    decode_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(2, thread_name_prefix="hlstm-decode")
    )
    torch_worker: TorchWorker = field(default_factory=TorchWorker)
    upload_gate: UploadGate = field(default_factory=lambda: UploadGate(8, 64))

    def require_ready(self, model: str | None = None) -> tuple[Bundle, DynamicBatcher[ItemResult]]:
        """The bundle and batcher of `model` (see `select`), or 503 while starting or
        draining (or the batcher died)."""
        if self.batcher is not None and self.batcher.failed:
            self.metrics.model_ready.set(0)
        if (
            not self.ready
            or self.bundle is None
            or self.batcher is None
            or not self.batcher.running
        ):
            raise NotReadyError("the model is not loaded yet (or the service is shutting down)")
        served = self.select(model)
        if not served.batcher.running:
            raise NotReadyError(f"model {served.name!r} is not running")
        return served.bundle, served.batcher

    def select(self, model: str | None) -> ServedModel:
        """The served model named `model`; the default model for None or a name we do not
        serve (clients send OpenAI model names such as `whisper-1`)."""
        if model and model in self.models:
            return self.models[model]
        assert self.bundle is not None
        return self.models[self.bundle.name]

    def get_model(self, model_id: str) -> ServedModel:
        """The served model with exactly this id (404 otherwise)."""
        if model_id not in self.models:
            raise ModelNotFoundError(f"model {model_id!r} not found", param="model")
        return self.models[model_id]

    def streaming_model(self, model: str | None) -> ServedModel:
        """The model a live stream uses: `model` if it names a served model (it must be able
        to stream), else the streaming bundle, else the default bundle if it can stream."""
        self.require_ready()
        if model and model in self.models:
            served = self.models[model]
            if served.streams is None:
                raise StreamingUnavailableError(
                    f"model {model!r} cannot stream (it is not causal); streaming models: "
                    f"{[m.name for m in self.models.values() if m.streams is not None]}",
                    param="model",
                )
            return served
        candidates = sorted(
            (m for m in self.models.values() if m.streams is not None),
            key=lambda m: m.role != "streaming",
        )
        if not candidates:
            raise StreamingUnavailableError(
                "no served model can stream: set HLSTM_STREAMING_MODEL_DIR to a causal bundle",
                param="model",
            )
        return candidates[0]

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

    async def infer(
        self, waveform: Tensor, model: str | None = None, deadline: float | None = None
    ) -> ItemResult:
        """Submit one waveform (S,) to `model`'s batcher; batcher failures become API errors.

        `deadline` (time.monotonic()) bounds queue + compute; default: the request timeout.
        """
        _, batcher = self.require_ready(model)
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
