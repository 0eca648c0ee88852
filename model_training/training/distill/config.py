"""Configuration of a distillation run: the YAML file's sections as dataclasses.

`DistillConfig.from_yaml(path, ["optim.max_steps=100", ...])` reads a file of
configs/distill/, applies overrides and validates; the resolved config is stored in the run
directory and in every checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from model_training.training.common import dataclass_from_dict, read_yaml_with_overrides
from model_training.training.students import STUDENT_FACTORIES


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
