"""A torch Dataset over a manifest (audio, transcript, optional `.km` labels, optional crops)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

from model_training.data.audio import SAMPLE_RATE, load_audio
from model_training.data.collate import AudioItem, random_crop_offset
from model_training.data.manifest import Manifest, read_km_labels, read_manifest


class AudioDataset(Dataset[AudioItem]):
    """Items of a manifest as `AudioItem`s.

    With `max_samples`, each item is randomly cropped (offset a multiple of `samples_per_label`,
    so `.km` labels at one unit per `samples_per_label` samples stay aligned). Crops draw from
    `generator` when given (reproducible in a single process), else from torch's global RNG.
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike,
        labels: str | os.PathLike | list[list[int]] | None = None,
        *,
        max_samples: int | None = None,
        samples_per_label: int = 320,
        sample_rate: int = SAMPLE_RATE,
        generator: torch.Generator | None = None,
    ) -> None:
        self.manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
        if labels is not None and not isinstance(labels, list):
            labels = read_km_labels(Path(labels), expected_rows=len(self.manifest))
        if labels is not None and len(labels) != len(self.manifest):
            raise ValueError(f"expected {len(self.manifest)} label rows, found {len(labels)}")
        self.labels = labels
        self.max_samples = max_samples
        self.samples_per_label = samples_per_label
        self.sample_rate = sample_rate
        self.generator = generator

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def lengths(self) -> list[int]:
        """Samples per item after cropping (for `LengthBucketSampler`)."""
        lengths = self.manifest.lengths
        return lengths if self.max_samples is None else [min(n, self.max_samples) for n in lengths]

    def __getitem__(self, index: int) -> AudioItem:
        entry = self.manifest[index]
        wave = load_audio(self.manifest.audio_path(index), self.sample_rate)
        labels = None if self.labels is None else torch.tensor(self.labels[index], dtype=torch.long)
        if self.max_samples is not None and wave.numel() > self.max_samples:
            align = self.samples_per_label if labels is not None else 1
            start = random_crop_offset(wave.numel(), self.max_samples, self.generator, align)
            wave = wave[start : start + self.max_samples]
            if labels is not None:
                first = start // self.samples_per_label
                labels = labels[first : first + self.max_samples // self.samples_per_label]
        return AudioItem(entry.id, wave, entry.text, labels)
