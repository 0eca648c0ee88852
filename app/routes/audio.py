"""`POST /v1/audio/transcriptions` (OpenAI-compatible) and `POST /v1/audio/embeddings`."""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response
from torch import Tensor

from app.dependencies import get_service, require_api_key
from app.errors import BadRequestError
from app.formatting import json_body, srt_body, verbose_json_body, vtt_body
from app.inference import ItemResult
from app.service import Service, unless_disconnected
from app.sse import streamed_transcription
from model_training.decoding import greedy_ctc_decode

router = APIRouter(prefix="/v1/audio", tags=["audio"], dependencies=[Depends(require_api_key)])

ResponseFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]
Granularity = Literal["word", "segment"]


class ORJSONResponse(Response):
    """JSON via orjson (numpy arrays serialised natively: embeddings are large)."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


@router.post("/transcriptions", response_model=None)
async def create_transcription(
    request: Request,
    file: Annotated[UploadFile, File(description="Audio file (wav, flac, mp3, ogg, webm, m4a).")],
    model: Annotated[
        str | None, Form(description="A served model id; others: the default.")
    ] = None,
    language: Annotated[str | None, Form(description="Accepted; the model is English.")] = None,
    prompt: Annotated[str | None, Form(description="Accepted and ignored.")] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float | None, Form(ge=0.0, le=1.0)] = None,
    timestamp_granularities: Annotated[
        list[Granularity] | None, Form(alias="timestamp_granularities[]")
    ] = None,
    stream: Annotated[
        bool, Form(description="Server-sent events: transcript.text.delta, then .done.")
    ] = False,
    service: Service = Depends(get_service),
) -> Response:
    """Transcribe one file with greedy CTC decoding (no language model).

    `model` picks a served model by id (others, e.g. `whisper-1`, get the default one).
    With `stream=true` (json or text format) the answer is server-sent events as OpenAI
    sends them; a causal model streams the file through the step batcher, so deltas come
    as the audio is computed, and the deltas joined are the `done` text.
    """
    bundle, _ = service.require_ready(model)
    if not bundle.has_ctc or bundle.vocab is None:
        raise BadRequestError(
            f"model {bundle.name!r} has no CTC head: it serves embeddings only", param="model"
        )
    if stream and response_format not in ("json", "text"):
        raise BadRequestError(
            f"stream=true supports response_format json or text, found {response_format!r}",
            param="response_format",
        )
    data = await file.read()
    audio = await service.decode_upload(data, file.content_type)
    if stream:
        return await streamed_transcription(request, service, service.select(model), audio)
    result = await unless_disconnected(request, service.infer(audio.waveform, model))
    assert result.log_probs is not None
    transcript = await service.run_torch(
        greedy_ctc_decode, result.log_probs, bundle.vocab, 1.0 / bundle.frame_rate
    )
    transcript.duration = audio.duration
    if response_format == "json":
        return ORJSONResponse(json_body(transcript))
    if response_format == "verbose_json":
        granularities = set(timestamp_granularities or ["segment"])
        return ORJSONResponse(
            verbose_json_body(
                transcript,
                include_words="word" in granularities,
                include_segments="segment" in granularities,
            )
        )
    if response_format == "srt":
        return PlainTextResponse(srt_body(transcript))
    if response_format == "vtt":
        return PlainTextResponse(vtt_body(transcript), media_type="text/vtt")
    return PlainTextResponse(transcript.text + "\n")


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """`all` | `last` | comma-separated indices (negative from the end) -> sorted unique indices.

    Raises:
        BadRequestError: unknown word, non-integer, or an index outside [-L, L).
    """
    spec = spec.strip().lower()
    if spec == "all":
        return list(range(num_layers))
    if spec == "last":
        return [num_layers - 1]
    indices: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            index = int(part)
        except ValueError:
            raise BadRequestError(
                f"layers must be 'all', 'last' or comma-separated integers, found {spec!r}",
                param="layers",
            ) from None
        if not -num_layers <= index < num_layers:
            raise BadRequestError(
                f"layer index {index} out of range for a model with {num_layers} hidden states "
                f"(valid: {-num_layers}..{num_layers - 1})",
                param="layers",
            )
        normalized = index % num_layers
        if normalized not in indices:
            indices.append(normalized)
    return indices


def _encode(values: Tensor, encoding_format: str) -> object:
    """float -> numpy (serialised as nested lists); base64 -> little-endian float32 bytes."""
    array = values.contiguous().numpy().astype("<f4", copy=False)
    if encoding_format == "base64":
        return base64.b64encode(array.tobytes()).decode("ascii")
    return array


@router.post("/embeddings", response_model=None)
async def create_embeddings(
    request: Request,
    file: Annotated[list[UploadFile], File(description="One or more audio files.")],
    model: Annotated[
        str | None, Form(description="A served model id; others: the default.")
    ] = None,
    layers: Annotated[str, Form(description="all | last | comma list, e.g. 0,2,-1")] = "last",
    pooling: Annotated[Literal["none", "mean"], Form()] = "none",
    encoding_format: Annotated[Literal["float", "base64"], Form()] = "float",
    service: Service = Depends(get_service),
) -> Response:
    """Per file and requested layer: frame rate, shape and values of the hidden states.

    `pooling=mean` averages over the file's frames (shape [D]); otherwise shape is [T, D].
    `base64` values are the raw little-endian float32 bytes, row-major.
    """
    bundle, _ = service.require_ready(model)
    if len(file) > service.settings.max_files:
        raise BadRequestError(
            f"{len(file)} files in one request, the limit is {service.settings.max_files}",
            param="file",
        )
    indices = parse_layers(layers, len(bundle.layer_names))
    payloads = [await upload.read() for upload in file]
    decoded = await asyncio.gather(
        *(
            service.decode_upload(data, upload.content_type, param=f"file[{i}]")
            for i, (data, upload) in enumerate(zip(payloads, file, strict=True))
        )
    )
    results: list[ItemResult] = await unless_disconnected(
        request, asyncio.gather(*(service.infer(audio.waveform, model) for audio in decoded))
    )
    data = []
    for i, (upload, audio, result) in enumerate(zip(file, decoded, results, strict=True)):
        entries = []
        for index in indices:
            hidden = result.hidden_states[index]  # (T, D)
            values = hidden.mean(dim=0) if pooling == "mean" else hidden
            entries.append(
                {
                    "layer": index,
                    "name": bundle.layer_names[index],
                    "shape": list(values.shape),
                    "embedding": _encode(values, encoding_format),
                }
            )
        data.append(
            {
                "object": "embedding",
                "index": i,
                "filename": upload.filename,
                "duration": round(audio.duration, 4),
                "frame_rate": bundle.frame_rate,
                "num_frames": result.num_frames,
                "layers": entries,
            }
        )
    return ORJSONResponse(
        {
            "object": "list",
            "model": bundle.name,
            "pooling": pooling,
            "encoding_format": encoding_format,
            "data": data,
        }
    )
