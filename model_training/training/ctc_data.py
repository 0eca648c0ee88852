"""CTC training data: manifest utterances with transcripts, padded batches, label ids."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from model_training.data.audio import load_audio
from model_training.data.collate import AudioBatch, AudioItem, collate_audio
from model_training.data.manifest import Manifest
from model_training.text import CharVocab

logger = logging.getLogger(__name__)


class CTCDataset(Dataset[tuple[int, AudioItem | None]]):
    """(index, utterance) pairs of a manifest; None instead of audio when `skip` holds the index
    (its features are cached, so the audio need not be decoded)."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.skip: set[int] = set()

    def __len__(self) -> int:
        return len(self.manifest)

    def __getitem__(self, index: int) -> tuple[int, AudioItem | None]:
        entry = self.manifest[index]
        if index in self.skip:
            return index, None
        return index, AudioItem(entry.id, load_audio(self.manifest.audio_path(index)), entry.text)


def collate_ctc(
    items: Sequence[tuple[int, AudioItem | None]],
) -> tuple[list[int], AudioBatch | None, list[int]]:
    """-> (all indices, padded batch of the items with audio or None, their indices)."""
    indices = [i for i, _ in items]
    loaded = [(i, it) for i, it in items if it is not None]
    batch = collate_audio([it for _, it in loaded]) if loaded else None
    return indices, batch, [i for i, _ in loaded]


def filter_manifest(
    manifest: Manifest, upstream: nn.Module, vocab: CharVocab, max_samples: int | None
) -> tuple[Manifest, dict[str, int]]:
    """Training utterances the CTC loss can use: a transcript, >= 1 frame, at least as many
    frames as labels, and (optionally) at most `max_samples` samples."""
    lengths = torch.tensor(manifest.lengths, dtype=torch.long)
    frames = upstream.frame_lengths(lengths).tolist()
    dropped = {"no_text": 0, "too_short": 0, "too_long": 0}
    keep = []
    for entry, n_frames in zip(manifest.entries, frames, strict=True):
        labels = len(vocab.encode(entry.text))
        if labels == 0:
            dropped["no_text"] += 1
        elif n_frames < max(1, labels):
            dropped["too_short"] += 1
        elif max_samples is not None and entry.num_samples > max_samples:
            dropped["too_long"] += 1
        else:
            keep.append(entry)
    if any(dropped.values()):
        logger.warning("training utterances dropped: %s", dropped)
    return Manifest(root=manifest.root, entries=keep), dropped


def encode_targets(texts: Sequence[str], vocab: CharVocab) -> tuple[Tensor, Tensor]:
    """Texts -> (padded label ids (B, U) long, lengths (B,) long)."""
    ids = [vocab.encode(t) for t in texts]
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    targets = torch.zeros(len(ids), max(1, int(lengths.max())), dtype=torch.long)
    for b, x in enumerate(ids):
        targets[b, : len(x)] = torch.tensor(x, dtype=torch.long)
    return targets, lengths
