"""Command modules of the CLI, one per area; each exposes `register(app)`."""

from __future__ import annotations

import importlib

import typer

# Order is the order in `hubert-lstm --help`.
_MODULES = ("info", "data", "teacher", "distill", "asr", "lm", "probes", "serve")


def register_all(app: typer.Typer) -> None:
    """Attach every area's commands to the root Typer app."""
    for name in _MODULES:
        module = importlib.import_module(f"model_training.commands.{name}")
        module.register(app)
