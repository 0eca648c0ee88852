"""DistilHuBERT baseline: shapes, padding parity, config validation, teacher initialisation
and the published parameter count."""

from __future__ import annotations

import pytest
import torch
from transformers import HubertModel

from model_training.losses import feature_distill_loss
from model_training.models.distilhubert import (
    DistilHubertConfig,
    distilhubert_paper,
    distilhubert_tiny,
)
from model_training.models.teacher import HubertTeacher, hubert_base_config, tiny_hubert_config


def _waves(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        batch[i, :n] = torch.randn(n, generator=g)
    return batch, torch.tensor(lengths)


def test_shapes_and_upstream_contract():
    torch.manual_seed(0)
    model = distilhubert_tiny().eval()
    wav, lens = _waves([4000, 2500])
    out = model(wav, lens)
    assert len(out.hidden_states) == 3 == len(model.hidden_dims)
    assert out.logits is None
    assert out.lengths.tolist() == model.frame_lengths(lens).tolist() == [12, 7]
    assert all(h.shape == (2, 12, 32) for h in out.hidden_states)
    pred = model.predict_teacher_layers(out)
    assert pred.shape == (2, 12, 2, 32)
    assert pred[1, 7:].abs().max() == 0
    assert model.frame_rate == 50.0 and model.layer_names == [
        "input",
        "transformer1",
        "transformer2",
    ]


def test_padding_does_not_change_valid_frames():
    torch.manual_seed(0)
    model = distilhubert_tiny().eval()
    lengths = [6000, 3100, 400]
    wav, lens = _waves(lengths)
    out = model(wav, lens)
    pred = model.predict_teacher_layers(out)
    for i, n in enumerate(lengths):
        alone = model(wav[i : i + 1, :n])
        t = int(alone.lengths[0])
        for x, y in zip(out.hidden_states, alone.hidden_states, strict=True):
            torch.testing.assert_close(x[i, :t], y[0], atol=1e-5, rtol=1e-4)
            assert x[i, t:].abs().sum() == 0
        torch.testing.assert_close(
            pred[i, :t], model.predict_teacher_layers(alone)[0], atol=1e-5, rtol=1e-4
        )


def test_trains_with_feature_loss():
    torch.manual_seed(0)
    model = distilhubert_tiny()
    wav, lens = _waves([3000, 2000])
    out = model(wav, lens)
    target = torch.randn(2, out.hidden_states[0].shape[1], 2, 32)
    loss = feature_distill_loss(model.predict_teacher_layers(out), target, out.frame_mask())
    loss.backward()
    for name in ("heads.weight", "layers.0.attention.q_proj.weight", "pos_conv.bias"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_config_validation_and_round_trip():
    with pytest.raises(ValueError, match="num_heads"):
        DistilHubertConfig(hidden_size=30, num_heads=4)
    with pytest.raises(ValueError, match="target_layers"):
        DistilHubertConfig(target_layers=())
    cfg = distilhubert_tiny().config
    assert DistilHubertConfig.from_dict(cfg.to_dict()) == cfg


def test_init_from_teacher_reproduces_its_first_layers():
    torch.manual_seed(0)
    teacher = HubertTeacher(HubertModel(tiny_hubert_config()))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    # HuBERT has a LayerNorm before the projection; with it the student is the teacher's
    # first two layers exactly
    model = distilhubert_tiny(feature_layer_norm=True).eval()
    model.init_from_teacher(teacher)
    wav, lens = _waves([5000, 2600])
    mine, theirs = model(wav, lens), teacher(wav, lens)
    for x, y in zip(mine.hidden_states, theirs.hidden_states[:3], strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="layers"):
        distilhubert_tiny(num_layers=3).init_from_teacher(teacher)


def test_paper_config_has_published_upstream_size():
    model = distilhubert_paper()
    # reference: transformers' HuBERT with 2 layers and no LayerNorm before the projection
    reference = HubertModel(
        hubert_base_config(num_hidden_layers=2, feat_proj_layer_norm=False, mask_time_prob=0.0)
    )
    ref_params = sum(p.numel() for p in reference.parameters())
    assert model.num_parameters() == ref_params
    assert abs(model.num_parameters() / 1e6 - 23.49) < 0.05
    assert (
        model.num_parameters(include_heads=True) - model.num_parameters() == 768 * 3 * 768 + 3 * 768
    )
