"""Distil a HuBERT teacher into a student: CE + KD / DKD on cluster logits, or the
DistilHuBERT feature loss (teacher-layer prediction).

Plain functions in the icefall style: `DistillConfig` (the params, from YAML), `build_*`,
`compute_loss -> (loss, metrics)`, `train_one_epoch`, `run(config)`, `main(argv)`.

    hubert-lstm distill --config configs/distill/demo_dkd_b4.yaml
    torchrun --nproc_per_node 2 -m model_training.training.distill --config FILE.yaml

Targets come from a target cache (`hubert-lstm targets`) or from the teacher run on the fly
on the same crops. Random crops are aligned to the 320-sample frame hop, so cluster labels and
cached per-frame targets of the full utterance are sliced to the crop's frames. (Cached targets
thus carry the teacher's full-utterance context; on-the-fly targets see only the crop.)

Exact resume: a checkpoint holds the model, optimizer, scheduler, grad scaler, the sampler's
position in the epoch and every RNG state; crop offsets are a pure function of
(seed, epoch, row), so a resumed run replays the same batches with the same random numbers.

The final student is written to `RUN_DIR/student.safetensors` with its registry type, factory
name and config in the metadata: `load_student_checkpoint(path)` rebuilds it without pickle.
"""

from __future__ import annotations

import argparse
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
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from model_training import losses
from model_training.data.audio import load_audio
from model_training.data.collate import LABEL_PAD, random_crop_offset
from model_training.data.manifest import Manifest, read_km_labels, read_manifest
from model_training.data.sampler import LengthBucketSampler
from model_training.training.common import (
    Checkpointer,
    DistInfo,
    TrainState,
    all_reduce_mean,
    autocast,
    barrier,
    cleanup_distributed,
    dataclass_from_dict,
    init_distributed,
    linear_warmup_decay,
    load_checkpoint_payload,
    log_scalars,
    make_grad_scaler,
    maybe_no_sync,
    read_yaml_with_overrides,
    seed_everything,
    summary_writer,
    unwrap_model,
)
from model_training.training.targets import TargetCache, dense_teacher_logits

logger = logging.getLogger(__name__)

STUDENT_FORMAT = "hubert-lstm/student"
STUDENT_FILE = "student.safetensors"
HOP = 320  # samples per 20 ms frame at 16 kHz (HuBERT's CNN stride)
SAMPLE_RATE = 16000

# factory name -> (registry type, "module:function")
STUDENT_FACTORIES: dict[str, tuple[str, str]] = {
    "lstm": ("lstm_student", "model_training.models.student:lstm_student"),
    "lstm_paper": ("lstm_student", "model_training.models.student:lstm_student_paper"),
    "lstm_small": ("lstm_student", "model_training.models.student:lstm_student_small"),
    "lstm_paper_fast": ("lstm_student", "model_training.models.student:lstm_student_paper_fast"),
    "lstm_small_fast": ("lstm_student", "model_training.models.student:lstm_student_small_fast"),
    "lstm_tiny": ("lstm_student", "model_training.models.student:lstm_student_tiny"),
    "distilhubert_paper": ("distilhubert", "model_training.models.distilhubert:distilhubert_paper"),
    "distilhubert_small": ("distilhubert", "model_training.models.distilhubert:distilhubert_small"),
    "distilhubert_tiny": ("distilhubert", "model_training.models.distilhubert:distilhubert_tiny"),
}
# registry type -> the generic builder taking every config field
GENERIC_BUILDERS = {"lstm_student": "lstm", "distilhubert": "distilhubert"}
STUDENT_FACTORIES["distilhubert"] = (
    "distilhubert",
    "model_training.models.distilhubert:distilhubert",
)


def _factory(name: str) -> Any:
    """The builder function of factory `name`."""
    import importlib

    module_name, fn_name = STUDENT_FACTORIES[name][1].split(":")
    return getattr(importlib.import_module(module_name), fn_name)


# ----------------------------------------------------------------------------- config


