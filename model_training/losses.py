"""Distillation losses: KD, DKD (decoupled KD), DistilHuBERT's feature loss and frame CE.

Every loss works on per-frame quantities, masks padded frames out and averages over the valid
frames of the batch (a batch with no valid frame gives 0). Logits are upcast to at least
float32 (teacher logits from the target cache may be float16).

Notation per frame (Zhao et al., "Decoupled Knowledge Distillation", CVPR 2022):

    p = softmax(z / tau)                 teacher p^T, student p^S
    b = [p_t, 1 - p_t]                   binary target-vs-rest distribution, t = target class
    p^ = softmax over the non-target classes only
    TCKD = KL(b^T || b^S),  NCKD = KL(p^^T || p^^S)
    KD  = tau^2 * KL(p^T || p^S)  = tau^2 * (TCKD + (1 - p_t^T) * NCKD)
    DKD = tau^2 * (alpha * TCKD + beta * NCKD)

mdistiller builds p^ by subtracting 1000 from the target logit; here the target is removed
exactly (-inf before the log-softmax, its terms then dropped), and log(1 - p_t) comes from a
logsumexp over the non-target logits, so nothing cancels and float64 gradcheck passes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "ce_loss",
    "dkd_frame_terms",
    "dkd_loss",
    "dkd_loss_parts",
    "feature_distill_loss",
    "feature_distill_loss_parts",
    "kd_loss",
    "kd_loss_parts",
]


# ----------------------------------------------------------------------------- helpers


def _check_logits(student: Tensor, teacher: Tensor) -> None:
    if student.dim() != 3:
        raise ValueError(f"student logits must be (B, T, C); found shape {tuple(student.shape)}")
    if teacher.shape != student.shape:
        raise ValueError(
            f"teacher logits must match student logits {tuple(student.shape)}; "
            f"found {tuple(teacher.shape)}"
        )
    if student.shape[-1] < 2:
        raise ValueError(f"need at least 2 classes; found C={student.shape[-1]}")


def _resolve_mask(mask: Tensor | None, batch: int, frames: int, device: torch.device) -> Tensor:
    """(B, T) bool mask, True at valid frames; all True when `mask` is None."""
    if mask is None:
        return torch.ones(batch, frames, dtype=torch.bool, device=device)
    if mask.shape != (batch, frames):
        raise ValueError(f"mask must be ({batch}, {frames}); found {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be bool (True = valid frame); found {mask.dtype}")
    return mask


def _check_target(target: Tensor, mask: Tensor, num_classes: int) -> Tensor:
    """Validate targets at valid frames; return a copy safe to gather (padding -> class 0)."""
    if target.shape != mask.shape:
        raise ValueError(f"target must be {tuple(mask.shape)}; found {tuple(target.shape)}")
    if target.dtype != torch.long:
        raise ValueError(f"target must be torch.long; found {target.dtype}")
    safe = torch.where(mask, target, torch.zeros_like(target))
    if safe.numel() and (int(safe.min()) < 0 or int(safe.max()) >= num_classes):
        raise ValueError(
            f"target classes at valid frames must lie in [0, {num_classes}); "
            f"found range [{int(safe.min())}, {int(safe.max())}]"
        )
    return safe


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    dtype = torch.float32
    for t in tensors:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _masked_mean(per_frame: Tensor, mask: Tensor) -> Tensor:
    """Mean of (B, T) values over True frames; 0 when there are none. where() keeps garbage
    (even inf/nan) in padded frames out of the value."""
    total = torch.where(mask, per_frame, torch.zeros_like(per_frame)).sum()
    return total / mask.sum().clamp_min(1).to(per_frame.dtype)


def _kl_from_log_probs(log_q: Tensor, log_p: Tensor) -> Tensor:
    """KL(q || p) summed over the last dim from log-probabilities, with 0 * log 0 = 0.

    Entries where q is exactly 0 (log_q = -inf: a removed class or a teacher logit of -inf)
    contribute nothing and pass no NaN into the backward pass.
    """
    present = log_q > float("-inf")
    zero = torch.zeros((), dtype=log_q.dtype, device=log_q.device)
    log_q_safe = torch.where(present, log_q, zero)
    log_p_safe = torch.where(present, log_p, zero)
    q = torch.where(present, log_q_safe.exp(), zero)
    return (q * (log_q_safe - log_p_safe)).sum(-1)


def _binary_and_rest_log_probs(
    logits: Tensor, target: Tensor, target_mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Log of b = [p_t, 1 - p_t] (..., 2) and log p^ over non-target classes (..., C).

    log p^ is -inf at the target. log(1 - p_t) = logsumexp(non-target) - logsumexp(all) is
    exact, with no 1 - p_t cancellation when p_t is close to 1.
    """
    rest = logits.masked_fill(target_mask, float("-inf"))
    target_logit = logits.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    rest_lse = torch.logsumexp(rest, dim=-1)
    log_b = torch.stack([target_logit, rest_lse], dim=-1).log_softmax(-1)
    log_rest = rest.log_softmax(-1)
    return log_b, log_rest


