"""The `hubert-lstm` command line.

Each area registers its commands from its own module under `model_training.commands`; heavy
imports (torch, transformers) happen inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import logging

import typer

from model_training.commands import register_all

app = typer.Typer(
    name="hubert-lstm",
    help="Distil HuBERT into LSTM students (KD/DKD), fine-tune CTC, export bundles, serve them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


register_all(app)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