@dataclass
class DataConfig:
    """Training / dev data. Paths are relative to the working directory.

    crop_seconds: random crop length for training (None = whole utterances).
    max_batch_seconds: padded audio per batch (longest crop x items).
    """

    train_manifest: str = ""
    train_labels: str | None = None  # fairseq .km (one line per manifest row)
    train_targets: str | None = None  # target cache dir; None = teacher on the fly
    dev_manifest: str | None = None
    dev_labels: str | None = None
    dev_targets: str | None = None
    dev_max_utterances: int = 64
    crop_seconds: float | None = 4.0
    max_batch_seconds: float = 64.0
    max_batch_size: int | None = 32
    num_workers: int = 0


@dataclass
class TeacherConfig:
    """Where the teacher comes from (needed on the fly, for CNN init, or for its layers)."""

    dir: str | None = None  # HubertTeacher.from_hf_dir (a `hubert-lstm teacher pretrain` output)
    head_file: str | None = None
    fairseq_checkpoint: str | None = None  # HuBERT .pt with its pretraining head
    feature_layers: list[int] = field(default_factory=list)  # teacher layers for `feature`


@dataclass
class StudentConfig:
    """factory: a key of STUDENT_FACTORIES; overrides: config fields passed to it."""

    factory: str = "lstm_small"
    overrides: dict[str, Any] = field(default_factory=dict)
    init_cnn_from_teacher: bool = True


@dataclass
class LossConfig:
    """Weights of each term (0 = off) and their hyper-parameters.

    target: class t for CE and DKD: "auto" (cluster label when the data has labels, else the
    teacher's argmax), "label" or "teacher".
    kd_warmup_steps: KD/DKD weights ramp with min(step / warmup, 1) (mdistiller); 0 = off.
    """

    ce: float = 1.0
    kd: float = 0.0
    dkd: float = 0.0
    feature: float = 0.0
    tau: float = 1.0
    alpha: float = 1.0
    beta: float = 1.0
    cos_weight: float = 1.0
    target: str = "auto"
    kd_warmup_steps: int = 0


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then linear decay over `max_steps` optimizer steps."""

    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    max_steps: int = 200_000
    warmup_ratio: float = 0.07
    grad_clip: float = 10.0
    accum_steps: int = 1
    precision: str = "fp32"  # fp32 | bf16 | fp16 (AMP on CUDA only)


@dataclass
class DistillConfig:
    """Everything a distillation run needs; stored in every checkpoint (as a dict)."""

    run_dir: str = "runs/distill"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log_every: int = 10
    eval_every: int = 500
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    stop_at_step: int | None = None  # stop early (schedule still spans max_steps)
    oom_check: bool = True  # forward+backward on the largest batch before step 1
    progress: bool = True
    tensorboard: bool = True
    num_threads: int | None = None  # torch intra-op threads (None = torch's default)

    def __post_init__(self) -> None:
        for name, typ in (
            ("data", DataConfig),
            ("teacher", TeacherConfig),
            ("student", StudentConfig),
            ("loss", LossConfig),
            ("optim", OptimConfig),
        ):
            value = getattr(self, name)
            if isinstance(value, dict):
                setattr(self, name, dataclass_from_dict(typ, value, name))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on inconsistent settings."""
        lc = self.loss
        if min(lc.ce, lc.kd, lc.dkd, lc.feature) < 0:
            raise ValueError("loss weights must be >= 0")
        if lc.ce + lc.kd + lc.dkd + lc.feature <= 0:
            raise ValueError("at least one of loss.ce/kd/dkd/feature must be > 0")
        if lc.target not in ("auto", "label", "teacher"):
            raise ValueError(f"loss.target must be auto|label|teacher, found {lc.target!r}")
        if lc.feature > 0 and not self.teacher.feature_layers:
            raise ValueError("loss.feature > 0 needs teacher.feature_layers (e.g. [4, 8, 12])")
        if self.student.factory not in STUDENT_FACTORIES:
            raise ValueError(
                f"student.factory must be one of {sorted(STUDENT_FACTORIES)}, "
                f"found {self.student.factory!r}"
            )
        if not self.data.train_manifest:
            raise ValueError("data.train_manifest is required")
        if self.data.train_targets is None and not (
            self.teacher.dir or self.teacher.fairseq_checkpoint
        ):
            raise ValueError("without data.train_targets a teacher (dir or fairseq) is required")
        o = self.optim
        if o.max_steps < 1 or o.accum_steps < 1 or not 0 <= o.warmup_ratio <= 1:
            raise ValueError("optim: max_steps >= 1, accum_steps >= 1, warmup_ratio in [0, 1]")
        if o.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"optim.precision must be fp32|bf16|fp16, found {o.precision!r}")
        for name in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        return dataclass_from_dict(cls, d, "config")

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, overrides: Sequence[str] = ()) -> DistillConfig:
        """Read YAML, apply `a.b=value` overrides (values parsed as YAML), validate."""
        return cls.from_dict(read_yaml_with_overrides(path, overrides))


