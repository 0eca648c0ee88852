"""What the student learns from: per-frame teacher targets (cached or computed on the fly)
aligned to the student's frames, and the weighted CE / KD / DKD / feature loss."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from model_training import losses
from model_training.data.collate import LABEL_PAD
from model_training.training.common import unwrap_model
from model_training.training.distill.config import DistillConfig
from model_training.training.distill.data import DistillBatch
from model_training.training.targets import dense_teacher_logits


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


def student_targets(
    out: Any,
    batch: DistillBatch,
    cfg: DistillConfig,
    *,
    teacher: nn.Module | None,
    num_classes: int | None,
    need_logits: bool,
) -> Targets:
    """`gather_targets` on the frames of a student's output (an `UpstreamOutput`), with the
    teacher layers the config's feature loss predicts."""
    return gather_targets(
        batch,
        out.lengths,
        out.hidden_states[0].shape[1],
        teacher=teacher,
        num_classes=num_classes,
        feature_layers=cfg.teacher.feature_layers if cfg.loss.feature > 0 else (),
        need_logits=need_logits,
    )


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
    need_logits = lc.kd > 0 or lc.dkd > 0 or (lc.ce > 0 and lc.target == "teacher")
    need_logits = need_logits or (lc.ce > 0 and batch.labels is None)
    tg = student_targets(
        out, batch, cfg, teacher=teacher, num_classes=num_classes, need_logits=need_logits
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
