"""Phone targets for the SUPERB phoneme-recognition (PR) probe: phonemizers, phone vocabulary.

Two phonemizers turn a manifest's transcripts into phone sequences (space-separated phones, no
word boundaries, as SUPERB's PR task scores them):

- `EspeakPhonemizer` (the synthetic corpus): espeak-ng's IPA output of the same text, with one
  voice (`en-us`) for every utterance, so the targets are the text's canonical en-us
  pronunciation, not what each TTS voice or accent actually said. The inventory is
  `ESPEAK_EN_US_PHONES` (espeak-ng 1.51, `espeak-ng -q --ipa --sep=_ -v en-us`). Suprasegmentals:
  primary and secondary stress (ˈ ˌ) are dropped, since stress belongs to the syllable, not to
  the segment, and PER scores segments; the length mark ː is kept as part of its vowel
  (espeak's English table has ɔː and ɔ, oː and oʊ as different phonemes, so length is part of
  the phoneme's identity, not a token of its own); the half-length mark is dropped; a syllabic
  consonant (n̩) becomes schwa + consonant; word boundaries are dropped.
- `LexiconPhonemizer` (LibriSpeech): a pronunciation lexicon the user supplies, one
  `WORD PH1 PH2 ...` line per pronunciation (the format of OpenSLR's librispeech-lexicon.txt;
  the first pronunciation of a word wins). ARPAbet stress digits (AH0, IY1) are stripped unless
  `keep_stress`. An utterance with a word that is not in the lexicon gets no target (it is
  dropped from training and scoring and counted); SUPERB fills such gaps with a g2p model.

Targets are cached per manifest (`phonemize_manifest`): a JSON file named after the manifest
and a hash of its transcripts and the phonemizer's settings, so every head on the same
manifest reads it instead of running espeak-ng again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from model_training.text import BLANK, normalize_text

logger = logging.getLogger(__name__)

#: espeak-ng 1.51's en-us phones as `--ipa --sep=_` writes them, stress removed: every phone
#: espeak-ng produced for 3000 lines of fortunes, less the three `normalize_espeak_ipa` rewrites
#: (syllabic consonants, "əl", "r"). Phones outside it are dropped by the vocabulary and counted.
_ESPEAK_EN_US = (
    # consonants (tʃ and dʒ are single phonemes, ɾ is the en-us flap, ʔ the glottal stop)
    "b d f h j k l m n p s t v w z ð ŋ ɡ ɹ ɾ ʃ ʒ θ ʔ tʃ dʒ x "
    # vowels and diphthongs; ː is part of the vowel
    "ɪ ə æ ɛ ʌ ɚ ɐ i ᵻ ʊ ɔ iː uː ɑː ɜː ɔː oː aɪ eɪ oʊ aʊ ɔɪ iə "
    # espeak-ng's r-coloured vowel units (one phoneme each in its en-us table)
    "ɑːɹ ɔːɹ oːɹ ɛɹ ʊɹ ɪɹ aɪɚ aɪə"
)
ESPEAK_EN_US_PHONES: tuple[str, ...] = tuple(_ESPEAK_EN_US.split())
STRESS_MARKS = "ˈˌ"
_DROPPED_MARKS = "ˈˌˑ"  # primary and secondary stress, half-long
_SYLLABIC = "\u0329"  # combining vertical line below: n̩ -> ə n
_REWRITES = {"əl": ("ə", "l"), "r": ("ɹ",)}  # espeak's syllabic l; a trilled r is English /ɹ/
_ARPABET_STRESS = re.compile(r"^([A-Z]+)[012]$")
_MARKER = "9876543210"


class PhoneVocab:
    """Index <-> phone mapping for CTC: 0 = blank, then the phones in inventory order.

    The counterpart of `text.CharVocab` for the PR task: a target or hypothesis is a string of
    space-separated phones; `encode` drops phones outside the inventory (as CharVocab drops
    characters it does not know).
    """

    word_sep_id = None  # phone strings carry no word boundaries

    def __init__(self, phones: Sequence[str]) -> None:
        if not phones:
            raise ValueError("a phone vocabulary needs at least one phone")
        if len(set(phones)) != len(phones):
            raise ValueError("phones must be unique")
        bad = [p for p in phones if not p or any(c.isspace() for c in p) or p == BLANK]
        if bad:
            raise ValueError(f"phones must be non-empty, without spaces, not {BLANK}: {bad}")
        self.tokens: list[str] = [BLANK, *phones]
        self._index = {p: i for i, p in enumerate(self.tokens)}
        self.blank_id = 0

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PhoneVocab) and other.tokens == self.tokens

    def __contains__(self, phone: str) -> bool:
        return phone in self._index and phone != BLANK

    def encode(self, phones: str) -> list[int]:
        """ "h ə l oʊ" -> label ids (no blanks); unknown phones are dropped."""
        return [self._index[p] for p in phones.split() if p in self._index and p != BLANK]

    def decode(self, ids: Sequence[int]) -> str:
        """Label ids (already CTC-collapsed; blanks skipped) -> space-separated phones."""
        return " ".join(self.tokens[i] for i in ids if i != self.blank_id)

    def to_config(self) -> list[str]:
        """The phones (without blank), as stored next to a head."""
        return self.tokens[1:]

    @classmethod
    def from_config(cls, phones: Sequence[str]) -> PhoneVocab:
        """Inverse of `to_config`."""
        return cls(phones)


# ----------------------------------------------------------------------------- phonemizers


@dataclass
class PhonemizerConfig:
    """Which phonemizer makes the PR targets (stored with every PR head).

    Attributes:
        backend: "espeak" (the synthetic corpus) or "lexicon" (LibriSpeech, `lexicon` file).
        voice: espeak-ng voice whose pronunciation is the target (one for every utterance).
        lexicon: path of a `WORD PH1 PH2 ...` lexicon (backend "lexicon").
        keep_stress: lexicon only: keep ARPAbet stress digits (AH0 vs AH1 as two phones).
        cache_dir: where per-manifest targets are cached (None: no cache).
    """

    backend: str = "espeak"
    voice: str = "en-us"
    lexicon: str | None = None
    keep_stress: bool = False
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.backend not in ("espeak", "lexicon"):
            raise ValueError(f"phonemizer backend must be espeak|lexicon, found {self.backend!r}")
        if self.backend == "lexicon" and not self.lexicon:
            raise ValueError("the lexicon phonemizer needs a lexicon file (phonemes.lexicon)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PhonemizerConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown phonemizer fields: {sorted(unknown)}")
        return cls(**d)


class Phonemizer(Protocol):
    """Texts -> phone strings ("" where there is none); `inventory` fixes the vocabulary."""

    inventory: tuple[str, ...]

    def signature(self) -> dict[str, Any]: ...

    def phonemize(self, texts: Sequence[str]) -> list[str]: ...


def normalize_espeak_ipa(ipa: str) -> list[str]:
    """One text's `espeak-ng --ipa --sep=_` output -> phones (see the module docstring).

    Stress (ˈ ˌ) and half-length (ˑ) marks are removed; word boundaries (spaces) and
    espeak's separators are dropped; a syllabic consonant (n̩) becomes schwa + consonant, as
    espeak's own syllabic l ("əl") and ARPAbet (AH0 N) write it; a trilled r becomes ɹ.
    """
    phones: list[str] = []
    for word in ipa.split():
        for token in word.split("_"):
            token = "".join(c for c in token if c not in _DROPPED_MARKS)
            if not token:
                continue
            if _SYLLABIC in token:
                phones += ["ə", token.replace(_SYLLABIC, "")]
            else:
                phones += _REWRITES.get(token, (token,))
    return phones


def espeak_version() -> str:
    """`espeak-ng --version`'s first line (part of the cache key)."""
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip().split("  Data at")[0]


