"""Distillation: each loss trains, exact resume, the target cache matches the teacher on the fly,
the final student reloads, and a 2-process torchrun (gloo) run works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from model_training.data.manifest import read_manifest
from model_training.models.teacher import HubertTeacher
from model_training.training.common import Checkpointer
from model_training.training.distill import (
    DistillConfig,
    DistillDataset,
    collate_distill,
    compute_loss,
    load_student_checkpoint,
    run,
)
from model_training.training.fixtures import write_tiny_teacher, write_tone_corpus
from model_training.training.targets import TargetCache, build_target_cache

NUM_CLASSES = 20


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("distill")
    manifest = write_tone_corpus(
        root / "corpus", num_utterances=6, min_seconds=0.6, max_seconds=1.0
    )
    teacher = write_tiny_teacher(root / "teacher", num_classes=NUM_CLASSES)
    cache = build_target_cache(
        HubertTeacher.from_hf_dir(teacher),
        manifest,
        root / "cache",
        top_k=NUM_CLASSES,
        layers=[1, 2],
        value_dtype="float32",
        progress=False,
    )
    return {"root": root, "manifest": manifest, "teacher": teacher, "cache": cache}


def _config(corpus: dict[str, Path], run_dir: Path, **overrides) -> DistillConfig:
    d = {
        "run_dir": str(run_dir),
        "seed": 0,
        "data": {
            "train_manifest": str(corpus["manifest"]),
            "train_targets": str(corpus["cache"]),
            "crop_seconds": 0.5,
            "max_batch_seconds": 1.5,
            "max_batch_size": 3,
        },
        "teacher": {"dir": str(corpus["teacher"]), "feature_layers": [1, 2]},
        "student": {"factory": "lstm_tiny", "overrides": {"dropout": 0.1}},
        "loss": {"ce": 0.0},
        "optim": {"lr": 0.01, "max_steps": 30, "warmup_ratio": 0.1},
        "log_every": 1,
        "eval_every": 1000,
        "checkpoint_every": 1000,
        "oom_check": False,
        "progress": False,
        "tensorboard": False,
        "num_threads": 1,  # tiny ops: one thread is much faster on a busy 2-core machine
    }
    for key, value in overrides.items():
        node = d
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return DistillConfig.from_dict(d)


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


@pytest.mark.parametrize("loss", ["ce", "kd", "dkd"])
def test_thirty_steps_lower_the_loss(corpus, tmp_path, loss) -> None:
    weights = {"ce": 0.0, loss: 1.0}
    if loss == "dkd":
        weights["beta"] = 4.0
    cfg = _config(corpus, tmp_path / loss, loss=weights)
    out = run(cfg)
    values = _losses(tmp_path / loss)
    assert len(values) == 30
    first, last = sum(values[:5]) / 5, sum(values[-5:]) / 5
    assert last < 0.9 * first, (first, last)
    assert out.name == "student.safetensors"


def test_feature_loss_lowers_the_loss(corpus, tmp_path) -> None:
    pytest.importorskip("model_training.models.distilhubert")
    cfg = _config(
        corpus,
        tmp_path / "feature",
        loss={"ce": 0.0, "feature": 1.0},
        student={"factory": "distilhubert_tiny", "overrides": {}},
    )
    run(cfg)
    values = _losses(tmp_path / "feature")
    assert sum(values[-5:]) / 5 < 0.9 * sum(values[:5]) / 5


def test_resume_after_kill_matches_uninterrupted(corpus, tmp_path) -> None:
    """Stop after 4 steps (mid-epoch, checkpointed), resume to 10: same parameters as a run
    that never stopped. Dropout is on, so RNG restore matters."""
    common = {"loss": {"ce": 1.0, "dkd": 1.0}, "optim.max_steps": 10, "checkpoint_every": 2}
    full = run(_config(corpus, tmp_path / "full", **common))
    stopped = run(_config(corpus, tmp_path / "resumed", stop_at_step=4, **common))
    assert stopped == tmp_path / "resumed"
    assert Checkpointer(tmp_path / "resumed" / "checkpoints").latest().name.endswith("04.pt")
    resumed = run(_config(corpus, tmp_path / "resumed", **common))
    a = load_student_checkpoint(full).state_dict()
    b = load_student_checkpoint(resumed).state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)


def test_cached_targets_equal_teacher_on_the_fly(corpus, tmp_path) -> None:
    """Top-k with k = C (float32 values): KD and DKD equal the on-the-fly teacher's."""
    torch.manual_seed(0)
    cfg = _config(corpus, tmp_path / "x", loss={"ce": 0.5, "kd": 1.0, "dkd": 1.0, "beta": 4.0})
    manifest = read_manifest(corpus["manifest"])
    cache = TargetCache(corpus["cache"], manifest)
    assert cache.top_k == NUM_CLASSES == cache.num_classes
    from model_training.training.distill import build_student

    student = build_student("lstm_tiny", {}, num_classes=NUM_CLASSES).eval()
    teacher = HubertTeacher.from_hf_dir(corpus["teacher"])
    rows = list(range(len(manifest)))  # whole utterances, so both see the same audio
    cached = collate_distill([DistillDataset(manifest, cache=cache)[i] for i in rows])
    live = collate_distill([DistillDataset(manifest)[i] for i in rows])
    with torch.no_grad():
        loss_c, m_c = compute_loss(student, cached, cfg, teacher=None, num_classes=NUM_CLASSES)
        loss_l, m_l = compute_loss(student, live, cfg, teacher=teacher, num_classes=None)
    for key in ("ce", "kd", "dkd", "tckd", "nckd", "frames"):
        assert m_c[key] == pytest.approx(m_l[key], rel=1e-5, abs=1e-6), key
    torch.testing.assert_close(loss_c, loss_l, rtol=1e-5, atol=1e-6)


