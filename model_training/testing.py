"""Tiny random-init artifacts for tests and smoke runs (never used for real results)."""

from __future__ import annotations

from pathlib import Path

import torch

from model_training.bundle import save_bundle
from model_training.models.ctc import CTCHead, CTCHeadConfig
from model_training.models.student import lstm_student_tiny
from model_training.text import CharVocab


def tiny_ctc_head(layer_dims: list[int], vocab_size: int = 29, causal: bool = False) -> CTCHead:
    """A CTC head small enough for unit tests (`causal`: unidirectional LSTM)."""
    return CTCHead(
        CTCHeadConfig(
            layer_dims=layer_dims,
            vocab_size=vocab_size,
            proj_dim=16,
            lstm_hidden=8,
            dropout=0.0,
            bidirectional=not causal,
        )
    )


#: Student overrides that make it causal: unidirectional LSTMs, per-frame (layer) CNN norm.
CAUSAL_STUDENT = {"bidirectional": False, "conv_norm": "layer"}
# A tiny log-mel front-end (`models/frontend.py`) for tests of the light student.
TINY_LOGMEL = {"n_mels": 16, "conv_layers": [[8, 3, 1], [8, 3, 2]]}


def build_tiny_bundle(
    out_dir: str | Path,
    seed: int = 0,
    with_ctc: bool = True,
    quantize: str | None = None,
    causal: bool = False,
    name: str = "tiny-test",
    varied: bool = False,
    frontend: str = "cnn",
) -> Path:
    """Write a random-init tiny student (+ CTC head) bundle; returns its directory.

    `causal=True` gives a streamable bundle (see `model_training/streaming.py`).
    `varied=True` makes the random head's transcripts change from frame to frame (see
    `vary_transcripts`), for tests that compare transcripts.
    frontend: "cnn" (HuBERT-shaped) or "logmel" (the light front-end, `TINY_LOGMEL`).
    """
    torch.manual_seed(seed)
    overrides = dict(CAUSAL_STUDENT) if causal else {}
    if frontend == "logmel":
        overrides.update(frontend="logmel", logmel=dict(TINY_LOGMEL))
    student = lstm_student_tiny(**overrides)
    vocab = CharVocab() if with_ctc else None
    head = tiny_ctc_head(student.hidden_dims, len(vocab), causal) if vocab is not None else None
    if varied and head is not None:
        vary_transcripts(student, head)
    return save_bundle(
        out_dir,
        student,
        head,
        vocab,
        name=name,
        provenance={"note": "random init, for tests only", "seed": seed},
        card="# tiny-test\n\nRandom weights. For tests only.\n",
        quantize=quantize,
    )


def test_signal(seconds: float, seed: int = 0, sample_rate: int = 16_000) -> torch.Tensor:
    """(S,) float32: tones of random pitch and loudness, six per second, over a little noise."""
    g = torch.Generator().manual_seed(seed)
    n = int(sample_rate * seconds)
    t = torch.arange(n) / sample_rate
    segment = (t * 6).long()
    count = int(seconds * 6) + 1
    freqs = torch.randint(100, 3000, (count,), generator=g).float()[segment]
    amps = torch.rand(count, generator=g)[segment]
    noise = 0.02 * torch.randn(n, generator=g)
    return (0.5 * amps * torch.sin(2 * torch.pi * freqs * t) + noise).float()


test_signal.__test__ = False  # type: ignore[attr-defined]  # a helper, not a pytest test


@torch.no_grad()
def vary_transcripts(student: torch.nn.Module, head: CTCHead, steps: int = 60) -> None:
    """Make a random-init recognizer's greedy transcripts lively: words, blanks, many letters.

    At random init the LSTM outputs hardly move and one letter wins every frame, so a test
    comparing transcripts could not fail. Larger input weights make the states move; the
    classifier's biases are then fitted on a test signal so that about 40% of frames are
    blank, 10% word separators and the rest letters.
    """
    for module in (student, head):
        for name, param in module.named_parameters():
            if "weight_ih" in name:
                param.mul_(8.0)
    head.classifier.weight.mul_(40.0)
    vocab = head.config.vocab_size
    target = torch.full((vocab,), 0.5 / (vocab - 2))
    target[head.config.blank_id], target[1] = 0.4, 0.1
    calibration = test_signal(4.0, seed=99)[None]
    was_training = student.training, head.training
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small ops: a second OpenMP thread only waits on a busy machine
    student.eval()
    head.eval()
    try:
        for _ in range(steps):
            out = student(calibration)
            best = head(out.hidden_states, out.lengths)[0].argmax(-1)
            share = torch.bincount(best, minlength=vocab).float() / best.numel()
            head.classifier.bias -= 0.5 * torch.log((share + 1e-3) / target)
    finally:
        torch.set_num_threads(threads)
        student.train(was_training[0])
        head.train(was_training[1])
