"""Losses: DKD/KD against direct computations, the KD = TCKD + (1 - p_t) NCKD identity,
float64 gradcheck, padding parity and the DistilHuBERT feature loss."""

from __future__ import annotations

import math
from decimal import Decimal, getcontext

import pytest
import torch

from model_training.losses import (
    ce_loss,
    dkd_frame_terms,
    dkd_loss,
    dkd_loss_parts,
    feature_distill_loss,
    feature_distill_loss_parts,
    kd_loss,
    kd_loss_parts,
)

B, T, C = 3, 7, 6
getcontext().prec = 50


def _inputs(rng: torch.Generator, dtype=torch.float32, scale=3.0):
    s = torch.randn(B, T, C, generator=rng, dtype=dtype) * scale
    t = torch.randn(B, T, C, generator=rng, dtype=dtype) * scale
    target = torch.randint(0, C, (B, T), generator=rng)
    lengths = torch.tensor([T, 4, 1])
    mask = torch.arange(T)[None] < lengths[:, None]
    return s, t, target, mask


def _softmax(z: list[float], tau: float) -> list[Decimal]:
    """Softmax in 50-digit decimals, so the reference itself loses nothing to rounding."""
    d = [Decimal(v) / Decimal(tau) for v in z]
    m = max(d)
    e = [(v - m).exp() for v in d]
    total = sum(e)
    return [v / total for v in e]


def _kl(q: list[Decimal], p: list[Decimal]) -> Decimal:
    return sum((qi * (qi / pi).ln() for qi, pi in zip(q, p, strict=True) if qi > 0), Decimal(0))


def _direct_dkd(s, t, target, mask, alpha, beta, tau) -> float:
    """DKD written out with explicit probabilities, frame by frame."""
    total, count = Decimal(0), 0
    for b in range(s.shape[0]):
        for f in range(s.shape[1]):
            if not mask[b, f]:
                continue
            k = int(target[b, f])
            ps = _softmax(s[b, f].tolist(), tau)
            pt = _softmax(t[b, f].tolist(), tau)
            tckd = _kl([pt[k], 1 - pt[k]], [ps[k], 1 - ps[k]])
            rest_s = [p / (1 - ps[k]) for i, p in enumerate(ps) if i != k]
            rest_t = [p / (1 - pt[k]) for i, p in enumerate(pt) if i != k]
            nckd = _kl(rest_t, rest_s)
            total += Decimal(tau * tau) * (Decimal(alpha) * tckd + Decimal(beta) * nckd)
            count += 1
    return float(total / count)


def _direct_kd(s, t, mask, tau) -> float:
    total, count = 0.0, 0
    for b in range(s.shape[0]):
        for f in range(s.shape[1]):
            if mask[b, f]:
                pt = _softmax(t[b, f].tolist(), tau)
                ps = _softmax(s[b, f].tolist(), tau)
                total += tau * tau * float(_kl(pt, ps))
                count += 1
    return total / count


@pytest.mark.parametrize(
    ("alpha", "beta", "tau"), [(1.0, 1.0, 1.0), (1.0, 4.0, 1.0), (0.5, 2.0, 2.5)]
)
def test_dkd_equals_direct_computation(rng, alpha, beta, tau):
    s, t, target, mask = _inputs(rng, torch.float64)
    got = dkd_loss(s, t, target, mask, alpha=alpha, beta=beta, tau=tau)
    want = _direct_dkd(s, t, target, mask, alpha, beta, tau)
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_kd_equals_direct_computation(rng, tau):
    s, t, _, mask = _inputs(rng, torch.float64)
    assert kd_loss(s, t, mask, tau=tau).item() == pytest.approx(
        _direct_kd(s, t, mask, tau), rel=1e-10
    )


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_kd_is_tckd_plus_weighted_nckd_frame_by_frame(rng, tau):
    s, t, target, _ = _inputs(rng, torch.float64)
    terms = dkd_frame_terms(s, t, target, tau=tau)
    rebuilt = terms["tckd"] + (1 - terms["teacher_target_prob"]) * terms["nckd"]
    torch.testing.assert_close(rebuilt, terms["kd"], rtol=1e-10, atol=1e-12)
    # kd_loss is the same KL, scaled by tau^2 and averaged
    torch.testing.assert_close(kd_loss(s, t, tau=tau), tau * tau * terms["kd"].mean())
    parts = kd_loss_parts(s, t, tau=tau, target=target)
    torch.testing.assert_close(parts["tckd"] + parts["nckd_weighted"], parts["loss"])


