"""Character vocabulary and text normalisation for CTC (the SUPERB ASR character set).

SUPERB's ASR task predicts 28 characters: the word separator "|", the letters A-Z and the
apostrophe; CTC adds the blank at index 0, so the output layer has 29 units.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

BLANK = "<blank>"
WORD_SEP = "|"
CHARACTERS: tuple[str, ...] = (WORD_SEP, *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "'")

_NOT_ALLOWED = re.compile(r"[^A-Z' ]+")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Upper-case A-Z and apostrophes, single spaces; accents folded, other symbols dropped.

    Hyphens and other punctuation become word breaks ("LONG-TERM" -> "LONG TERM"); curly
    apostrophes become "'"; an apostrophe not inside a word is dropped.
    """
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.replace("\u2019", "'").replace("`", "'").upper()
    text = _NOT_ALLOWED.sub(" ", text)
    words = [w.strip("'") for w in _SPACES.split(text)]
    return " ".join(w for w in words if w)


class CharVocab:
    """Index <-> character mapping for CTC: 0 = blank, then "|", A-Z, "'" (29 entries)."""

    def __init__(self, characters: Sequence[str] = CHARACTERS) -> None:
        if WORD_SEP not in characters:
            raise ValueError(f"vocabulary must contain the word separator {WORD_SEP!r}")
        if len(set(characters)) != len(characters):
            raise ValueError("vocabulary characters must be unique")
        self.tokens: list[str] = [BLANK, *characters]
        self._index = {c: i for i, c in enumerate(self.tokens)}
        self.blank_id = 0
        self.word_sep_id = self._index[WORD_SEP]

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocab) and other.tokens == self.tokens

    def encode(self, text: str) -> list[int]:
        """Normalised text -> label ids (no blanks); spaces become the word separator."""
        normalized = normalize_text(text).replace(" ", WORD_SEP)
        return [self._index[c] for c in normalized if c in self._index]

    def decode(self, ids: Sequence[int]) -> str:
        """Label ids (already CTC-collapsed, blanks allowed and skipped) -> text with spaces."""
        chars = [self.tokens[i] for i in ids if i != self.blank_id]
        return " ".join("".join(chars).replace(WORD_SEP, " ").split())

    def to_config(self) -> list[str]:
        """The characters (without blank), as stored in a bundle's config.json."""
        return self.tokens[1:]

    @classmethod
    def from_config(cls, characters: Sequence[str]) -> CharVocab:
        """Inverse of `to_config`."""
        return cls(characters)
