"""Liveness, readiness and Prometheus metrics (no API key: probes and scrapers use them)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from app.dependencies import get_service
from app.errors import NotReadyError, error_responses
from app.metrics import CONTENT_TYPE
from app.service import Service

router = APIRouter(tags=["health"])


@router.get("/healthz", responses=error_responses(503))
async def healthz(service: Service = Depends(get_service)) -> dict:
    """200 while the process can serve; 503 once the batcher has crashed (restart me)."""
    if service.batcher is not None and service.batcher.failed:
        raise NotReadyError("the batch worker crashed; the process needs a restart")
    return {"status": "ok"}


@router.get("/readyz", responses=error_responses(503))
async def readyz(service: Service = Depends(get_service)) -> dict:
    """200 once the model is loaded and warmed; 503 while starting or draining."""
    bundle, _ = service.require_ready()
    return {"status": "ready", "model": bundle.name, "device": service.device}


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(service: Service = Depends(get_service)) -> Response:
    """Prometheus text exposition of this app's registry."""
    return Response(service.metrics.render(), media_type=CONTENT_TYPE)