def test_dkd_beta_and_alpha_weight_the_parts(rng):
    s, t, target, mask = _inputs(rng)
    parts = dkd_loss_parts(s, t, target, mask, alpha=1.0, beta=4.0)
    torch.testing.assert_close(parts["loss"], parts["tckd"] + 4.0 * parts["nckd"])
    base = dkd_loss(s, t, target, mask)
    torch.testing.assert_close(base, parts["tckd"] + parts["nckd"])
    assert parts["nckd"] > 0 and parts["tckd"] > 0
    assert not torch.allclose(parts["loss"], base)
    only_t = dkd_loss(s, t, target, mask, alpha=1.0, beta=0.0)
    torch.testing.assert_close(only_t, parts["tckd"])


def test_dkd_exact_when_teacher_is_confident(rng):
    # p_t close to 1: the binary part must not lose 1 - p_t to cancellation
    s, t, target, _ = _inputs(rng, torch.float64)
    t = t.scatter(-1, target.unsqueeze(-1), 40.0)
    got = dkd_loss(s, t, target)
    assert torch.isfinite(got)
    assert got.item() == pytest.approx(
        _direct_dkd(s, t, target, torch.ones(B, T, dtype=torch.bool), 1, 1, 1), rel=1e-9
    )


def test_teacher_minus_inf_logits_are_handled(rng):
    # a top-k cache may fill absent classes with -inf: those classes have p = 0
    s, t, target, mask = _inputs(rng, torch.float64)
    t[..., 0] = float("-inf")
    target = target.clamp_min(1)
    s.requires_grad_(True)
    for loss in (dkd_loss(s, t, target, mask), kd_loss(s, t, mask)):
        assert torch.isfinite(loss)
        (g,) = torch.autograd.grad(loss, s)
        assert torch.isfinite(g).all()


def test_gradcheck_dkd_and_kd(rng):
    s, t, target, mask = _inputs(rng, torch.float64, scale=1.5)
    s.requires_grad_(True)
    t.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: dkd_loss(a, b, target, mask, alpha=0.7, beta=4.0, tau=2.0), (s, t)
    )
    assert torch.autograd.gradcheck(lambda a, b: kd_loss(a, b, mask, tau=2.0), (s, t))
    assert torch.autograd.gradcheck(lambda a: ce_loss(a, target, mask), (s,))


def _pad(x: torch.Tensor, extra: int, rng: torch.Generator, fill: str) -> torch.Tensor:
    """Append `extra` frames of garbage along dim 1."""
    shape = list(x.shape)
    shape[1] = extra
    if fill == "long":
        garbage = torch.randint(-5, 1000, shape, generator=rng)
    else:
        garbage = torch.randn(shape, generator=rng, dtype=x.dtype) * 1e3
    return torch.cat([x, garbage], dim=1)


