"""HuBERT's acoustic units: frame features, k-means on them, `.km` labels of a manifest.

Iteration 1 clusters MFCCs; iteration n + 1 clusters a hidden layer of the iteration-n
teacher (HuBERT: layer 6 of 12 of the iteration-1 Base model). Both give one feature vector per
20 ms frame on HuBERT's CNN frame grid, so labels line up with the teacher and the students:

    mfcc_features(wave)                 (T, 39) MFCC + deltas + delta-deltas
    TeacherLayerFeatures(dir, layer)    (T, D)  hidden state `layer` of a saved teacher
    fit_unit_kmeans(features, C, ...)   UnitKMeans (standardised features, MiniBatchKMeans)
    label_manifest(kmeans, manifest, out.km)  with the features the k-means was fitted on

`UnitKMeans.save` records which features it was fitted on (for teacher layers: the teacher's
directory and the layer), so `hubert-lstm teacher labels --kmeans FILE` labels any manifest
with the right ones.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from model_training.data.audio import load_audio
from model_training.data.manifest import read_manifest, write_km_labels

logger = logging.getLogger(__name__)

HOP = 320
WINDOW = 400
SAMPLE_RATE = 16000
KMEANS_FORMAT = "hubert-lstm/mfcc-kmeans"  # the name predates teacher-layer units; kept
MFCC_FEATURES = "mfcc39-50hz"
TEACHER_FEATURES = "hubert-layer"


def frames_for(num_samples: int) -> int:
    """CNN / MFCC frames of an utterance of `num_samples` samples."""
    return max(0, math.floor((num_samples - WINDOW) / HOP) + 1)


# ----------------------------------------------------------------------------- features


_MFCC: dict[str, nn.Module] = {}


def mfcc_features(wave: Tensor) -> Tensor:
    """(S,) 16 kHz waveform -> (T, 39) MFCC + deltas + delta-deltas at 50 Hz.

    T = (S - 400) // 320 + 1, the frame count of HuBERT's CNN (0 frames when S < 400).
    """
    import torchaudio

    if "mfcc" not in _MFCC:
        _MFCC["mfcc"] = torchaudio.transforms.MFCC(
            sample_rate=SAMPLE_RATE,
            n_mfcc=13,
            melkwargs={
                "n_fft": WINDOW,
                "win_length": WINDOW,
                "hop_length": HOP // 2,
                "n_mels": 40,
                "center": False,
            },
        )
    if wave.numel() < WINDOW:
        return torch.zeros(0, 39)
    with torch.no_grad():
        mfcc = _MFCC["mfcc"](wave.float())  # (13, T100), frame i covers [160 i, 160 i + 400)
        d1 = torchaudio.functional.compute_deltas(mfcc)
        d2 = torchaudio.functional.compute_deltas(d1)
        feats = torch.cat([mfcc, d1, d2], dim=0)[:, ::2].T.contiguous()  # (T, 39) at 50 Hz
    expected = (wave.numel() - WINDOW) // HOP + 1
    if feats.shape[0] != expected:
        raise RuntimeError(f"MFCC frames {feats.shape[0]} != CNN frames {expected}")
    return feats


class TeacherLayerFeatures:
    """(S,) waveform -> (T, D) hidden state `layer` of a teacher directory (`teacher pretrain`
    output), one utterance at a time; T is the CNN frame count, as for `mfcc_features`.

    `layer` indexes `hidden_states` (0 = transformer input, L = last layer); None picks the
    middle one, L // 2.
    """

    def __init__(
        self, teacher_dir: str | os.PathLike, layer: int | None = None, device: str = "cpu"
    ) -> None:
        from model_training.models.teacher import HubertTeacher

        self.teacher_dir = str(Path(teacher_dir).resolve())
        self.teacher = HubertTeacher.from_hf_dir(teacher_dir).to(device)
        layers = int(self.teacher.config.num_hidden_layers)
        self.layer = layers // 2 if layer is None else int(layer)
        if not 0 <= self.layer <= layers:
            raise ValueError(f"label layer must be in [0, {layers}], found {self.layer}")
        self.device = device
        self.dim = int(self.teacher.config.hidden_size)

    def info(self) -> dict[str, str]:
        """What `UnitKMeans` stores to rebuild these features."""
        return {"features": TEACHER_FEATURES, "teacher": self.teacher_dir, "layer": str(self.layer)}

    @torch.no_grad()
    def __call__(self, wave: Tensor) -> Tensor:
        if wave.numel() < self.teacher.receptive_field:
            return torch.zeros(0, self.dim)
        out = self.teacher(wave[None].float().to(self.device))
        return out.hidden_states[self.layer][0].float().cpu()


@dataclass
class UnitKMeans:
    """k-means units on standardised frame features. centroids (C, D); mean, std (D,).

    `features`: what the frames are ({"features": "mfcc39-50hz"}, or for teacher layers
    also "teacher" (directory) and "layer").
    """

    centroids: Tensor
    mean: Tensor
    std: Tensor
    features: dict[str, str] = field(default_factory=lambda: {"features": MFCC_FEATURES})

    @property
    def num_classes(self) -> int:
        return int(self.centroids.shape[0])

    def predict(self, feats: Tensor) -> Tensor:
        """(T, D) -> (T,) long nearest-centroid units."""
        x = (feats - self.mean) / self.std
        return torch.cdist(x[None], self.centroids[None])[0].argmin(-1)

    def info(self) -> dict[str, Any]:
        """JSON-ready description (features, clusters) for run reports."""
        return {**self.features, "num_clusters": self.num_classes}

    def featurizer(self, device: str = "cpu") -> Callable[[Tensor], Tensor]:
        """The feature function these units were fitted on."""
        kind = self.features.get("features")
        if kind == MFCC_FEATURES:
            return mfcc_features
        if kind == TEACHER_FEATURES:
            return TeacherLayerFeatures(
                self.features["teacher"], int(self.features["layer"]), device
            )
        raise ValueError(f"unknown unit features {kind!r}")

    def save(self, path: str | os.PathLike) -> Path:
        tensors = {"centroids": self.centroids, "mean": self.mean, "std": self.std}
        save_file(
            {k: v.float().contiguous() for k, v in tensors.items()},
            str(path),
            metadata={"format": KMEANS_FORMAT, **self.features},
        )
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> UnitKMeans:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != KMEANS_FORMAT:
                raise ValueError(f"{path}: not a {KMEANS_FORMAT} file")
            features = {k: v for k, v in meta.items() if k != "format"}
            return cls(
                f.get_tensor("centroids"), f.get_tensor("mean"), f.get_tensor("std"), features
            )


def fit_unit_kmeans(
    features: Sequence[Tensor], num_clusters: int, max_frames: int = 200_000, seed: int = 0
) -> UnitKMeans:
    """MiniBatchKMeans on at most `max_frames` random frames of the standardised features."""
    from sklearn.cluster import MiniBatchKMeans

    allf = torch.cat(list(features), 0)
    if allf.shape[0] < num_clusters:
        raise ValueError(f"need >= {num_clusters} frames to fit k-means, found {allf.shape[0]}")
    mean, std = allf.mean(0), allf.std(0).clamp_min(1e-5)
    rng = np.random.default_rng(seed)
    take = rng.choice(allf.shape[0], size=min(max_frames, allf.shape[0]), replace=False)
    x = ((allf[take] - mean) / std).numpy()
    km = MiniBatchKMeans(
        n_clusters=num_clusters, batch_size=10_000, n_init=5, max_iter=100, random_state=seed
    )
    km.fit(x)
    logger.info(
        "k-means: %d clusters on %d frames, inertia/frame %.3f",
        num_clusters,
        len(x),
        km.inertia_ / len(x),
    )
    return UnitKMeans(torch.from_numpy(km.cluster_centers_).float(), mean, std)


def label_manifest(
    kmeans: UnitKMeans,
    manifest_path: str | os.PathLike,
    out: str | os.PathLike,
    featurize: Callable[[Tensor], Tensor] | None = None,
) -> Path:
    """Write the `.km` labels of every row of a manifest (features: the k-means' own, or
    `featurize` when the caller already holds that function)."""
    featurize = featurize or kmeans.featurizer()
    manifest = read_manifest(manifest_path)
    rows = []
    for i in range(len(manifest)):
        rows.append(kmeans.predict(featurize(load_audio(manifest.audio_path(i)))).tolist())
        if (i + 1) % 1000 == 0:
            logger.info("labelled %d / %d utterances", i + 1, len(manifest))
    return write_km_labels(out, rows)
