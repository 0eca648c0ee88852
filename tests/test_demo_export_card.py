"""The demo model card's architecture sentence comes from the bundle's config, not the run name."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from model_training.data.voices import engine_weights

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sentence(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from demo_export import architecture_sentence

    return architecture_sentence


def _config(name: str) -> dict:
    return json.loads((ROOT / "models" / name / "config.json").read_text())


def test_shipped_bundles_are_described_as_built(sentence) -> None:
    default, streaming = _config("default"), _config("streaming")
    assert sentence(default, causal_head=False) == (
        "A bidirectional LSTM student (log-mel front-end, 3 BiLSTM x 256) with a CTC head"
    )
    assert sentence(streaming, causal_head=True) == (
        "A causal LSTM student (log-mel front-end, 3 unidirectional LSTM x 256) with a causal "
        "CTC head, for streaming"
    )


def test_cnn_front_end_names_its_width_and_norm(sentence) -> None:
    config = copy.deepcopy(_config("streaming"))
    up = config["upstream"]["config"]
    up.update(frontend="cnn", conv_norm="layer", conv_layers=[[128, 10, 5]])
    assert "(layer-norm 128-channel CNN, 3 unidirectional LSTM x 256)" in sentence(config, True)


def test_continued_runs_name_their_first_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from demo_export import continued_sentence

    assert continued_sentence({"run": "runs/demo/ft_dkd_all_long"}) == ""
    first = {"bundle": "models/default", "run": "/x/runs/demo/ft_dkd_all_long", "step": 8000}
    once = {"continued_from": first}
    assert "continued the shipped bundle once, first from run `ft_dkd_all_long`" in (
        continued_sentence(once)
    )
    second = {"bundle": "models/default", "run": "/x/ft_dkd_all_shipped", "continued_from": first}
    assert "2 times, first from run `ft_dkd_all_long`" in continued_sentence(
        {"continued_from": second}
    )


def test_a_continuation_that_lost_keeps_the_bundle_it_continued(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from demo_export import source_bundle_if_better

    bundle = tmp_path / "shipped"
    bundle.mkdir()
    dev = {"cer": 0.365, "wer": 0.82}
    (bundle / "config.json").write_text(json.dumps({"provenance": {"dev": dev}}))
    runs = tmp_path / "runs"
    (runs / "eval").mkdir(parents=True)
    for name, upstream in (("cont", {"kind": "bundle", "path": str(bundle)}), ("own", {})):
        (runs / name).mkdir()
        (runs / name / "metrics.json").write_text(json.dumps({"upstream": upstream}))

    def scored(run: str, cer: float) -> None:
        (runs / "eval" / f"{run}.dev.json").write_text(json.dumps({"cer": cer, "wer": 0.8}))

    scored("cont", 0.40)
    assert source_bundle_if_better(runs, "cont") == bundle
    scored("cont", 0.30)
    assert source_bundle_if_better(runs, "cont") is None
    scored("own", 0.50)  # not a continuation: nothing to keep
    assert source_bundle_if_better(runs, "own") is None


def test_a_corpus_that_extends_the_train_stream_is_described_as_new_audio(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With --train-start the card must not call the last run's few hours the model's data."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    from demo_export import corpus_sentences

    corpus = {"seed": 0, "splits": {"train": {"hours": 4.001}}}
    plain = corpus_sentences(corpus)
    assert plain["corpus_size"].startswith("a ~4-hour")
    assert "`hubert-lstm data synth --hours 4.001 --seed 0`" in plain["corpus_origin"]
    extended = corpus_sentences({**corpus, "train_start": 3811, "splits": {"train": {"hours": 3}}})
    assert "-hour" not in extended["corpus_size"] and "~3 h of new" in extended["corpus_size"]
    assert "--hours 3 --seed 0 --train-start 3811`" in extended["corpus_origin"]
    assert "after the first 3811" in extended["corpus_origin"]
    assert "before" not in extended["corpus_size"] + extended["corpus_origin"]
    # FT_EXTRA_TRAIN appended 3 h of earlier audio: the card says so, not "3 h" alone
    both = corpus_sentences({**corpus, "train_start": 3811, "splits": {"train": {"hours": 3}}}, 6.0)
    assert "~3 h of new training audio and ~3 h it had heard before" in both["corpus_size"]
    assert "together with 3 h of those earlier utterances" in both["corpus_origin"]
    # the train split's engine and voice weights are part of the command that made it
    train = {**engine_weights("train"), "espeak": 0.35, "piper": 0.07}
    weighted = {
        **corpus,
        "train_start": 3811,
        "engine_weights": {"train": train, "dev": engine_weights("dev")},
        "train_voice_weights": {"espeak:en-us*": 3.0},
    }
    assert (
        "--train-start 3811 --engine-weights piper=0.07,espeak=0.35 "
        "--voice-weights 'espeak:en-us*=3'`"
    ) in corpus_sentences(weighted)["corpus_origin"]
