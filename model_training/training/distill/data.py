"""Distillation data: manifest rows with cluster labels and cached teacher targets, randomly
cropped on the 20 ms frame grid, padded into `DistillBatch`es; the train and dev loaders."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from model_training.data.audio import load_audio
from model_training.data.collate import LABEL_PAD, random_crop_offset
from model_training.data.manifest import Manifest, read_km_labels, read_manifest
from model_training.data.sampler import LengthBucketSampler
from model_training.training.distill.config import DistillConfig
from model_training.training.targets import TargetCache

HOP = 320  # samples per 20 ms frame at 16 kHz (HuBERT's CNN stride)
SAMPLE_RATE = 16000


@dataclass
class DistillBatch:
    """A padded batch for distillation.

    waveforms: (B, S) float32; lengths: (B,) samples.
    labels: (B, T) long cluster labels padded with -100, or None.
    topk_values / topk_indices: (B, T, K) cached teacher logits, or None.
    layer_targets: (B, T, L, D) cached teacher layers (float16), or None.
    target_frames: (B,) valid frames of labels / cached targets (None when neither).
    """

    waveforms: Tensor
    lengths: Tensor
    rows: list[int]
    labels: Tensor | None = None
    topk_values: Tensor | None = None
    topk_indices: Tensor | None = None
    layer_targets: Tensor | None = None
    target_frames: Tensor | None = None

    def to(self, device: torch.device) -> DistillBatch:
        def mv(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return DistillBatch(
            self.waveforms.to(device),
            self.lengths.to(device),
            self.rows,
            mv(self.labels),
            mv(self.topk_values),
            mv(self.topk_indices),
            mv(self.layer_targets),
            mv(self.target_frames),
        )


class DistillDataset(Dataset[dict[str, Any]]):
    """Manifest rows with optional .km labels and cached teacher targets, randomly cropped.

    Crops start at a multiple of the frame hop, chosen by a generator seeded with
    (seed, epoch, row): reproducible in any process and on resume. Call `set_epoch` per epoch.
    """

    def __init__(
        self,
        manifest: Manifest,
        labels: list[list[int]] | None = None,
        cache: TargetCache | None = None,
        layers: Sequence[int] = (),
        crop_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        if labels is not None and len(labels) != len(manifest):
            raise ValueError(f"expected {len(manifest)} label rows, found {len(labels)}")
        if cache is not None and len(cache) != len(manifest):
            raise ValueError(f"target cache has {len(cache)} rows, manifest {len(manifest)}")
        self.manifest = manifest
        self.labels = labels
        self.cache = cache
        self.layers = list(layers)
        self.crop_samples = crop_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def lengths(self) -> list[int]:
        n = self.manifest.lengths
        return n if self.crop_samples is None else [min(x, self.crop_samples) for x in n]

    def __getitem__(self, row: int) -> dict[str, Any]:
        wave = load_audio(self.manifest.audio_path(row))
        start = 0
        if self.crop_samples is not None and wave.numel() > self.crop_samples:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 7_919 + row)
            start = random_crop_offset(wave.numel(), self.crop_samples, g, align=HOP)
            wave = wave[start : start + self.crop_samples]
        first = start // HOP
        last = first + math.ceil(wave.numel() / HOP)  # >= the crop's frame count
        item: dict[str, Any] = {"row": row, "wave": wave}
        if self.labels is not None:
            item["labels"] = torch.tensor(self.labels[row][first:last], dtype=torch.long)
        if self.cache is not None:
            t = self.cache.get(row, self.layers)
            item["values"] = t.values[first:last]
            item["indices"] = t.indices[first:last]
            if self.layers:
                item["layers"] = torch.stack([t.layers[k][first:last] for k in self.layers], 1)
        return item


def _pad(seqs: list[Tensor], value: float) -> Tensor:
    return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=value)


def collate_distill(items: list[dict[str, Any]]) -> DistillBatch:
    """Pad waveforms with 0, labels with -100 and cached targets with 0 (masked later)."""
    lengths = torch.tensor([it["wave"].numel() for it in items], dtype=torch.long)
    batch = DistillBatch(
        _pad([it["wave"] for it in items], 0.0), lengths, [it["row"] for it in items]
    )
    frames = None
    if "labels" in items[0]:
        batch.labels = _pad([it["labels"] for it in items], LABEL_PAD)
        frames = torch.tensor([it["labels"].numel() for it in items])
    if "values" in items[0]:
        batch.topk_values = _pad([it["values"] for it in items], 0.0)
        batch.topk_indices = _pad([it["indices"] for it in items], 0)
        cache_frames = torch.tensor([it["values"].shape[0] for it in items])
        frames = cache_frames if frames is None else torch.minimum(frames, cache_frames)
    if "layers" in items[0]:
        batch.layer_targets = _pad([it["layers"] for it in items], 0.0)
    batch.target_frames = frames
    return batch


def make_loader(dataset: Dataset, batch_sampler: Any, cfg: DistillConfig) -> DataLoader:
    """Batches of `batch_sampler` collated into `DistillBatch`es."""
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate_distill,
        num_workers=cfg.data.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
    )


def dev_loader(cfg: DistillConfig, num_classes: int | None) -> DataLoader | None:
    """The first `dev_max_utterances` dev rows, whole, in ascending-length batches (or None)."""
    d = cfg.data
    if not d.dev_manifest:
        return None
    manifest = read_manifest(d.dev_manifest)
    manifest.entries = manifest.entries[: d.dev_max_utterances]
    labels = read_km_labels(d.dev_labels)[: len(manifest)] if d.dev_labels else None
    layers = cfg.teacher.feature_layers if cfg.loss.feature > 0 else []
    cache = _RowLimitedCache(TargetCache(d.dev_targets), len(manifest)) if d.dev_targets else None
    dataset = DistillDataset(manifest, labels, cache, layers, crop_samples=None)  # type: ignore[arg-type]
    sampler = LengthBucketSampler(
        dataset.lengths, int(d.max_batch_seconds * SAMPLE_RATE), d.max_batch_size, shuffle=False
    )
    return make_loader(dataset, sampler, cfg)


class _RowLimitedCache:
    """A cache seen through the first n rows (the dev subset)."""

    def __init__(self, cache: TargetCache, n: int) -> None:
        self.cache, self.n = cache, n

    def __len__(self) -> int:
        return self.n

    def get(self, row: int, layers: Sequence[int] | None = None) -> Any:
        return self.cache.get(row, layers)
