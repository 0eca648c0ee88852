"""Dev evaluation of a student against its teacher (agreement, KL, label CE, feature loss)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from model_training import losses
from model_training.training.distill.config import DistillConfig
from model_training.training.distill.objective import predict_teacher_layers, student_targets


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
        feature = cfg.loss.feature > 0
        tg = student_targets(
            out,
            batch,
            cfg,
            teacher=teacher,
            num_classes=num_classes,
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
