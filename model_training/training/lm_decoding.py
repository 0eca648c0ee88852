"""A word LM for a recognizer: its training text, its estimation, and its decoder weights tuned
on dev (lm weight x word score), for `hubert-lstm lm build | attach`."""

from __future__ import annotations

import itertools
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from model_training.decoding import DEFAULT_BEAM_SIZE, LMDecoderConfig, make_decoder
from model_training.ngram_lm import build_kneser_ney
from model_training.text import normalize_text
from model_training.training.evaluate import Recognizer, manifest_batches, score

log = logging.getLogger(__name__)


def corpus_train_sentences(card_path: str | os.PathLike) -> list[str]:
    """The training-split sentence pool of a synthetic corpus (`data synth`), rebuilt from the
    Debian text packages with the card's seed: dev and test_unseen sentences are not in it.

    Raises when the rebuilt pool's sizes differ from the card's (other text package versions
    would give other splits, and test sentences could leak into the LM)."""
    from model_training.data.synth import split_sentences
    from model_training.data.text_sources import load_sentences

    card = json.loads(Path(card_path).read_text())
    pools = split_sentences(load_sentences(), int(card["seed"]))
    expected = card["splits"]["train"]["sentence_pool"]
    found = {source: len(items) for source, items in pools["train"].items()}
    if found != expected:
        raise ValueError(
            f"the text packages give train pools {found}, the corpus card says {expected}: "
            "rebuild the LM on the machine that made the corpus"
        )
    return [s.text for items in pools["train"].values() for s in items]


def text_file_sentences(paths: Sequence[str | os.PathLike]) -> Iterable[str]:
    """One normalised sentence per non-empty line of each file (e.g. librispeech-lm-norm.txt)."""
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if text := normalize_text(line):
                    yield text


def build_lm(
    sentences: Iterable[str], out: str | os.PathLike, order: int, prune: int, source: str
) -> dict[str, Any]:
    """Estimate and write the ARPA LM (`out`, .arpa.gz) plus `out`.json with its facts."""
    start = time.perf_counter()
    sentences = list(sentences)
    lm = build_kneser_ney(sentences, order=order, prune=prune)
    path = lm.write_arpa(out)
    facts = {
        "text": source,
        "sentences": len(sentences),
        "words": sum(len(s.split()) for s in sentences),
        "order": order,
        "smoothing": "interpolated Kneser-Ney, one absolute discount per order",
        "pruned_below_count": prune + 1 if prune else None,
        "ngrams": {str(k): len(lm.probs[k]) for k in range(1, order + 1)},
        "bytes": path.stat().st_size,
        "seconds": round(time.perf_counter() - start, 1),
    }
    Path(f"{path}.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


@torch.inference_mode()
def manifest_emissions(
    recognizer: Recognizer, manifest: str | os.PathLike
) -> tuple[list[str], list[torch.Tensor]]:
    """The manifest's transcripts and the model's CTC log-probs for each utterance, (T_i, V)
    float32 on the CPU, unpadded: decoders can then be compared without rerunning the model."""
    from model_training.data.manifest import read_manifest

    data = read_manifest(manifest)
    sr = int(recognizer.model.sample_rate)
    refs: list[str] = []
    emissions: list[torch.Tensor] = []
    for indices, batch in manifest_batches(data, 160 * sr, 32):
        out, log_probs = recognizer.model(batch.waveforms, batch.lengths)
        for j, i in enumerate(indices):
            refs.append(data[i].text)
            emissions.append(log_probs[j, : int(out.lengths[j])].float().cpu())
    return refs, emissions


@torch.inference_mode()
def tune_decoder(
    recognizer: Recognizer,
    manifest: str | os.PathLike,
    lm_path: str | os.PathLike,
    lm_weights: Sequence[float],
    word_scores: Sequence[float],
    beam_size: int = DEFAULT_BEAM_SIZE,
) -> tuple[LMDecoderConfig, dict[str, Any], list[dict[str, Any]]]:
    """Grid-search LM weight x word score by WER (then CER) on `manifest` (dev, never test);
    the model runs once and each setting re-decodes its log-probs. Returns the best setting,
    its scores, and every setting's scores."""
    refs, emissions = manifest_emissions(recognizer, manifest)
    frame_seconds = 1.0 / float(recognizer.model.frame_rate)
    results: list[dict[str, Any]] = []
    for weight, word_score in itertools.product(lm_weights, word_scores):
        config = LMDecoderConfig(str(lm_path), weight, word_score, beam_size)
        decode = make_decoder(recognizer.vocab, frame_seconds, config.to_dict())
        hyps = [decode(e).text for e in emissions]
        results.append({"lm_weight": weight, "word_score": word_score, **score(refs, hyps)})
        log.info("lm_weight %.2f word_score %.2f: %s", weight, word_score, results[-1])
    best = min(results, key=lambda r: (r["wer"], r["cer"]))
    config = LMDecoderConfig(str(lm_path), best["lm_weight"], best["word_score"], beam_size)
    return config, best, results
