"""Tiny synthetic corpora and random-init teachers for tests, smoke runs and benchmarks.

Never used for real results: the audio is tones plus noise, the teacher is untrained.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import soundfile as sf

from model_training.data.manifest import ManifestEntry, write_manifest

SAMPLE_RATE = 16000


def write_tone_corpus(
    out_dir: str | Path,
    num_utterances: int = 8,
    min_seconds: float = 1.0,
    max_seconds: float = 2.0,
    seed: int = 0,
    name: str = "train",
) -> Path:
    """Write `num_utterances` wav files of gliding tones + noise and a manifest; returns it.

    Each utterance is a few segments of different pitch, so a teacher's frames differ.
    """
    out = Path(out_dir)
    (out / name).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    for i in range(num_utterances):
        n = int(rng.uniform(min_seconds, max_seconds) * SAMPLE_RATE)
        t = np.arange(n) / SAMPLE_RATE
        wave = np.zeros(n, dtype=np.float64)
        bounds = np.sort(rng.integers(0, n, size=3))
        edges = [0, *bounds.tolist(), n]
        for a, b in itertools.pairwise(edges):
            f0 = rng.uniform(100, 400)
            wave[a:b] = sum(
                (0.3 / k) * np.sin(2 * math.pi * f0 * k * t[a:b] + rng.uniform(0, 6.28))
                for k in range(1, 4)
            )
        wave += 0.02 * rng.standard_normal(n)
        rel = f"{name}/utt{i:04d}.wav"
        sf.write(out / rel, wave.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        entries.append(ManifestEntry(rel, n, "", ""))
    return write_manifest(out / f"{name}.tsv", entries)


def write_tiny_teacher(out_dir: str | Path, num_classes: int = 20, seed: int = 0) -> Path:
    """A random-init tiny HuBERT teacher with a projection head, saved with `save()`."""
    import torch

    from model_training.models.teacher import ProjectionHead, build_teacher, tiny_hubert_config

    torch.manual_seed(seed)
    config = tiny_hubert_config()
    teacher = build_teacher(config, ProjectionHead(config.hidden_size, 16, num_classes))
    return teacher.save(out_dir)


def write_labelled_tones(
    out_dir: str | Path,
    clips: list[tuple[float, str]],
    seed: int = 0,
    name: str = "eval",
) -> Path:
    """One tone-plus-noise clip per (seconds, transcript), float32 wav, and their manifest
    `out_dir/{name}.tsv` (clip i at `c{i}.wav`, 220 (i + 1) Hz); for CTC mechanics tests."""
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    entries = []
    for i, (seconds, text) in enumerate(clips):
        n = int(seconds * SAMPLE_RATE)
        t = torch.arange(n) / SAMPLE_RATE
        wave = 0.3 * torch.sin(2 * torch.pi * 220 * (i + 1) * t) + 0.05 * torch.randn(
            n, generator=g
        )
        sf.write(out / f"c{i}.wav", wave.numpy(), SAMPLE_RATE, subtype="FLOAT")
        entries.append(ManifestEntry(f"c{i}.wav", n, text))
    return write_manifest(out / f"{name}.tsv", entries)