def test_fp16_top_k_cache_is_close(corpus, tmp_path) -> None:
    """The default cache (fp16, k < C) stays close to the exact loss (k = C, fp32)."""
    teacher = HubertTeacher.from_hf_dir(corpus["teacher"])
    small = build_target_cache(
        teacher, corpus["manifest"], tmp_path / "c16", top_k=8, progress=False
    )
    manifest = read_manifest(corpus["manifest"])
    exact = TargetCache(corpus["cache"]).get(0)
    approx = TargetCache(small, manifest).get(0)
    assert approx.values.dtype == torch.float16 and approx.values.shape[1] == 8
    torch.testing.assert_close(approx.indices[:, 0], exact.indices[:, 0])
    torch.testing.assert_close(approx.values.float(), exact.values[:, :8], atol=1e-2, rtol=1e-3)


def test_cache_resume_skips_finished_shards(corpus, tmp_path) -> None:
    teacher = HubertTeacher.from_hf_dir(corpus["teacher"])
    out = build_target_cache(
        teacher, corpus["manifest"], tmp_path / "c", top_k=4, shard_size=2, progress=False
    )
    shard = out / "shard-00001.safetensors"
    mtime = (out / "shard-00000.safetensors").stat().st_mtime_ns
    shard.unlink()
    build_target_cache(teacher, corpus["manifest"], out, top_k=4, shard_size=2, progress=False)
    assert shard.exists()
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_torchrun_two_processes_gloo(corpus, tmp_path) -> None:
    cfg = _config(corpus, tmp_path / "ddp", loss={"ce": 1.0, "kd": 1.0}, **{"optim.max_steps": 4})
    cfg.device = "cpu"
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "model_training.training.distill",
            "--config",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    student = load_student_checkpoint(tmp_path / "ddp")
    assert student.config.num_classes == NUM_CLASSES
    assert len(_losses(tmp_path / "ddp")) == 4