# ----------------------------------------------------------------------------- data


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


# ----------------------------------------------------------------------------- models


def load_teacher(cfg: TeacherConfig) -> nn.Module | None:
    """The frozen teacher named by the config, or None when it names none."""
    if not (cfg.dir or cfg.fairseq_checkpoint):
        return None
    from model_training.models.teacher import HubertTeacher

    if cfg.fairseq_checkpoint:
        return HubertTeacher.from_fairseq_checkpoint(cfg.fairseq_checkpoint)
    return HubertTeacher.from_hf_dir(cfg.dir, cfg.head_file)


def build_student(
    factory: str,
    overrides: dict[str, Any],
    *,
    num_classes: int | None,
    teacher_dim: int | None = None,
    feature_layers: Sequence[int] = (),
) -> nn.Module:
    """Instantiate a student from a factory name plus config overrides.

    LSTM students get `num_classes` = the teacher's C; DistilHuBERT students get
    `target_layers` = the teacher layers to predict and `teacher_dim` = their width (unless the
    overrides set them).
    """
    type_name = STUDENT_FACTORIES[factory][0]
    fn = _factory(factory)
    kwargs = dict(overrides)
    if type_name == "lstm_student" and num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    if type_name == "distilhubert":
        if feature_layers:
            kwargs.setdefault("target_layers", list(feature_layers))
        if teacher_dim is not None:
            kwargs.setdefault("teacher_dim", teacher_dim)
    return fn(**kwargs)


def student_config_dict(model: nn.Module) -> dict[str, Any]:
    """The student's config as a JSON-ready dict (`config.to_dict()`)."""
    config = unwrap_model(model).config
    return config.to_dict() if hasattr(config, "to_dict") else asdict(config)


