"""Padding utterances into batches, and random crops for distillation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

LABEL_PAD = -100  # ignored by cross-entropy


@dataclass
class AudioItem:
    """One utterance: `waveform` (S,) float32 mono; `labels` (T,) long cluster units or None."""

    id: str
    waveform: torch.Tensor
    text: str = ""
    labels: torch.Tensor | None = None


@dataclass
class AudioBatch:
    """A padded batch.

    waveforms: (B, S_max) float32, zero after each item's length
    lengths: (B,) long, valid samples per item
    labels: (B, T_max) long padded with -100, or None; label_lengths: (B,) long or None
    """

    waveforms: torch.Tensor
    lengths: torch.Tensor
    texts: list[str]
    ids: list[str]
    labels: torch.Tensor | None = None
    label_lengths: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> AudioBatch:
        """Move the tensors to `device` (lists stay as they are)."""
        return AudioBatch(
            self.waveforms.to(device),
            self.lengths.to(device),
            self.texts,
            self.ids,
            None if self.labels is None else self.labels.to(device),
            None if self.label_lengths is None else self.label_lengths.to(device),
        )


def collate_audio(items: Sequence[AudioItem]) -> AudioBatch:
    """Zero-pad waveforms to the longest item; pad labels with -100 when every item has them."""
    if not items:
        raise ValueError("collate_audio needs at least one item, found 0")
    for it in items:
        if it.waveform.dim() != 1:
            raise ValueError(
                f"{it.id}: expected a (S,) waveform, found shape {tuple(it.waveform.shape)}"
            )
    lengths = torch.tensor([it.waveform.numel() for it in items], dtype=torch.long)
    waves = torch.zeros(len(items), int(lengths.max()), dtype=torch.float32)
    for i, it in enumerate(items):
        waves[i, : it.waveform.numel()] = it.waveform.to(torch.float32)
    labels = label_lengths = None
    with_labels = [it.labels is not None for it in items]
    if any(with_labels):
        if not all(with_labels):
            raise ValueError("either every item in a batch has labels or none has")
        label_lengths = torch.tensor([it.labels.numel() for it in items], dtype=torch.long)
        labels = torch.full((len(items), int(label_lengths.max())), LABEL_PAD, dtype=torch.long)
        for i, it in enumerate(items):
            labels[i, : it.labels.numel()] = it.labels.long()
    return AudioBatch(
        waves, lengths, [it.text for it in items], [it.id for it in items], labels, label_lengths
    )


def random_crop_offset(
    num_samples: int, max_samples: int, generator: torch.Generator | None = None, align: int = 1
) -> int:
    """Start of a random window of `max_samples` within `num_samples`, a multiple of `align`.

    `align` = the frame hop (320 at 16 kHz / 50 Hz) keeps a crop aligned with frame labels.
    """
    if max_samples <= 0 or align <= 0:
        raise ValueError(f"max_samples and align must be > 0, found {max_samples}, {align}")
    slack = num_samples - max_samples
    if slack <= 0:
        return 0
    choices = slack // align + 1
    return int(torch.randint(choices, (1,), generator=generator)) * align


def random_crop(
    wave: torch.Tensor, max_samples: int, generator: torch.Generator | None = None, align: int = 1
) -> torch.Tensor:
    """A random window of at most `max_samples` from `wave` (S,); shorter input comes back whole."""
    start = random_crop_offset(wave.shape[-1], max_samples, generator, align)
    return wave[..., start : start + max_samples]
