"""`hubert-lstm model-info` through the CLI: parameter counts against the published sizes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from model_training.cli import app
from model_training.models.distilhubert import distilhubert_paper
from model_training.models.student import lstm_student_paper

runner = CliRunner()


def _info(config: str, *flags: str) -> dict:
    result = runner.invoke(app, ["model-info", "--config", config, "--no-macs", *flags])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_paper_student_between_15m_and_20m():
    info = _info("paper")
    assert 15e6 <= info["params"] <= 20e6
    model = lstm_student_paper()
    total = sum(p.numel() for p in model.parameters())
    assert info["params_with_training_heads"] == total
    assert info["params"] == total - sum(p.numel() for p in model.head.parameters())
    assert [layer["name"] for layer in info["layers"]] == model.layer_names
    assert info["layers"][-1]["dim"] == 768  # BiLSTM 2 x 384
    assert info["frame_rate"] == 50.0


def test_paper_fast_student_counts_params_and_gmacs():
    fast, paper = _info("paper-fast", "--macs"), _info("paper", "--macs")
    assert fast["architecture"]["frontend"] == "logmel"
    assert paper["architecture"]["frontend"] == "cnn"
    # the same 4 BiLSTM x 384; the HuBERT CNN's 4.2M parameters and 2.45 GMAC/s are gone
    assert paper["params"] - fast["params"] > 3.5e6
    assert [layer["dim"] for layer in fast["layers"]] == [layer["dim"] for layer in paper["layers"]]
    assert 2.9 < paper["gmac_per_audio_second"] < 3.3
    assert fast["gmac_per_audio_second"] < 0.25 * paper["gmac_per_audio_second"]
    assert "gmac_per_audio_second" not in _info("paper")  # --no-macs


def test_small_student_is_smaller():
    assert _info("small")["params"] < _info("paper")["params"]


def test_distilhubert_reference_is_23_49m_and_matches_our_baseline():
    info = _info("distilhubert")
    assert abs(info["params_millions"] - 23.49) <= 0.05
    assert info["params"] == distilhubert_paper().num_parameters()
    assert info["training_heads"]["layer_prediction_heads"] == 768 * 3 * 768 + 3 * 768
    assert len(info["layers"]) == 3


def test_hubert_base_between_94_4m_and_94_7m():
    info = _info("hubert-base")
    assert 94.4e6 <= info["params"] <= 94.7e6
    assert len(info["layers"]) == 13
    assert sum(c["params"] for c in info["components"]) == info["params"]


def test_unknown_config_is_rejected():
    result = runner.invoke(app, ["model-info", "--config", "nope"])
    assert result.exit_code != 0


@pytest.mark.parametrize("config", ["paper", "distilhubert"])
def test_components_add_up(config):
    info = _info(config)
    assert sum(c["params"] for c in info["components"]) == info["params"]
