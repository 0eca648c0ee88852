"""Tiny random-init artifacts for tests and smoke runs (never used for real results)."""

from __future__ import annotations

from pathlib import Path

import torch

from model_training.bundle import save_bundle
from model_training.models.ctc import CTCHead, CTCHeadConfig
from model_training.models.student import lstm_student_tiny
from model_training.text import CharVocab


def tiny_ctc_head(layer_dims: list[int], vocab_size: int = 29) -> CTCHead:
    """A CTC head small enough for unit tests."""
    return CTCHead(
        CTCHeadConfig(
            layer_dims=layer_dims, vocab_size=vocab_size, proj_dim=16, lstm_hidden=8, dropout=0.0
        )
    )


# A tiny log-mel front-end (`models/frontend.py`) for tests of the light student.
TINY_LOGMEL = {"n_mels": 16, "conv_layers": [[8, 3, 1], [8, 3, 2]]}


def build_tiny_bundle(
    out_dir: str | Path,
    seed: int = 0,
    with_ctc: bool = True,
    quantize: str | None = None,
    frontend: str = "cnn",
) -> Path:
    """Write a random-init tiny student (+ CTC head) bundle; returns its directory.

    frontend: "cnn" (HuBERT-shaped) or "logmel" (the light front-end, `TINY_LOGMEL`).
    """
    torch.manual_seed(seed)
    student = (
        lstm_student_tiny(frontend="logmel", logmel=dict(TINY_LOGMEL))
        if frontend == "logmel"
        else lstm_student_tiny()
    )
    vocab = CharVocab() if with_ctc else None
    head = tiny_ctc_head(student.hidden_dims, len(vocab)) if vocab is not None else None
    return save_bundle(
        out_dir,
        student,
        head,
        vocab,
        name="tiny-test",
        provenance={"note": "random init, for tests only", "seed": seed},
        card="# tiny-test\n\nRandom weights. For tests only.\n",
        quantize=quantize,
    )
