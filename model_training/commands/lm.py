"""`hubert-lstm lm build | attach`: a word n-gram LM for lexicon + LM beam search, shipped in a
recognizer bundle."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

logger = logging.getLogger(__name__)

lm_app = typer.Typer(
    help="Word n-gram language models: build one (ARPA), ship it in a bundle with tuned weights.",
    no_args_is_help=True,
)


@lm_app.command("build")
def build(
    out: Path = typer.Option(
        ..., "--out", help="ARPA file to write (.arpa.gz); facts in OUT.json."
    ),
    corpus_card: Path | None = typer.Option(
        None,
        "--corpus-card",
        help="A `data synth` corpus's card.json: use its training sentence pool (no dev or "
        "test sentence is in it).",
    ),
    text: list[Path] | None = typer.Option(
        None, "--text", help="Text file, one sentence per line (e.g. librispeech-lm-norm.txt)."
    ),
    order: int = typer.Option(3, "--order", help="n-gram order (>= 2)."),
    prune: int = typer.Option(
        1, "--prune", help="Drop n-grams of order >= 2 seen at most this many times (0: none)."
    ),
) -> None:
    """Estimate an interpolated Kneser-Ney word LM and write it as ARPA."""
    from model_training.training.lm_decoding import (
        build_lm,
        corpus_train_sentences,
        text_file_sentences,
    )

    if (corpus_card is None) == (not text):
        raise typer.BadParameter("give either --corpus-card or --text", param_hint="--text")
    if not str(out).endswith(".arpa.gz"):
        raise typer.BadParameter(f"expected a .arpa.gz name, found {out}", param_hint="--out")
    if corpus_card is not None:
        sentences = corpus_train_sentences(corpus_card)
        source = f"train sentence pool of the corpus in {corpus_card.parent}"
    else:
        sentences = list(text_file_sentences(text or []))
        source = ", ".join(str(t) for t in text or [])
    out.parent.mkdir(parents=True, exist_ok=True)
    typer.echo(json.dumps(build_lm(sentences, out, order, prune, source), indent=2))


@lm_app.command("attach")
def attach(
    bundle: Path = typer.Option(..., "--bundle", help="Recognizer bundle directory to extend."),
    lm: Path = typer.Option(..., "--lm", help="ARPA LM (.arpa.gz) from `lm build`."),
    tune_manifest: Path | None = typer.Option(
        None, "--tune-manifest", help="Dev manifest: pick --lm-weights x --word-scores by WER."
    ),
    lm_weights: str = typer.Option("1 1.5 2 3", "--lm-weights", help="LM weights to try."),
    word_scores: str = typer.Option("-1 0 1", "--word-scores", help="Word scores to try."),
    beam_size: int | None = typer.Option(
        None, "--beam-size", min=1, help="Beam size (default 500)."
    ),
) -> None:
    """Ship the LM in the bundle: its decoder becomes lexicon + LM beam search (the weights
    tuned on --tune-manifest, else the first of each list)."""
    from model_training.bundle import attach_lm
    from model_training.decoding import DEFAULT_BEAM_SIZE, LMDecoderConfig
    from model_training.training.evaluate import load_recognizer
    from model_training.training.lm_decoding import tune_decoder

    beam_size = beam_size or DEFAULT_BEAM_SIZE
    weights = [float(w) for w in lm_weights.split()]
    scores = [float(s) for s in word_scores.split()]
    if not weights or not scores:
        raise typer.BadParameter("give at least one LM weight and one word score")
    facts_path = Path(f"{lm}.json")
    provenance = json.loads(facts_path.read_text()) if facts_path.is_file() else {}
    if tune_manifest is not None:
        recognizer = load_recognizer(bundle, build_decoder=False)  # the old LM may be gone
        config, best, grid = tune_decoder(recognizer, tune_manifest, lm, weights, scores, beam_size)
        provenance["tuned_on"] = str(tune_manifest)
        provenance["tuned_dev_wer"] = round(100 * best["wer"], 2)
        provenance["tuned_dev_cer"] = round(100 * best["cer"], 2)
        provenance["grid"] = [
            {k: (round(100 * v, 2) if k in ("wer", "cer") else v) for k, v in r.items()}
            for r in grid
        ]
    else:
        config = LMDecoderConfig(str(lm), weights[0], scores[0], beam_size)
    typer.echo(json.dumps(attach_lm(bundle, lm, config, provenance), indent=2))


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the root app."""
    app.add_typer(lm_app, name="lm")
