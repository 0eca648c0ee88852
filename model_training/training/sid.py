"""Speaker identification (SID) probe, SUPERB's protocol: frozen upstream, weighted layer sum,
mean pooling, linear classifier, accuracy.

Speakers are a corpus's voices (the manifest's `speaker` column; in the synthetic corpus one
TTS voice id each). SID is closed-set: every speaker is in every split, and the splits are
utterance-level, made per speaker by a seeded hash of the utterance id (`split_by_speaker`),
so every upstream sees the same splits. Speakers with fewer than `min_utterances` utterances
are left out; `max_speakers` keeps the most frequent ones; `max_utterances_per_speaker` caps
the cost.

The upstream runs once per utterance: the per-layer means over valid frames (layer-normalised
per frame when `layer_norm`) are cached in `RUN/pooled.safetensors`, and the head trains on
them (`SIDHead.forward_pooled`; mean pooling commutes with the weighted sum), so many steps
cost next to nothing on a CPU.

Run directory:
    config.yaml          the resolved configuration
    splits/              train.tsv dev.tsv test.tsv (the utterances of each split)
    pooled.safetensors   per-layer means of every utterance (+ upstream reference)
    head.safetensors     the best head (dev accuracy) + head.json (config, speakers, upstream)
    layer_weights.json   its softmax layer weights
    metrics.json         train/dev/test accuracy, chance, speakers, every evaluation
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor

from model_training.data.manifest import Manifest, read_manifest, write_manifest
from model_training.models.sid import SIDHead, SIDHeadConfig, pool_layers
from model_training.training.common import (
    dataclass_from_dict,
    read_yaml_with_overrides,
    resolve_device,
    seed_everything,
    torch_threads,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
POOLED_FILE = "pooled.safetensors"


@dataclass
class SIDConfig:
    """A SID probe run (stored in RUN/config.yaml).

    Attributes:
        upstream: as `finetune-ctc --upstream` ("fbank", a bundle, a student, a teacher...).
        manifest: utterances with a `speaker` column (all splits are drawn from it).
        dev_fraction, test_fraction: share of each speaker's utterances in dev and test
            (at least one each).
        min_utterances: speakers with fewer utterances are left out.
        max_speakers: keep the most frequent speakers (None: all that qualify).
        max_utterances_per_speaker: cap per speaker, drawn by the same hash (None: all).
        layer_norm: normalise each frame of each layer before pooling (as configs/ctc/demo).
        layer_indices: mixed hidden states (empty: every layer as wide as the last).
        lr, weight_decay, batch_size, max_steps, eval_every, patience: Adam on the pooled
            features; stop when dev accuracy has not improved for `patience` evaluations.
        max_batch_seconds: padded audio per upstream batch in the feature pass.
    """

    upstream: str = "fbank"
    manifest: str = ""
    run_dir: str = "runs/sid"
    fbank: dict[str, Any] = field(default_factory=dict)
    dev_fraction: float = 0.1
    test_fraction: float = 0.1
    min_utterances: int = 10
    max_speakers: int | None = None
    max_utterances_per_speaker: int | None = None
    layer_norm: bool = True
    layer_indices: list[int] = field(default_factory=list)
    lr: float = 1e-2
    weight_decay: float = 0.0
    batch_size: int = 64
    max_steps: int = 3000
    eval_every: int = 100
    patience: int | None = 10
    max_batch_seconds: float = 40.0
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.manifest:
            raise ValueError("manifest is required")
        fractions = (self.dev_fraction, self.test_fraction)
        if not all(0 < f < 1 for f in fractions) or sum(fractions) >= 1:
            raise ValueError(f"dev/test fractions must be in (0, 1), sum < 1: {fractions}")
        if self.min_utterances < 3:
            raise ValueError("min_utterances must be >= 3 (one each for train, dev, test)")
        if self.lr <= 0 or self.max_steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("lr > 0, max_steps, batch_size and eval_every >= 1 are required")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 (or null), found {self.patience}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_yaml(
        cls, path: str | os.PathLike | None, overrides: Sequence[str] = (), **values: Any
    ) -> SIDConfig:
        """YAML file (optional), then `a.b=value` overrides, then `values` (None skipped)."""
        d = read_yaml_with_overrides(path, overrides)
        d.update({k: v for k, v in values.items() if v is not None})
        return dataclass_from_dict(cls, d, "config")


# ----------------------------------------------------------------------------- splits


def _rank(seed: int, uid: str) -> str:
    return hashlib.sha1(f"{seed}:{uid}".encode()).hexdigest()


def split_by_speaker(manifest: Manifest, cfg: SIDConfig) -> tuple[dict[str, Manifest], list[str]]:
    """Utterance-level train/dev/test splits of the same speakers -> (splits, speakers).

    Per speaker, utterances are ordered by sha1(seed:id): the first go to test, the next to
    dev, the rest to train; the same manifest and settings give the same splits for every
    upstream. Entries without a speaker are ignored.
    """
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, e in enumerate(manifest.entries):
        if e.speaker:
            by_speaker[e.speaker].append(i)
    counts = Counter({s: len(v) for s, v in by_speaker.items() if len(v) >= cfg.min_utterances})
    chosen = [s for s, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    if cfg.max_speakers is not None:
        chosen = chosen[: cfg.max_speakers]
    speakers = sorted(chosen)
    if len(speakers) < 2:
        raise ValueError(
            f"{len(speakers)} speakers with >= {cfg.min_utterances} utterances; SID needs 2+"
        )
    rows: dict[str, list[int]] = {s: [] for s in SPLITS}
    for spk in speakers:
        items = sorted(by_speaker[spk], key=lambda i: _rank(cfg.seed, manifest.entries[i].id))
        if cfg.max_utterances_per_speaker is not None:
            items = items[: cfg.max_utterances_per_speaker]
        n_test = max(1, round(cfg.test_fraction * len(items)))
        n_dev = max(1, round(cfg.dev_fraction * len(items)))
        rows["test"] += items[:n_test]
        rows["dev"] += items[n_test : n_test + n_dev]
        rows["train"] += items[n_test + n_dev :]
    splits = {
        s: Manifest(root=manifest.root, entries=[manifest.entries[i] for i in sorted(rows[s])])
        for s in SPLITS
    }
    return splits, speakers


# ----------------------------------------------------------------------------- features


def pooled_features(
    upstream: torch.nn.Module,
    manifest: Manifest,
    layer_indices: Sequence[int],
    layer_norm: bool,
    device: torch.device,
    max_batch_seconds: float,
    progress: bool = False,
) -> Tensor:
    """(N, L, D) float32 per-layer means of every utterance of `manifest`, in manifest order."""
    from tqdm import tqdm

    from model_training.training.evaluate import manifest_batches
    from model_training.training.features import FeatureSource

    source = FeatureSource(upstream, device)
    out: list[Tensor | None] = [None] * len(manifest)
    budget = int(max_batch_seconds * int(upstream.sample_rate))
    bar = tqdm(total=len(manifest), disable=not progress, desc="SID features", unit="utt")
    for indices, batch in manifest_batches(manifest, budget):
        hidden, lengths = source.compute(batch)
        pooled = pool_layers(hidden, lengths, layer_indices, layer_norm).cpu()
        for b, i in enumerate(indices):
            out[i] = pooled[b]
        bar.update(len(indices))
    bar.close()
    return torch.stack([t for t in out if t is not None])


def _load_or_compute_pooled(
    cfg: SIDConfig,
    run_dir: Path,
    splits: dict[str, Manifest],
    upstream: torch.nn.Module,
    ref: dict[str, Any],
    layer_indices: list[int],
    device: torch.device,
) -> dict[str, Tensor]:
    """The pooled features of every split, from RUN/pooled.safetensors when it matches."""
    path = run_dir / POOLED_FILE
    stamp = json.dumps(
        {
            "upstream": ref,
            "layer_indices": layer_indices,
            "layer_norm": cfg.layer_norm,
            "ids": {s: m.ids for s, m in splits.items()},
        },
        sort_keys=True,
    )
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            if (f.metadata() or {}).get("stamp") == stamp:
                return load_file(str(path))
        logger.info("%s was made for other settings: recomputing", path)
    feats = {
        s: pooled_features(
            upstream, m, layer_indices, cfg.layer_norm, device, cfg.max_batch_seconds, cfg.progress
        )
        for s, m in splits.items()
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in feats.items()}, str(tmp), metadata={"stamp": stamp})
    os.replace(tmp, path)
    return feats


# ----------------------------------------------------------------------------- training


def accuracy(head: SIDHead, feats: Tensor, labels: Tensor) -> float:
    """Share of utterances whose arg-max speaker is right."""
    with torch.no_grad():
        return float((head.forward_pooled(feats).argmax(-1) == labels).float().mean())


def train_head(
    head: SIDHead,
    feats: dict[str, Tensor],
    labels: dict[str, Tensor],
    cfg: SIDConfig,
) -> tuple[SIDHead, dict[str, Any]]:
    """Adam on minibatches of pooled features; returns (best head by dev accuracy, history)."""
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    n = feats["train"].shape[0]
    best: tuple[float, int] = (-1.0, 0)
    best_head = copy.deepcopy(head)
    evaluations: list[dict[str, float]] = []
    order = torch.randperm(n, generator=g)
    pos = 0
    step = 0
    for step in range(1, cfg.max_steps + 1):
        if pos >= n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos : pos + cfg.batch_size]
        pos += cfg.batch_size
        head.train()
        loss = F.cross_entropy(head.forward_pooled(feats["train"][idx]), labels["train"][idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % cfg.eval_every == 0 or step == cfg.max_steps:
            head.eval()
            entry = {
                "step": step,
                "loss": float(loss.detach()),
                "train_acc": accuracy(head, feats["train"], labels["train"]),
                "dev_acc": accuracy(head, feats["dev"], labels["dev"]),
            }
            evaluations.append(entry)
            if entry["dev_acc"] > best[0]:
                best = (entry["dev_acc"], step)
                best_head = copy.deepcopy(head)
            elif cfg.patience is not None:
                since = sum(e["step"] > best[1] for e in evaluations)
                if since >= cfg.patience:
                    break
    return best_head.eval(), {"best_step": best[1], "steps": step, "evaluations": evaluations}


def run(cfg: SIDConfig) -> Path:
    """Split, pool the frozen upstream's features, train and test the head; returns RUN."""
    with torch_threads(cfg.num_threads):
        return _run(cfg)