def test_every_loss_ignores_padded_frames(rng):
    s, t, target, mask = _inputs(rng)
    ps, pt, ptarget = _pad(s, 5, rng, "f"), _pad(t, 5, rng, "f"), _pad(target, 5, rng, "long")
    pmask = torch.cat([mask, torch.zeros(B, 5, dtype=torch.bool)], dim=1)
    pairs = [
        (kd_loss(s, t, mask, tau=2.0), kd_loss(ps, pt, pmask, tau=2.0)),
        (dkd_loss(s, t, target, mask, beta=4.0), dkd_loss(ps, pt, ptarget, pmask, beta=4.0)),
        (ce_loss(s, target, mask), ce_loss(ps, ptarget, pmask)),
    ]
    for name in ("tckd", "nckd"):
        pairs.append(
            (dkd_loss_parts(s, t, target, mask)[name], dkd_loss_parts(ps, pt, ptarget, pmask)[name])
        )
    feats_p = torch.randn(B, T, 3, 8, generator=rng)
    feats_t = torch.randn(B, T, 3, 8, generator=rng)
    pf = torch.cat([feats_p, torch.randn(B, 5, 3, 8, generator=rng) * 100], 1)
    tf = torch.cat([feats_t, torch.randn(B, 5, 3, 8, generator=rng) * 100], 1)
    pairs.append(
        (feature_distill_loss(feats_p, feats_t, mask), feature_distill_loss(pf, tf, pmask))
    )
    for unpadded, padded in pairs:
        torch.testing.assert_close(padded, unpadded)
    # and the mask matters: the same losses without it differ
    assert not torch.allclose(kd_loss(ps, pt, tau=2.0), kd_loss(s, t, mask, tau=2.0))


def test_all_padded_batch_gives_zero(rng):
    s, t, target, _ = _inputs(rng)
    none = torch.zeros(B, T, dtype=torch.bool)
    assert dkd_loss(s, t, target, none).item() == 0.0
    assert kd_loss(s, t, none).item() == 0.0


def test_shape_and_target_validation(rng):
    s, t, target, mask = _inputs(rng)
    with pytest.raises(ValueError, match="must match"):
        kd_loss(s, t[:, :-1], mask)
    with pytest.raises(ValueError, match=r"\(B, T, C\)"):
        kd_loss(s[0], t[0])
    with pytest.raises(ValueError, match="bool"):
        dkd_loss(s, t, target, mask.long())
    bad = target.clone()
    bad[0, 0] = C
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        dkd_loss(s, t, bad, mask)


def test_ce_loss_matches_torch(rng):
    s, _, target, mask = _inputs(rng)
    want = torch.nn.functional.cross_entropy(s[mask], target[mask])
    torch.testing.assert_close(ce_loss(s, target, mask), want)


def test_feature_loss_zero_for_identical_and_grads_flow(rng):
    target = [torch.randn(B, T, 8, generator=rng) for _ in range(3)]
    pred = torch.stack(target, dim=2).clone().requires_grad_(True)
    parts = feature_distill_loss_parts(pred, target)
    # identical features: L1 = 0 and the cosine term sits at its floor -log sigmoid(1)
    floor = -math.log(1 / (1 + math.exp(-1)))
    assert parts["l1"].item() == pytest.approx(0.0, abs=1e-7)
    assert parts["cos"].item() == pytest.approx(floor, rel=1e-6)
    assert parts["loss"].item() - floor == pytest.approx(0.0, abs=1e-6)
    assert set(parts) >= {"l1_layer0", "l1_layer2", "cos_layer1"}

    noisy = (pred + 0.5 * torch.randn(pred.shape, generator=rng)).detach().requires_grad_(True)
    loss = feature_distill_loss(noisy, target, cos_weight=1.0)
    loss.backward()
    assert noisy.grad is not None and noisy.grad.abs().sum() > 0
    assert loss.item() > floor


def test_feature_loss_matches_direct_formula(rng):
    pred = torch.randn(2, 4, 2, 5, generator=rng, dtype=torch.float64)
    target = torch.randn(2, 4, 2, 5, generator=rng, dtype=torch.float64)
    mask = torch.tensor([[True, True, True, False], [True, False, False, False]])
    total = 0.0
    for k in range(2):
        frames = []
        for b in range(2):
            for f in range(4):
                if mask[b, f]:
                    p, y = pred[b, f, k], target[b, f, k]
                    l1 = (p - y).abs().mean().item()
                    cos = (p @ y / (p.norm() * y.norm())).item()
                    frames.append(l1 + math.log1p(math.exp(-cos)))
        total += sum(frames) / len(frames)
    got = feature_distill_loss(pred, target, mask)
    assert got.item() == pytest.approx(total / 2, rel=1e-10)
