"""Word n-gram LMs (model_training/ngram_lm.py) and lexicon + LM CTC beam search
(model_training/decoding.py), in bundles, evaluation and the service."""

from __future__ import annotations

import io
import json
import logging
import math
import os
from pathlib import Path

import pytest
import soundfile as sf
import torch

from model_training.bundle import LM_FILE, attach_lm, load_bundle
from model_training.data.manifest import Manifest, ManifestEntry, write_manifest
from model_training.decoding import (
    LexiconLMDecoder,
    LMDecoderConfig,
    arpa_words,
    greedy_ctc_decode,
    make_decoder,
    native_output_logged,
)
from model_training.ngram_lm import BOS, UNK, build_kneser_ney
from model_training.testing import build_tiny_bundle
from model_training.text import CharVocab
from model_training.training.evaluate import evaluate_recognizer, load_recognizer, with_decoder
from tests.test_app_support import make_wav, serve, test_settings, wav_file

SENTENCES = [
    "THE CAT SAT ON THE MAT",
    "THE DOG SAT ON THE LOG",
    "A CAT RAN AWAY",
    "THE CAT RAN TO THE DOG",
    "A DOG SAT",
    "THE MAT WAS RED",
]


def _contexts(lm) -> set[tuple[str, ...]]:
    seen = {g[:-1] for k in range(2, lm.order + 1) for g in lm.probs[k]}
    return seen | {(), ("NEVER",), ("CAT", "NEVER"), ("NEVER", "CAT")}


@pytest.mark.parametrize(("order", "prune"), [(2, 0), (3, 0), (3, 1)])
def test_every_context_distribution_sums_to_one(order, prune):
    lm = build_kneser_ney(SENTENCES, order, prune)
    predicted = [w for w in lm.vocabulary if w != BOS]  # </s> and <unk> included
    for context in _contexts(lm):
        total = sum(lm.prob(w, context) for w in predicted)
        assert total == pytest.approx(1.0, abs=1e-9), context
    assert lm.prob(BOS, ("THE",)) == 0.0
    assert lm.prob("NEVERSEEN", ("THE",)) == lm.prob(UNK, ("THE",)) > 0


def test_pruning_drops_rare_ngrams_but_keeps_the_vocabulary():
    full, pruned = build_kneser_ney(SENTENCES, 3, 0), build_kneser_ney(SENTENCES, 3, 1)
    assert full.vocabulary == pruned.vocabulary
    assert ("CAT", "SAT", "ON") in full.probs[3] and ("CAT", "SAT", "ON") not in pruned.probs[3]
    assert ("SAT", "ON", "THE") in pruned.probs[3]  # seen twice
    # unpruned, the recomputed backoff weight is KN's gamma: D x distinct continuations / count
    assert full.backoffs[1][("CAT",)] < 1.0


def test_kenlm_reads_the_arpa_and_scores_as_our_model(tmp_path):
    """An independent implementation (KenLM, inside flashlight-text) gives the same log10
    probabilities for seen n-grams, backoffs and unknown words."""
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    lm = build_kneser_ney(SENTENCES, 3, 1)
    path = lm.write_arpa(tmp_path / "lm.arpa.gz")
    words = Dictionary()
    for w in lm.vocabulary:
        words.add_entry(w)
    kenlm = KenLM(str(path), words)
    state, context = kenlm.start(False), [BOS]
    for word in ["THE", "CAT", "RAN", "ON", "A", "LOG", "NEVERSEEN"]:
        index = words.get_index(word if word in lm.vocabulary else UNK)
        state, logp = kenlm.score(state, index)
        assert logp == pytest.approx(math.log10(lm.prob(word, tuple(context))), abs=1e-5)
        context.append(word)
    assert sorted(arpa_words(path)) == sorted(set(" ".join(SENTENCES).split()))
    again = build_kneser_ney(SENTENCES, 3, 1).write_arpa(tmp_path / "again.arpa.gz")
    assert again.read_bytes() == path.read_bytes()  # reproducible: no gzip timestamp


def _spelled(vocab: CharVocab, text: str, frames_per_char: int = 3) -> tuple[torch.Tensor, dict]:
    """(T, V) log-probs whose best path spells `text` (blank between characters); returns the
    tensor and, per character position, its frame index."""
    rows, at = [], {}
    for i, ch in enumerate(text.replace(" ", "|")):
        for f in range(frames_per_char):
            row = torch.full((len(vocab),), -8.0)
            row[vocab.tokens.index(ch)] = -0.05 if f < frames_per_char - 1 else -3.0
            row[vocab.blank_id] = -3.0 if f < frames_per_char - 1 else -0.05
            rows.append(row)
        at[i] = len(rows) - frames_per_char
    return torch.stack(rows).log_softmax(-1), at


