"""HuBERT pretraining of the mini teacher, iteration 1 or a later one.

1. Units (training/units.py), skipped when done: iteration 1 clusters MFCC frames
   (13 MFCCs + deltas + delta-deltas, standardised); iteration n + 1 (`label_teacher`, e.g.
   `teacher pretrain --label-teacher runs/demo/teacher`) clusters hidden layer `label_layer`
   (default: the middle one) of the iteration-n teacher, as HuBERT's second iteration does
   with layer 6 of its first Base model. k-means (MiniBatchKMeans) is fitted on a random
   subset of frames; every utterance of the manifest (and of `--dev`) is labelled (fairseq
   `.km`: one line of units per manifest row).
2. Masked prediction: a fresh transformers `HubertModel` with HuBERT's masking (p = 0.08,
   span 10) and the pretraining head (`final_proj`, label embeddings, cosine / 0.1 logits);
   the loss is the cross-entropy on masked frames (plus `unmasked_weight` x that on the
   others). Batches are equal-length crops (the shortest item of a batch, at most
   `crop_seconds`), so no padding enters HuBERT's per-utterance GroupNorm. Training runs on the
   shared loop (training/loop.py): schedule, logging, checkpoints and exact resume.
3. Masked-unit accuracy in eval mode with fixed masks on dev utterances every `eval_every`
   steps; `metrics.json` reports it per iteration (this run's and, from the label teacher's
   metrics.json, the earlier ones). Each iteration predicts its own units, so the numbers
   say how well a teacher predicts its targets, not which teacher is better downstream.

The output directory is a teacher directory `HubertTeacher.from_hf_dir(out)` reads (written
by `HubertTeacher.save`), plus `kmeans.safetensors`, `labels/<manifest>.km` and
`metrics.json`. Training state goes to `out/checkpoints/` and resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from model_training.data.audio import load_audio
from model_training.data.manifest import Manifest, read_km_labels, read_manifest, write_km_labels
from model_training.data.sampler import LengthBucketSampler
from model_training.training.common import (
    TrainState,
    dataclass_from_dict,
    linear_warmup_decay,
    resolve_device,
    seed_everything,
    warmup_steps_for,
)
from model_training.training.loop import LoopConfig, TrainLoop
from model_training.training.units import (
    HOP,
    KMEANS_FORMAT,
    SAMPLE_RATE,
    WINDOW,
    TeacherLayerFeatures,
    UnitKMeans,
    fit_unit_kmeans,
    frames_for,
    label_manifest,
    mfcc_features,
)

logger = logging.getLogger(__name__)

KMEANS_FILE = "kmeans.safetensors"
METRICS_FILE = "metrics.json"

__all__ = [
    "HOP",
    "KMEANS_FILE",
    "KMEANS_FORMAT",
    "SAMPLE_RATE",
    "WINDOW",
    "TeacherPretrainConfig",
    "UnitKMeans",
    "fit_unit_kmeans",
    "frames_for",
    "label_manifest",
    "masked_prediction_loss",
    "mfcc_features",
    "pretrain_teacher",
]


# ----------------------------------------------------------------------------- config


@dataclass
class TeacherPretrainConfig:
    """The mini teacher and its schedule (defaults: the demo teacher).

    label_teacher: None = iteration 1 (units from MFCCs); a teacher directory = the next
        iteration (units from hidden layer `label_layer` of that teacher; None: its middle).
    kmeans_max_frames: frames the k-means is fitted on (a random subset).
    eval_every, eval_utterances: masked-unit accuracy (eval mode, fixed masks) on that many
        dev utterances (`--dev`; else the first training utterances) every so many steps and
        at the end.
    """

    num_clusters: int = 100
    kmeans_max_frames: int = 200_000
    label_teacher: str | None = None
    label_layer: int | None = None
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
    eval_every: int = 500
    eval_utterances: int = 32
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    num_threads: int | None = None
    progress: bool = True
    tensorboard: bool = True

    @classmethod
    def from_yaml(cls, path: str | os.PathLike | None, **overrides: Any) -> TeacherPretrainConfig:
        d = yaml.safe_load(Path(path).read_text()) or {} if path else {}
        d.update({k: v for k, v in overrides.items() if v is not None})
        return dataclass_from_dict(cls, d, "teacher config")

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


# ----------------------------------------------------------------------------- units


def prepare_labels(
    cfg: TeacherPretrainConfig,
    manifest_path: Path,
    out: Path,
    dev_manifest: Path | None = None,
) -> tuple[Path, Path | None]:
    """Stage 1 (skipped when done): the units' k-means and the `.km` labels of the manifest
    (and of `dev_manifest`). Returns (train labels, dev labels or None)."""
    km_path = out / "labels" / f"{manifest_path.stem}.km"
    dev_km = out / "labels" / f"{dev_manifest.stem}.km" if dev_manifest else None
    if (out / KMEANS_FILE).exists() and km_path.exists():
        kmeans = UnitKMeans.load(out / KMEANS_FILE)
        _check_units(kmeans, cfg, out)
        logger.info("k-means and labels exist in %s: skipping stage 1", out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        manifest = read_manifest(manifest_path)
        if cfg.label_teacher is None:  # iteration 1: MFCCs of every utterance
            logger.info("MFCC features for %d utterances", len(manifest))
            feats = [
                mfcc_features(load_audio(manifest.audio_path(i))) for i in range(len(manifest))
            ]
            kmeans = fit_unit_kmeans(feats, cfg.num_clusters, cfg.kmeans_max_frames, cfg.seed)
            kmeans.save(out / KMEANS_FILE)
            write_km_labels(km_path, [kmeans.predict(f).tolist() for f in feats])
        else:
            device = str(resolve_device(cfg.device))
            featurize = TeacherLayerFeatures(cfg.label_teacher, cfg.label_layer, device)
            kmeans = _fit_on_teacher_layer(cfg, manifest, featurize)
            kmeans.save(out / KMEANS_FILE)
            label_manifest(kmeans, manifest_path, km_path, featurize)
    if dev_manifest is not None and dev_km is not None and not dev_km.exists():
        label_manifest(kmeans, dev_manifest, dev_km)
    return km_path, dev_km


def _check_units(kmeans: UnitKMeans, cfg: TeacherPretrainConfig, out: Path) -> None:
    """Refuse to resume on units of another iteration (stale labels in `out`)."""
    teacher = kmeans.features.get("teacher")
    wanted = str(Path(cfg.label_teacher).resolve()) if cfg.label_teacher else None
    layer_ok = cfg.label_layer is None or str(cfg.label_layer) == kmeans.features.get("layer")
    if teacher != wanted or not layer_ok or kmeans.num_classes != cfg.num_clusters:
        raise ValueError(
            f"{out / KMEANS_FILE} holds units {kmeans.info()}, not those this config asks for "
            f"(label_teacher {wanted}, layer {cfg.label_layer}, {cfg.num_clusters} clusters): "
            "use another --out, or delete kmeans.safetensors and labels/"
        )


def _fit_on_teacher_layer(
    cfg: TeacherPretrainConfig, manifest: Manifest, featurize: TeacherLayerFeatures
) -> UnitKMeans:
    """k-means on the teacher layer's frames of random utterances, until `kmeans_max_frames`
    (the whole corpus's features would not fit in memory: D floats per frame)."""
    order = np.random.default_rng(cfg.seed).permutation(len(manifest)).tolist()
    feats: list[Tensor] = []
    frames = 0
    for i in order:
        feats.append(featurize(load_audio(manifest.audio_path(i))))
        frames += feats[-1].shape[0]
        if frames >= cfg.kmeans_max_frames:
            break
    logger.info(
        "teacher layer %d features: %d frames of %d utterances", featurize.layer, frames, len(feats)
    )
    kmeans = fit_unit_kmeans(feats, cfg.num_clusters, cfg.kmeans_max_frames, cfg.seed)
    kmeans.features = featurize.info()
    return kmeans


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


@torch.no_grad()
def masked_accuracy(
    model: nn.ModuleDict, items: list[tuple[Tensor, Tensor]], cfg: TeacherPretrainConfig
) -> dict[str, float]:
    """Masked-unit accuracy and loss over `items` (wave (1, L), labels (1, T)) in eval mode,
    frames weighted; masks come from a fixed seed and the global RNGs are left untouched."""
    device = next(model.parameters()).device
    np_state = np.random.get_state()
    np.random.seed(cfg.seed)
    model.eval()
    correct = loss = masked = 0.0
    try:
        for wave, labels in items:
            _, m = masked_prediction_loss(
                model["hubert"], model["head"], wave.to(device), labels.to(device), cfg
            )
            n = round(m["mask_ratio"] * labels.numel())
            correct += m["acc_masked"] * n
            loss += m["loss_masked"] * n
            masked += n
    finally:
        np.random.set_state(np_state)
    return {
        "acc_masked": correct / max(masked, 1.0),
        "loss_masked": loss / max(masked, 1.0),
        "masked_frames": masked,
    }


@dataclass
class TeacherTask:
    """Masked prediction as the shared loop sees it (see `loop.TrainingTask`)."""

    cfg: TeacherPretrainConfig
    device: torch.device
    model: nn.ModuleDict  # {"hubert": HubertModel, "head": ProjectionHead}
    eval_items: list[tuple[Tensor, Tensor]]
    report: dict[str, Any]
    out: Path

    def start_epoch(self, epoch: int) -> None:
        pass

    def train_loss(
        self, batch: tuple[Tensor, Tensor], step: int
    ) -> tuple[Tensor, dict[str, float]]:
        waves, labels = batch
        self.model.train()
        return masked_prediction_loss(
            self.model["hubert"],
            self.model["head"],
            waves.to(self.device),
            labels.to(self.device),
            self.cfg,
        )

    def batch_seconds(self, batch: tuple[Tensor, Tensor]) -> float:
        return batch[0].numel() / SAMPLE_RATE

    def evaluate(self, state: TrainState) -> dict[str, float] | None:
        return masked_accuracy(self.model, self.eval_items, self.cfg) if self.eval_items else None

    def after_evaluation(self, state: TrainState, metrics: dict[str, float]) -> bool:
        state.extra.setdefault("evaluations", []).append(state.extra["last_dev"])
        return False

    def before_checkpoint(self, state: TrainState) -> None:
        write_report(self.out, state, self.report)


class _CropBatches:
    """The sampler's batches of the current epoch as equal-length crops (B, L) + labels."""

    def __init__(
        self,
        sampler: LengthBucketSampler,
        manifest: Manifest,
        labels: list[list[int]],
        usable: list[int],
        crop: int,
        seed: int,
    ) -> None:
        self.sampler, self.manifest, self.labels = sampler, manifest, labels
        self.usable, self.crop, self.seed = usable, crop, seed

    def __iter__(self):
        for batch in self.sampler:
            rows = [self.usable[i] for i in batch]
            yield _batch(self.manifest, self.labels, rows, self.crop, self.seed, self.sampler.epoch)


def write_report(out: Path, state: TrainState, report: dict[str, Any]) -> dict[str, Any]:
    """OUT/metrics.json: this iteration's units, training and dev masked-unit accuracy, and
    the same summary for every iteration so far (`iterations`)."""
    this = {
        "iteration": report["iteration"],
        "units": report["units"],
        "step": state.step,
        "train": state.extra.get("last_train"),
        "eval": state.extra.get("last_dev"),
    }
    metrics = {
        **this,
        "eval_set": report["eval_set"],
        "evaluations": state.extra.get("evaluations", []),
        "iterations": [*report["earlier"], this],
    }
    tmp = out / (METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, out / METRICS_FILE)
    return metrics


def _earlier_iterations(label_teacher: str | None) -> tuple[int, list[dict[str, Any]]]:
    """(this run's iteration number, the label teacher's own per-iteration summaries)."""
    if label_teacher is None:
        return 1, []
    path = Path(label_teacher) / METRICS_FILE
    if not path.is_file():  # a teacher from elsewhere: assume it was iteration 1
        return 2, []
    earlier = json.loads(path.read_text())
    return int(earlier.get("iteration", 1)) + 1, list(earlier.get("iterations", []))


def _eval_items(
    manifest: Manifest, labels: list[list[int]], count: int, crop: int, seed: int
) -> list[tuple[Tensor, Tensor]]:
    """The first `count` utterances long enough for a frame, each a fixed crop."""
    rows = [i for i in range(len(manifest)) if manifest[i].num_samples >= WINDOW + HOP][:count]
    return [_batch(manifest, labels, [r], crop, seed, 0) for r in rows]


def pretrain_teacher(
    manifest_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: TeacherPretrainConfig,
    dev_manifest: str | os.PathLike | None = None,
) -> Path:
    """Run all stages (resuming where a previous run stopped); returns the teacher dir."""
    from transformers import HubertModel

    from model_training.models.teacher import HubertTeacher, ProjectionHead

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out, manifest_path = Path(out_dir), Path(manifest_path)
    dev_path = Path(dev_manifest) if dev_manifest else None
    seed_everything(cfg.seed)
    km_path, dev_km = prepare_labels(cfg, manifest_path, out, dev_path)
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
    if dev_path is not None and dev_km is not None:
        dev = read_manifest(dev_path)
        eval_items = _eval_items(dev, read_km_labels(dev_km), cfg.eval_utterances, crop, cfg.seed)
    else:
        eval_items = _eval_items(manifest, labels, cfg.eval_utterances, crop, cfg.seed)
    iteration, earlier = _earlier_iterations(cfg.label_teacher)
    report = {
        "iteration": iteration,
        "units": UnitKMeans.load(out / KMEANS_FILE).info(),
        "eval_set": {
            "manifest": str(dev_path or manifest_path),
            "utterances": len(eval_items),
            "seen_in_training": dev_path is None,
        },
        "earlier": earlier,
    }
    loop = TrainLoop(
        task=TeacherTask(cfg, device, model, eval_items, report, out),
        config=LoopConfig.from_settings("teacher", cfg),
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=sampler,
        loader=_CropBatches(sampler, manifest, labels, usable, crop, cfg.seed),
        device=device,
        run_dir=out,
        keep_checkpoints=cfg.keep_checkpoints,
        tensorboard=cfg.tensorboard,
        checkpoint_extra={"config": asdict(cfg)},
    )
    state, _ = loop.restore()
    params = sum(p.numel() for p in hubert.parameters())
    logger.info(
        "teacher iteration %d: %.2fM parameters, %d clusters, %d steps",
        iteration,
        params / 1e6,
        cfg.num_clusters,
        cfg.max_steps,
    )
    state = loop.run(state)
    last = state.extra.get("last_dev") or {}
    if eval_items and last.get("step") != state.step:  # e.g. a run finished by older code
        state.extra["last_dev"] = {"step": state.step, **masked_accuracy(model, eval_items, cfg)}
        loop.task.after_evaluation(state, state.extra["last_dev"])
    teacher = HubertTeacher(model["hubert"].cpu(), model["head"].cpu())
    teacher.save(out)
    (out / "pretrain_config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
    metrics = write_report(out, state, report)
    logger.info(
        "teacher written to %s (labels %s); masked-unit accuracy per iteration: %s",
        out,
        km_path,
        [
            (it["iteration"], (it.get("eval") or {}).get("acc_masked"))
            for it in metrics["iterations"]
        ],
    )
    return out