def save_student(
    path: str | os.PathLike, model: nn.Module, *, factory: str, provenance: dict[str, Any]
) -> Path:
    """Write the student as safetensors; type, factory and config live in the metadata."""
    model = unwrap_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": STUDENT_FORMAT,
        "format_version": "1",
        "type": STUDENT_FACTORIES[factory][0],
        "factory": factory,
        "config": json.dumps(student_config_dict(model)),
        "provenance": json.dumps(provenance),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_student_checkpoint(path: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """Rebuild a distilled student (with its training head) from what `distill` wrote.

    Accepts `student.safetensors`, a run directory (its `student.safetensors`, else its latest
    training checkpoint) or a training checkpoint `checkpoint-*.pt` (read with
    weights_only=True). The model comes back in eval mode.
    """
    path = Path(path)
    if path.is_dir():
        if (path / STUDENT_FILE).exists():
            path = path / STUDENT_FILE
        else:
            latest = Checkpointer(path / "checkpoints").latest()
            if latest is None:
                raise FileNotFoundError(f"{path}: no {STUDENT_FILE} and no checkpoints/")
            path = latest
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
        if meta.get("format") != STUDENT_FORMAT:
            raise ValueError(
                f"{path}: expected format {STUDENT_FORMAT!r}, found {meta.get('format')!r}"
            )
        type_name, config = meta["type"], json.loads(meta["config"])
    else:
        payload = load_checkpoint_payload(path)
        type_name, config = payload["extra"]["student_type"], payload["extra"]["student_config"]
        state = payload["model"]
    if type_name not in GENERIC_BUILDERS:
        raise ValueError(f"{path}: unknown student type {type_name!r}")
    model = _factory(GENERIC_BUILDERS[type_name])(**config)
    model.load_state_dict(state)
    return model.to(device).eval()


# ----------------------------------------------------------------------------- loss


def _fit_frames(x: Tensor, frames: int, value: float) -> Tensor:
    """Truncate or pad dim 1 of x to `frames`."""
    if x.shape[1] >= frames:
        return x[:, :frames]
    pad_shape = (x.shape[0], frames - x.shape[1], *x.shape[2:])
    return torch.cat([x, x.new_full(pad_shape, value)], dim=1)


@dataclass
class Targets:
    """Per-frame teacher targets aligned to the student's T frames."""

    mask: Tensor  # (B, T) bool
    teacher_logits: Tensor | None  # (B, T, C) float32 (-inf outside the cached top-k)
    labels: Tensor | None  # (B, T) long
    layers: Tensor | None  # (B, T, L, D)


def gather_targets(
    batch: DistillBatch,
    student_frames: Tensor,
    frames: int,
    *,
    teacher: nn.Module | None,
    num_classes: int | None,
    feature_layers: Sequence[int],
    need_logits: bool,
) -> Targets:
    """Teacher logits / layers from the cache or the teacher, labels, and the valid mask."""
    steps = torch.arange(frames, device=student_frames.device)
    valid = student_frames
    logits = layers = None
    cached = batch.topk_values is not None or batch.layer_targets is not None
    if not cached and teacher is not None and (need_logits or feature_layers):
        with torch.no_grad():
            out = teacher(batch.waveforms, batch.lengths)
        valid = torch.minimum(valid, out.lengths)
        if need_logits:
            logits = _fit_frames(out.logits.float(), frames, 0.0)
        if feature_layers:
            stacked = torch.stack([out.hidden_states[k] for k in feature_layers], dim=2)
            layers = _fit_frames(stacked, frames, 0.0)
    else:
        if need_logits:
            if batch.topk_values is None or num_classes is None:
                raise ValueError("KD/DKD need cached targets or a teacher")
            values = _fit_frames(batch.topk_values, frames, 0.0)
            indices = _fit_frames(batch.topk_indices, frames, 0)
            logits = dense_teacher_logits(values, indices, num_classes)
        if feature_layers:
            if batch.layer_targets is None:
                raise ValueError("the feature loss needs cached layers (targets --layers)")
            layers = _fit_frames(batch.layer_targets, frames, 0.0)
    if batch.target_frames is not None:
        valid = torch.minimum(valid, batch.target_frames.to(valid.device))
    labels = None if batch.labels is None else _fit_frames(batch.labels, frames, LABEL_PAD)
    return Targets(steps[None, :] < valid[:, None], logits, labels, layers)


def predict_teacher_layers(model: nn.Module, out: Any) -> Tensor:
    """(B, T, L, D) predictions of the teacher layers by a DistilHuBERT-style student."""
    preds = unwrap_model(model).predict_teacher_layers(out)
    return torch.stack(list(preds), dim=2) if not isinstance(preds, Tensor) else preds


def compute_loss(
    model: nn.Module,
    batch: DistillBatch,
    cfg: DistillConfig,
    *,
    teacher: nn.Module | None,
    num_classes: int | None,
    step: int = 0,
) -> tuple[Tensor, dict[str, float]]:
    """Forward the student and return (weighted loss, metrics of every term).

    Metrics: `loss`, each active term (`ce`, `kd`, `dkd`, `feature`) unweighted, DKD's
    `tckd`/`nckd`, `teacher_target_prob`, and `frames` (valid frames in the batch).
    """
    lc = cfg.loss
    out = model(batch.waveforms, batch.lengths)
    frames = out.hidden_states[0].shape[1]
    need_logits = lc.kd > 0 or lc.dkd > 0 or (lc.ce > 0 and lc.target == "teacher")
    need_logits = need_logits or (lc.ce > 0 and batch.labels is None)
    tg = gather_targets(
        batch,
        out.lengths,
        frames,
        teacher=teacher,
        num_classes=num_classes,
        feature_layers=cfg.teacher.feature_layers if lc.feature > 0 else (),
        need_logits=need_logits,
    )
    mask = tg.mask
    zero = out.hidden_states[0].new_zeros(())
    total = zero
    metrics: dict[str, float] = {"frames": float(mask.sum())}
    warm = min(step / lc.kd_warmup_steps, 1.0) if lc.kd_warmup_steps > 0 else 1.0
    target = None
    if lc.ce > 0 or lc.kd > 0 or lc.dkd > 0:
        if out.logits is None:
            raise ValueError("CE/KD/DKD need a student with a cluster head (num_classes > 0)")
        use_label = tg.labels is not None and lc.target in ("auto", "label")
        if lc.target == "label" and tg.labels is None:
            raise ValueError("loss.target = label but the data has no .km labels")
        target = tg.labels if use_label else tg.teacher_logits.argmax(-1)
        target = torch.where(mask, target, torch.zeros_like(target))
        student_logits = out.logits.float()
    if lc.ce > 0:
        ce = losses.ce_loss(student_logits, target, mask)
        total = total + lc.ce * ce
        metrics["ce"] = float(ce.detach())
    if lc.kd > 0:
        kd = losses.kd_loss(student_logits, tg.teacher_logits, mask, tau=lc.tau)
        total = total + warm * lc.kd * kd
        metrics["kd"] = float(kd.detach())
    if lc.dkd > 0:
        parts = losses.dkd_loss_parts(
            student_logits,
            tg.teacher_logits,
            target,
            mask,
            alpha=lc.alpha,
            beta=lc.beta,
            tau=lc.tau,
        )
        total = total + warm * lc.dkd * parts["loss"]
        metrics.update(
            dkd=float(parts["loss"].detach()),
            tckd=float(parts["tckd"]),
            nckd=float(parts["nckd"]),
            teacher_target_prob=float(parts["teacher_target_prob"]),
        )
    if lc.feature > 0:
        pred = predict_teacher_layers(model, out)
        parts = losses.feature_distill_loss_parts(pred, tg.layers, mask, cos_weight=lc.cos_weight)
        total = total + lc.feature * parts["loss"]
        metrics.update(
            feature=float(parts["loss"].detach()), l1=float(parts["l1"]), cos=float(parts["cos"])
        )
    metrics["loss"] = float(total.detach())
    return total, metrics


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    cfg: DistillConfig,
    *,
    teacher: nn.Module | None,
    num_classes: int | None,
    device: torch.device,
) -> dict[str, float]:
    """Dev agreement with the teacher: top-1 agreement and KL(p_T || p_S) per frame (tau 1),
    label CE when labels exist, and the feature loss for feature students."""
    model.eval()
    sums: dict[str, float] = {}
    total_frames = 0.0
    for batch in loader:
        batch = batch.to(device)
        out = model(batch.waveforms, batch.lengths)
        frames = out.hidden_states[0].shape[1]
        feature = cfg.loss.feature > 0
        tg = gather_targets(
            batch,
            out.lengths,
            frames,
            teacher=teacher,
            num_classes=num_classes,
            feature_layers=cfg.teacher.feature_layers if feature else (),
            need_logits=out.logits is not None,
        )
        n = float(tg.mask.sum())
        vals: dict[str, Tensor] = {}
        if tg.teacher_logits is not None and out.logits is not None:
            s = out.logits.float()
            vals["top1_agreement"] = (
                (s.argmax(-1) == tg.teacher_logits.argmax(-1)) & tg.mask
            ).sum() / max(n, 1)
            vals["kl"] = losses.kd_loss(s, tg.teacher_logits, tg.mask)
            if tg.labels is not None:
                vals["ce_label"] = losses.ce_loss(s, tg.labels.clamp_min(0), tg.mask)
        if feature and tg.layers is not None:
            pred = predict_teacher_layers(model, out)
            vals["feature"] = losses.feature_distill_loss(pred, tg.layers, tg.mask)
        for k, v in vals.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        total_frames += n
    model.train()
    return {k: v / max(total_frames, 1.0) for k, v in sums.items()}


