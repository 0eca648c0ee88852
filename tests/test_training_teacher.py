"""Teacher pretraining: MFCC frames match the CNN, a smoke run writes a teacher directory that
`HubertTeacher.from_hf_dir` loads and that a demo student can copy, and the second HuBERT
iteration learns units of the first teacher's middle layer."""

from __future__ import annotations

import json

import pytest
import torch

from model_training.data.audio import load_audio
from model_training.data.manifest import read_km_labels, read_manifest
from model_training.models.cnn import conv_output_lengths
from model_training.models.student import DEMO_CONV_LAYERS, lstm_student_tiny
from model_training.training.fixtures import write_tone_corpus
from model_training.training.teacher_pretrain import (
    KMEANS_FILE,
    TeacherPretrainConfig,
    UnitKMeans,
    mfcc_features,
    pretrain_teacher,
)

TINY_TEACHER = dict(
    hidden_size=32,
    num_layers=2,
    num_heads=4,
    ffn_dim=64,
    conv_dim=16,
    pos_conv_kernel=16,
    pos_conv_groups=4,
    proj_dim=16,
    batch_size=3,
    crop_seconds=1.0,
    log_every=1,
    eval_every=2,
    eval_utterances=3,
    num_threads=1,
    progress=False,
    tensorboard=False,
    device="cpu",
)


@pytest.mark.parametrize("samples", [400, 401, 719, 720, 16000, 16399, 33333])
def test_mfcc_frames_equal_cnn_frames(samples) -> None:
    feats = mfcc_features(torch.randn(samples))
    expected = int(conv_output_lengths(torch.tensor([samples]), DEMO_CONV_LAYERS)[0])
    assert feats.shape == (expected, 39)


def test_pretrain_smoke_and_resume(tmp_path) -> None:
    from model_training.models.teacher import HubertTeacher

    manifest = write_tone_corpus(tmp_path / "corpus", 6, min_seconds=0.8, max_seconds=1.2)
    cfg = TeacherPretrainConfig(num_clusters=8, max_steps=4, checkpoint_every=2, **TINY_TEACHER)
    out = pretrain_teacher(manifest, tmp_path / "teacher", cfg)
    labels = read_km_labels(out / "labels" / "train.km")
    m = read_manifest(manifest)
    for row, entry in zip(labels, m, strict=True):
        assert len(row) == int(
            conv_output_lengths(torch.tensor([entry.num_samples]), DEMO_CONV_LAYERS)[0]
        )
        assert min(row) >= 0 and max(row) < 8
    assert UnitKMeans.load(out / KMEANS_FILE).num_classes == 8
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


def test_second_iteration_learns_units_of_the_first_teachers_middle_layer(tmp_path) -> None:
    """`teacher pretrain --label-teacher ITER1`: k-means on ITER1's middle layer, labels from
    it (train and dev, and `teacher labels` gives the same), a fresh teacher on them, and
    masked-unit accuracy per iteration in metrics.json."""
    import yaml
    from typer.testing import CliRunner

    from model_training.cli import app
    from model_training.models.teacher import HubertTeacher

    train = write_tone_corpus(tmp_path / "corpus", 6, min_seconds=0.8, max_seconds=1.2)
    dev = write_tone_corpus(tmp_path / "corpus", 3, 0.8, 1.2, seed=1, name="dev")
    first = pretrain_teacher(
        train,
        tmp_path / "it1",
        TeacherPretrainConfig(num_clusters=8, max_steps=4, **TINY_TEACHER),
        dev_manifest=dev,
    )
    m1 = json.loads((first / "metrics.json").read_text())
    assert m1["iteration"] == 1 and m1["units"]["features"] == "mfcc39-50hz"
    assert [e["step"] for e in m1["evaluations"]] == [2, 4]
    assert 0 <= m1["eval"]["acc_masked"] <= 1 and m1["eval_set"]["utterances"] == 3

    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY_TEACHER, "max_steps": 3}))
    args = ["teacher", "pretrain", "--manifest", str(train), "--out", str(tmp_path / "it2")]
    args += ["--config", str(config), "--label-teacher", str(first), "--num-clusters", "6"]
    args += ["--dev", str(dev)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    second = tmp_path / "it2"

    kmeans = UnitKMeans.load(second / KMEANS_FILE)
    assert kmeans.features == {
        "features": "hubert-layer",
        "teacher": str(first.resolve()),
        "layer": "1",  # the middle of 2 layers
    }
    teacher1 = HubertTeacher.from_hf_dir(first)
    labels = read_km_labels(second / "labels" / "train.km")
    for row, entry in enumerate(read_manifest(train)):
        wave = load_audio(read_manifest(train).audio_path(row))
        hidden = teacher1(wave[None]).hidden_states[1][0]
        assert labels[row] == kmeans.predict(hidden).tolist()
        assert len(labels[row]) == int(
            conv_output_lengths(torch.tensor([entry.num_samples]), DEMO_CONV_LAYERS)[0]
        )
    out = tmp_path / "dev.km"
    args = ["teacher", "labels", "--kmeans", str(second / KMEANS_FILE), "--manifest", str(dev)]
    result = CliRunner().invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert read_km_labels(out) == read_km_labels(second / "labels" / "dev.km")

    teacher2 = HubertTeacher.from_hf_dir(second)
    assert teacher2.num_classes == 6  # a fresh teacher, its head on the new units
    m2 = json.loads((second / "metrics.json").read_text())
    assert m2["iteration"] == 2 and m2["units"]["num_clusters"] == 6
    assert [it["iteration"] for it in m2["iterations"]] == [1, 2]
    assert m2["iterations"][0] == m1["iterations"][0]
    assert all(0 <= it["eval"]["acc_masked"] <= 1 for it in m2["iterations"])

    # resuming iteration 2 with iteration 1's settings would mix units: refused
    with pytest.raises(ValueError, match="holds units"):
        pretrain_teacher(train, second, TeacherPretrainConfig(num_clusters=6, **TINY_TEACHER))


def test_masked_accuracy_is_fixed_and_leaves_rngs_alone(tmp_path) -> None:
    import numpy as np
    from transformers import HubertModel

    from model_training.models.teacher import ProjectionHead
    from model_training.training.teacher_pretrain import _eval_items, masked_accuracy

    manifest = write_tone_corpus(tmp_path / "c", 3, min_seconds=0.8, max_seconds=1.2)
    cfg = TeacherPretrainConfig(num_clusters=8, **TINY_TEACHER)
    model = torch.nn.ModuleDict(
        {"hubert": HubertModel(cfg.hubert_config()), "head": ProjectionHead(32, 16, 8)}
    )
    labels = [[r % 8] * 100 for r in range(3)]
    items = _eval_items(read_manifest(manifest), labels, 3, 16000, 0)
    np.random.seed(5)
    before = np.random.get_state()[1].copy()
    a, b = masked_accuracy(model, items, cfg), masked_accuracy(model, items, cfg)
    assert a == b and a["masked_frames"] > 0
    assert (np.random.get_state()[1] == before).all()
