"""`GET /v1/models` in OpenAI's list shape (one model: the loaded bundle)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.dependencies import get_service
from app.errors import APIError, error_responses
from app.service import Service
from model_training.bundle import Bundle

# The API key is checked by app.middleware.AdmissionMiddleware, before any route runs.
router = APIRouter(prefix="/v1", tags=["models"], responses=error_responses(401, 413, 431, 503))


class ModelNotFoundError(APIError):
    """404: no model with that id."""

    status_code = 404
    error_type = "not_found_error"


def model_card(bundle: Bundle) -> dict:
    """One model object: OpenAI fields plus what a client needs to use the embeddings."""
    config_file = bundle.path / "config.json"
    created = int(config_file.stat().st_mtime) if config_file.exists() else 0
    return {
        "id": bundle.name,
        "object": "model",
        "created": created,
        "owned_by": "hubert-lstm",
        "capabilities": ["embeddings", *(["transcriptions"] if bundle.has_ctc else [])],
        "sample_rate": bundle.sample_rate,
        "frame_rate": bundle.frame_rate,
        "layers": bundle.layer_names,
        "hidden_dims": bundle.config.get("hidden_dims"),
    }


@router.get("/models")
async def list_models(service: Service = Depends(get_service)) -> dict:
    """The served models."""
    bundle, _ = service.require_ready()
    return {"object": "list", "data": [model_card(bundle)]}


@router.get("/models/{model_id}", responses=error_responses(404, 422))
async def get_model(model_id: str, service: Service = Depends(get_service)) -> dict:
    """One model by id (404 for anything else)."""
    bundle, _ = service.require_ready()
    if model_id != bundle.name:
        raise ModelNotFoundError(f"model {model_id!r} not found", param="model")
    return model_card(bundle)