class EspeakPhonemizer:
    """espeak-ng's en-us IPA phones for each text, one espeak-ng process for a whole batch."""

    inventory = ESPEAK_EN_US_PHONES

    def __init__(self, voice: str = "en-us", batch: int = 500) -> None:
        if shutil.which("espeak-ng") is None:
            raise FileNotFoundError("espeak-ng is not installed (apt-get install espeak-ng)")
        self.voice = voice
        self.batch = batch

    def signature(self) -> dict[str, Any]:
        return {"backend": "espeak", "voice": self.voice, "version": espeak_version()}

    def phonemize(self, texts: Sequence[str]) -> list[str]:
        """Each text (lower-cased, so capitals are not read as acronyms) -> phone string.

        One espeak-ng process per `batch` texts, separated by blank lines and a marker clause.
        """
        out: list[str] = []
        for start in range(0, len(texts), self.batch):
            out += self._run(texts[start : start + self.batch])
        return out

    def _run(self, texts: Sequence[str]) -> list[str]:
        words = [normalize_text(t).lower() for t in texts]
        spoken = [w for w in words if w]
        if not spoken:
            return ["" for _ in words]
        # A line break is no clause boundary for espeak-ng, a blank line is. Between texts goes
        # a number (digits never survive normalize_text, so no transcript says it this way);
        # its phone line splits the output.
        payload = f"\n\n{_MARKER}\n\n".join(spoken) + "\n"
        marker_ipa = self._espeak(_MARKER).strip()
        groups: list[list[str]] = [[]]
        for line in self._espeak(payload).splitlines():
            if line.strip() == marker_ipa:
                groups.append([])
            elif line.strip():
                groups[-1].append(line)
        if len(groups) != len(spoken):
            raise RuntimeError(
                f"espeak-ng returned {len(groups)} texts for {len(spoken)}; cannot align them"
            )
        phones = iter(" ".join(normalize_espeak_ipa(" ".join(g))) for g in groups)
        return [next(phones) if w else "" for w in words]

    def _espeak(self, text: str) -> str:
        proc = subprocess.run(
            ["espeak-ng", "-q", "--ipa", "--sep=_", "-v", self.voice],
            input=text,
            capture_output=True,
            text=True,
            check=True,
        )
        return proc.stdout


