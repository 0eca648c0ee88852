"""A distillation run: build the teacher, the student, the data and the optimizer from a
`DistillConfig`, train with the shared loop, write `RUN_DIR/student.safetensors`."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from model_training.data.manifest import read_km_labels, read_manifest
from model_training.data.sampler import LengthBucketSampler
from model_training.training.common import (
    DistInfo,
    TrainState,
    barrier,
    cleanup_distributed,
    init_distributed,
    linear_warmup_decay,
    seed_everything,
    torch_threads,
    unwrap_model,
    warmup_steps_for,
)
from model_training.training.distill.config import DistillConfig
from model_training.training.distill.data import (
    SAMPLE_RATE,
    DistillBatch,
    DistillDataset,
    collate_distill,
    dev_loader,
    make_loader,
)
from model_training.training.distill.evaluation import evaluate
from model_training.training.distill.objective import compute_loss
from model_training.training.distill.teacher import load_teacher
from model_training.training.loop import LoopConfig, TrainLoop, largest_batch
from model_training.training.students import (
    STUDENT_FACTORIES,
    STUDENT_FILE,
    build_student,
    save_student,
    student_config_dict,
)
from model_training.training.targets import TargetCache

logger = logging.getLogger(__name__)


@dataclass
class DistillTask:
    """Distillation as the shared loop sees it (see `loop.TrainingTask`)."""

    cfg: DistillConfig
    device: torch.device
    model: nn.Module  # possibly DDP-wrapped
    teacher: nn.Module | None
    num_classes: int | None
    dataset: DistillDataset
    dev: DataLoader | None

    def start_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def train_loss(self, batch: DistillBatch, step: int) -> tuple[Tensor, dict[str, float]]:
        self.model.train()
        return compute_loss(
            self.model,
            batch.to(self.device),
            self.cfg,
            teacher=self.teacher,
            num_classes=self.num_classes,
            step=step,
        )

    def batch_seconds(self, batch: DistillBatch) -> float:
        return float(batch.lengths.sum()) / SAMPLE_RATE

    def evaluate(self, state: TrainState) -> dict[str, float] | None:
        if self.dev is None:
            return None
        return evaluate(
            unwrap_model(self.model),
            self.dev,
            self.cfg,
            teacher=self.teacher,
            num_classes=self.num_classes,
            device=self.device,
        )

    def after_evaluation(self, state: TrainState, metrics: dict[str, float]) -> bool:
        return False  # distillation runs its whole schedule

    def before_checkpoint(self, state: TrainState) -> None:
        pass


def run(cfg: DistillConfig) -> Path:
    """Train (or resume) a student; returns the path of the final `student.safetensors`
    (or the run dir when stopped early by `stop_at_step`)."""
    with torch_threads(cfg.num_threads):
        info, device = init_distributed(cfg.device)
        try:
            return _run(cfg, info, device)
        finally:
            cleanup_distributed()


def _build_student(
    cfg: DistillConfig,
    teacher: nn.Module | None,
    train_cache: TargetCache | None,
    num_classes: int | None,
    feature_layers: list[int],
) -> nn.Module:
    """The student of the config, its CNN (and, for DistilHuBERT, first layers) from the
    teacher when asked."""
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
    return model


def _run(cfg: DistillConfig, info: DistInfo, device: torch.device) -> Path:
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
    model = _build_student(cfg, teacher, train_cache, num_classes, feature_layers)
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
    warmup = warmup_steps_for(o.max_steps, ratio=o.warmup_ratio)
    scheduler = linear_warmup_decay(optimizer, warmup, o.max_steps)

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
    sampler = LengthBucketSampler(
        dataset.lengths,
        int(d.max_batch_seconds * SAMPLE_RATE),
        d.max_batch_size,
        shuffle=True,
        seed=cfg.seed,
        num_replicas=info.world_size,
        rank=info.rank,
    )
    task = DistillTask(
        cfg,
        device,
        model,
        teacher,
        num_classes,
        dataset,
        dev_loader(cfg, num_classes) if info.is_main else None,
    )
    loop = TrainLoop(
        task=task,
        config=LoopConfig.from_settings("distill", o, cfg),
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=sampler,
        loader=make_loader(dataset, sampler, cfg),
        device=device,
        run_dir=run_dir,
        keep_checkpoints=cfg.keep_checkpoints,
        tensorboard=cfg.tensorboard,
        checkpoint_extra=extra,
        is_main=info.is_main,
    )
    state, resumed = loop.restore()
    if resumed and info.rank:  # each rank resumes its own RNG stream, offset as at the start
        seed_everything(cfg.seed + info.rank + 1_000 * state.step)
    elif not resumed and cfg.oom_check:
        indices = largest_batch(sampler)
        loop.check_largest_batch(collate_distill([dataset[i] for i in indices]))
        logger.info("largest batch (%d items) fits", len(indices))
    state = loop.run(state)
    if state.step < o.max_steps:
        logger.info("stopped at step %d of %d (stop_at_step)", state.step, o.max_steps)
        return run_dir
    return _save_final(cfg, info, model, state, run_dir)


def _save_final(
    cfg: DistillConfig, info: DistInfo, model: nn.Module, state: TrainState, run_dir: Path
) -> Path:
    """Write `student.safetensors` (main process) with the run's provenance."""
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
