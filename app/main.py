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
from app.inference import make_run_batch, warm_up
from app.logs import configure_logging
from app.metrics import Metrics
from app.middleware import AdmissionMiddleware, RequestContextMiddleware
from app.routes import audio, health, models
from app.service import Service
from app.settings import SAMPLES_PER_FRAME, Settings
from app.torch_worker import TorchWorker
from model_training.bundle import Bundle, load_bundle

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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        device = settings.resolved_device()
        service.device = device
        previous_threads = torch.get_num_threads()
        if settings.torch_threads is not None:
            # On the torch thread, so that its OpenMP team gets this size.
            await service.run_torch(torch.set_num_threads, settings.torch_threads)
        logger.info("loading bundle %s on %s", settings.model_dir, device)
        bundle = await service.run_torch(load, settings.model_dir, device)
        run_batch = make_run_batch(bundle)
        cpu_bf16 = settings.cpu_bf16 and bundle.config.get("quantize") is None
        if settings.cpu_bf16 and not cpu_bf16:
            logger.warning("HLSTM_CPU_BF16 ignored: the bundle is int8-quantized")
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
        batcher.start()
        service.bundle, service.batcher, service.ready = bundle, batcher, True
        metrics.model_ready.set(1)
        logger.info(
            "ready: model %s (%s layers) on %s (%s), batches of up to %d",
            bundle.name,
            len(bundle.layer_names),
            device,
            batcher.precision,
            batcher.max_batch_size,
        )
        try:
            yield
        finally:
            service.ready = False
            metrics.model_ready.set(0)
            await batcher.stop(
                drain_timeout_s=min(settings.request_timeout_s, settings.shutdown_grace_s)
            )
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
