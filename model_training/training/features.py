"""The upstream's hidden states for a CTC head: computed per batch, or from a feature cache.

The optional feature cache stores each utterance's upstream hidden states (float32, valid
frames only) the first time it is seen, so later epochs skip the upstream: exact for a
padding-exact upstream (every upstream here is), but memory grows with the corpus
(L x D x 50 x 4 bytes per second), so it is off by default. It serves frozen upstreams only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from model_training.data.collate import AudioBatch
from model_training.training.common import autocast

FEATURE_CACHE_MODES = ("none", "memory", "disk")


class FeatureSource:
    """Hidden states of the frozen upstream for a batch, computed or from the feature cache.

    __call__(split, indices, batch, batch_indices) -> (hidden_states list of (B, T, D_l)
    float32 on `device`, lengths (B,)), items in the order of `indices`.
    """

    def __init__(
        self,
        upstream: nn.Module,
        device: torch.device,
        precision: str = "fp32",
        cache: str = "none",
        cache_dir: Path | None = None,
        upstream_ref: dict[str, Any] | None = None,
    ) -> None:
        if cache == "disk" and cache_dir is None:
            raise ValueError("feature_cache=disk needs a cache directory")
        self.upstream = upstream
        self.device = device
        self.precision = precision
        self.cache = cache
        self.cache_dir = cache_dir
        self._memory: dict[tuple[str, int], list[Tensor]] = {}
        if cache == "disk" and cache_dir is not None:
            self._check_disk_cache(cache_dir, upstream_ref or {})

    @staticmethod
    def _check_disk_cache(cache_dir: Path, ref: dict[str, Any]) -> None:
        """A cache belongs to one upstream: refuse to mix features of two."""
        cache_dir.mkdir(parents=True, exist_ok=True)
        stamp = cache_dir / "upstream.json"
        if stamp.exists() and json.loads(stamp.read_text()) != ref:
            raise ValueError(f"{cache_dir} holds features of another upstream; delete it first")
        stamp.write_text(json.dumps(ref, indent=2) + "\n")

    def _path(self, split: str, index: int) -> Path:
        assert self.cache_dir is not None
        return self.cache_dir / split / f"{index:08d}.safetensors"

    def cached(self, split: str, index: int) -> bool:
        """True when the features of utterance `index` of `split` are cached."""
        if self.cache == "memory":
            return (split, index) in self._memory
        if self.cache == "disk":
            return self._path(split, index).exists()
        return False

    def cached_indices(self, split: str, count: int) -> set[int]:
        """The utterances among 0..count-1 of `split` whose features are cached."""
        return {i for i in range(count) if self.cached(split, i)}

    def _get(self, split: str, index: int) -> list[Tensor]:
        if self.cache == "memory":
            return self._memory[(split, index)]
        weights = load_file(str(self._path(split, index)))
        return [weights[f"layer{i}"] for i in range(len(weights))]

    def _put(self, split: str, index: int, layers: list[Tensor]) -> None:
        if self.cache == "memory":
            self._memory[(split, index)] = layers
        elif self.cache == "disk":
            path = self._path(split, index)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            save_file({f"layer{i}": t.contiguous() for i, t in enumerate(layers)}, str(tmp))
            os.replace(tmp, path)

    def compute(self, batch: AudioBatch) -> tuple[list[Tensor], Tensor]:
        """Run the upstream under inference mode -> float32 hidden states (B, T, D_l), lengths."""
        batch = batch.to(self.device)
        with torch.inference_mode(), autocast(self.device, self.precision):
            out = self.upstream(batch.waveforms, batch.lengths)
        # clone() outside inference mode: autograd may save these for the head's backward.
        return [h.float().clone() for h in out.hidden_states], out.lengths.clone()

    def __call__(
        self,
        split: str,
        indices: Sequence[int],
        batch: AudioBatch | None,
        batch_indices: Sequence[int],
    ) -> tuple[list[Tensor], Tensor]:
        if self.cache == "none":
            if batch is None or list(batch_indices) != list(indices):
                raise ValueError("without a feature cache every item of a batch needs its audio")
            return self.compute(batch)
        per_item: dict[int, list[Tensor]] = {}
        if batch is not None:
            hidden, lengths = self.compute(batch)
            for b, index in enumerate(batch_indices):
                n = int(lengths[b])
                layers = [h[b, :n].detach().cpu().clone() for h in hidden]
                self._put(split, index, layers)
                per_item[index] = layers
        for index in indices:
            if index not in per_item:
                per_item[index] = self._get(split, index)
        items = [per_item[i] for i in indices]
        lengths = torch.tensor([it[0].shape[0] for it in items], dtype=torch.long)
        t_max = int(lengths.max())
        hidden_states = []
        for layer in range(len(items[0])):
            dim = items[0][layer].shape[-1]
            padded = torch.zeros(len(items), t_max, dim, dtype=torch.float32)
            for b, it in enumerate(items):
                padded[b, : it[layer].shape[0]] = it[layer]
            hidden_states.append(padded.to(self.device))
        return hidden_states, lengths.to(self.device)
