"""The teacher-target cache: run the teacher once per utterance, keep what distillation needs.

Per utterance and 20 ms frame it stores the teacher's top-k cluster logits (values + class
indices, sorted by value; all C of them when k >= C) and, optionally, chosen hidden layers
(for the DistilHuBERT feature baseline), all in safetensors shards:

    CACHE/
      index.json                    format, teacher info, top_k, layers, rows -> shard
      shard-00000.safetensors       tensors "{row}.values" (T, K), "{row}.indices" (T, K),
      shard-00001.safetensors       "{row}.layer{l}" (T, D) for each cached layer l
      ...

Shard s holds manifest rows [s * shard_size, (s + 1) * shard_size). Shards are written
atomically (temporary file + rename), so a killed run resumes by skipping the shards that
exist; under torchrun rank r builds the shards s with s % world_size == r.

The teacher runs one utterance at a time: its output then never depends on what it was
batched with, whichever teacher implementation is used.

On the loss side, `dense_teacher_logits` rebuilds (B, T, C) logits with -inf for the classes
outside the top-k: the KD/DKD losses treat those as probability 0 (the teacher distribution
renormalised over its top-k), and with k = C it is exactly the full distribution.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from model_training.data.audio import load_audio
from model_training.data.manifest import Manifest, read_manifest
from model_training.training.common import barrier, init_distributed

logger = logging.getLogger(__name__)

CACHE_FORMAT = "hubert-lstm/teacher-targets"
INDEX_FILE = "index.json"
VALUE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def manifest_fingerprint(manifest: Manifest) -> str:
    """Short hash of the manifest's paths and lengths (a cache belongs to one manifest)."""
    h = hashlib.sha256()
    for e in manifest:
        h.update(f"{e.path}\t{e.num_samples}\n".encode())
    return h.hexdigest()[:16]


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.safetensors"


@dataclass
class TeacherTargets:
    """One utterance's cached targets.

    values: (T, K) teacher logits of the top-k classes, descending (float16 or float32).
    indices: (T, K) long class ids of those logits.
    layers: {layer index: (T, D) hidden state} for the cached layers (may be empty).
    """

    values: Tensor
    indices: Tensor
    layers: dict[int, Tensor]


