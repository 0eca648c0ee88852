"""Exact incremental inference (`model_training/streaming.py`): any chunking = the offline pass."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from model_training.bundle import Bundle, load_bundle
from model_training.decoding import GreedyCTCDecoder, best_path, greedy_ctc_decode
from model_training.models.rnn import run_lstm_from
from model_training.streaming import StreamingModel, StreamingNotSupportedError, StreamStep
from model_training.testing import build_tiny_bundle, test_signal
from model_training.text import CharVocab

ATOL = 1e-5


@pytest.fixture(scope="module", params=["cnn", "logmel"])
def causal_bundle(tmp_path_factory: pytest.TempPathFactory, request) -> Bundle:
    """A tiny random causal bundle whose transcripts have words, on each front-end (the
    layer-norm CNN reads no samples before its frame; log-mel reads 640 more)."""
    path = tmp_path_factory.mktemp("b") / "causal"
    return load_bundle(
        build_tiny_bundle(path, seed=3, causal=True, varied=True, frontend=request.param)
    )


signal = test_signal


def offline(bundle: Bundle, wave: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    with torch.inference_mode():
        out, log_probs = bundle.model(wave[None])
    return [h[0] for h in out.hidden_states], log_probs[0]


def random_chunks(n: int, gen: torch.Generator, sizes: tuple[int, int]) -> list[int]:
    cuts, pos = [], 0
    while pos < n:
        size = int(torch.randint(sizes[0], sizes[1] + 1, (1,), generator=gen))
        cuts.append(min(size, n - pos))
        pos += size
    return cuts


def run_stream(
    model: StreamingModel, wave: torch.Tensor, sizes: list[int]
) -> tuple[list[StreamStep], str]:
    state, steps, pos = model.new_state(), [], 0
    for size in sizes:
        steps += model.feed(state, wave[pos : pos + size])
        pos += size
    model.finish(state)
    return steps, "".join(s.text for s in steps)


def concat(steps: list[StreamStep], layer: int) -> torch.Tensor:
    return torch.cat([s.hidden_states[layer] for s in steps])


@pytest.mark.parametrize(
    ("sizes", "seconds"),
    [((1, 1), 0.35), ((400, 400), 1.3), ((1, 900), 1.3), ((3000, 20000), 2.1)],
    ids=["1-sample", "400-sample", "random-small", "random-large"],
)
def test_any_chunking_equals_the_offline_pass(causal_bundle, sizes, seconds):
    wave = signal(seconds, seed=int(seconds * 10))
    ref_hidden, ref_lp = offline(causal_bundle, wave)
    reference = greedy_ctc_decode(ref_lp, causal_bundle.vocab, 0.02)
    assert len(reference.text) >= 2, "the test needs a transcript to compare"
    model = StreamingModel(causal_bundle)
    cuts = random_chunks(wave.numel(), torch.Generator().manual_seed(7), sizes)
    steps, text = run_stream(model, wave, cuts)
    assert sum(s.num_frames for s in steps) == ref_lp.shape[0]
    assert [s.start_frame for s in steps] == list(
        torch.cumsum(torch.tensor([0] + [s.num_frames for s in steps[:-1]]), 0).tolist()
    )
    for layer, ref in enumerate(ref_hidden):
        torch.testing.assert_close(concat(steps, layer), ref, atol=ATOL, rtol=0)
    # log-probs reach |10| with the varied head: float32 rounding there is ~1e-5 relative
    torch.testing.assert_close(
        torch.cat([s.log_probs for s in steps]), ref_lp, atol=1e-4, rtol=1e-5
    )
    assert text == reference.text


def test_batched_streams_with_different_chunkings_equal_each_alone(causal_bundle):
    """Streams stacked in one step (different frame counts per row) = each stream offline."""
    model = StreamingModel(causal_bundle)
    waves = [signal(s, seed=i) for i, s in enumerate((0.9, 1.4, 0.5, 1.1))]
    gen = torch.Generator().manual_seed(11)
    states = [model.new_state() for _ in waves]
    pos = [0] * len(waves)
    steps: list[list[StreamStep]] = [[] for _ in waves]
    while any(p < w.numel() for p, w in zip(pos, waves, strict=True)):
        chunks = []
        for i, w in enumerate(waves):
            size = int(torch.randint(0, 2500, (1,), generator=gen))
            chunks.append(w[pos[i] : pos[i] + size])
            pos[i] += size
        for i, step in enumerate(model.step(states, chunks)):
            steps[i].append(step)
    while any(model.ready_frames(s) for s in states):
        for i, step in enumerate(model.step(states)):
            steps[i].append(step)
    assert max(len({s.num_frames for s in row if s.num_frames}) for row in steps) > 1
    for i, w in enumerate(waves):
        ref_hidden, ref_lp = offline(causal_bundle, w)
        for layer, ref in enumerate(ref_hidden):
            torch.testing.assert_close(concat(steps[i], layer), ref, atol=ATOL, rtol=0)
        text = "".join(s.text for s in steps[i])
        assert text == greedy_ctc_decode(ref_lp, causal_bundle.vocab, 0.02).text


def test_per_step_cap_keeps_the_rest_for_later(causal_bundle):
    model = StreamingModel(causal_bundle, max_frames_per_step=7)
    state = model.new_state()
    wave = signal(1.0, seed=5)
    first = model.step([state], [wave])[0]
    assert first.num_frames == 7
    rest = model.feed(state, torch.zeros(0))
    ref_hidden, _ = offline(causal_bundle, wave)
    torch.testing.assert_close(concat([first, *rest], 2), ref_hidden[2], atol=ATOL, rtol=0)


def test_words_become_final_with_timestamps(causal_bundle):
    model = StreamingModel(causal_bundle)
    wave = signal(2.0, seed=20)
    state = model.new_state()
    steps = model.feed(state, wave)
    last = model.finish(state)
    words = [w for s in steps for w in s.words] + last.words
    assert len(words) >= 2
    reference = greedy_ctc_decode(offline(causal_bundle, wave)[1], causal_bundle.vocab, 0.02)
    assert words == reference.words
    chars = [c for s in steps for c in s.chars]
    assert "".join(c.char for c in chars) == reference.text.replace(" ", "")
    assert all(c.time == pytest.approx(c.frame * 0.02) for c in chars)


def test_bidirectional_and_group_norm_bundles_refuse_to_stream(tmp_path: Path):
    offline_only = load_bundle(build_tiny_bundle(tmp_path / "bi", seed=0))
    with pytest.raises(StreamingNotSupportedError, match="bidirectional") as info:
        StreamingModel(offline_only)
    assert "conv_norm='group'" in str(info.value)
    assert "CTC head" in str(info.value)


def test_embeddings_only_causal_bundle_streams_without_text(tmp_path: Path):
    bundle = load_bundle(build_tiny_bundle(tmp_path / "up", with_ctc=False, causal=True))
    model = StreamingModel(bundle)
    steps, text = run_stream(model, signal(0.6, 1), [1000] * 10)
    assert text == "" and all(s.log_probs is None for s in steps)
    ref = bundle.model(signal(0.6, 1)[None]).hidden_states[-1][0]
    torch.testing.assert_close(concat(steps, -1), ref.detach(), atol=ATOL, rtol=0)


def test_short_streams_and_energy(causal_bundle):
    model = StreamingModel(causal_bundle)
    state = model.new_state()
    assert model.step([state], [torch.zeros(399)])[0].num_frames == 0
    loud = model.step([state], [torch.full((1000,), 0.5)])[0]
    assert loud.num_frames == 4  # samples 0..1398: frames start at 0, 320, 640, 960
    assert float(loud.energy_db[3]) == pytest.approx(20 * math.log10(0.5), abs=1e-4)
    assert loud.energy_db[0] < loud.energy_db[3]  # frame 0 is mostly the leading zeros
    with pytest.raises(ValueError, match="mono chunk"):
        model.step([state], [torch.zeros(2, 10)])


def test_decoder_pushes_split_anywhere_equal_one_push():
    vocab = CharVocab()
    g = torch.Generator().manual_seed(0)
    lp = torch.log_softmax(torch.randn(200, len(vocab), generator=g) * 4, dim=-1)
    ids, probs = best_path(lp)
    whole = greedy_ctc_decode(lp, vocab, 0.02)
    dec, text, pos = GreedyCTCDecoder(vocab, 0.02), "", 0
    for size in [1, 5, 1, 30, 2, 50, 111]:
        text += dec.push(ids[pos : pos + size], probs[pos : pos + size]).text
        assert whole.text.startswith(text)  # append-only: never rewritten
        pos += size
    dec.finish()
    assert text == whole.text and dec.transcript() == whole


def test_run_lstm_from_phases_match_rows_alone():
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(5, 4, num_layers=2, batch_first=True)
    x = torch.randn(3, 6, 5)
    h0, c0 = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    out, (h, c) = run_lstm_from(lstm, x, [6, 2, 0], (h0, c0))
    for b, n in enumerate([6, 2]):
        alone, (hb, cb) = lstm(x[b : b + 1, :n], (h0[:, b : b + 1], c0[:, b : b + 1]))
        torch.testing.assert_close(out[b : b + 1, :n], alone, atol=1e-6, rtol=0)
        torch.testing.assert_close(h[:, b : b + 1], hb)
        torch.testing.assert_close(c[:, b : b + 1], cb)
        assert not out[b, n:].any()
    torch.testing.assert_close(h[:, 2], h0[:, 2])  # a row without frames keeps its state
    assert not out[2].any()
