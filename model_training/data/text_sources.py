"""English sentences from Debian text packages (KJV Bible, fortunes, WordNet glosses).

Each sentence is kept as the text handed to the TTS engine (`spoken`, with punctuation for
prosody) and its transcript (`text`, `normalize_text(spoken)`). Sentences whose spoken and
written forms could differ (digits, abbreviations, acronyms, initials) are dropped, so the
transcript matches what the engines say.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from model_training.text import normalize_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextSource:
    """Where sentences come from, for the corpus card."""

    name: str
    debian_package: str
    licence: str


SOURCES: dict[str, TextSource] = {
    "bible-kjv": TextSource(
        "bible-kjv",
        "bible-kjv-text",
        "Public domain (King James Version, 1611; Crown patent in the UK)",
    ),
    "fortunes": TextSource(
        "fortunes",
        "fortunes",
        "BSD-style licence of fortune-mod (see /usr/share/doc/fortunes/copyright); "
        "quotations belong to their authors",
    ),
    "wordnet": TextSource(
        "wordnet",
        "wordnet-base",
        "WordNet 3.0 licence (Princeton University, permissive BSD-style)",
    ),
}

FORTUNE_DIR = Path("/usr/share/games/fortunes")
WORDNET_DIR = Path("/usr/share/wordnet")
_FORTUNE_SKIP = {"ascii-art", "art"}  # pictures, not sentences

_ALLOWED = re.compile(r"^[A-Za-z][A-Za-z ,.;:!?'\"-]*$")
_ABBREV = re.compile(
    r"\b(Mr|Mrs|Ms|Dr|St|Jr|Sr|vs|etc|Prof|Inc|Ltd|Co|Gen|Rev|Capt|Col|Lt|Sgt|Mt|Ft|No|e\.g|i\.e)\.",
    re.IGNORECASE,
)
_CAPS_WORD = re.compile(r"\b[A-Z]{2,}\b")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class Sentence:
    """A sentence as spoken (`spoken`) and as transcribed (`text`), with its source name."""

    spoken: str
    text: str
    source: str


def clean_sentence(raw: str, min_words: int = 3, max_words: int = 25) -> tuple[str, str] | None:
    """(spoken, normalised) for a usable sentence, else None."""
    s = raw.replace("\u2019", "'").replace("\u2018", "'").replace("\u201c", '"')
    s = s.replace("\u201d", '"').replace("--", ", ")
    s = _SPACES.sub(" ", s).strip().strip("\"' ")
    if not s or not _ALLOWED.match(s) or _ABBREV.search(s) or _CAPS_WORD.search(s):
        return None
    text = normalize_text(s)
    words = text.split()
    if not min_words <= len(words) <= max_words:
        return None
    # single letters other than words are initials or list markers: the speech would differ
    if any(len(w) == 1 and w not in {"A", "I", "O"} for w in words):
        return None
    return s, text


def _split_sentences(paragraph: str) -> list[str]:
    return [p for p in _SENTENCE_END.split(_SPACES.sub(" ", paragraph).strip()) if p]


def bible_paragraphs() -> list[str]:
    """KJV verses via the `bible` program (bible-kjv); all-caps LORD/GOD become Lord/God."""
    exe = shutil.which("bible")
    if exe is None:
        logger.warning("`bible` not found (Debian package bible-kjv): KJV source skipped")
        return []
    out = subprocess.run(
        [exe, "-f", "-l", "100000", "gen1:1-rev22:21"], capture_output=True, text=True, check=True
    ).stdout
    verses = []
    for line in out.splitlines():
        _, _, verse = line.partition(" ")
        verses.append(_CAPS_WORD.sub(lambda m: m.group(0).capitalize(), verse))
    return verses


def fortune_paragraphs(root: Path = FORTUNE_DIR) -> list[str]:
    """Fortune cookies (the default, non-offensive set), attribution lines removed."""
    if not root.is_dir():
        logger.warning("%s not found (Debian package fortunes): fortunes skipped", root)
        return []
    paragraphs = []
    for path in sorted(p for p in root.iterdir() if p.is_file() and not p.suffix):
        if path.name in _FORTUNE_SKIP:
            continue
        for cookie in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            lines = [ln for ln in cookie.splitlines() if not ln.strip().startswith("--")]
            paragraphs.append(" ".join(ln.strip() for ln in lines))
    return paragraphs


def wordnet_paragraphs(root: Path = WORDNET_DIR) -> list[str]:
    """WordNet glosses: definitions (capitalised, parentheses removed) and quoted examples."""
    if not root.is_dir():
        logger.warning("%s not found (Debian package wordnet-base): WordNet skipped", root)
        return []
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        path = root / f"data.{pos}"
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # licence header
            gloss = line.split(" | ", 1)[1]
            for part in gloss.split(";"):
                part = re.sub(r"\([^)]*\)", "", part).strip()
                if part.startswith('"'):
                    out.append(part.strip('" '))
                elif part:
                    out.append(part[0].upper() + part[1:] + ".")
    return out


def load_sentences(min_words: int = 3, max_words: int = 25) -> dict[str, list[Sentence]]:
    """Usable sentences per source, de-duplicated by transcript across sources, sorted."""
    readers = {
        "bible-kjv": bible_paragraphs,
        "fortunes": fortune_paragraphs,
        "wordnet": wordnet_paragraphs,
    }
    seen: set[str] = set()
    result: dict[str, list[Sentence]] = {}
    for name, read in readers.items():
        kept = []
        for paragraph in read():
            for raw in _split_sentences(paragraph):
                cleaned = clean_sentence(raw, min_words, max_words)
                if cleaned is None or cleaned[1] in seen:
                    continue
                seen.add(cleaned[1])
                kept.append(Sentence(cleaned[0], cleaned[1], name))
        kept.sort(key=lambda s: s.text)
        result[name] = kept
        logger.info("text source %s: %d sentences", name, len(kept))
    if not any(result.values()):
        raise ValueError("no sentences found: install bible-kjv, fortunes or wordnet-base")
    return result
