"""HuBERT iteration 1 on a manifest: MFCC -> k-means units -> masked prediction.

1. Features: 13 MFCCs + deltas + delta-deltas (39 dims) on 25 ms windows every 10 ms, without
   centre padding, then every second frame: frame t covers samples [320 t, 320 t + 400), the
   exact receptive field of HuBERT's CNN frame t, so there are as many feature frames as CNN
   frames. Features are standardised with corpus statistics before clustering.
2. k-means (scikit-learn MiniBatchKMeans) on a random subsample of frames; every utterance is
   labelled (fairseq `.km`: one line of units per manifest row).
3. Masked prediction: a transformers `HubertModel` with HuBERT's masking (p = 0.08, span 10)
   and the pretraining head (`final_proj`, label embeddings, cosine / 0.1 logits); the loss is
   the cross-entropy on masked frames (plus `unmasked_weight` x that on the others). Batches
   are equal-length crops (the shortest item of a batch, at most `crop_seconds`), so no
   padding enters HuBERT's per-utterance GroupNorm.

The output directory is a teacher directory `HubertTeacher.from_hf_dir(out)` reads (written
by `HubertTeacher.save`), plus `kmeans.safetensors` and `labels/<manifest>.km`.
Training state goes to `out/checkpoints/` and resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from model_training.data.audio import load_audio
from model_training.data.manifest import read_km_labels, read_manifest, write_km_labels
from model_training.data.sampler import LengthBucketSampler
from model_training.training.common import (
    Checkpointer,
    TrainState,
    autocast,
    linear_warmup_decay,
    log_scalars,
    make_grad_scaler,
    resolve_device,
    seed_everything,
    summary_writer,
    warmup_steps_for,
)

logger = logging.getLogger(__name__)

HOP = 320
WINDOW = 400
SAMPLE_RATE = 16000
KMEANS_FILE = "kmeans.safetensors"
KMEANS_FORMAT = "hubert-lstm/mfcc-kmeans"


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


@dataclass
class MfccKMeans:
    """k-means units on standardised MFCC frames. centroids (C, 39); mean, std (39,)."""

    centroids: Tensor
    mean: Tensor
    std: Tensor

    @property
    def num_classes(self) -> int:
        return int(self.centroids.shape[0])

    def predict(self, feats: Tensor) -> Tensor:
        """(T, 39) -> (T,) long nearest-centroid units."""
        x = (feats - self.mean) / self.std
        return torch.cdist(x[None], self.centroids[None])[0].argmin(-1)

    def save(self, path: str | os.PathLike) -> Path:
        tensors = {"centroids": self.centroids, "mean": self.mean, "std": self.std}
        save_file(
            {k: v.float().contiguous() for k, v in tensors.items()},
            str(path),
            metadata={"format": KMEANS_FORMAT, "features": "mfcc39-50hz"},
        )
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> MfccKMeans:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("format") != KMEANS_FORMAT:
                raise ValueError(f"{path}: not a {KMEANS_FORMAT} file")
            return cls(f.get_tensor("centroids"), f.get_tensor("mean"), f.get_tensor("std"))


def fit_mfcc_kmeans(
    features: Sequence[Tensor], num_clusters: int, max_frames: int = 200_000, seed: int = 0
) -> MfccKMeans:
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
    return MfccKMeans(torch.from_numpy(km.cluster_centers_).float(), mean, std)


def label_manifest(
    kmeans: MfccKMeans, manifest_path: str | os.PathLike, out: str | os.PathLike
) -> Path:
    """Write the `.km` labels of every row of a manifest."""
    manifest = read_manifest(manifest_path)
    rows = [
        kmeans.predict(mfcc_features(load_audio(manifest.audio_path(i)))).tolist()
        for i in range(len(manifest))
    ]
    return write_km_labels(out, rows)


# ----------------------------------------------------------------------------- config


@dataclass
class TeacherPretrainConfig:
    """The mini teacher and its schedule (defaults: the demo teacher)."""

    num_clusters: int = 100
    kmeans_max_frames: int = 200_000
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 4
    ffn_dim: int = 1024
    conv_dim: int = 128  # same conv layout as student.DEMO_CONV_LAYERS
    pos_conv_kernel: int = 64
    pos_conv_groups: int = 16
    proj_dim: int = 128
    logit_temperature: float = 0.1
    dropout: float = 0.1
    mask_prob: float = 0.08
    mask_length: int = 10
    unmasked_weight: float = 0.0
    lr: float = 5e-4
    weight_decay: float = 0.01
    max_steps: int = 2000
    warmup_ratio: float = 0.08
    grad_clip: float = 10.0
    batch_size: int = 8
    crop_seconds: float = 4.0
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    log_every: int = 20
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    num_threads: int | None = None
    progress: bool = True

    @classmethod
    def from_yaml(cls, path: str | os.PathLike | None, **overrides: Any) -> TeacherPretrainConfig:
        d = yaml.safe_load(Path(path).read_text()) or {} if path else {}
        d.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown teacher config keys: {sorted(unknown)}")
        return cls(**d)

    def hubert_config(self) -> Any:
        from model_training.models.teacher import hubert_base_config

        return hubert_base_config(
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.ffn_dim,
            conv_dim=(self.conv_dim,) * 7,
            num_conv_pos_embeddings=self.pos_conv_kernel,
            num_conv_pos_embedding_groups=self.pos_conv_groups,
            hidden_dropout=self.dropout,
            attention_dropout=self.dropout,
            activation_dropout=0.0,
            feat_proj_dropout=0.0,
            layerdrop=0.0,
            apply_spec_augment=True,
            mask_time_prob=self.mask_prob,
            mask_time_length=self.mask_length,
        )


# ----------------------------------------------------------------------------- training


def _batch(
    manifest: Any, labels: list[list[int]], rows: list[int], crop: int, seed: int, epoch: int
) -> tuple[Tensor, Tensor]:
    """Equal-length crops (B, L) and their labels (B, T); L = min(shortest, crop)."""
    waves = [load_audio(manifest.audio_path(r)) for r in rows]
    length = min(min(w.numel() for w in waves), crop)
    length -= (length - WINDOW) % HOP  # a whole number of frames
    frames = (length - WINDOW) // HOP + 1
    out_w, out_l = [], []
    for r, w in zip(rows, waves, strict=True):
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 7_919 + r)
        slack = (w.numel() - length) // HOP
        first = int(torch.randint(slack + 1, (1,), generator=g))
        out_w.append(w[first * HOP : first * HOP + length])
        lab = labels[r][first : first + frames]
        if len(lab) < frames:  # labels one short of the audio: repeat the last unit
            lab = lab + [lab[-1]] * (frames - len(lab))
        out_l.append(torch.tensor(lab, dtype=torch.long))
    return torch.stack(out_w), torch.stack(out_l)


def masked_prediction_loss(
    hubert: nn.Module, head: nn.Module, waves: Tensor, labels: Tensor, cfg: TeacherPretrainConfig
) -> tuple[Tensor, dict[str, float]]:
    """HuBERT's loss on one equal-length batch: waves (B, L), labels (B, T)."""
    from transformers.models.hubert.modeling_hubert import _compute_mask_indices

    b, t = labels.shape
    mask = torch.from_numpy(
        _compute_mask_indices((b, t), cfg.mask_prob, cfg.mask_length, min_masks=2)
    ).to(waves.device)
    hidden = hubert(waves, mask_time_indices=mask).last_hidden_state  # (B, T, D)
    if hidden.shape[1] != t:
        raise RuntimeError(f"HuBERT gave {hidden.shape[1]} frames, labels {t}")
    logits = head(hidden)  # (B, T, C) float32
    nll = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")  # (B, T)
    masked = nll[mask].mean()
    loss = masked
    metrics = {
        "loss_masked": float(masked.detach()),
        "acc_masked": float((logits.argmax(-1) == labels)[mask].float().mean()),
    }
    if (~mask).any():
        unmasked = nll[~mask].mean()
        metrics["loss_unmasked"] = float(unmasked.detach())
        if cfg.unmasked_weight > 0:
            loss = loss + cfg.unmasked_weight * unmasked
    metrics["loss"] = float(loss.detach())
    metrics["mask_ratio"] = float(mask.float().mean())
    return loss, metrics


