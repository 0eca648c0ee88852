"""Distil a HuBERT teacher into a student: CE + KD / DKD on cluster logits, or the
DistilHuBERT feature loss (teacher-layer prediction).

    hubert-lstm distill --config configs/distill/demo_dkd_b4.yaml
    torchrun --nproc_per_node 2 -m model_training.training.distill --config FILE.yaml

One job per module:
    config.py      DistillConfig and its sections (the YAML file)
    data.py        DistillDataset (frame-aligned random crops), collate_distill, loaders
    teacher.py     load_teacher
    objective.py   teacher targets aligned to the student's frames; compute_loss
    evaluation.py  dev agreement with the teacher
    run.py         wiring: run(config) trains with the shared loop (training/loop.py)
    __main__.py    the command line torchrun starts
Students (factories, save / load) live in training/students.py, shared with CTC fine-tuning.

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

from model_training.training.distill.config import (
    DataConfig,
    DistillConfig,
    LossConfig,
    OptimConfig,
    StudentConfig,
    TeacherConfig,
)
from model_training.training.distill.data import DistillBatch, DistillDataset, collate_distill
from model_training.training.distill.evaluation import evaluate
from model_training.training.distill.objective import Targets, compute_loss, gather_targets
from model_training.training.distill.run import run
from model_training.training.distill.teacher import load_teacher
from model_training.training.students import (
    STUDENT_FACTORIES,
    STUDENT_FILE,
    build_student,
    load_student_checkpoint,
    save_student,
)

__all__ = [
    "STUDENT_FACTORIES",
    "STUDENT_FILE",
    "DataConfig",
    "DistillBatch",
    "DistillConfig",
    "DistillDataset",
    "LossConfig",
    "OptimConfig",
    "StudentConfig",
    "Targets",
    "TeacherConfig",
    "build_student",
    "collate_distill",
    "compute_loss",
    "evaluate",
    "gather_targets",
    "load_student_checkpoint",
    "load_teacher",
    "run",
    "save_student",
]
