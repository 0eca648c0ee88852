import json
import math
import os
import stat

import pytest
import torch

from model_training.bundle import load_bundle, read_bundle_config, save_bundle
from model_training.decoding import greedy_ctc_decode, greedy_ctc_decode_batch
from model_training.models.ctc import ASRModel, CTCHeadConfig
from model_training.models.student import lstm_student_tiny
from model_training.testing import build_tiny_bundle, tiny_ctc_head
from model_training.text import CharVocab

VOCAB = CharVocab()


def _one_hot_log_probs(ids: list[int], peak: float = 0.9) -> torch.Tensor:
    v = len(VOCAB)
    lp = torch.full((len(ids), v), math.log((1 - peak) / (v - 1)))
    lp[torch.arange(len(ids)), torch.tensor(ids)] = math.log(peak)
    return lp


def test_greedy_decode_collapses_repeats_and_times_words() -> None:
    b, sep = VOCAB.blank_id, VOCAB.word_sep_id
    h, i, y, o = (VOCAB.encode(c)[0] for c in "HIYO")
    # frames: H H _ I | _ Y O O _  (0.02 s each)
    ids = [h, h, b, i, sep, b, y, o, o, b]
    tr = greedy_ctc_decode(_one_hot_log_probs(ids), VOCAB, 0.02)
    assert tr.text == "HI YO"
    assert [w.word for w in tr.words] == ["HI", "YO"]
    assert (tr.words[0].start, tr.words[0].end) == (0.0, 0.08)
    assert (tr.words[1].start, tr.words[1].end) == (0.12, 0.18)
    assert tr.duration == pytest.approx(0.2)
    assert all(0.89 < w.confidence < 0.91 for w in tr.words)
    # a doubled letter needs a blank between the two characters
    assert greedy_ctc_decode(_one_hot_log_probs([o, b, o]), VOCAB, 0.02).text == "OO"
    assert greedy_ctc_decode(_one_hot_log_probs([o, o, o]), VOCAB, 0.02).text == "O"


def test_greedy_decode_rejects_wrong_vocab_width() -> None:
    with pytest.raises(ValueError, match="expected log_probs of shape"):
        greedy_ctc_decode(torch.zeros(5, 10), VOCAB, 0.02)


def test_timestamps_monotonic_and_inside_audio(rng: torch.Generator) -> None:
    lp = torch.log_softmax(torch.randn(2, 80, len(VOCAB), generator=rng) * 3, dim=-1)
    decoded = greedy_ctc_decode_batch(lp, torch.tensor([80, 33]), VOCAB, 0.02)
    for tr, n in zip(decoded, [80, 33], strict=True):
        prev_end = 0.0
        for w in tr.words:
            assert prev_end <= w.start < w.end <= n * 0.02 + 1e-9
            prev_end = w.end


def test_head_defaults_skip_narrower_layers_and_validate() -> None:
    cfg = CTCHeadConfig(layer_dims=[512, 768, 768, 768, 768])
    assert cfg.layer_indices == [1, 2, 3, 4] and cfg.input_dim == 768
    with pytest.raises(ValueError, match="share one width"):
        CTCHeadConfig(layer_dims=[512, 768], layer_indices=[0, 1])
    with pytest.raises(ValueError, match="outside"):
        CTCHeadConfig(layer_dims=[8], layer_indices=[3])


def test_asr_model_padded_batch_matches_single(rng: torch.Generator) -> None:
    student = lstm_student_tiny()
    model = ASRModel(student, tiny_ctc_head(student.hidden_dims)).eval()
    lengths = [6000, 2500]
    batch = torch.randn(2, 6000, generator=rng)
    with torch.no_grad():
        out, lp = model(batch, torch.tensor(lengths))
        assert lp.dtype == torch.float32 and lp.shape == (2, 18, 29)
        torch.testing.assert_close(lp.exp().sum(-1), torch.ones(2, 18))
        _, lp1 = model(batch[1:, :2500])
        torch.testing.assert_close(lp[1, : out.lengths[1]], lp1[0], atol=1e-5, rtol=1e-5)


def test_ctc_head_gradient_reaches_layer_weights(rng: torch.Generator) -> None:
    student = lstm_student_tiny()
    head = tiny_ctc_head(student.hidden_dims)
    hs = [torch.randn(2, 20, d, generator=rng) for d in student.hidden_dims]
    lp = head(hs, torch.tensor([20, 15]))
    targets = torch.tensor([[3, 4, 5], [6, 7, 0]])
    loss = head.ctc_loss(lp, torch.tensor([20, 15]), targets, torch.tensor([3, 2]))
    loss.backward()
    assert torch.isfinite(loss) and head.featurizer.weights.grad is not None
    assert head.featurizer.weights.grad.abs().sum() > 0


