"""`hubert-lstm serve`: run the HTTP service.

The service lives in the `app` package; it is imported only when this command runs, so that
`model_training` itself never imports FastAPI. Options given here become `HLSTM_*`
environment variables, which `app.settings.Settings` reads; every other setting
(batching, limits, API key, CORS) is taken from the environment as is.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import typer


def serve(
    model_dir: Path = typer.Option(
        Path("models/default"), envvar="HLSTM_MODEL_DIR", help="Bundle directory to serve."
    ),
    host: str = typer.Option("0.0.0.0", envvar="HLSTM_HOST", help="Bind address."),
    port: int = typer.Option(8000, envvar="HLSTM_PORT", help="Port."),
    device: str = typer.Option("auto", envvar="HLSTM_DEVICE", help="auto | cpu | cuda"),
    fp16: bool | None = typer.Option(None, help="Autocast to float16 on CUDA."),
    max_batch_size: int | None = typer.Option(None, help="Most requests per batch."),
    max_wait_ms: float | None = typer.Option(None, help="Longest wait for a batch to fill."),
    log_level: str | None = typer.Option(None, help="Log level (INFO, DEBUG, ...)."),
) -> None:
    """Serve layer embeddings and CTC transcripts for uploaded audio.

    Further settings: HLSTM_MAX_BATCH_FRAMES, HLSTM_QUEUE_LIMIT, HLSTM_REQUEST_TIMEOUT_S,
    HLSTM_MAX_UPLOAD_MB, HLSTM_MAX_AUDIO_SECONDS, HLSTM_API_KEY, HLSTM_CORS_ORIGINS,
    HLSTM_TORCH_THREADS, HLSTM_WARMUP and the limits (see app/settings.py and the README).
    On SIGTERM it stops listening, finishes in-flight requests within HLSTM_SHUTDOWN_GRACE_S
    and exits 0.
    """
    if not (model_dir / "config.json").is_file():
        raise typer.BadParameter(
            f"{model_dir} is not a bundle (no config.json)", param_hint="--model-dir"
        )
    os.environ["HLSTM_MODEL_DIR"] = str(model_dir)
    os.environ["HLSTM_DEVICE"] = device
    optional = {
        "HLSTM_FP16": fp16,
        "HLSTM_MAX_BATCH_SIZE": max_batch_size,
        "HLSTM_MAX_WAIT_MS": max_wait_ms,
        "HLSTM_LOG_LEVEL": log_level,
    }
    for name, value in optional.items():
        if value is not None:
            os.environ[name] = str(value).lower() if isinstance(value, bool) else str(value)
    # uvicorn with the connection-level limits (header size and timeout, keep-alive, grace).
    importlib.import_module("app.server").run(host, port)


def register(app: typer.Typer) -> None:
    """Attach `serve` to the root app."""
    app.command("serve")(serve)