# ----------------------------------------------------------------------------- KD / DKD


def dkd_frame_terms(
    student_logits: Tensor, teacher_logits: Tensor, target: Tensor, *, tau: float = 1.0
) -> dict[str, Tensor]:
    """Per-frame KL terms at temperature tau, NOT multiplied by tau^2 and not masked.

    Args:
        student_logits: (B, T, C).
        teacher_logits: (B, T, C).
        target: (B, T) long, class index per frame (must be valid everywhere).
        tau: softmax temperature (> 0).

    Returns:
        dict of (B, T) tensors: `tckd` = KL(b^T || b^S), `nckd` = KL(p^^T || p^^S),
        `kd` = KL(p^T || p^S), `teacher_target_prob` = p_t^T and
        `student_target_prob` = p_t^S. Identity: kd = tckd + (1 - teacher_target_prob) * nckd.
    """
    _check_logits(student_logits, teacher_logits)
    if tau <= 0:
        raise ValueError(f"tau must be > 0; found {tau}")
    dtype = _compute_dtype(student_logits, teacher_logits)
    s = student_logits.to(dtype) / tau
    t = teacher_logits.to(dtype) / tau
    target_mask = F.one_hot(target, s.shape[-1]).bool()
    log_b_s, log_rest_s = _binary_and_rest_log_probs(s, target, target_mask)
    log_b_t, log_rest_t = _binary_and_rest_log_probs(t, target, target_mask)
    return {
        "tckd": _kl_from_log_probs(log_b_t, log_b_s),
        "nckd": _kl_from_log_probs(log_rest_t, log_rest_s),
        "kd": _kl_from_log_probs(t.log_softmax(-1), s.log_softmax(-1)),
        "teacher_target_prob": log_b_t[..., 0].exp(),
        "student_target_prob": log_b_s[..., 0].exp(),
    }


def kd_loss_parts(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    *,
    tau: float = 1.0,
    target: Tensor | None = None,
) -> dict[str, Tensor]:
    """KD loss and its decomposition for logging (all scalars, averaged over valid frames).

    Args:
        student_logits, teacher_logits: (B, T, C).
        mask: (B, T) bool, True = valid frame; None = all valid.
        tau: temperature; every term is multiplied by tau^2.
        target: (B, T) long class used for the decomposition; default the teacher's argmax.

    Returns:
        `loss` = tau^2 * mean KL(p^T || p^S); `tckd` and `nckd_weighted` = tau^2 * mean of
        TCKD and (1 - p_t^T) * NCKD, which add up to `loss`; `teacher_target_prob`.
    """
    _check_logits(student_logits, teacher_logits)
    b, t_len, c = student_logits.shape
    mask = _resolve_mask(mask, b, t_len, student_logits.device)
    if target is None:
        target = teacher_logits.detach().argmax(-1)
    target = _check_target(target, mask, c)
    terms = dkd_frame_terms(student_logits, teacher_logits, target, tau=tau)
    scale = tau * tau
    nckd_weighted = (1.0 - terms["teacher_target_prob"]) * terms["nckd"]
    return {
        "loss": scale * _masked_mean(terms["kd"], mask),
        "tckd": scale * _masked_mean(terms["tckd"], mask).detach(),
        "nckd_weighted": scale * _masked_mean(nckd_weighted, mask).detach(),
        "teacher_target_prob": _masked_mean(terms["teacher_target_prob"], mask).detach(),
    }


def kd_loss(
    student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None, *, tau: float = 1.0
) -> Tensor:
    """tau^2 * KL(softmax(teacher/tau) || softmax(student/tau)), averaged over valid frames.

    Args:
        student_logits, teacher_logits: (B, T, C).
        mask: (B, T) bool, True = valid frame; None = all valid.

    Returns:
        scalar tensor.
    """
    _check_logits(student_logits, teacher_logits)
    b, t_len, _ = student_logits.shape
    mask = _resolve_mask(mask, b, t_len, student_logits.device)
    if tau <= 0:
        raise ValueError(f"tau must be > 0; found {tau}")
    dtype = _compute_dtype(student_logits, teacher_logits)
    log_p_s = (student_logits.to(dtype) / tau).log_softmax(-1)
    log_p_t = (teacher_logits.to(dtype) / tau).log_softmax(-1)
    return tau * tau * _masked_mean(_kl_from_log_probs(log_p_t, log_p_s), mask)