def prepare_labels(cfg: TeacherPretrainConfig, manifest_path: Path, out: Path) -> Path:
    """Stage 1 (skipped when done): MFCC k-means and the `.km` labels of the manifest."""
    km_path = out / "labels" / f"{manifest_path.stem}.km"
    if (out / KMEANS_FILE).exists() and km_path.exists():
        logger.info("k-means and labels exist in %s: skipping stage 1", out)
        return km_path
    manifest = read_manifest(manifest_path)
    logger.info("MFCC features for %d utterances", len(manifest))
    feats = [mfcc_features(load_audio(manifest.audio_path(i))) for i in range(len(manifest))]
    kmeans = fit_mfcc_kmeans(feats, cfg.num_clusters, cfg.kmeans_max_frames, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    kmeans.save(out / KMEANS_FILE)
    write_km_labels(km_path, [kmeans.predict(f).tolist() for f in feats])
    return km_path


def pretrain_teacher(
    manifest_path: str | os.PathLike, out_dir: str | os.PathLike, cfg: TeacherPretrainConfig
) -> Path:
    """Run all stages (resuming where a previous run stopped); returns the teacher dir."""
    from tqdm import tqdm
    from transformers import HubertModel

    from model_training.models.teacher import HubertTeacher, ProjectionHead

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out, manifest_path = Path(out_dir), Path(manifest_path)
    seed_everything(cfg.seed)
    km_path = prepare_labels(cfg, manifest_path, out)
    manifest = read_manifest(manifest_path)
    labels = read_km_labels(km_path, expected_rows=len(manifest))
    device = resolve_device(cfg.device)

    seed_everything(cfg.seed)
    hubert = HubertModel(cfg.hubert_config())
    head = ProjectionHead(cfg.hidden_size, cfg.proj_dim, cfg.num_clusters, cfg.logit_temperature)
    model = nn.ModuleDict({"hubert": hubert, "head": head}).to(device).train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay
    )
    scheduler = linear_warmup_decay(
        optimizer, warmup_steps_for(cfg.max_steps, cfg.warmup_ratio), cfg.max_steps
    )
    scaler = make_grad_scaler(device, cfg.precision)
    crop = int(cfg.crop_seconds * SAMPLE_RATE)
    lengths = [min(n, crop) for n in manifest.lengths]
    usable = [i for i, n in enumerate(lengths) if n >= WINDOW + HOP]
    sampler = LengthBucketSampler(
        [lengths[i] for i in usable],
        cfg.batch_size * crop,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
    )
    checkpointer = Checkpointer(out / "checkpoints", keep_last=cfg.keep_checkpoints)
    state = TrainState()
    if checkpointer.latest() is not None:
        state, _ = checkpointer.load(
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            map_location=device,
        )
    writer = summary_writer(out / "tensorboard")
    params = sum(p.numel() for p in hubert.parameters())
    logger.info(
        "teacher: %.2fM parameters, %d clusters, %d steps",
        params / 1e6,
        cfg.num_clusters,
        cfg.max_steps,
    )
    bar = tqdm(total=cfg.max_steps, initial=state.step, disable=not cfg.progress, desc="teacher")
    log_path = out / "train_log.jsonl"
    while state.step < cfg.max_steps:
        sampler.set_epoch(state.epoch)
        if state.batches_in_epoch:
            sampler.load_state_dict(
                {"epoch": state.epoch, "seed": cfg.seed, "batches_consumed": state.batches_in_epoch}
            )
        for batch in sampler:
            rows = [usable[i] for i in batch]
            waves, labs = _batch(manifest, labels, rows, crop, cfg.seed, state.epoch)
            with autocast(device, cfg.precision):
                loss, metrics = masked_prediction_loss(
                    model["hubert"], model["head"], waves.to(device), labs.to(device), cfg
                )
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            metrics["grad_norm"] = float(
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            )
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state.step += 1
            state.batches_in_epoch += 1
            bar.update(1)
            if state.step % cfg.log_every == 0:
                metrics["lr"] = scheduler.get_last_lr()[0]
                log_scalars(writer, metrics, state.step, "teacher")
                bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['acc_masked']:.3f}")
                with open(log_path, "a") as f:
                    f.write(json.dumps({"step": state.step, **metrics}) + "\n")
            if state.step % cfg.checkpoint_every == 0 or state.step == cfg.max_steps:
                checkpointer.save(
                    state,
                    model=model,
                    optimizer=optimizer,
                    scheduler=scheduler,
                    scaler=scaler,
                    extra={"config": asdict(cfg)},
                )
            if state.step >= cfg.max_steps:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    bar.close()
    writer.close()
    teacher = HubertTeacher(model["hubert"].cpu(), model["head"].cpu())
    teacher.save(out)
    (out / "pretrain_config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    logger.info("teacher written to %s (labels %s)", out, km_path)
    return out


def frames_for(num_samples: int) -> int:
    """CNN / MFCC frames of an utterance of `num_samples` samples."""
    return max(0, math.floor((num_samples - WINDOW) / HOP) + 1)
