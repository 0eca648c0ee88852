"""`POST /v1/audio/transcriptions` (OpenAI-compatible) and `POST /v1/audio/embeddings`."""

from __future__ import annotations

import asyncio
import base64
from functools import partial
from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import PlainTextResponse, Response
from torch import Tensor

from app.admission import release_upload_slot
from app.audio import DecodedAudio
from app.dependencies import get_service
from app.errors import BadRequestError, PayloadTooLargeError, error_responses
from app.formatting import json_body, srt_body, verbose_json_body, vtt_body
from app.inference import ItemResult
from app.service import Service, unless_disconnected
from app.sse import streamed_transcription
from model_training.bundle import Bundle
from model_training.decoding import Transcript

# The API key is checked before the body is read, by app.middleware.AdmissionMiddleware.
router = APIRouter(
    prefix="/v1/audio",
    tags=["audio"],
    responses=error_responses(400, 401, 408, 413, 415, 422, 429, 431, 503, 504),
)

ResponseFormat = Literal["json", "text", "verbose_json", "srt", "vtt"]
Granularity = Literal["word", "segment"]


class ORJSONResponse(Response):
    """JSON via orjson (numpy arrays serialised natively: embeddings are large)."""

    media_type = "application/json"

    def render(self, content: object) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


_TEXT = {"schema": {"type": "string"}}


@router.post(
    "/transcriptions",
    response_model=None,
    responses={
        200: {
            "description": "The transcript in the requested `response_format`, or "
            "server-sent events with `stream=true`.",
            "content": {
                "application/json": {},
                "text/plain": _TEXT,
                "text/vtt": _TEXT,
                "text/event-stream": _TEXT,
            },
        }
    },
)
async def create_transcription(
    request: Request,
    file: Annotated[UploadFile, File(description="Audio file (wav, flac, mp3, ogg, webm, m4a).")],
    timestamp_granularities: Annotated[
        list[Granularity], Form(alias="timestamp_granularities[]", default_factory=list)
    ],
    model: Annotated[
        str | None, Form(description="A served model id; others: the default.")
    ] = None,
    language: Annotated[str | None, Form(description="Accepted; the model is English.")] = None,
    prompt: Annotated[str | None, Form(description="Accepted and ignored.")] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[float | None, Form(ge=0.0, le=1.0)] = None,
    stream: Annotated[
        bool, Form(description="Server-sent events: transcript.text.delta, then .done.")
    ] = False,
    service: Service = Depends(get_service),
) -> Response:
    """Transcribe one file with the bundle's decoder: CTC beam search over its word LM when it
    ships one (`lm.arpa.gz`), else greedy CTC.

    `model` picks a served model by id (others, e.g. `whisper-1`, get the default one).
    With `stream=true` (json or text format) the answer is server-sent events as OpenAI
    sends them; a causal model streams the file through the step batcher, so deltas come
    as the audio is computed, and the deltas joined are the `done` text.
    """
    bundle, _ = service.require_ready(model)
    if not bundle.has_ctc or bundle.vocab is None or bundle.decode is None:
        raise BadRequestError(
            f"model {bundle.name!r} has no CTC head: it serves embeddings only", param="model"
        )
    if stream and response_format not in ("json", "text"):
        raise BadRequestError(
            f"stream=true supports response_format json or text, found {response_format!r}",
            param="response_format",
        )
    async with service.deadline() as deadline:
        audio = await service.decode_upload(await file.read(), file.content_type, "file", deadline)
        release_upload_slot(request)
        if stream:
            return await streamed_transcription(
                request, service, service.select(model), audio, deadline
            )
        result = await unless_disconnected(request, service.infer(audio.waveform, model, deadline))
        assert result.log_probs is not None
        transcript = await service.run_torch(bundle.decode, result.log_probs)
        transcript.duration = audio.duration
        # Formatting off the event loop too, so the deadline covers it.
        return await service.run_in_pool(
            _transcription_response, transcript, response_format, timestamp_granularities
        )


