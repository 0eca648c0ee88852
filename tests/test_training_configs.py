"""Every shipped distillation / teacher config parses and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_training.training.distill import DistillConfig
from model_training.training.teacher_pretrain import TeacherPretrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted((CONFIGS / "distill").glob("*.yaml")), ids=lambda p: p.stem)
def test_distill_configs_validate(path) -> None:
    cfg = DistillConfig.from_yaml(path)
    assert cfg.optim.max_steps > 0
    if path.stem == "paper":
        assert (cfg.optim.max_steps, cfg.optim.lr, cfg.optim.warmup_ratio) == (200_000, 2e-4, 0.07)
        assert (cfg.loss.ce, cfg.loss.dkd, cfg.loss.tau, cfg.loss.alpha) == (1, 1, 1, 1)


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown keys"):
        DistillConfig.from_dict({"data": {"train_manifest": "x", "bogus": 1}})
    with pytest.raises(ValueError, match="feature_layers"):
        DistillConfig.from_dict(
            {"data": {"train_manifest": "x", "train_targets": "c"}, "loss": {"feature": 1.0}}
        )


def test_teacher_demo_config_matches_student_conv_layout() -> None:
    from model_training.models.student import DEMO_CONV_LAYERS

    cfg = TeacherPretrainConfig.from_yaml(CONFIGS / "teacher" / "demo.yaml")
    hc = cfg.hubert_config()
    layout = list(zip(hc.conv_dim, hc.conv_kernel, hc.conv_stride, strict=True))
    assert layout == [tuple(s) for s in DEMO_CONV_LAYERS]


def test_numbers_yaml_reads_as_text_become_floats() -> None:
    """PyYAML reads `1e-3` (no dot) as a string; float fields take it as the number it is."""
    cfg = DistillConfig.from_yaml(CONFIGS / "distill" / "paper.yaml", ["optim.lr=1e-3"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert TeacherPretrainConfig.from_yaml(None, lr="5e-4").lr == 5e-4
    with pytest.raises(ValueError, match=r"optim\.lr must be a number"):
        DistillConfig.from_yaml(CONFIGS / "distill" / "paper.yaml", ["optim.lr=fast"])