def _run(cfg: SIDConfig) -> Path:
    from model_training.training.evaluate import load_upstream
    from model_training.training.finetune_ctc import write_layer_weights

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    splits, speakers = split_by_speaker(read_manifest(cfg.manifest), cfg)
    for s, m in splits.items():
        write_manifest(run_dir / "splits" / f"{s}.tsv", m.entries)
    spec: str | dict[str, Any] = cfg.upstream
    if cfg.upstream == "fbank":
        spec = {"kind": "fbank", "path": None, "config": dict(cfg.fbank)}
    upstream, ref = load_upstream(spec, device, seed=cfg.seed)
    head_cfg = SIDHeadConfig(
        list(upstream.hidden_dims), len(speakers), list(cfg.layer_indices), cfg.layer_norm
    )
    feats = _load_or_compute_pooled(
        cfg, run_dir, splits, upstream, ref, head_cfg.layer_indices, device
    )
    index = {s: i for i, s in enumerate(speakers)}
    labels = {
        s: torch.tensor([index[e.speaker] for e in m.entries], dtype=torch.long)
        for s, m in splits.items()
    }
    head = SIDHead(head_cfg)
    head, history = train_head(head, feats, labels, cfg)
    result = {s: accuracy(head, feats[s], labels[s]) for s in SPLITS}
    test_counts = Counter(labels["test"].tolist())
    metrics = {
        "task": "sid",
        "train_acc": result["train"],
        "dev_acc": result["dev"],
        "test_acc": result["test"],
        "chance": 1.0 / len(speakers),
        "majority": max(test_counts.values()) / len(splits["test"]),
        "speakers": len(speakers),
        "utterances": {s: len(m) for s, m in splits.items()},
        "upstream": ref,
        "head_parameters": sum(p.numel() for p in head.parameters()),
        **history,
    }
    tensors = {k: v.detach().contiguous() for k, v in head.state_dict().items()}
    save_file(tensors, str(run_dir / "head.safetensors"), metadata={"format": "hubert-lstm/sid"})
    meta = {"head": head_cfg.to_dict(), "speakers": speakers, "upstream": ref}
    (run_dir / "head.json").write_text(json.dumps(meta, indent=2) + "\n")
    write_layer_weights(
        run_dir,
        "sid",
        head.featurizer,
        list(getattr(upstream, "layer_names", [])),
        ref,
        {"step": history["best_step"], "dev": {"acc": result["dev"]}},
    )
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    logger.info(
        "SID: %d speakers, test accuracy %.3f (chance %.3f)",
        len(speakers),
        result["test"],
        metrics["chance"],
    )
    return run_dir