def test_lexicon_and_lm_correct_a_misspelled_word(tmp_path):
    vocab = CharVocab()
    lm_path = build_kneser_ney(SENTENCES, 3).write_arpa(tmp_path / "lm.arpa.gz")
    log_probs, at = _spelled(vocab, "THE CAT SAD")
    # "D" is the best character at its frames, "T" a close second
    d_frame = at[len("THE CAT SA")]
    log_probs[d_frame : d_frame + 2, vocab.tokens.index("T")] = -0.4
    log_probs = log_probs.log_softmax(-1)
    assert greedy_ctc_decode(log_probs, vocab, 0.02).text == "THE CAT SAD"

    decode = LexiconLMDecoder(vocab, lm_path, 0.02, LMDecoderConfig(str(lm_path), 1.0, 0.0))
    transcript = decode(log_probs)
    assert transcript.text == "THE CAT SAT"
    assert [w.word for w in transcript.words] == ["THE", "CAT", "SAT"]
    assert transcript.duration == pytest.approx(log_probs.shape[0] * 0.02)
    starts = [w.start for w in transcript.words]
    assert starts == sorted(starts)
    for word in transcript.words:
        assert 0 <= word.start < word.end <= transcript.duration
        assert 0 < word.confidence <= 1
    assert decode(log_probs[:0]).text == ""
    with pytest.raises(ValueError, match="shape"):
        decode(log_probs[:, :5])


def test_kenlm_progress_goes_to_the_log_not_to_stderr(tmp_path, capfd, caplog):
    """KenLM prints its ARPA progress bar on the C-level stderr; a JSON-logging service must
    get it as a log record instead of stray lines."""
    vocab = CharVocab()
    lm_path = build_kneser_ney(SENTENCES, 3).write_arpa(tmp_path / "lm.arpa.gz")
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG, logger="model_training.decoding"):
        LexiconLMDecoder(vocab, lm_path, 0.02, LMDecoderConfig(str(lm_path), 1.0, 0.0))
    native = capfd.readouterr()
    assert native.out == "" and native.err == ""
    [record] = [r for r in caplog.records if "KenLM" in r.getMessage()]
    assert record.levelno == logging.DEBUG and "Reading" in record.getMessage()


def test_native_output_of_a_failing_block_is_logged_as_a_warning(capfd, caplog):
    with (
        caplog.at_level(logging.DEBUG),
        pytest.raises(RuntimeError, match="bad"),
        native_output_logged("loading"),
    ):
        os.write(2, b"native complaint\n")
        raise RuntimeError("bad")
    assert capfd.readouterr().err == ""
    [record] = [r for r in caplog.records if "native complaint" in r.getMessage()]
    assert record.levelno == logging.WARNING and record.getMessage().startswith("loading: ")


def test_the_last_word_survives_emissions_without_a_closing_separator(tmp_path):
    """CTC targets have no separator after the last word, so a trained model gives "|" almost
    nothing at the end; the lexicon spells words with one. The last word must still come out."""
    vocab = CharVocab()
    lm_path = build_kneser_ney(SENTENCES, 3).write_arpa(tmp_path / "lm.arpa.gz")
    log_probs, _ = _spelled(vocab, "THE CAT SAT")
    log_probs[:, vocab.word_sep_id] = torch.where(
        log_probs[:, vocab.word_sep_id] > -1, log_probs[:, vocab.word_sep_id], -30.0
    )  # "|" only where spelled (between words), never after the last one
    log_probs = log_probs.log_softmax(-1)
    decode = LexiconLMDecoder(vocab, lm_path, 0.02, LMDecoderConfig(str(lm_path), 1.0, 0.0, 50))
    transcript = decode(log_probs)
    assert transcript.text == "THE CAT SAT"
    assert (
        transcript.words[-1].end <= transcript.duration == pytest.approx(log_probs.shape[0] * 0.02)
    )


def test_no_decoder_spec_means_greedy_and_a_missing_lm_is_an_error(tmp_path):
    vocab = CharVocab()
    log_probs, _ = _spelled(vocab, "THE CAT SAD")
    greedy = make_decoder(vocab, 0.02, None)
    assert greedy(log_probs).text == "THE CAT SAD"
    with pytest.raises(FileNotFoundError, match="language model"):
        make_decoder(vocab, 0.02, {"type": "lexicon_lm", "lm": "gone.arpa.gz"}, tmp_path)
    with pytest.raises(ValueError, match="unknown decoder type"):
        make_decoder(vocab, 0.02, {"type": "beam"}, tmp_path)


