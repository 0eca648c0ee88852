"""Manifest TSV files: one utterance per row, audio paths relative to the manifest's folder.

Format (tab separated, UTF-8, first line a header)::

    path	num_samples	text	speaker
    train/0000/utt-000001.flac	52160	HELLO WORLD	espeak:en-us+m3

`text` and `speaker` may be empty. Cluster labels live in a separate fairseq-style `.km` file:
one line per manifest row, space-separated integer units, one unit per 20 ms frame.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_RATE = 16000  # the rate every manifest's num_samples counts in
HEADER: tuple[str, ...] = ("path", "num_samples", "text", "speaker")


@dataclass(frozen=True)
class ManifestEntry:
    """One utterance: `path` is relative to the manifest's folder (POSIX separators)."""

    path: str
    num_samples: int
    text: str = ""
    speaker: str = ""

    @property
    def id(self) -> str:
        """Utterance id: the relative path without its extension."""
        return self.path.rsplit(".", 1)[0] if "." in Path(self.path).name else self.path


@dataclass
class Manifest:
    """Entries plus the folder their paths are relative to."""

    root: Path
    entries: list[ManifestEntry] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> ManifestEntry:
        return self.entries[index]

    def __iter__(self):
        return iter(self.entries)

    def audio_path(self, index: int) -> Path:
        """Absolute path of entry `index`'s audio file."""
        return self.root / self.entries[index].path

    @property
    def lengths(self) -> list[int]:
        """Number of samples per entry (for length-bucketed batching)."""
        return [e.num_samples for e in self.entries]

    @property
    def ids(self) -> list[str]:
        return [e.id for e in self.entries]

    @property
    def total_samples(self) -> int:
        return sum(e.num_samples for e in self.entries)

    @property
    def hours(self) -> float:
        """Audio hours of all entries (manifests hold 16 kHz sample counts)."""
        return self.total_samples / SAMPLE_RATE / 3600


def relative_path(audio: str | os.PathLike, manifest_path: str | os.PathLike) -> str:
    """`audio` relative to the folder of `manifest_path`, with POSIX separators."""
    base = Path(manifest_path).resolve().parent
    return Path(os.path.relpath(Path(audio).resolve(), base)).as_posix()


def _check_field(name: str, value: str, line: int | str) -> None:
    if "\t" in value or "\n" in value or "\r" in value:
        raise ValueError(
            f"manifest {name} must not contain tabs or newlines, found {value!r} ({line})"
        )


def write_manifest(path: str | os.PathLike, entries: Iterable[ManifestEntry]) -> Path:
    """Write `entries` (paths already relative to `path`'s folder) with a header row.

    Written to a temporary file and renamed, so a reader never sees a half-written manifest.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(HEADER)]
    for i, e in enumerate(entries):
        for name in ("path", "text", "speaker"):
            _check_field(name, getattr(e, name), f"entry {i}")
        if e.num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, found {e.num_samples} (entry {i})")
        lines.append(f"{e.path}\t{e.num_samples}\t{e.text}\t{e.speaker}")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read a manifest written by `write_manifest` (header row required; text/speaker optional)."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise ValueError(f"{path}: empty manifest, expected a header row {HEADER}")
    header = lines[0].split("\t")
    if header[:2] != list(HEADER[:2]):
        raise ValueError(f"{path}: expected header starting with {HEADER[:2]}, found {header}")
    col = {name: header.index(name) for name in HEADER if name in header}
    entries = []
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise ValueError(f"{path}:{lineno}: expected >= 2 tab-separated fields, found {parts}")
        try:
            num = int(parts[col["num_samples"]])
        except ValueError as err:
            raise ValueError(f"{path}:{lineno}: num_samples must be an integer") from err

        def get(name: str, parts: list[str] = parts) -> str:
            i = col.get(name)
            return parts[i] if i is not None and i < len(parts) else ""

        entries.append(ManifestEntry(parts[col["path"]], num, get("text"), get("speaker")))
    return Manifest(root=path.resolve().parent, entries=entries)


def read_km_labels(path: str | os.PathLike, expected_rows: int | None = None) -> list[list[int]]:
    """Read a fairseq `.km` file: one line of space-separated integer units per utterance."""
    path = Path(path)
    rows = [[int(t) for t in line.split()] for line in path.read_text().splitlines()]
    if expected_rows is not None and len(rows) != expected_rows:
        raise ValueError(f"{path}: expected {expected_rows} label rows, found {len(rows)}")
    return rows


def write_km_labels(path: str | os.PathLike, labels: Sequence[Sequence[int]]) -> Path:
    """Write one line of space-separated units per utterance (fairseq `.km` style)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(str(int(u)) for u in row) + "\n" for row in labels))
    return path
