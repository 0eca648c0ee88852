"""Offline feature extraction: a manifest or a folder of audio -> sharded safetensors + index.

What fairseq's `dump_hubert_feature.py` and s3prl's feature dumps do, for any upstream
(`evaluate.load_any_upstream`: a bundle, a fine-tuning or distillation run, a teacher,
fbank). The utterances are cut, in manifest order, into shards of `shard_size`; shard k
belongs to process k mod WORLD_SIZE (RANK and WORLD_SIZE from torchrun's environment, so
`torchrun --nproc-per-node N -m model_training.cli embed ...` splits the work); every shard
is written atomically (`.tmp` + rename) and skipped when it exists, so a killed run resumes
where it stopped. The process that sees every shard done writes `index.json`.

Shard `shard-00000.safetensors` holds, per utterance and chosen layer, a tensor named
`<utterance id>/layer<L>`: (frames, D) with `pooling: none` (valid frames only, no padding),
or (D,) with `pooling: mean` (mean over valid frames). `index.json`: the upstream, layers,
pooling, frame rate, dtype, and per shard its file and utterances (id, path, frames).
Batches are padded and length-sorted; every upstream here is padding-exact, so an
utterance's features do not depend on its batch (tested).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from model_training.data.manifest import Manifest, read_manifest

logger = logging.getLogger(__name__)

INDEX_FILE = "index.json"
DTYPES = {"float32": torch.float32, "float16": torch.float16}


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def parse_layers(spec: str, num_layers: int) -> list[int]:
    """`all` | `last` | comma-separated indices (negative from the end) -> unique indices."""
    spec = spec.strip().lower()
    if spec == "all":
        return list(range(num_layers))
    if spec == "last":
        return [num_layers - 1]
    out: list[int] = []
    for part in spec.split(","):
        index = int(part)
        if not -num_layers <= index < num_layers:
            raise ValueError(f"layer {index} outside {-num_layers}..{num_layers - 1}")
        if index % num_layers not in out:
            out.append(index % num_layers)
    return out


def dist_env() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) outside it."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


@dataclass
class EmbedSettings:
    """What to extract (see the module docstring)."""

    layers: str = "all"
    pooling: str = "none"
    shard_size: int = 256
    max_batch_seconds: float = 60.0
    dtype: str = "float32"
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.pooling not in ("none", "mean"):
            raise ValueError(f"pooling must be none|mean, found {self.pooling!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, found {self.dtype!r}")
        if self.shard_size < 1 or self.max_batch_seconds <= 0:
            raise ValueError("shard_size >= 1 and max_batch_seconds > 0 are required")


def input_manifest(source: str | os.PathLike) -> Manifest:
    """A manifest TSV, or every audio file under a folder (speaker = sub-folder)."""
    from model_training.data.readers import folder_entries

    path = Path(source)
    if path.is_dir():
        return Manifest(root=path.resolve(), entries=folder_entries(path, path / "embed.tsv"))
    return read_manifest(path)


def embed_shard(
    upstream: torch.nn.Module,
    manifest: Manifest,
    layers: Sequence[int],
    settings: EmbedSettings,
    on_batch: Any = None,
) -> tuple[dict[str, Tensor], list[dict[str, Any]]]:
    """Features of every utterance of `manifest` -> (tensors by name, utterance records)."""
    from model_training.training.evaluate import manifest_batches

    budget = int(settings.max_batch_seconds * int(upstream.sample_rate))
    dtype = DTYPES[settings.dtype]
    tensors: dict[str, Tensor] = {}
    frames: dict[int, int] = {}
    for indices, batch in manifest_batches(manifest, budget):
        batch = batch.to(settings.device)
        with torch.inference_mode():
            out = upstream(batch.waveforms, batch.lengths)
        for b, i in enumerate(indices):
            n = int(out.lengths[b])
            frames[i] = n
            uid = manifest[i].id
            for layer in layers:
                h = out.hidden_states[layer][b, :n].float()
                value = h.mean(0) if settings.pooling == "mean" else h
                tensors[f"{uid}/layer{layer}"] = value.to("cpu", dtype).contiguous().clone()
        if on_batch is not None:
            on_batch(len(indices))
    records = [
        {"id": e.id, "path": e.path, "frames": frames[i]} for i, e in enumerate(manifest.entries)
    ]
    return tensors, records


def embed(
    source: str | os.PathLike,
    model: str | os.PathLike,
    out_dir: str | os.PathLike,
    settings: EmbedSettings | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> dict[str, Any]:
    """Extract this process's shards (skipping finished ones); returns a summary.

    `rank`/`world_size`: default from the environment (torchrun). The index is written by
    whichever process finds every shard done.
    """
    from tqdm import tqdm

    from model_training.training.evaluate import load_any_upstream

    settings = settings or EmbedSettings()
    env_rank, env_world = dist_env()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = input_manifest(source)
    if len(manifest) == 0:
        raise ValueError(f"{source}: no utterances")
    ids = manifest.ids
    if len(set(ids)) != len(ids):
        raise ValueError(f"{source}: utterance ids (paths without extension) must be unique")
    _check_settings(out, source, model, settings)
    upstream, ref = load_any_upstream(model, settings.device)
    layers = parse_layers(settings.layers, len(upstream.hidden_dims))
    n_shards = (len(manifest) + settings.shard_size - 1) // settings.shard_size
    shards = [
        Manifest(manifest.root, manifest.entries[k * settings.shard_size :][: settings.shard_size])
        for k in range(n_shards)
    ]
    mine = [k for k in range(n_shards) if k % world_size == rank]
    todo = [k for k in mine if not (out / shard_name(k)).is_file()]
    bar = tqdm(
        total=sum(len(shards[k]) for k in todo),
        disable=not settings.progress,
        desc=f"embed rank {rank}/{world_size}",
        unit="utt",
    )
    for k in todo:
        tensors, records = embed_shard(upstream, shards[k], layers, settings, bar.update)
        path = out / shard_name(k)
        tmp = path.with_name(f"{path.name}.{rank}.tmp")
        save_file(tensors, str(tmp), metadata={"utterances": json.dumps(records)})
        os.replace(tmp, path)
    bar.close()
    done = all((out / shard_name(k)).is_file() for k in range(n_shards))
    if done:
        write_index(out, shards, upstream, ref, layers, settings, rank)
    return {
        "out": str(out),
        "shards": n_shards,
        "written": len(todo),
        "skipped": len(mine) - len(todo),
        "rank": rank,
        "world_size": world_size,
        "complete": done,
    }


def _check_settings(
    out: Path, source: str | os.PathLike, model: str | os.PathLike, settings: EmbedSettings
) -> None:
    """OUT/embed.json records what the shards hold; a resumed run must ask for the same."""
    wanted = {
        "source": str(Path(source).resolve()),
        "model": str(model) if str(model) == "fbank" else str(Path(model).resolve()),
        **{k: getattr(settings, k) for k in ("layers", "pooling", "shard_size", "dtype")},
    }
    path = out / "embed.json"
    if path.is_file():
        found = json.loads(path.read_text())
        if found != wanted:
            raise ValueError(f"{out} holds shards made with {found}; asked for {wanted}")
        return
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(wanted, indent=1) + "\n")
    os.replace(tmp, path)


def write_index(
    out: Path,
    shards: Sequence[Manifest],
    upstream: torch.nn.Module,
    ref: dict[str, Any],
    layers: Sequence[int],
    settings: EmbedSettings,
    rank: int,
) -> Path:
    """index.json from the shards' own records (atomic; every writer writes the same)."""
    from safetensors import safe_open

    entries = []
    for k in range(len(shards)):
        with safe_open(str(out / shard_name(k)), "pt") as f:
            records = json.loads((f.metadata() or {})["utterances"])
        entries.append({"file": shard_name(k), "utterances": records})
    names = list(getattr(upstream, "layer_names", []))
    index = {
        "format": "hubert-lstm/embeddings",
        "upstream": ref,
        "layers": list(layers),
        "layer_names": [names[i] for i in layers] if names else None,
        "pooling": settings.pooling,
        "dtype": settings.dtype,
        "frame_rate": float(upstream.frame_rate),
        "tensor_name": "<utterance id>/layer<L>",
        "utterances": sum(len(e["utterances"]) for e in entries),
        "shards": entries,
    }
    path = out / INDEX_FILE
    tmp = path.with_name(f"{path.name}.{rank}.tmp")
    tmp.write_text(json.dumps(index, indent=1) + "\n")
    os.replace(tmp, path)
    return path