@pytest.fixture(scope="module")
def lm_bundle(tmp_path_factory) -> Path:
    """A tiny varied bundle shipping a word LM of SENTENCES."""
    root = tmp_path_factory.mktemp("lm-bundle")
    bundle = build_tiny_bundle(root / "tiny-lm", seed=3, varied=True, name="tiny-lm")
    lm_path = build_kneser_ney(SENTENCES, 3).write_arpa(root / "text.arpa.gz")
    attach_lm(bundle, lm_path, LMDecoderConfig(str(lm_path), 1.0, 2.0, 20), {"text": "tests"})
    return bundle


def test_attached_lm_travels_with_the_bundle(lm_bundle, tmp_path):
    config = json.loads((lm_bundle / "config.json").read_text())
    assert config["decoder"]["lm"] == LM_FILE and (lm_bundle / LM_FILE).is_file()
    assert config["decoder"]["provenance"] == {"text": "tests"}
    assert "## Decoding" in (lm_bundle / "README.md").read_text()
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in lm_bundle.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    bundle = load_bundle(moved)
    assert bundle.decoder_name == "lexicon_lm"
    assert isinstance(bundle.decode, LexiconLMDecoder)
    with pytest.raises(ValueError, match="no CTC head"):
        upstream_only = build_tiny_bundle(tmp_path / "up", with_ctc=False)
        attach_lm(upstream_only, lm_bundle / LM_FILE, LMDecoderConfig(LM_FILE))


def test_evaluate_uses_the_bundles_lm_unless_told_greedy(lm_bundle, tmp_path):
    entries = []
    for i, text in enumerate(["THE CAT SAT", "A DOG RAN AWAY"]):
        wav = sf.read(io.BytesIO(make_wav(1.0 + 0.3 * i, seed=20 + i)), dtype="float32")[0]
        sf.write(tmp_path / f"u{i}.wav", wav, 16000)
        entries.append(ManifestEntry(f"u{i}.wav", len(wav), text))
    manifest = Manifest(tmp_path, entries)
    lexicon = set(" ".join(SENTENCES).split())

    with_lm, greedy = [], []
    rec = load_recognizer(lm_bundle)
    result = evaluate_recognizer(rec, manifest, details=with_lm)
    assert result["decoder"]["type"] == "lexicon_lm"
    greedy_result = evaluate_recognizer(with_decoder(rec, "greedy"), manifest, details=greedy)
    assert greedy_result["decoder"] == {"type": "greedy"}
    assert all(set(d["hyp"].split()) <= lexicon for d in with_lm)
    assert not all(set(d["hyp"].split()) <= lexicon for d in greedy)  # random head: non-words


async def test_service_transcribes_with_the_bundles_lm(lm_bundle):
    lexicon = set(" ".join(SENTENCES).split())
    async with serve(test_settings(lm_bundle)) as (_, client):
        models = (await client.get("/v1/models")).json()["data"]
        assert models[0]["decoder"] == "lexicon_lm"
        texts = []
        for seed in range(3):
            r = await client.post(
                "/v1/audio/transcriptions",
                files={"file": wav_file("a.wav", make_wav(1.5, seed=seed))},
                data={"response_format": "verbose_json", "timestamp_granularities[]": "word"},
            )
            assert r.status_code == 200, r.text
            body = r.json()
            assert " ".join(w["word"] for w in body["words"]) == body["text"]
            texts.append(body["text"])
        assert any(texts)
        assert all(set(t.split()) <= lexicon for t in texts), texts


def test_lm_attach_tunes_a_new_lm_when_the_old_ones_file_is_gone(lm_bundle, tmp_path):
    from typer.testing import CliRunner

    from model_training.cli import app

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for f in lm_bundle.iterdir():
        if f.name != LM_FILE:  # the config still names the old LM, its file is gone
            (bundle / f.name).write_bytes(f.read_bytes())
    lm_path = build_kneser_ney(SENTENCES[:3], 2).write_arpa(tmp_path / "new.arpa.gz")
    entries = []
    for i, text in enumerate(["THE CAT SAT", "A DOG RAN AWAY"]):
        wav = sf.read(io.BytesIO(make_wav(1.0 + 0.3 * i, seed=40 + i)), dtype="float32")[0]
        sf.write(tmp_path / f"u{i}.wav", wav, 16000)
        entries.append(ManifestEntry(f"u{i}.wav", len(wav), text))
    write_manifest(tmp_path / "dev.tsv", entries)

    args = ["lm", "attach", "--bundle", str(bundle), "--lm", str(lm_path)]
    args += ["--tune-manifest", str(tmp_path / "dev.tsv"), "--lm-weights", "0.5 1"]
    args += ["--word-scores", "0", "--beam-size", "8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    decoder = json.loads((bundle / "config.json").read_text())["decoder"]
    assert [g["lm_weight"] for g in decoder["provenance"]["grid"]] == [0.5, 1.0]
    assert (bundle / LM_FILE).read_bytes() == lm_path.read_bytes()
    assert load_bundle(bundle).decoder_name == "lexicon_lm"
