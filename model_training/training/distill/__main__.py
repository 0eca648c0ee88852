"""`python -m model_training.training.distill --config FILE.yaml [--set KEY=VALUE ...]`, the
entry point torchrun starts (`hubert-lstm distill` is the same run)."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from model_training.training.distill.config import DistillConfig
from model_training.training.distill.run import run


def get_parser() -> argparse.ArgumentParser:
    """The command line: --config and repeatable --set overrides."""
    parser = argparse.ArgumentParser(description="Distil a HuBERT teacher into a student.")
    parser.add_argument("--config", required=True, help="YAML file (see configs/distill/)")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override config entries, e.g. optim.max_steps=100",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point for `python -m model_training.training.distill` (works under torchrun)."""
    args = get_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run(DistillConfig.from_yaml(args.config, args.set))


if __name__ == "__main__":
    main()
