"""Service settings: one pydantic-settings object, built once at start-up and injected.

Every field can be set from the environment with the `HLSTM_` prefix, e.g.
`HLSTM_MODEL_DIR=models/default HLSTM_DEVICE=cuda HLSTM_FP16=true`. List fields take JSON
(`HLSTM_CORS_ORIGINS='["https://a.example"]'`) or a comma-separated string.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

#: Samples per 20 ms frame at 16 kHz (the student's CNN stride).
SAMPLES_PER_FRAME = 320


#: Batch size limits when HLSTM_MAX_BATCH_SIZE is unset. On CPU one utterance already keeps
#: the cores busy and padding costs more than batching gains (benchmarks/service_load.py).
DEFAULT_MAX_BATCH_SIZE = {"cuda": 16, "cpu": 1}


class Settings(BaseSettings):
    """Validated service configuration (see the module docstring for the environment names)."""

    model_config = SettingsConfigDict(env_prefix="HLSTM_", extra="ignore")

    model_dir: Path = Field(Path("models/default"), description="Bundle directory to serve.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto = CUDA when available, else CPU."
    )
    fp16: bool = Field(False, description="Autocast to float16 on CUDA (ignored on CPU).")
    cpu_bf16: bool = Field(
        False,
        description="Autocast to bfloat16 on CPU (ignored on CUDA): about 2x faster on CPUs "
        "with native bf16 (AVX-512-BF16, AMX), slower on others; check the accuracy cost with "
        "`hubert-lstm evaluate --precision bf16` first.",
    )
    max_batch_size: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Most requests per batch. Unset: 16 on CUDA, 1 on CPU, where batching "
        "measured slower than none (docs/performance.md).",
    )
    max_batch_frames: int = Field(
        24_000,
        ge=1,
        description="Padded-frame budget per batch: longest item x count, in 20 ms frames. "
        "An item longer than the budget still runs, alone.",
    )
    max_wait_ms: float = Field(10.0, ge=0, description="Longest wait for a batch to fill.")
    queue_limit: int = Field(256, ge=1, description="Requests waiting for a batch; 429 beyond.")
    request_timeout_s: float = Field(
        60.0,
        gt=0,
        description="One deadline per request, from its body being read to its response: "
        "decoding, queue, inference and formatting (504 beyond).",
    )
    max_upload_mb: float = Field(50.0, gt=0, description="Request body limit (413 beyond).")
    max_concurrent_uploads: int = Field(
        8,
        ge=1,
        description="Upload requests being read and decoded at once. Bounds the memory "
        "uploads hold before they reach the batch queue.",
    )
    upload_queue_limit: int = Field(
        64,
        ge=0,
        description="Upload requests waiting (before their body is read) for one of those "
        "slots, each up to HLSTM_REQUEST_TIMEOUT_S; 429 with Retry-After beyond.",
    )
    max_headers: int = Field(64, ge=1, description="Most request headers (431 beyond).")
    max_header_bytes: int = Field(
        16_384,
        ge=1_024,
        description="Largest request head (request line + headers) in bytes; `hubert-lstm serve` "
        "passes it to uvicorn's h11 parser, which answers 400 beyond.",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="Time a connection has to send a request's headers (closed after)."
    )
    body_idle_timeout_s: float = Field(
        15.0, gt=0, description="Longest pause while sending a request body (408 after)."
    )
    body_timeout_s: float = Field(
        120.0, gt=0, description="Longest time to send a whole request body (408 after)."
    )
    keep_alive_timeout_s: int = Field(
        5, ge=1, description="Idle keep-alive connections are closed after this many seconds."
    )
    shutdown_grace_s: float = Field(
        30.0,
        ge=0,
        description="On SIGTERM: how long in-flight requests may take to finish before the "
        "process exits anyway.",
    )
    max_audio_seconds: float = Field(600.0, gt=0, description="Per-file duration limit (413).")
    min_sample_rate: int = Field(8_000, ge=1, description="Lowest source sample rate in Hz (400).")
    max_sample_rate: int = Field(
        192_000, ge=16_000, description="Highest source sample rate in Hz (400)."
    )
    max_channels: int = Field(8, ge=1, description="Most channels in an upload (400).")
    max_decoded_samples: int = Field(
        115_200_000,
        ge=16_000,
        description="Most samples one upload may decode to, frames x channels (413 beyond; "
        "the default is 600 s of 96 kHz stereo). Bounds decoding work where seconds do not.",
    )
    max_files: int = Field(32, ge=1, description="Most files in one embeddings request.")
    max_request_audio_seconds: float = Field(
        600.0, gt=0, description="Most audio in one request, all its files together (413)."
    )
    max_embedding_values: int = Field(
        16_777_216,
        ge=1,
        description="Most numbers one embeddings response may hold, files x frames x dims of the "
        "layers asked (413 beyond: pool or pick layers). 2^24 = 64 MiB as float32.",
    )
    api_key: SecretStr | None = Field(
        None, description="When set, /v1 routes need `Authorization: Bearer <key>`."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Allowed CORS origins; empty disables CORS."
    )
    demo_page: bool = Field(
        True,
        description="Serve the try-it page at `/` (record or upload a clip, see the transcript "
        "and the layers): static files that call the /v1 routes like any other client.",
    )
    log_level: str = Field("INFO", description="Root log level.")
    json_logs: bool = Field(True, description="JSON log lines with request ids.")
    warmup: bool = Field(True, description="Run a dummy batch before reporting ready.")
    decode_workers: int = Field(2, ge=1, description="Threads decoding uploads.")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads; set it to the CPU limit of the container "
        "(oversubscribed OpenMP threads are many times slower on a busy CPU).",
    )

    streaming_model_dir: Path | None = Field(
        None,
        description="Causal bundle served for streaming next to the default one (listed by "
        "/v1/models, chosen by `model`). Unset: `streaming/` beside HLSTM_MODEL_DIR (i.e. "
        "models/streaming) when it holds a bundle.",
    )
    max_streams: int = Field(
        128, ge=1, description="Open live streams (realtime sessions + streamed uploads)."
    )
    stream_step_batching: bool = Field(
        True,
        description="Advance all streams' pending audio in one batched step (off: one "
        "forward per stream, the baseline of benchmarks/streaming_load.py).",
    )
    stream_step_wait_ms: float = Field(
        20.0,
        ge=0,
        description="Longest wait for other live streams' audio to join a batched step.",
    )
    stream_max_buffer_s: float = Field(
        30.0, gt=0, description="Seconds of audio a live stream may have waiting for the model."
    )
    stream_idle_timeout_s: float = Field(
        120.0, gt=0, description="A realtime session with no client event this long is closed."
    )
    realtime_max_append_bytes: int = Field(
        15 * 1024 * 1024,
        ge=1024,
        description="Largest base64 `audio` of one input_audio_buffer.append (OpenAI: 15 MiB).",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        """Accept a JSON list or a comma-separated string from the environment."""
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("["):
                import json

                return json.loads(value)
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
            raise ValueError(f"log_level must be a logging level name, found {value!r}")
        return level

    def resolved_streaming_model_dir(self) -> Path | None:
        """`streaming_model_dir`, or `streaming/` beside `model_dir` when it holds a bundle."""
        if self.streaming_model_dir is not None:
            return self.streaming_model_dir
        sibling = self.model_dir.parent / "streaming"
        if (sibling / "config.json").is_file() and sibling.resolve() != self.model_dir.resolve():
            return sibling
        return None

    @property
    def max_upload_bytes(self) -> int:
        """The upload limit in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)

    def resolved_max_batch_size(self, device: str) -> int:
        """`max_batch_size`, or the default for `device` ('cuda' or 'cpu') when unset."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        return DEFAULT_MAX_BATCH_SIZE[device]

    def resolved_device(self) -> str:
        """'cuda' or 'cpu'; `auto` picks CUDA when available. Raises if CUDA is asked but absent."""
        import torch

        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("HLSTM_DEVICE=cuda but torch.cuda.is_available() is False")
        return self.device
