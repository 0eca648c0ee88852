"""Teacher pretraining (HuBERT iteration 1): MFCC frames match the CNN, a smoke run writes a
teacher directory that `HubertTeacher.from_hf_dir` loads and that a demo student can copy."""

from __future__ import annotations

import json

import pytest
import torch

from model_training.data.manifest import read_km_labels, read_manifest
from model_training.models.cnn import conv_output_lengths
from model_training.models.student import DEMO_CONV_LAYERS, lstm_student_tiny
from model_training.training.fixtures import write_tone_corpus
from model_training.training.teacher_pretrain import (
    KMEANS_FILE,
    MfccKMeans,
    TeacherPretrainConfig,
    mfcc_features,
    pretrain_teacher,
)


@pytest.mark.parametrize("samples", [400, 401, 719, 720, 16000, 16399, 33333])
def test_mfcc_frames_equal_cnn_frames(samples) -> None:
    feats = mfcc_features(torch.randn(samples))
    expected = int(conv_output_lengths(torch.tensor([samples]), DEMO_CONV_LAYERS)[0])
    assert feats.shape == (expected, 39)


def test_pretrain_smoke_and_resume(tmp_path) -> None:
    from model_training.models.teacher import HubertTeacher

    manifest = write_tone_corpus(tmp_path / "corpus", 6, min_seconds=0.8, max_seconds=1.2)
    cfg = TeacherPretrainConfig(
        num_clusters=8,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        ffn_dim=64,
        conv_dim=16,
        pos_conv_kernel=16,
        pos_conv_groups=4,
        proj_dim=16,
        max_steps=4,
        batch_size=3,
        crop_seconds=1.0,
        checkpoint_every=2,
        log_every=1,
        num_threads=1,
        progress=False,
    )
    out = pretrain_teacher(manifest, tmp_path / "teacher", cfg)
    labels = read_km_labels(out / "labels" / "train.km")
    m = read_manifest(manifest)
    for row, entry in zip(labels, m, strict=True):
        assert len(row) == int(
            conv_output_lengths(torch.tensor([entry.num_samples]), DEMO_CONV_LAYERS)[0]
        )
        assert min(row) >= 0 and max(row) < 8
    assert MfccKMeans.load(out / KMEANS_FILE).num_classes == 8
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3, 4] and all(x["mask_ratio"] > 0 for x in log)

    teacher = HubertTeacher.from_hf_dir(out)
    assert teacher.num_classes == 8
    wave = torch.randn(1, 16000)
    result = teacher(wave)
    assert result.logits.shape == (1, 49, 8)
    student = lstm_student_tiny(num_classes=8)
    student.init_cnn_from(teacher)  # same conv layout: the CNN copies over
    torch.testing.assert_close(
        student.feature_extractor.conv_layers[0].conv.weight,
        teacher.hubert.feature_extractor.conv_layers[0].conv.weight,
    )

    # resume: more steps continue from the last checkpoint instead of starting over
    cfg.max_steps = 6
    pretrain_teacher(manifest, tmp_path / "teacher", cfg)
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [1, 2, 3, 4, 5, 6]