def read_lexicon(path: str | os.PathLike, keep_stress: bool = False) -> dict[str, list[str]]:
    """A `WORD PH1 PH2 ...` lexicon (tabs or spaces) -> {WORD: phones}; first entry wins.

    Words are upper-cased and normalised like transcripts; ARPAbet stress digits are stripped
    unless `keep_stress`; blank lines and lines starting with ";;;" (CMUdict comments) skipped.
    """
    lexicon: dict[str, list[str]] = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.startswith(";;;"):
            continue
        word, *phones = line.split()
        if not phones:
            raise ValueError(f"{path}:{lineno}: expected WORD PHONE..., found {line!r}")
        word = re.sub(r"\(\d+\)$", "", word)  # CMUdict's alternates: WORD(2)
        key = normalize_text(word)
        if not keep_stress:
            phones = [_ARPABET_STRESS.sub(r"\1", p) for p in phones]
        lexicon.setdefault(key, phones)
    return lexicon


class LexiconPhonemizer:
    """Phones from a pronunciation lexicon; a text with an unknown word gets ""."""

    def __init__(self, path: str | os.PathLike, keep_stress: bool = False) -> None:
        self.path = Path(path)
        self.keep_stress = keep_stress
        self.lexicon = read_lexicon(self.path, keep_stress)
        self.inventory = tuple(sorted({p for ps in self.lexicon.values() for p in ps}))
        self.oov: set[str] = set()

    def signature(self) -> dict[str, Any]:
        digest = hashlib.sha1(self.path.read_bytes()).hexdigest()[:16]
        return {"backend": "lexicon", "lexicon_sha1": digest, "keep_stress": self.keep_stress}

    def phonemize(self, texts: Sequence[str]) -> list[str]:
        out = []
        for text in texts:
            words = normalize_text(text).split()
            missing = [w for w in words if w not in self.lexicon]
            self.oov.update(missing)
            out.append("" if missing else " ".join(p for w in words for p in self.lexicon[w]))
        return out


def build_phonemizer(config: PhonemizerConfig) -> EspeakPhonemizer | LexiconPhonemizer:
    """The phonemizer a config names."""
    if config.backend == "espeak":
        return EspeakPhonemizer(config.voice)
    assert config.lexicon is not None
    return LexiconPhonemizer(config.lexicon, config.keep_stress)


# ----------------------------------------------------------------------------- cache


def phonemize_texts(
    texts: Sequence[str],
    phonemizer: EspeakPhonemizer | LexiconPhonemizer,
    cache_dir: str | os.PathLike | None = None,
    name: str = "texts",
) -> list[str]:
    """Phone strings for `texts`, read from / written to a cache file in `cache_dir`.

    The file is `<name>-<hash>.json` with the hash over the phonemizer's signature and the
    texts, so a changed manifest or phonemizer never reads stale targets. Unique texts are
    phonemized once.
    """
    unique = sorted(set(texts))
    key = json.dumps({"phonemizer": phonemizer.signature(), "texts": unique}, ensure_ascii=False)
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{name}-{digest}.json" if cache_dir else None
    if path is not None and path.is_file():
        table = json.loads(path.read_text(encoding="utf-8"))["phones"]
    else:
        table = dict(zip(unique, phonemizer.phonemize(unique), strict=True))
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            record = {"phonemizer": phonemizer.signature(), "phones": table}
            tmp.write_text(json.dumps(record, ensure_ascii=False, indent=0) + "\n", "utf-8")
            os.replace(tmp, path)
    out = [table[t] for t in texts]
    empty = sum(1 for t, p in zip(texts, out, strict=True) if t.strip() and not p)
    inventory = set(phonemizer.inventory)
    unknown = sorted({p for s in out for p in s.split()} - inventory)
    if empty or unknown:
        logger.warning(
            "%s: %d transcripts without phones (out-of-lexicon words); phones outside the "
            "inventory, dropped: %s",
            name,
            empty,
            unknown[:20],
        )
    return out
