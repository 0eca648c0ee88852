"""Warm-up that fits any run length: one rule (common.warmup_steps_for) for every trainer, and
the shipped demo configs run at tiny step counts (CTC_STEPS=6 used to be refused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from model_training.cli import app
from model_training.models.teacher import HubertTeacher
from model_training.training.common import warmup_steps_for
from model_training.training.distill import DistillConfig, run
from model_training.training.fixtures import (
    write_labelled_tones,
    write_tiny_teacher,
    write_tone_corpus,
)
from model_training.training.targets import build_target_cache

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize(
    ("max_steps", "ratio", "steps", "expected"),
    [
        (450, 0.12, 50, 50),  # the demo head at its default length: unchanged
        (3000, 0.12, 50, 50),  # the long head: unchanged
        (100, 0.12, 50, 12),  # shorter runs: capped at the fraction
        (6, 0.12, 50, 1),
        (1, 0.12, 50, 0),
        (200_000, 0.07, None, 14_000),  # ratio only (distillation, teacher): the fraction
        (10, 0.07, None, 1),
        (200_000, 0.1, 0, 0),  # SUPERB: none
    ],
)
def test_warmup_rule(max_steps, ratio, steps, expected) -> None:
    assert warmup_steps_for(max_steps, ratio, steps) == expected


def test_warmup_rule_rejects_nonsense() -> None:
    for args in ((0, 0.1, None), (10, 1.5, None), (10, 0.1, -1)):
        with pytest.raises(ValueError):
            warmup_steps_for(*args)


@pytest.fixture
def labelled(tmp_path) -> Path:
    """Three short tone clips with transcripts."""
    return write_labelled_tones(tmp_path, [(0.7, "A B"), (1.1, "HELLO"), (0.5, "YES")])


def test_demo_ctc_config_runs_six_steps(labelled: Path, tmp_path) -> None:
    """`finetune-ctc --config configs/ctc/demo.yaml --max-steps 6` (50 warm-up steps
    configured): one warm-up step, then the decay to lr_final_ratio."""
    out = tmp_path / "run"
    args = ["finetune-ctc", "--upstream", "fbank", "--train", str(labelled), "--dev"]
    args += [str(labelled), "--out", str(out), "--config", str(CONFIGS / "ctc" / "demo.yaml")]
    args += ["--max-steps", "6", "--device", "cpu", "--set", "log_every=1", "--set"]
    args += ["num_threads=1", "--set", "progress=false", "--set", "oom_check=false"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    lrs = [x["lr"] for x in log]
    assert [x["step"] for x in log] == [1, 2, 3, 4, 5, 6]
    # warm-up of 1 step (full lr at once), then linear decay to 0.1 x lr at step 6
    expected = [2e-3] + [2e-3 * (1 - 0.9 * k / 5) for k in range(5)]
    assert lrs == pytest.approx(expected)
    assert json.loads((out / "metrics.json").read_text())["step"] == 6


@pytest.mark.parametrize("steps", [1, 3])
def test_demo_distill_config_runs_tiny_step_counts(tmp_path, steps) -> None:
    manifest = write_tone_corpus(tmp_path / "c", 4, min_seconds=0.6, max_seconds=0.9)
    teacher = write_tiny_teacher(tmp_path / "t", num_classes=20)
    cache = build_target_cache(
        HubertTeacher.from_hf_dir(teacher), manifest, tmp_path / "cache", top_k=20, progress=False
    )
    sets = [
        f"run_dir={tmp_path / 'run'}",
        f"data.train_manifest={manifest}",
        f"data.train_targets={cache}",
        "data.train_labels=null",
        "data.dev_manifest=null",
        "data.dev_labels=null",
        "data.dev_targets=null",
        f"teacher.dir={teacher}",
        "student.factory=lstm_tiny",
        f"optim.max_steps={steps}",
        "device=cpu",
        "num_threads=1",
        "progress=false",
        "tensorboard=false",
        "oom_check=false",
    ]
    out = run(DistillConfig.from_yaml(CONFIGS / "distill" / "demo_dkd_b4.yaml", sets))
    assert out.name == "student.safetensors"
    log = [json.loads(x) for x in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == steps