def _transcription_response(
    transcript: Transcript, response_format: str, granularities: list[str]
) -> Response:
    """The transcript in the requested format."""
    if response_format == "json":
        return ORJSONResponse(json_body(transcript))
    if response_format == "verbose_json":
        wanted = set(granularities or ["segment"])
        return ORJSONResponse(
            verbose_json_body(
                transcript,
                include_words="word" in wanted,
                include_segments="segment" in wanted,
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


async def _decode_files(
    service: Service, files: list[UploadFile], deadline: float
) -> list[DecodedAudio]:
    """Decode a request's files one after another within its total audio budget (413)."""
    budget = service.settings.max_request_audio_seconds
    remaining, decoded = budget, []
    for i, upload in enumerate(files):
        param = f"file[{i}]"
        try:
            audio = await service.decode_upload(
                await upload.read(), upload.content_type, param, deadline, max_seconds=remaining
            )
        except PayloadTooLargeError as exc:
            if exc.reason == "too_long" and remaining < service.settings.max_audio_seconds:
                raise PayloadTooLargeError(
                    f"the files of this request hold more than {budget:g} s of audio together",
                    param=param,
                    reason="request_too_long",
                ) from exc
            raise
        remaining -= audio.duration
        decoded.append(audio)
    return decoded


def _check_embedding_values(values: int, limit: int) -> None:
    """413 when a response would hold more than `limit` numbers."""
    if values > limit:
        raise PayloadTooLargeError(
            f"this response would hold {values} numbers (files x frames x dims of the layers "
            f"asked), over the limit of {limit}: use pooling=mean, fewer layers (layers=last "
            "or a list such as 0,-1), or shorter or fewer files",
            param="layers",
            reason="response_too_large",
        )


def _expected_values(
    bundle: Bundle, decoded: list[DecodedAudio], indices: list[int], pooled: bool
) -> int | None:
    """Upper bound of the numbers a response will hold (None when the bundle has no dims)."""
    dims = bundle.config.get("hidden_dims")
    if not dims:
        return None
    width = sum(int(dims[i]) for i in indices)
    frames = [
        1 if pooled else int(a.waveform.numel() * bundle.frame_rate / a.sample_rate) + 1
        for a in decoded
    ]
    return sum(frames) * width


@router.post("/embeddings", response_model=None)
async def create_embeddings(
    request: Request,
    file: Annotated[list[UploadFile], File(description="One or more audio files.", min_length=1)],
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
    limit = service.settings.max_embedding_values
    async with service.deadline() as deadline:
        decoded = await _decode_files(service, file, deadline)
        release_upload_slot(request)
        expected = _expected_values(bundle, decoded, indices, pooling == "mean")
        if expected is not None:
            _check_embedding_values(expected, limit)  # before any compute
        results: list[ItemResult] = await unless_disconnected(
            request,
            asyncio.gather(*(service.infer(audio.waveform, model, deadline) for audio in decoded)),
        )
        content = _embeddings_content(
            bundle, file, decoded, results, indices, pooling, encoding_format, limit
        )
        body = await service.run_in_pool(
            partial(orjson.dumps, content, option=orjson.OPT_SERIALIZE_NUMPY)
        )
    return Response(body, media_type="application/json")


def _embeddings_content(
    bundle: Bundle,
    file: list[UploadFile],
    decoded: list[DecodedAudio],
    results: list[ItemResult],
    indices: list[int],
    pooling: str,
    encoding_format: str,
    limit: int,
) -> dict:
    """The response object (values as numpy arrays or base64); 413 over `limit` numbers."""
    values = sum(
        (1 if pooling == "mean" else r.num_frames) * int(r.hidden_states[i].shape[1])
        for r in results
        for i in indices
    )
    _check_embedding_values(values, limit)
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
    return {
        "object": "list",
        "model": bundle.name,
        "pooling": pooling,
        "encoding_format": encoding_format,
        "data": data,
    }