# ----------------------------------------------------------------------------- training


@dataclass
class Trainer:
    """What `train_one_epoch` needs, built once by `run`."""

    cfg: DistillConfig
    info: DistInfo
    device: torch.device
    model: nn.Module  # possibly DDP-wrapped
    teacher: nn.Module | None
    num_classes: int | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    sampler: LengthBucketSampler
    dataset: DistillDataset
    loader: DataLoader
    dev_loader: DataLoader | None
    checkpointer: Checkpointer
    writer: Any
    extra: dict[str, Any]

    def save_checkpoint(self, state: TrainState) -> None:
        if self.info.is_main:
            self.checkpointer.save(
                state,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                scaler=self.scaler,
                sampler_state={
                    "epoch": state.epoch,
                    "seed": self.sampler.seed,
                    "batches_consumed": state.batches_in_epoch,
                },
                extra=self.extra,
            )
        barrier()


def _optimizer_step(tr: Trainer) -> float:
    """Unscale, clip, step; returns the gradient norm before clipping."""
    tr.scaler.unscale_(tr.optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(tr.model.parameters(), tr.cfg.optim.grad_clip)
    tr.scaler.step(tr.optimizer)
    tr.scaler.update()
    tr.optimizer.zero_grad(set_to_none=True)
    tr.scheduler.step()
    return float(grad_norm)


def train_one_epoch(tr: Trainer, state: TrainState, last_step: int, bar: Any) -> bool:
    """Train until the epoch ends or `state.step == last_step`; returns True at the end of
    the epoch. Checkpoints, logs and evaluates on the way."""
    cfg = tr.cfg
    accum = cfg.optim.accum_steps
    micro = 0
    window: dict[str, float] = {}
    window_n = 0
    t0 = time.perf_counter()
    audio_seconds = 0.0
    for batch in tr.loader:
        state.batches_in_epoch += 1
        micro += 1
        batch = batch.to(tr.device)
        audio_seconds += float(batch.lengths.sum()) / SAMPLE_RATE
        sync = micro % accum == 0
        with maybe_no_sync(tr.model, not sync), autocast(tr.device, cfg.optim.precision):
            loss, metrics = compute_loss(
                tr.model,
                batch,
                cfg,
                teacher=tr.teacher,
                num_classes=tr.num_classes,
                step=state.step,
            )
        tr.scaler.scale(loss / accum).backward()
        for k, v in metrics.items():
            window[k] = window.get(k, 0.0) + v
        window_n += 1
        if not sync:
            continue
        grad_norm = _optimizer_step(tr)
        micro = 0
        state.step += 1
        bar.update(1)
        if state.step % cfg.log_every == 0 or state.step == last_step:
            means = {k: v / window_n for k, v in window.items()}
            reduced = all_reduce_mean(torch.tensor(means["loss"], device=tr.device))
            means["loss"] = float(reduced)
            elapsed = time.perf_counter() - t0
            means.update(
                seconds_per_step=elapsed / max(1, window_n // accum),
                lr=tr.scheduler.get_last_lr()[0],
                grad_norm=grad_norm,
                audio_seconds_per_s=audio_seconds / max(elapsed, 1e-9),
            )
            log_scalars(tr.writer, means, state.step, "train")
            bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{means['lr']:.2e}")
            logger.info(
                "step %d %s", state.step, json.dumps({k: round(v, 5) for k, v in means.items()})
            )
            state.extra["last_train"] = means
            if tr.info.is_main:
                with open(Path(cfg.run_dir) / "train_log.jsonl", "a") as f:
                    f.write(json.dumps({"step": state.step, **means}) + "\n")
            window, window_n, t0, audio_seconds = {}, 0, time.perf_counter(), 0.0
        if tr.dev_loader is not None and (
            state.step % cfg.eval_every == 0 or state.step == last_step
        ):
            if tr.info.is_main:
                dev = evaluate(
                    unwrap_model(tr.model),
                    tr.dev_loader,
                    cfg,
                    teacher=tr.teacher,
                    num_classes=tr.num_classes,
                    device=tr.device,
                )
                log_scalars(tr.writer, dev, state.step, "dev")
                logger.info("dev step %d %s", state.step, json.dumps(dev))
                state.extra["last_dev"] = dev
            barrier()
        if state.step % cfg.checkpoint_every == 0 or state.step == last_step:
            tr.save_checkpoint(state)
        if state.step >= last_step:
            return False
    if micro:  # the epoch ended inside an accumulation window: step with what there is
        _optimizer_step(tr)
        state.step += 1
        bar.update(1)
    return True


def _largest_batch(sampler: LengthBucketSampler, lengths: list[int]) -> list[int]:
    return max(sampler.rank_batches(), key=lambda b: max(lengths[i] for i in b) * len(b))


def scan_pessimistic_batch(tr: Trainer, lengths: list[int]) -> None:
    """Forward + backward on this rank's largest padded batch, so OOM shows before step 1."""
    indices = _largest_batch(tr.sampler, lengths)
    batch = collate_distill([tr.dataset[i] for i in indices]).to(tr.device)
    with maybe_no_sync(tr.model, True), autocast(tr.device, tr.cfg.optim.precision):
        loss, _ = compute_loss(
            tr.model, batch, tr.cfg, teacher=tr.teacher, num_classes=tr.num_classes
        )
    tr.scaler.scale(loss).backward()
    tr.optimizer.zero_grad(set_to_none=True)
    logger.info("largest batch (%d items, %d samples) fits", len(indices), int(batch.lengths.max()))


def _make_loader(dataset: Dataset, batch_sampler: Any, cfg: DistillConfig) -> DataLoader:
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate_distill,
        num_workers=cfg.data.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
    )


def _dev_loader(cfg: DistillConfig, num_classes: int | None) -> DataLoader | None:
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
    return _make_loader(dataset, sampler, cfg)


class _RowLimitedCache:
    """A cache seen through the first n rows (the dev subset)."""

    def __init__(self, cache: TargetCache, n: int) -> None:
        self.cache, self.n = cache, n

    def __len__(self) -> int:
        return self.n

    def get(self, row: int, layers: Sequence[int] | None = None) -> Any:
        return self.cache.get(row, layers)


def run(cfg: DistillConfig) -> Path:
    """Train (or resume) a student; returns the path of the final `student.safetensors`
    (or the run dir when stopped early by `stop_at_step`)."""
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    info, device = init_distributed(cfg.device)
    try:
        return _run(cfg, info, device)
    finally:
        cleanup_distributed()
        torch.set_num_threads(threads)


def _run(cfg: DistillConfig, info: DistInfo, device: torch.device) -> Path:
    from tqdm import tqdm

    run_dir = Path(cfg.run_dir)
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    seed_everything(cfg.seed + info.rank)
    d = cfg.data
    feature_layers = cfg.teacher.feature_layers if cfg.loss.feature > 0 else []

    train_cache = TargetCache(d.train_targets) if d.train_targets else None
    teacher = load_teacher(cfg.teacher)
    if teacher is not None:
        teacher = teacher.to(device)
    num_classes = (
        train_cache.num_classes
        if train_cache is not None
        else getattr(teacher, "num_classes", None)
    )
    teacher_dim = getattr(teacher, "hidden_dims", [None])[-1] if teacher is not None else None
    if teacher_dim is None and train_cache is not None and feature_layers:
        teacher_dim = int(
            train_cache.get(0, feature_layers[:1]).layers[feature_layers[0]].shape[-1]
        )
    model = build_student(
        cfg.student.factory,
        cfg.student.overrides,
        num_classes=num_classes,
        teacher_dim=teacher_dim,
        feature_layers=feature_layers,
    )
    if cfg.student.init_cnn_from_teacher and teacher is not None:
        if hasattr(model, "init_cnn_from"):
            model.init_cnn_from(teacher)
        else:  # DistilHuBERT copies the CNN and the first Transformer layers
            try:
                model.init_from_teacher(teacher, copy_layers=True)
            except ValueError as err:  # a different width: only the CNN can be copied
                logger.info("teacher layers do not fit the student (%s); copying the CNN", err)
                model.feature_extractor.load_from_hf_feature_encoder(
                    teacher.hubert.feature_extractor
                )
    live_needed = (
        train_cache is None
        or not set(feature_layers) <= set(train_cache.layers)
        or bool(d.dev_manifest and not d.dev_targets)
    )
    if teacher is not None and not live_needed:
        teacher = None  # cached targets cover training and dev: free the teacher
        logger.info("cached targets: the teacher is not run during training")
    model.to(device).train()
    params = sum(p.numel() for p in model.parameters())
    logger.info("student %s: %.2fM parameters", cfg.student.factory, params / 1e6)
    extra = {
        "student_type": STUDENT_FACTORIES[cfg.student.factory][0],
        "student_factory": cfg.student.factory,
        "student_config": student_config_dict(model),
        "distill_config": cfg.to_dict(),
    }
    if info.is_distributed:
        ddp_kwargs = {"device_ids": [device.index]} if device.type == "cuda" else {}
        model = DistributedDataParallel(model, **ddp_kwargs)

    o = cfg.optim
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay
    )
    scheduler = linear_warmup_decay(optimizer, round(o.warmup_ratio * o.max_steps), o.max_steps)
    scaler = make_grad_scaler(device, o.precision)

    manifest = read_manifest(d.train_manifest)
    labels = read_km_labels(d.train_labels, expected_rows=len(manifest)) if d.train_labels else None
    if train_cache is not None:
        train_cache = TargetCache(d.train_targets, manifest)  # checks the fingerprint
    crop = int(d.crop_seconds * SAMPLE_RATE) if d.crop_seconds else None
    dataset = DistillDataset(
        manifest,
        labels,
        train_cache,
        feature_layers if train_cache else (),
        crop_samples=crop,
        seed=cfg.seed,
    )
    lengths = dataset.lengths
    sampler = LengthBucketSampler(
        lengths,
        int(d.max_batch_seconds * SAMPLE_RATE),
        d.max_batch_size,
        shuffle=True,
        seed=cfg.seed,
        num_replicas=info.world_size,
        rank=info.rank,
    )
    loader = _make_loader(dataset, sampler, cfg)
    dev_loader = _dev_loader(cfg, num_classes) if info.is_main else None
    checkpointer = Checkpointer(run_dir / "checkpoints", keep_last=cfg.keep_checkpoints)
    writer = summary_writer(run_dir / "tensorboard", enabled=cfg.tensorboard and info.is_main)
    tr = Trainer(
        cfg,
        info,
        device,
        model,
        teacher,
        num_classes,
        optimizer,
        scheduler,
        scaler,
        sampler,
        dataset,
        loader,
        dev_loader,
        checkpointer,
        writer,
        extra,
    )

    state = TrainState()
    latest = checkpointer.latest()
    if latest is not None:
        state, _ = checkpointer.load(
            latest,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            map_location=device,
        )
        if info.rank:  # each rank resumes its own RNG stream, offset as at the start
            seed_everything(cfg.seed + info.rank + 1_000 * state.step)
    elif cfg.oom_check:
        scan_pessimistic_batch(tr, lengths)

    last_step = min(o.max_steps, cfg.stop_at_step or o.max_steps)
    bar = tqdm(
        total=last_step,
        initial=state.step,
        disable=not (cfg.progress and info.is_main),
        desc="distill",
        unit="step",
    )
    resume_offset = state.batches_in_epoch
    while state.step < last_step:
        sampler.set_epoch(state.epoch)
        dataset.set_epoch(state.epoch)
        if resume_offset:
            sampler.load_state_dict(
                {"epoch": state.epoch, "seed": cfg.seed, "batches_consumed": resume_offset}
            )
            resume_offset = 0
        if train_one_epoch(tr, state, last_step, bar):
            state.epoch += 1
            state.batches_in_epoch = 0
    bar.close()
    writer.close()
    if state.step < o.max_steps:
        logger.info("stopped at step %d of %d (stop_at_step)", state.step, o.max_steps)
        return run_dir
    out = run_dir / STUDENT_FILE
    if info.is_main:
        save_student(
            out,
            model,
            factory=cfg.student.factory,
            provenance={
                "steps": state.step,
                "teacher": asdict(cfg.teacher),
                "loss": asdict(cfg.loss),
                "last_dev": state.extra.get("last_dev"),
            },
        )
        logger.info("saved %s", out)
    barrier()
    return out


# ----------------------------------------------------------------------------- entry points


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Distil a HuBERT teacher into a student.")
    parser.add_argument("--config", required=True, help="YAML file (see configs/distill/)")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override config entries, e.g. optim.max_steps=100",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point for `python -m model_training.training.distill` (works under torchrun)."""
    args = get_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run(DistillConfig.from_yaml(args.config, args.set))


if __name__ == "__main__":
    main()
