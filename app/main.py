"""App factory: `create_app(settings)` builds the FastAPI app whose lifespan owns the model.

Start-up loads the bundle, warms it up, starts the batcher and only then reports ready;
shutdown reports not-ready first (so load balancers drain), then lets queued work finish.
Run with `hubert-lstm serve` or `uvicorn app.main:create_app --factory`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.admission import UploadGate
from app.batcher import DynamicBatcher
from app.errors import install_error_handlers
from app.inference import make_run_batch, warm_up, warm_up_streams
from app.logs import configure_logging
from app.metrics import Metrics
from app.middleware import AdmissionMiddleware, RequestContextMiddleware
from app.routes import audio, demo, health, models, realtime
from app.service import ServedModel, Service
from app.settings import SAMPLES_PER_FRAME, Settings
from app.step_batcher import StepBatcher
from app.torch_worker import TorchWorker
from model_training.bundle import Bundle, load_bundle
from model_training.streaming import StreamingModel, StreamingNotSupportedError, streaming_problems

logger = logging.getLogger(__name__)

BundleLoader = Callable[[Path, str], Bundle]


def _load(path: Path, device: str) -> Bundle:
    return load_bundle(path, device=device)


def create_app(settings: Settings | None = None, *, loader: BundleLoader | None = None) -> FastAPI:
    """Build the service.

    Args:
        settings: defaults to `Settings()` (environment variables with the HLSTM_ prefix).
        loader: `(model_dir, device) -> Bundle`; tests pass one to instrument the model.
    """
    settings = settings or Settings()
    if settings.json_logs:
        configure_logging(settings.log_level)
    load = loader or _load
    metrics = Metrics()
    service = Service(
        settings=settings,
        metrics=metrics,
        decode_pool=ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="hlstm-decode"),
        torch_worker=TorchWorker(),
        upload_gate=UploadGate(settings.max_concurrent_uploads, settings.upload_queue_limit),
    )

    streaming_dir = settings.resolved_streaming_model_dir()

    async def _serve(bundle: Bundle, role: str, device: str) -> ServedModel:
        """Batcher (and stream batcher, for a causal bundle) for one loaded bundle; warmed."""
        run_batch = make_run_batch(bundle)
        cpu_bf16 = settings.cpu_bf16 and bundle.config.get("quantize") is None
        if settings.cpu_bf16 and not cpu_bf16:
            logger.warning("HLSTM_CPU_BF16 ignored: bundle %s is int8-quantized", bundle.name)
        batcher = DynamicBatcher(
            run_batch,
            max_batch_size=settings.resolved_max_batch_size(device),
            max_batch_frames=settings.max_batch_frames,
            max_wait_ms=settings.max_wait_ms,
            queue_limit=settings.queue_limit,
            samples_per_frame=SAMPLES_PER_FRAME,
            sample_rate=bundle.sample_rate,
            device=device,
            fp16=settings.fp16,
            cpu_bf16=cpu_bf16,
            observer=metrics,
            executor=service.torch_worker.executor,
        )
        if settings.warmup:
            await service.run_torch(warm_up, run_batch, device, batcher.precision)
        streams = None
        problems = streaming_problems(bundle)
        if problems:
            logger.info("model %s cannot stream: %s", bundle.name, "; ".join(problems))
            if role == "streaming":
                raise StreamingNotSupportedError(
                    f"streaming bundle {bundle.path} is not causal: " + "; ".join(problems)
                )
        else:
            streaming = StreamingModel(bundle)
            if settings.warmup:
                await service.run_torch(warm_up_streams, streaming)
            streams = StepBatcher(
                streaming,
                service.torch_worker.executor,
                max_streams=settings.max_streams,
                max_pending_s=settings.stream_max_buffer_s,
                max_wait_ms=settings.stream_step_wait_ms,
                batched=settings.stream_step_batching,
                observer=metrics,
            )
        return ServedModel(bundle, batcher, streams, role)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device = settings.resolved_device()
        service.device = device
        previous_threads = torch.get_num_threads()
        if settings.torch_threads is not None:
            # On the torch thread, so that its OpenMP team gets this size.
            await service.run_torch(torch.set_num_threads, settings.torch_threads)
        served: list[ServedModel] = []
        for role, model_dir in (("default", settings.model_dir), ("streaming", streaming_dir)):
            if model_dir is None:
                continue
            logger.info("loading %s bundle %s on %s", role, model_dir, device)
            bundle = await service.run_torch(load, model_dir, device)
            served.append(await _serve(bundle, role, device))
        names = [m.name for m in served]
        if len(set(names)) != len(names):
            raise ValueError(f"the default and streaming bundles share the name {names[0]!r}")
        service.models = {m.name: m for m in served}
        for m in served:
            m.batcher.start()
            if m.streams is not None:
                m.streams.start()
        default = served[0]
        service.bundle, service.batcher, service.ready = default.bundle, default.batcher, True
        metrics.model_ready.set(1)
        for m in served:
            logger.info(
                "ready: %s model %s (%s layers) on %s (%s), batches of up to %d%s",
                m.role,
                m.name,
                len(m.bundle.layer_names),
                device,
                m.batcher.precision,
                m.batcher.max_batch_size,
                ", streams" if m.streams is not None else "",
            )
        try:
            yield
        finally:
            service.ready = False
            metrics.model_ready.set(0)
            drain_timeout_s = min(settings.request_timeout_s, settings.shutdown_grace_s)
            for m in service.models.values():
                if m.streams is not None:
                    await m.streams.stop()
                await m.batcher.stop(drain_timeout_s=drain_timeout_s)
            service.decode_pool.shutdown(wait=False, cancel_futures=True)
            service.torch_worker.shutdown()
            torch.set_num_threads(previous_threads)
            logger.info("stopped")

    app = FastAPI(
        title="hubert-lstm",
        summary="Layer embeddings and CTC transcripts from a distilled HuBERT LSTM student.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = service
    install_error_handlers(app, on_error=metrics.on_error)
    app.include_router(health.router)
    app.include_router(models.router)
    app.include_router(audio.router)
    app.include_router(realtime.router)
    if settings.demo_page:
        app.include_router(demo.router)
    # Last added = outermost: request context sees every response, admission's included;
    # CORS answers preflights before admission asks for a key.
    app.add_middleware(
        AdmissionMiddleware, settings=settings, gate=service.upload_gate, on_error=metrics.on_error
    )
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    return app
