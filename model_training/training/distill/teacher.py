"""The teacher a distillation run learns from."""

from __future__ import annotations

from torch import nn

from model_training.training.distill.config import TeacherConfig


def load_teacher(cfg: TeacherConfig) -> nn.Module | None:
    """The frozen teacher named by the config, or None when it names none."""
    if not (cfg.dir or cfg.fairseq_checkpoint):
        return None
    from model_training.models.teacher import HubertTeacher

    if cfg.fairseq_checkpoint:
        return HubertTeacher.from_fairseq_checkpoint(cfg.fairseq_checkpoint)
    return HubertTeacher.from_hf_dir(cfg.dir, cfg.head_file)
