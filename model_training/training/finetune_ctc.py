"""CTC fine-tuning on a frozen upstream (the SUPERB ASR protocol).

The upstream (a distilled student, a bundle, a HuBERT teacher or the log-mel baseline) runs in
eval mode under `torch.inference_mode()`; only the head trains: softmax-weighted sum of the
hidden states -> Linear -> 2-layer BiLSTM (SUPERB: 1024) -> 29 character outputs, CTC loss,
SpecAugment-style masks on the mixed features, Adam (SUPERB: lr 1e-4, constant). Every
`eval_every` steps the dev set is decoded greedily with the shared decoder; the head with the
lowest dev WER (ties: CER) is written to `RUN/best/` with a reference to its upstream.

Run directory:
    config.yaml          the resolved configuration
    checkpoints/         training state for exact resume (common.Checkpointer)
    best/                head.safetensors + head.json (head config, vocabulary, upstream ref)
    metrics.json         best and last dev scores, every evaluation, training summary
    tensorboard/         scalars
    feature_cache/       with feature_cache=disk: the frozen upstream's hidden states

The optional feature cache stores each utterance's upstream hidden states (float32, valid
frames only) the first time it is seen, so later epochs skip the upstream: exact for a
padding-exact upstream (every upstream here is), but memory grows with the corpus
(L x D x 50 x 4 bytes per second), so it is off by default.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from model_training.data.audio import SAMPLE_RATE, load_audio
from model_training.data.collate import AudioBatch, AudioItem, collate_audio
from model_training.data.manifest import Manifest, read_manifest
from model_training.data.sampler import LengthBucketSampler
from model_training.decoding import greedy_ctc_decode_batch
from model_training.models.ctc import CTCHead, CTCHeadConfig
from model_training.text import CharVocab
from model_training.training.common import (
    Checkpointer,
    TrainState,
    autocast,
    dataclass_from_dict,
    get_rng_state,
    linear_warmup_decay,
    log_scalars,
    make_grad_scaler,
    read_yaml_with_overrides,
    resolve_device,
    seed_everything,
    set_rng_state,
    summary_writer,
)
from model_training.training.evaluate import BEST_DIR, load_upstream, save_head, score

logger = logging.getLogger(__name__)

FEATURE_CACHE_MODES = ("none", "memory", "disk")
METRICS_FILE = "metrics.json"
# CTCHeadConfig fields that come from the upstream and the vocabulary, not from the config.
_DERIVED_HEAD_FIELDS = ("layer_dims", "vocab_size", "blank_id")


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs; stored in `RUN/config.yaml` and in checkpoints.

    Attributes:
        upstream: "fbank", a student checkpoint, a bundle dir or a teacher (HF HuBERT) dir.
        fbank: FbankConfig overrides when upstream is "fbank".
        head: CTCHeadConfig fields (proj_dim, lstm_layers, lstm_hidden, dropout, masks,
            layer_indices); layer_dims and vocab_size come from the upstream and vocabulary.
        lr, betas, weight_decay: Adam (SUPERB: 1e-4, no decay).
        warmup_steps, lr_final_ratio: linear warm-up, then linear decay to lr * final_ratio
            at max_steps (1.0 = constant, as SUPERB).
        max_steps: optimizer steps (one batch each); stop_at_step stops earlier.
        grad_clip: max gradient norm (SUPERB: 1).
        max_batch_seconds, max_batch_size: padded-audio budget and item cap per batch.
        max_utterance_seconds: drop longer training utterances (None keeps all).
        eval_every, log_every, checkpoint_every, keep_checkpoints: in optimizer steps.
        target_dev_cer: stop once the dev CER is at or below this (None: run to the end).
        feature_cache: none | memory | disk (see the module docstring).
        precision: fp32 | bf16 | fp16 (autocast on CUDA only).
    """

    upstream: str = "fbank"
    train_manifest: str = ""
    dev_manifest: str | None = None
    run_dir: str = "runs/ctc"
    fbank: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_final_ratio: float = 1.0
    max_steps: int = 200_000
    stop_at_step: int | None = None
    grad_clip: float = 1.0
    max_batch_seconds: float = 320.0
    max_batch_size: int | None = 32
    max_utterance_seconds: float | None = None
    eval_every: int = 2000
    log_every: int = 50
    checkpoint_every: int = 2000
    keep_checkpoints: int = 2
    target_dev_cer: float | None = None
    # dev metric that picks best/ (ties: the other one). SUPERB: wer. Early in training an
    # empty transcript scores WER 1.0 and beats a useful one with insertions; cer then helps.
    select_by: str = "wer"
    feature_cache: str = "none"
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    num_workers: int = 0
    num_threads: int | None = None
    oom_check: bool = True
    progress: bool = True
    tensorboard: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on inconsistent settings."""
        if not self.train_manifest:
            raise ValueError("train_manifest is required")
        if self.select_by not in ("wer", "cer"):
            raise ValueError(f"select_by must be 'wer' or 'cer', found {self.select_by!r}")
        if self.feature_cache not in FEATURE_CACHE_MODES:
            raise ValueError(
                f"feature_cache must be one of {FEATURE_CACHE_MODES}, found {self.feature_cache!r}"
            )
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32|bf16|fp16, found {self.precision!r}")
        bad = set(self.head) & set(_DERIVED_HEAD_FIELDS)
        unknown = set(self.head) - set(CTCHeadConfig.__dataclass_fields__)
        if bad or unknown:
            raise ValueError(
                f"head accepts CTCHeadConfig fields except {_DERIVED_HEAD_FIELDS}; "
                f"found {sorted(bad | unknown)}"
            )
        if self.lr <= 0 or self.max_steps < 1 or self.max_batch_seconds <= 0:
            raise ValueError("lr > 0, max_steps >= 1 and max_batch_seconds > 0 are required")
        if not 0 <= self.warmup_steps <= self.max_steps:
            raise ValueError(f"warmup_steps must be in [0, max_steps], found {self.warmup_steps}")
        for name in ("eval_every", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        return dataclass_from_dict(cls, d, "config")

    @classmethod
    def from_yaml(
        cls,
        path: str | os.PathLike | None,
        overrides: Sequence[str] = (),
        **values: Any,
    ) -> FinetuneConfig:
        """YAML file (optional), then `a.b=value` overrides (YAML values), then `values`."""
        d = read_yaml_with_overrides(path, overrides)
        d.update({k: v for k, v in values.items() if v is not None})
        return cls.from_dict(d)


# ----------------------------------------------------------------------------- data


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


# ----------------------------------------------------------------------------- features


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


# ----------------------------------------------------------------------------- steps


def encode_targets(texts: Sequence[str], vocab: CharVocab) -> tuple[Tensor, Tensor]:
    """Texts -> (padded label ids (B, U) long, lengths (B,) long)."""
    ids = [vocab.encode(t) for t in texts]
    lengths = torch.tensor([len(x) for x in ids], dtype=torch.long)
    targets = torch.zeros(len(ids), max(1, int(lengths.max())), dtype=torch.long)
    for b, x in enumerate(ids):
        targets[b, : len(x)] = torch.tensor(x, dtype=torch.long)
    return targets, lengths


@dataclass
class Trainer:
    """The objects a training step needs."""

    cfg: FinetuneConfig
    device: torch.device
    head: CTCHead
    vocab: CharVocab
    features: FeatureSource
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    train: Manifest


def train_step(
    tr: Trainer, indices: list[int], batch: AudioBatch | None, loaded: list[int]
) -> dict[str, float]:
    """One optimizer step on one batch -> {"loss", "grad_norm", "lr"}."""
    hidden, lengths = tr.features("train", indices, batch, loaded)
    targets, target_lengths = encode_targets([tr.train[i].text for i in indices], tr.vocab)
    tr.head.train()
    with autocast(tr.device, tr.cfg.precision):
        log_probs = tr.head(hidden, lengths)
    loss = tr.head.ctc_loss(log_probs, lengths, targets.to(tr.device), target_lengths.to(tr.device))
    tr.optimizer.zero_grad(set_to_none=True)
    tr.scaler.scale(loss).backward()
    tr.scaler.unscale_(tr.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(tr.head.parameters(), tr.cfg.grad_clip)
    tr.scaler.step(tr.optimizer)
    tr.scaler.update()
    lr = tr.optimizer.param_groups[0]["lr"]
    tr.scheduler.step()
    return {"loss": float(loss.detach()), "grad_norm": float(grad_norm), "lr": float(lr)}


def evaluate_dev(
    tr: Trainer, loader: DataLoader, manifest: Manifest, frame_seconds: float
) -> dict[str, float]:
    """Greedy-decode the dev set -> {"wer", "cer", "loss"} (loss: mean CTC over batches)."""
    tr.head.eval()
    refs: list[str] = []
    hyps: list[str] = []
    losses: list[float] = []
    for indices, batch, loaded in loader:
        hidden, lengths = tr.features("dev", indices, batch, loaded)
        texts = [manifest[i].text for i in indices]
        targets, target_lengths = encode_targets(texts, tr.vocab)
        with torch.inference_mode():
            with autocast(tr.device, tr.cfg.precision):
                log_probs = tr.head(hidden, lengths)
            loss = tr.head.ctc_loss(
                log_probs, lengths, targets.to(tr.device), target_lengths.to(tr.device)
            )
        losses.append(float(loss))
        decoded = greedy_ctc_decode_batch(log_probs.cpu(), lengths.cpu(), tr.vocab, frame_seconds)
        refs.extend(texts)
        hyps.extend(t.text for t in decoded)
    metrics = score(refs, hyps)
    metrics["loss"] = sum(losses) / max(1, len(losses))
    return metrics


def _is_better(dev: dict[str, float], best: dict[str, Any] | None, select_by: str) -> bool:
    if best is None:
        return True
    other = "cer" if select_by == "wer" else "wer"
    return (dev[select_by], dev[other]) < (best[select_by], best[other])


def _largest_batch(sampler: LengthBucketSampler) -> list[int]:
    """The batch with the most padded samples: run first so out-of-memory shows at step 0."""
    lengths = sampler.lengths
    return max(sampler.rank_batches(), key=lambda b: int(lengths[b].max()) * len(b))


def _oom_check(tr: Trainer, dataset: CTCDataset, sampler: LengthBucketSampler) -> None:
    """Forward + backward on the largest batch, then undo everything (RNG and gradients)."""
    rng = get_rng_state()
    indices = _largest_batch(sampler)
    _, batch, _ = collate_ctc([(i, dataset[i][1]) for i in indices])
    assert batch is not None
    hidden, lengths = tr.features.compute(batch)
    targets, target_lengths = encode_targets([tr.train[i].text for i in indices], tr.vocab)
    tr.head.train()
    with autocast(tr.device, tr.cfg.precision):
        log_probs = tr.head(hidden, lengths)
    tr.head.ctc_loss(
        log_probs, lengths, targets.to(tr.device), target_lengths.to(tr.device)
    ).backward()
    tr.optimizer.zero_grad(set_to_none=True)
    set_rng_state(rng)
    logger.info("largest batch (%d utterances) fits", len(indices))


def _write_metrics(run_dir: Path, state: TrainState, extra: dict[str, Any]) -> None:
    metrics = {
        "step": state.step,
        "best": state.extra.get("best"),
        "last_dev": state.extra.get("last_dev"),
        "evaluations": state.extra.get("evaluations", []),
        **extra,
    }
    tmp = run_dir / (METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, run_dir / METRICS_FILE)


# ----------------------------------------------------------------------------- run


def run(cfg: FinetuneConfig) -> Path:
    """Train (or resume) a CTC head; returns the run directory."""
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: FinetuneConfig) -> Path:
    from tqdm import tqdm

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)

    spec: str | dict[str, Any] = cfg.upstream
    if cfg.upstream == "fbank":
        spec = {"kind": "fbank", "path": None, "config": dict(cfg.fbank)}
    upstream, upstream_ref = load_upstream(spec, device)
    vocab = CharVocab()
    head_cfg = CTCHeadConfig(
        layer_dims=list(upstream.hidden_dims), vocab_size=len(vocab), **cfg.head
    )
    head = CTCHead(head_cfg).to(device)
    n_head = sum(p.numel() for p in head.parameters())
    logger.info(
        "upstream %s (%s layers, frozen); head %.2fM parameters on layers %s",
        upstream_ref["kind"],
        len(upstream.hidden_dims),
        n_head / 1e6,
        head_cfg.layer_indices,
    )
    sr = int(upstream.sample_rate)
    if sr != SAMPLE_RATE:
        raise ValueError(f"expected a {SAMPLE_RATE} Hz upstream, found {sr}")
    frame_seconds = 1.0 / float(upstream.frame_rate)

    max_samples = int(cfg.max_utterance_seconds * sr) if cfg.max_utterance_seconds else None
    train, dropped = filter_manifest(
        read_manifest(cfg.train_manifest), upstream, vocab, max_samples
    )
    if len(train) == 0:
        raise ValueError(f"{cfg.train_manifest}: no usable training utterances ({dropped})")
    dataset = CTCDataset(train)
    sampler = LengthBucketSampler(
        train.lengths,
        int(cfg.max_batch_seconds * sr),
        cfg.max_batch_size,
        shuffle=True,
        seed=cfg.seed,
    )
    # Loaders draw their worker seeds from their own generators, not the global RNG that
    # dropout and SpecAugment use, so creating an iterator (resume, dev passes) changes nothing.
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_ctc,
        num_workers=cfg.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    dev_manifest = read_manifest(cfg.dev_manifest) if cfg.dev_manifest else None
    dev_dataset = CTCDataset(dev_manifest) if dev_manifest is not None else None
    dev_loader = None
    if dev_manifest is not None and dev_dataset is not None:
        dev_sampler = LengthBucketSampler(
            dev_manifest.lengths, int(cfg.max_batch_seconds * sr), cfg.max_batch_size, shuffle=False
        )
        dev_loader = DataLoader(
            dev_dataset,
            batch_sampler=dev_sampler,
            collate_fn=collate_ctc,
            num_workers=cfg.num_workers,
            generator=torch.Generator().manual_seed(cfg.seed),
        )

    features = FeatureSource(
        upstream, device, cfg.precision, cfg.feature_cache, run_dir / "feature_cache", upstream_ref
    )
    optimizer = torch.optim.Adam(
        head.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )
    scheduler = linear_warmup_decay(optimizer, cfg.warmup_steps, cfg.max_steps, cfg.lr_final_ratio)
    scaler = make_grad_scaler(device, cfg.precision)
    tr = Trainer(cfg, device, head, vocab, features, optimizer, scheduler, scaler, train)
    checkpointer = Checkpointer(run_dir / "checkpoints", keep_last=cfg.keep_checkpoints)
    writer = summary_writer(run_dir / "tensorboard", enabled=cfg.tensorboard)
    ckpt_extra = {
        "finetune_config": cfg.to_dict(),
        "head_config": head_cfg.to_dict(),
        "upstream": upstream_ref,
    }
    summary = {
        "upstream": upstream_ref,
        "head_parameters": n_head,
        "train_utterances": len(train),
        "train_dropped": dropped,
        "dev_utterances": len(dev_manifest) if dev_manifest is not None else 0,
    }

    state = TrainState()
    latest = checkpointer.latest()
    if latest is not None:
        state, _ = checkpointer.load(
            latest,
            model=head,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            map_location=device,
        )
    elif cfg.oom_check:
        _oom_check(tr, dataset, sampler)

    def save_best(dev: dict[str, float] | None) -> None:
        save_head(run_dir / BEST_DIR, head, vocab, upstream_ref, {"step": state.step, "dev": dev})

    def checkpoint() -> None:
        checkpointer.save(
            state,
            model=head,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            sampler_state=sampler.state_dict(state.batches_in_epoch),
            extra=ckpt_extra,
        )

    last_step = min(cfg.max_steps, cfg.stop_at_step or cfg.max_steps)
    bar = tqdm(
        total=last_step,
        initial=state.step,
        disable=not cfg.progress,
        desc="finetune-ctc",
        unit="step",
    )
    resume_offset = state.batches_in_epoch
    done = state.step >= last_step or bool(state.extra.get("target_reached"))
    started = time.perf_counter()
    steps_run = 0
    while not done:
        sampler.set_epoch(state.epoch)
        if resume_offset:
            sampler.load_state_dict(
                {"epoch": state.epoch, "seed": cfg.seed, "batches_consumed": resume_offset}
            )
            resume_offset = 0
        if cfg.feature_cache != "none":  # workers skip decoding audio whose features are cached
            dataset.skip = {i for i in range(len(train)) if features.cached("train", i)}
        for indices, batch, loaded in loader:
            state.batches_in_epoch += 1
            logs = train_step(tr, indices, batch, loaded)
            state.step += 1
            steps_run += 1
            bar.update(1)
            if not math.isfinite(logs["loss"]):
                logger.warning("step %d: non-finite loss %s", state.step, logs["loss"])
            if state.step % cfg.log_every == 0:
                log_scalars(writer, logs, state.step, "train")
                bar.set_postfix(loss=f"{logs['loss']:.3f}")
            # stop_at_step only pauses (checkpoint, no extra evaluation), so a resumed run
            # equals an uninterrupted one; max_steps ends the run with a last evaluation.
            at_end = state.step >= cfg.max_steps
            final = state.step >= last_step
            if (
                dev_loader is not None
                and dev_manifest is not None
                and (state.step % cfg.eval_every == 0 or at_end)
            ):
                if cfg.feature_cache != "none" and dev_dataset is not None:
                    dev_dataset.skip = {
                        i for i in range(len(dev_manifest)) if features.cached("dev", i)
                    }
                dev = evaluate_dev(tr, dev_loader, dev_manifest, frame_seconds)
                log_scalars(writer, dev, state.step, "dev")
                entry = {"step": state.step, **dev}
                state.extra["last_dev"] = entry
                state.extra.setdefault("evaluations", []).append(entry)
                if _is_better(dev, state.extra.get("best"), cfg.select_by):
                    state.extra["best"] = entry
                    save_best(dev)
                logger.info(
                    "step %d dev %s",
                    state.step,
                    json.dumps({k: round(v, 4) for k, v in dev.items()}),
                )
                if cfg.target_dev_cer is not None and dev["cer"] <= cfg.target_dev_cer:
                    state.extra["target_reached"] = True
                    final = True
            elif dev_loader is None and (state.step % cfg.checkpoint_every == 0 or at_end):
                state.extra["best"] = {"step": state.step}
                save_best(None)  # no dev set: the latest head is the one to use
            if state.step % cfg.checkpoint_every == 0 or final:
                checkpoint()
                _write_metrics(run_dir, state, summary)
            if final:
                done = True
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    bar.close()
    writer.close()
    elapsed = time.perf_counter() - started
    summary["train_seconds_this_session"] = round(elapsed, 2)
    summary["steps_this_session"] = steps_run
    _write_metrics(run_dir, state, summary)
    logger.info("finished at step %d; best %s", state.step, state.extra.get("best"))
    return run_dir
