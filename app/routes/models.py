"""`GET /v1/models` in OpenAI's list shape: the default bundle and the streaming bundle."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.dependencies import get_service
from app.errors import error_responses
from app.service import ServedModel, Service

# The API key is checked by app.middleware.AdmissionMiddleware, before any route runs.
router = APIRouter(prefix="/v1", tags=["models"], responses=error_responses(401, 413, 431, 503))


def model_card(served: ServedModel) -> dict:
    """One model object: OpenAI fields plus what a client needs to use the embeddings.

    capabilities: embeddings, transcriptions (with a CTC head), realtime (a causal bundle:
    live transcripts over /v1/realtime and `stream=true` transcriptions with true deltas).
    """
    bundle = served.bundle
    config_file = bundle.path / "config.json"
    created = int(config_file.stat().st_mtime) if config_file.exists() else 0
    capabilities = ["embeddings", *(["transcriptions"] if bundle.has_ctc else [])]
    if served.streams is not None:
        capabilities.append("realtime")
    return {
        "id": bundle.name,
        "object": "model",
        "created": created,
        "owned_by": "hubert-lstm",
        "role": served.role,
        "capabilities": capabilities,
        "sample_rate": bundle.sample_rate,
        "frame_rate": bundle.frame_rate,
        "layers": bundle.layer_names,
        "hidden_dims": bundle.config.get("hidden_dims"),
        # greedy | lexicon_lm (CTC beam search over the bundle's word LM); null: no CTC head
        "decoder": bundle.decoder_name if bundle.has_ctc else None,
    }


@router.get("/models")
async def list_models(service: Service = Depends(get_service)) -> dict:
    """The served models (the default first)."""
    service.require_ready()
    return {"object": "list", "data": [model_card(m) for m in service.models.values()]}


@router.get("/models/{model_id}", responses=error_responses(404, 422))
async def get_model(model_id: str, service: Service = Depends(get_service)) -> dict:
    """One model by id (404 for anything else)."""
    service.require_ready()
    return model_card(service.get_model(model_id))
