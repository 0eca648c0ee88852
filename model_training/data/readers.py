"""Build manifests from a LibriSpeech tree or from a folder of audio files with sidecar `.txt`."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from model_training.data.audio import SAMPLE_RATE, num_samples_at
from model_training.data.manifest import ManifestEntry, relative_path, write_manifest
from model_training.text import normalize_text

logger = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".flac", ".wav", ".mp3", ".ogg", ".opus", ".m4a", ".webm", ".aac")


def librispeech_entries(
    root: str | os.PathLike, subsets: Sequence[str], manifest_path: str | os.PathLike
) -> list[ManifestEntry]:
    """Entries for `root/<subset>/<speaker>/<chapter>/*.flac` with `*.trans.txt` transcripts.

    `root` may also be the `LibriSpeech` folder's parent. Utterances without a transcript line
    are skipped with a warning; the speaker column holds LibriSpeech's speaker id.
    """
    root = Path(root)
    if not (root / subsets[0]).is_dir() and (root / "LibriSpeech").is_dir():
        root = root / "LibriSpeech"
    entries: list[ManifestEntry] = []
    for subset in subsets:
        subset_dir = root / subset
        if not subset_dir.is_dir():
            raise ValueError(f"subset folder {subset_dir} not found (expected {root}/<subset>)")
        texts: dict[str, str] = {}
        for trans in sorted(subset_dir.rglob("*.trans.txt")):
            for line in trans.read_text(encoding="utf-8").splitlines():
                utt, _, text = line.strip().partition(" ")
                if utt:
                    texts[utt] = normalize_text(text)
        missing = 0
        for flac in sorted(subset_dir.rglob("*.flac")):
            if flac.stem not in texts:
                missing += 1
                continue
            speaker = flac.stem.split("-")[0]
            entries.append(
                ManifestEntry(
                    relative_path(flac, manifest_path),
                    num_samples_at(flac, SAMPLE_RATE),
                    texts[flac.stem],
                    speaker,
                )
            )
        if missing:
            logger.warning("%s: %d flac file(s) without a transcript skipped", subset, missing)
    return entries


def folder_entries(
    root: str | os.PathLike,
    manifest_path: str | os.PathLike,
    extensions: Sequence[str] = AUDIO_EXTENSIONS,
    require_text: bool = False,
) -> list[ManifestEntry]:
    """Entries for every audio file under `root`; a sidecar `<name>.txt` gives the transcript.

    Files without a sidecar get an empty transcript (or are skipped when `require_text`).
    The speaker column holds the parent folder's name relative to `root` ("" at top level).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"audio folder {root} not found")
    exts = {e.lower() for e in extensions}
    entries = []
    for audio in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts):
        sidecar = audio.with_suffix(".txt")
        if sidecar.exists():
            text = normalize_text(sidecar.read_text(encoding="utf-8"))
        elif require_text:
            logger.warning("%s: no sidecar transcript, skipped", audio)
            continue
        else:
            text = ""
        parent = audio.parent.relative_to(root).as_posix()
        entries.append(
            ManifestEntry(
                relative_path(audio, manifest_path),
                num_samples_at(audio, SAMPLE_RATE),
                text,
                "" if parent == "." else parent,
            )
        )
    return entries


def build_librispeech_manifest(
    root: str | os.PathLike, subsets: Sequence[str], out: str | os.PathLike
) -> Path:
    """Write a manifest for LibriSpeech `subsets` under `root` to `out`."""
    return write_manifest(out, librispeech_entries(root, subsets, out))


def build_folder_manifest(
    root: str | os.PathLike, out: str | os.PathLike, require_text: bool = False
) -> Path:
    """Write a manifest for every audio file under `root` to `out`."""
    return write_manifest(out, folder_entries(root, out, require_text=require_text))