def test_bundle_round_trip_identical_outputs(tmp_path, rng: torch.Generator) -> None:
    torch.manual_seed(0)
    student = lstm_student_tiny(num_classes=20)
    head = tiny_ctc_head(student.hidden_dims)
    path = save_bundle(tmp_path / "b", student, head, VOCAB, provenance={"x": 1}, card="# card")
    assert sorted(p.name for p in path.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    config = json.loads((path / "config.json").read_text())
    assert config["upstream"]["config"]["num_classes"] == 0  # training head dropped
    assert config["layer_names"] == ["cnn_proj", "lstm1", "lstm2"]
    bundle = load_bundle(path)
    assert bundle.has_ctc and bundle.vocab == VOCAB and bundle.frame_rate == 50.0
    wave = torch.randn(2, 7000, generator=rng)
    lengths = torch.tensor([7000, 5000])
    original = ASRModel(student, head).eval()
    with torch.no_grad():
        ref_out, ref_lp = original(wave, lengths)
        out, lp = bundle.model(wave, lengths)
    torch.testing.assert_close(lp, ref_lp, atol=0, rtol=0)
    for a, b in zip(out.hidden_states, ref_out.hidden_states, strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_bundle_files_readable_by_other_users(tmp_path) -> None:
    """The image runs the service as uid 10001 on bundles exported by another user: every
    file gets the mode the umask gives new files (safetensors alone writes 0600)."""
    old = os.umask(0o022)
    try:
        path = build_tiny_bundle(tmp_path / "b")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()}
    assert modes == dict.fromkeys(["README.md", "config.json", "model.safetensors"], 0o644)


def test_upstream_only_bundle_and_bad_bundles(tmp_path) -> None:
    path = build_tiny_bundle(tmp_path / "up", with_ctc=False)
    bundle = load_bundle(path)
    assert not bundle.has_ctc and bundle.vocab is None
    out = bundle.model(torch.zeros(1, 1600))
    assert len(out.hidden_states) == 3
    config = json.loads((path / "config.json").read_text())
    config["format_version"] = 99
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="version"):
        read_bundle_config(path)
    with pytest.raises(FileNotFoundError):
        load_bundle(tmp_path / "missing")


def test_int8_bundle_loads_and_decodes(tmp_path, rng: torch.Generator) -> None:
    path = build_tiny_bundle(tmp_path / "q", quantize="int8")
    bundle = load_bundle(path)
    kinds = {type(m) for m in bundle.model.modules()}
    assert torch.ao.nn.quantized.dynamic.LSTM in kinds
    assert torch.ao.nn.quantized.dynamic.Linear in kinds
    fp32 = load_bundle(build_tiny_bundle(tmp_path / "f"))
    wave = torch.randn(1, 8000, generator=rng)
    with torch.no_grad():
        out, lp = bundle.model(wave)
        _, lp32 = fp32.model(wave)
    assert lp.shape == lp32.shape
    assert (lp.exp() - lp32.exp()).abs().max() < 0.05  # int8 stays close to fp32
    tr = greedy_ctc_decode(lp[0, : out.lengths[0]], bundle.vocab, 1 / bundle.frame_rate)
    assert isinstance(tr.text, str)


def test_distilhubert_baseline_bundle_round_trip(tmp_path, rng: torch.Generator) -> None:
    from model_training.models.distilhubert import distilhubert_tiny

    torch.manual_seed(1)
    upstream = distilhubert_tiny().eval()
    head = tiny_ctc_head(upstream.hidden_dims)
    bundle = load_bundle(save_bundle(tmp_path / "dh", upstream, head, VOCAB))
    assert bundle.config["upstream"]["type"] == "distilhubert"
    wave = torch.randn(2, 6000, generator=rng)
    lengths = torch.tensor([6000, 4100])
    with torch.no_grad():
        _, ref = ASRModel(upstream, head).eval()(wave, lengths)
        _, lp = bundle.model(wave, lengths)
    torch.testing.assert_close(lp, ref, atol=0, rtol=0)


def test_featurizer_layer_norm_makes_layer_scale_irrelevant(rng: torch.Generator) -> None:
    from model_training.models.ctc import WeightedLayerSum

    hs = [torch.randn(2, 5, 8, generator=rng) for _ in range(3)]
    scaled = [h * s for h, s in zip(hs, (100.0, 10.0, 3.0), strict=True)]
    normed = WeightedLayerSum([0, 1, 2], layer_norm=True)
    torch.testing.assert_close(normed(scaled), normed(hs), atol=1e-4, rtol=1e-4)
    plain = WeightedLayerSum([0, 1, 2])
    assert not torch.allclose(plain(scaled), plain(hs))