def topk_logits(logits: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(..., C) logits -> (values, indices) of the min(k, C) largest, descending."""
    k = min(int(k), logits.shape[-1])
    values, indices = logits.topk(k, dim=-1, largest=True, sorted=True)
    return values, indices


def dense_teacher_logits(values: Tensor, indices: Tensor, num_classes: int) -> Tensor:
    """Rebuild (B, T, C) float32 logits from top-k (B, T, K) values and indices.

    Classes outside the top-k get -inf (probability 0 in the losses). Padded frames should be
    masked by the caller; their values are whatever the padding held.
    """
    if values.shape != indices.shape:
        raise ValueError(f"values {tuple(values.shape)} != indices {tuple(indices.shape)}")
    if values.shape[-1] > num_classes:
        raise ValueError(f"K={values.shape[-1]} exceeds num_classes={num_classes}")
    out = torch.full(
        (*values.shape[:-1], num_classes), float("-inf"), dtype=torch.float32, device=values.device
    )
    return out.scatter(-1, indices.long(), values.float())


# ----------------------------------------------------------------------------- writing


@torch.no_grad()
def teacher_targets_for(
    teacher: nn.Module, waveform: Tensor, top_k: int, layers: Sequence[int]
) -> dict[str, Tensor]:
    """Run the teacher on one (S,) waveform; returns values/indices (T, K) and layers (T, D)."""
    out = teacher(waveform[None], torch.tensor([waveform.numel()], device=waveform.device))
    if out.logits is None:
        raise ValueError("the teacher has no cluster head: logits are None (add a k-means head)")
    t = int(out.lengths[0])
    values, indices = topk_logits(out.logits[0, :t], top_k)
    result = {"values": values, "indices": indices}
    for layer in layers:
        if not -len(out.hidden_states) <= layer < len(out.hidden_states):
            raise ValueError(
                f"layer {layer} out of range: the teacher has {len(out.hidden_states)} states"
            )
        result[f"layer{layer}"] = out.hidden_states[layer][0, :t]
    return result


def build_target_cache(
    teacher: nn.Module,
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    top_k: int = 500,
    layers: Sequence[int] = (),
    shard_size: int = 256,
    value_dtype: str = "float16",
    device: str | torch.device = "cpu",
    rank: int = 0,
    world_size: int = 1,
    teacher_info: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Write (or complete) the target cache of `manifest_path` under `out_dir`.

    Args:
        teacher: an upstream whose forward gives `logits` (B, T, C) and `hidden_states`.
        top_k: logits kept per frame (all when >= C).
        layers: hidden-state indices to cache (float16), e.g. [4, 8, 12] for DistilHuBERT.
        shard_size: utterances per shard.
        value_dtype: "float16" (default; halves the size) or "float32" (exact logits).
        rank, world_size: this process builds the shards s with s % world_size == rank.

    Returns:
        the cache directory. `index.json` is written by rank 0 once every shard exists.
    """
    if value_dtype not in VALUE_DTYPES:
        raise ValueError(f"value_dtype must be one of {sorted(VALUE_DTYPES)}, found {value_dtype}")
    if top_k < 1 or shard_size < 1:
        raise ValueError(f"top_k and shard_size must be >= 1, found {top_k}, {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(manifest_path)
    num_shards = (len(manifest) + shard_size - 1) // shard_size
    mine = [s for s in range(num_shards) if s % world_size == rank]
    todo = [s for s in mine if not (out / shard_name(s)).exists()]
    logger.info(
        "rank %d: %d of %d shard(s) to build (%d already done)",
        rank,
        len(todo),
        len(mine),
        len(mine) - len(todo),
    )
    teacher = teacher.to(device).eval()
    dtype = VALUE_DTYPES[value_dtype]
    num_classes = None
    from tqdm import tqdm  # local: only the writer shows progress

    rows = [
        r for s in todo for r in range(s * shard_size, min((s + 1) * shard_size, len(manifest)))
    ]
    bar = tqdm(total=len(rows), desc=f"targets[{rank}]", disable=not progress, unit="utt")
    for s in todo:
        tensors: dict[str, Tensor] = {}
        for row in range(s * shard_size, min((s + 1) * shard_size, len(manifest))):
            wave = load_audio(manifest.audio_path(row)).to(device)
            result = teacher_targets_for(teacher, wave, top_k, layers)
            num_classes = num_classes or _num_classes(teacher, result)
            tensors[f"{row}.values"] = result["values"].to(dtype).cpu().contiguous()
            idx_dtype = torch.int16 if (num_classes or 0) <= 32767 else torch.int32
            tensors[f"{row}.indices"] = result["indices"].to(idx_dtype).cpu().contiguous()
            for layer in layers:
                tensors[f"{row}.layer{layer}"] = result[f"layer{layer}"].half().cpu().contiguous()
            bar.update(1)
        path = out / shard_name(s)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": CACHE_FORMAT})
        os.replace(tmp, path)
    bar.close()
    barrier()
    if rank == 0:
        _write_index(
            out, manifest, num_shards, shard_size, top_k, layers, value_dtype, teacher, teacher_info
        )
    barrier()
    return out


def _num_classes(teacher: nn.Module, result: dict[str, Tensor]) -> int:
    c = getattr(teacher, "num_classes", None)
    return int(c) if c else int(result["indices"].max()) + 1


def _write_index(
    out: Path,
    manifest: Manifest,
    num_shards: int,
    shard_size: int,
    top_k: int,
    layers: Sequence[int],
    value_dtype: str,
    teacher: nn.Module,
    teacher_info: dict[str, Any] | None,
) -> None:
    missing = [s for s in range(num_shards) if not (out / shard_name(s)).exists()]
    if missing:
        raise RuntimeError(f"cache incomplete: shards {missing[:5]}... are missing")
    num_classes = getattr(teacher, "num_classes", None)
    if num_classes is None:
        with safe_open(str(out / shard_name(0)), framework="pt") as f:
            num_classes = int(f.get_tensor("0.indices").max()) + 1
    k = min(top_k, int(num_classes))
    index = {
        "format": CACHE_FORMAT,
        "format_version": 1,
        "num_rows": len(manifest),
        "manifest_fingerprint": manifest_fingerprint(manifest),
        "num_classes": int(num_classes),
        "top_k": k,
        "value_dtype": value_dtype,
        "layers": [int(v) for v in layers],
        "shard_size": shard_size,
        "shards": [shard_name(s) for s in range(num_shards)],
        "frame_rate": float(getattr(teacher, "frame_rate", 50.0)),
        "teacher": teacher_info or {},
    }
    tmp = out / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp, out / INDEX_FILE)
    logger.info(
        "target cache complete: %s (%d rows, C=%d, k=%d)", out, len(manifest), num_classes, k
    )


def build_target_cache_distributed(teacher: nn.Module, *args: Any, **kwargs: Any) -> Path:
    """`build_target_cache` with rank / world size / device from torchrun's environment."""
    info, device = init_distributed(kwargs.pop("device", "auto"))
    return build_target_cache(
        teacher, *args, rank=info.rank, world_size=info.world_size, device=device, **kwargs
    )


# ----------------------------------------------------------------------------- reading


class TargetCache:
    """Read access to a finished cache; opens shards lazily (safe across DataLoader workers).

    Args:
        cache_dir: the directory `build_target_cache` wrote.
        manifest: when given, its fingerprint must match the cache's.
    """

    def __init__(self, cache_dir: str | os.PathLike, manifest: Manifest | None = None) -> None:
        self.dir = Path(cache_dir)
        index_path = self.dir / INDEX_FILE
        if not index_path.exists():
            raise FileNotFoundError(f"{index_path} not found: the cache is missing or unfinished")
        self.index: dict[str, Any] = json.loads(index_path.read_text())
        if self.index.get("format") != CACHE_FORMAT:
            raise ValueError(f"{index_path}: expected format {CACHE_FORMAT!r}")
        if (
            manifest is not None
            and manifest_fingerprint(manifest) != self.index["manifest_fingerprint"]
        ):
            raise ValueError(
                f"{self.dir} was built for another manifest (fingerprint "
                f"{self.index['manifest_fingerprint']}, found {manifest_fingerprint(manifest)})"
            )
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    @property
    def num_classes(self) -> int:
        return int(self.index["num_classes"])

    @property
    def top_k(self) -> int:
        return int(self.index["top_k"])

    @property
    def layers(self) -> list[int]:
        return [int(v) for v in self.index["layers"]]

    def __len__(self) -> int:
        return int(self.index["num_rows"])

    def _handle(self, shard: int) -> Any:
        if self._pid != os.getpid():  # forked into a worker: reopen, never share handles
            self._handles, self._pid = {}, os.getpid()
        if shard not in self._handles:
            path = self.dir / self.index["shards"][shard]
            self._handles[shard] = safe_open(str(path), framework="pt")
        return self._handles[shard]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}}

    def get(self, row: int, layers: Sequence[int] | None = None) -> TeacherTargets:
        """Targets of manifest row `row`; `layers` defaults to every cached layer."""
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} out of range [0, {len(self)})")
        f = self._handle(row // int(self.index["shard_size"]))
        wanted = self.layers if layers is None else list(layers)
        missing = set(wanted) - set(self.layers)
        if missing:
            raise ValueError(f"layers {sorted(missing)} not cached; cached: {self.layers}")
        return TeacherTargets(
            values=f.get_tensor(f"{row}.values"),
            indices=f.get_tensor(f"{row}.indices").long(),
            layers={layer: f.get_tensor(f"{row}.layer{layer}") for layer in wanted},
        )
