"""`hubert-lstm serve`: run the HTTP service.

The service lives in the `app` package; it is started by import string so that
`model_training` itself never imports FastAPI.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer


def serve(
    model_dir: Path = typer.Option(Path("models/default"), help="Bundle directory to serve."),
    host: str = typer.Option("0.0.0.0", help="Bind address."),
    port: int = typer.Option(8000, help="Port."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
) -> None:
    """Serve layer embeddings and CTC transcripts for uploaded audio."""
    import uvicorn

    os.environ["HLSTM_MODEL_DIR"] = str(model_dir)
    os.environ["HLSTM_DEVICE"] = device
    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, log_config=None)


def register(app: typer.Typer) -> None:
    """Attach `serve` to the root app."""
    app.command("serve")(serve)