def dkd_loss_parts(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    tau: float = 1.0,
) -> dict[str, Tensor]:
    """DKD loss and its parts (scalars averaged over valid frames).

    Args:
        student_logits, teacher_logits: (B, T, C).
        target: (B, T) long; the cluster label, or the teacher argmax where there is none.
            Values at padded frames are ignored.
        mask: (B, T) bool, True = valid frame; None = all valid.
        alpha, beta: weights of TCKD and NCKD; tau: temperature (terms times tau^2).

    Returns:
        `loss` = alpha * tckd + beta * nckd (with grad); `tckd`, `nckd` = tau^2 * mean TCKD /
        NCKD (unweighted, detached); `teacher_target_prob`, `student_target_prob` (means).
    """
    _check_logits(student_logits, teacher_logits)
    b, t_len, c = student_logits.shape
    mask = _resolve_mask(mask, b, t_len, student_logits.device)
    target = _check_target(target, mask, c)
    terms = dkd_frame_terms(student_logits, teacher_logits, target, tau=tau)
    scale = tau * tau
    tckd = scale * _masked_mean(terms["tckd"], mask)
    nckd = scale * _masked_mean(terms["nckd"], mask)
    return {
        "loss": alpha * tckd + beta * nckd,
        "tckd": tckd.detach(),
        "nckd": nckd.detach(),
        "teacher_target_prob": _masked_mean(terms["teacher_target_prob"], mask).detach(),
        "student_target_prob": _masked_mean(terms["student_target_prob"], mask).detach(),
    }


def dkd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor,
    mask: Tensor | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    tau: float = 1.0,
) -> Tensor:
    """tau^2 * (alpha * TCKD + beta * NCKD) per frame, averaged over valid frames.

    Shapes as in `dkd_loss_parts`; returns a scalar tensor. The warm-up factor
    min(step / warmup, 1) of mdistiller belongs to the training loop, not here.
    """
    return dkd_loss_parts(
        student_logits, teacher_logits, target, mask, alpha=alpha, beta=beta, tau=tau
    )["loss"]


# ----------------------------------------------------------------------------- CE


def ce_loss(logits: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Frame cross-entropy on cluster labels, averaged over valid frames.

    Args:
        logits: (B, T, C); target: (B, T) long (ignored at padded frames);
        mask: (B, T) bool, True = valid; None = all valid.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be (B, T, C); found shape {tuple(logits.shape)}")
    b, t_len, c = logits.shape
    mask = _resolve_mask(mask, b, t_len, logits.device)
    target = _check_target(target, mask, c)
    log_p = logits.to(_compute_dtype(logits)).log_softmax(-1)
    nll = -log_p.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return _masked_mean(nll, mask)


# ----------------------------------------------------------------------------- features


def _stack_layers(x: Tensor | Sequence[Tensor], name: str) -> Tensor:
    if isinstance(x, Tensor):
        if x.dim() != 4:
            raise ValueError(f"{name} must be (B, T, K, D) or a list of (B, T, D); found {x.shape}")
        return x
    layers = list(x)
    if not layers:
        raise ValueError(f"{name} is an empty list of layers")
    return torch.stack(layers, dim=2)


def feature_distill_loss_parts(
    pred: Tensor | Sequence[Tensor],
    target: Tensor | Sequence[Tensor],
    mask: Tensor | None = None,
    *,
    cos_weight: float = 1.0,
) -> dict[str, Tensor]:
    """DistilHuBERT's layer-prediction loss and its per-layer parts.

    Per predicted layer k and frame: L1 = mean_d |pred - target|, COS = -log sigmoid(cos(pred,
    target)); loss = mean over layers and valid frames of L1 + cos_weight * COS (lambda = 1).

    Args:
        pred: (B, T, K, D) or a list of K tensors (B, T, D): predicted teacher layers.
        target: same shape: the teacher's hidden states (no gradient needed).
        mask: (B, T) bool, True = valid frame; None = all valid.

    Returns:
        `loss`, `l1`, `cos` (means over layers) and `l1_layer{k}`, `cos_layer{k}`, k = 0..K-1
        (the cos entries are the -log sigmoid(cos) terms; parts are detached).
    """
    p = _stack_layers(pred, "pred")
    y = _stack_layers(target, "target")
    if p.shape != y.shape:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(y.shape)} must match")
    b, t_len, k, _ = p.shape
    mask = _resolve_mask(mask, b, t_len, p.device)
    dtype = _compute_dtype(p, y)
    p, y = p.to(dtype), y.to(dtype)
    l1 = (p - y).abs().mean(-1)  # (B, T, K)
    cos = -F.logsigmoid(F.cosine_similarity(p, y, dim=-1))  # (B, T, K)
    l1_layers = [_masked_mean(l1[:, :, i], mask) for i in range(k)]
    cos_layers = [_masked_mean(cos[:, :, i], mask) for i in range(k)]
    l1_mean = torch.stack(l1_layers).mean()
    cos_mean = torch.stack(cos_layers).mean()
    parts = {
        "loss": l1_mean + cos_weight * cos_mean,
        "l1": l1_mean.detach(),
        "cos": cos_mean.detach(),
    }
    for i in range(k):
        parts[f"l1_layer{i}"] = l1_layers[i].detach()
        parts[f"cos_layer{i}"] = cos_layers[i].detach()
    return parts


def feature_distill_loss(
    pred: Tensor | Sequence[Tensor],
    target: Tensor | Sequence[Tensor],
    mask: Tensor | None = None,
    *,
    cos_weight: float = 1.0,
) -> Tensor:
    """Scalar DistilHuBERT loss; see `feature_distill_loss_parts` for shapes."""
    return feature_distill_loss_parts(pred, target, mask, cos_weight=cos_weight)["loss"]
