"""The log-mel fbank upstream: same time axis as HuBERT's CNN, padding-exact, bundle-able."""

import pytest
import torch

from model_training.bundle import load_bundle, save_bundle
from model_training.models.cnn import HUBERT_CONV_LAYERS, conv_output_lengths
from model_training.models.fbank import FbankConfig, FbankUpstream
from model_training.models.student import lstm_student_tiny
from model_training.testing import tiny_ctc_head
from model_training.text import CharVocab

LENGTHS = [400, 719, 720, 1039, 16000, 16001, 23379]


def test_frame_counts_match_hubert_cnn_and_student(rng: torch.Generator) -> None:
    fbank = FbankUpstream()
    student = lstm_student_tiny().eval()
    lengths = torch.tensor(LENGTHS)
    expected = conv_output_lengths(lengths, HUBERT_CONV_LAYERS)
    assert torch.equal(fbank.frame_lengths(lengths), expected)
    assert torch.equal(student.frame_lengths(lengths), expected)
    waves = torch.randn(len(LENGTHS), max(LENGTHS), generator=rng)
    out = fbank(waves, lengths)
    assert torch.equal(out.lengths, expected)
    assert out.hidden_states[0].shape == (len(LENGTHS), int(expected.max()), 160)
    with torch.no_grad():
        assert student(waves, lengths).hidden_states[0].shape[1] == out.hidden_states[0].shape[1]


def test_padded_batch_equals_single_items_and_pads_with_zeros(rng: torch.Generator) -> None:
    fbank = FbankUpstream()
    lengths = torch.tensor([16000, 9001, 3000])
    waves = torch.randn(3, 16000, generator=rng)
    waves[1, 9001:] = 5.0  # garbage after the length must not leak into the features
    out = fbank(waves, lengths)
    feats = out.hidden_states[0]
    for b, n in enumerate(lengths.tolist()):
        single = fbank(waves[b : b + 1, :n]).hidden_states[0][0]
        t = single.shape[0]
        assert t == int(out.lengths[b])
        assert torch.equal(feats[b, :t], single)
        assert feats[b, t:].abs().sum() == 0
    # per-utterance CMVN: zero mean, unit variance per band over valid frames
    valid = feats[0, : int(out.lengths[0])]
    assert valid.mean(0).abs().max() < 1e-4
    assert (valid.var(0, unbiased=False) - 1).abs().max() < 1e-2


def test_properties_config_round_trip_and_validation() -> None:
    fbank = FbankUpstream(FbankConfig(n_mels=40))
    assert fbank.hidden_dims == [80] and fbank.layer_names == ["fbank"]
    assert fbank.frame_rate == 50.0 and fbank.sample_rate == 16000
    assert len(fbank.state_dict()) == 0  # nothing to store: filters follow from the config
    assert FbankConfig.from_dict(fbank.config.to_dict()) == fbank.config
    with pytest.raises(ValueError, match="unknown FbankConfig"):
        FbankConfig.from_dict({"n_mel": 80})
    with pytest.raises(ValueError, match="n_fft"):
        FbankConfig(n_fft=256)
    with pytest.raises(ValueError, match="at least 400 samples"):
        fbank(torch.zeros(1, 399))


def test_fbank_recognizer_bundle_round_trip(tmp_path, rng: torch.Generator) -> None:
    fbank = FbankUpstream()
    head = tiny_ctc_head(fbank.hidden_dims).eval()
    save_bundle(tmp_path / "b", fbank, head, CharVocab(), card="# fbank\n")
    bundle = load_bundle(tmp_path / "b")
    assert bundle.config["upstream"]["type"] == "fbank"
    assert bundle.layer_names == ["fbank"] and bundle.frame_rate == 50.0
    waves = torch.randn(2, 8000, generator=rng)
    lengths = torch.tensor([8000, 5000])
    with torch.no_grad():
        expected = head(fbank(waves, lengths).hidden_states, fbank.frame_lengths(lengths))
        _, found = bundle.model(waves, lengths)
    assert torch.equal(expected, found)
