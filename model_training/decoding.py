"""CTC decoding with word timestamps: the one decoder module of training, evaluation, serving and
streaming.

- Greedy (best path): frames pushed chunk by chunk give the same transcript, append-only; the
  streaming path and every model without a language model use it.
- Lexicon + word n-gram LM beam search (flashlight's decoder through torchaudio, KenLM reading
  an ARPA file): words come only from the LM's vocabulary and the LM scores word sequences.
  A bundle that ships an LM (`config.json` "decoder") decodes whole utterances with it.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model_training.text import CharVocab

logger = logging.getLogger(__name__)


@dataclass
class WordTiming:
    """A decoded word with its time span in seconds and mean per-character probability."""

    word: str
    start: float
    end: float
    confidence: float


@dataclass
class Transcript:
    """Decoded text, its words with timestamps, and the audio duration in seconds."""

    text: str
    words: list[WordTiming] = field(default_factory=list)
    duration: float = 0.0


@dataclass
class CharEmission:
    """A character the moment greedy CTC emits it: its frame, time in seconds, probability,
    and the text it appended (the character, after a space when it starts a later word)."""

    char: str
    frame: int
    time: float
    prob: float
    text: str


@dataclass
class DecodeStep:
    """What one `GreedyCTCDecoder.push` (or `finish`) added.

    Attributes:
        text: appended to the transcript (append-only: every step's text joined is the text).
        chars: characters emitted, in order.
        words: words that became final (a word is final at the next word separator or at the
            end of the stream, since a held character still extends its end time).
    """

    text: str = ""
    chars: list[CharEmission] = field(default_factory=list)
    words: list[WordTiming] = field(default_factory=list)


class GreedyCTCDecoder:
    """Greedy CTC decoding of frames pushed in order, one call or many: the one decoder.

    Best path: argmax per frame, merge repeats, drop blanks; words from the frame alignment.
    Pushing a stream's frames in any split gives the same transcript as pushing them at once,
    and what `push` returned is never taken back.
    """

    def __init__(self, vocab: CharVocab, frame_seconds: float) -> None:
        self.vocab = vocab
        self.frame_seconds = frame_seconds
        self.words: list[WordTiming] = []
        self.frames = 0
        self._prev = vocab.blank_id
        self._chars: list[str] = []
        self._char_probs: list[float] = []
        self._start = self._end = 0
        self._finished = False

    def push(self, ids: Sequence[int], probs: Sequence[float]) -> DecodeStep:
        """Add frames: best token id and its probability per frame, in time order."""
        if self._finished:
            raise RuntimeError("push after finish(): start a new decoder for a new stream")
        vocab, step = self.vocab, DecodeStep()
        pieces: list[str] = []
        for offset, (token, prob) in enumerate(zip(ids, probs, strict=True)):
            t = self.frames + offset
            if token == self._prev:
                if self._chars and token not in (vocab.blank_id, vocab.word_sep_id):
                    self._end = t + 1  # a held character extends the word
                continue
            self._prev = token
            if token == vocab.blank_id:
                continue
            if token == vocab.word_sep_id:
                self._flush(step)
                continue
            char = vocab.tokens[token]
            piece = char
            if not self._chars:
                self._start = t
                if self.words:
                    piece = " " + char
            pieces.append(piece)
            self._chars.append(char)
            self._char_probs.append(prob)
            self._end = t + 1
            time = round(t * self.frame_seconds, 3)
            step.chars.append(CharEmission(char, t, time, prob, piece))
        self.frames += len(ids)
        step.text = "".join(pieces)
        return step

    def finish(self) -> DecodeStep:
        """End of the stream: the word in progress becomes final."""
        step = DecodeStep()
        self._flush(step)
        self._finished = True
        return step

    @property
    def text(self) -> str:
        """Everything emitted so far, the word in progress included."""
        done = " ".join(w.word for w in self.words)
        partial = "".join(self._chars)
        return f"{done} {partial}" if done and partial else done or partial

    def transcript(self) -> Transcript:
        """The final words so far as a `Transcript` (call `finish` first for all of them)."""
        return Transcript(
            text=" ".join(w.word for w in self.words),
            words=list(self.words),
            duration=self.frames * self.frame_seconds,
        )

    def _flush(self, step: DecodeStep) -> None:
        if not self._chars:
            return
        word = WordTiming(
            word="".join(self._chars),
            start=round(self._start * self.frame_seconds, 3),
            end=round(self._end * self.frame_seconds, 3),
            confidence=round(sum(self._char_probs) / len(self._char_probs), 4),
        )
        self.words.append(word)
        step.words.append(word)
        self._chars.clear()
        self._char_probs.clear()


def best_path(log_probs: Tensor) -> tuple[list[int], list[float]]:
    """(T, V) log-probs -> per frame the argmax id and its probability, as Python lists."""
    best_logp, best = log_probs.detach().float().max(dim=-1)
    return best.tolist(), best_logp.exp().tolist()


def greedy_ctc_decode(log_probs: Tensor, vocab: CharVocab, frame_seconds: float) -> Transcript:
    """Decode one utterance at once (see `GreedyCTCDecoder`).

    Args:
        log_probs: (T, V) log-probabilities of the valid frames of one utterance.
        vocab: the vocabulary the head was trained with (V entries).
        frame_seconds: seconds per frame (0.02 for 50 Hz).
    Returns:
        A `Transcript`; a word starts at the first frame of its first character and ends after
        the last frame of its last character, so times are monotonic and inside the audio.
    """
    if log_probs.dim() != 2 or log_probs.shape[1] != len(vocab):
        raise ValueError(
            f"expected log_probs of shape (T, {len(vocab)}), found {tuple(log_probs.shape)}"
        )
    decoder = GreedyCTCDecoder(vocab, frame_seconds)
    decoder.push(*best_path(log_probs))
    decoder.finish()
    return decoder.transcript()


def greedy_ctc_decode_batch(
    log_probs: Tensor, lengths: Tensor, vocab: CharVocab, frame_seconds: float
) -> list[Transcript]:
    """log_probs: (B, T, V); lengths: (B,) valid frames -> one `Transcript` per item."""
    decoder = partial(greedy_ctc_decode, vocab=vocab, frame_seconds=frame_seconds)
    return decode_batch(decoder, log_probs, lengths)


# ----------------------------------------------------------------------------- lexicon + LM

# What `decoder.type` names in a bundle's config.json.
LM_DECODER_TYPE = "lexicon_lm"
UtteranceDecoder = Callable[[Tensor], Transcript]  # (T, V) log-probs -> Transcript


# hypotheses kept per frame unless told otherwise: on the demo default, 500 is what a wider beam
# buys (50 -> 500: unseen Kokoro WER 40.3 -> 36.1, 1000: 36.1) at a decoding RTF of ~0.06 on
# one core (benchmarks/results/lm_beam.md)
DEFAULT_BEAM_SIZE = 500


@dataclass(frozen=True)
class LMDecoderConfig:
    """Beam search settings; `lm` is an ARPA file (.arpa or .arpa.gz), relative to the bundle.

    `lm_weight` scales the LM's log-probability, `word_score` is added per word (both tuned on
    dev), `beam_size` hypotheses are kept per frame."""

    lm: str
    lm_weight: float = 2.0
    word_score: float = 0.0
    beam_size: int = DEFAULT_BEAM_SIZE

    def to_dict(self) -> dict[str, Any]:
        return {"type": LM_DECODER_TYPE, **asdict(self)}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> LMDecoderConfig:
        if spec.get("type") != LM_DECODER_TYPE:
            raise ValueError(
                f"unknown decoder type {spec.get('type')!r} (known: {LM_DECODER_TYPE})"
            )
        return cls(
            lm=str(spec["lm"]),
            lm_weight=float(spec.get("lm_weight", 2.0)),
            word_score=float(spec.get("word_score", 0.0)),
            beam_size=int(spec.get("beam_size", DEFAULT_BEAM_SIZE)),
        )


def arpa_words(path: str | os.PathLike) -> list[str]:
    """The words of an ARPA file's unigram section (<s>, </s> and <unk> left out)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    words: list[str] = []
    in_unigrams = False
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                in_unigrams = True
            elif in_unigrams and line.startswith("\\"):
                break
            elif in_unigrams and line:
                word = line.split("\t")[1] if "\t" in line else line.split()[1]
                if word not in ("<s>", "</s>", "<unk>"):
                    words.append(word)
    if not words:
        raise ValueError(f"{path} has no unigrams: not an ARPA language model")
    return words


@contextmanager
def native_output_logged(what: str) -> Iterator[None]:
    """Capture what C/C++ code writes to the process's stdout/stderr inside the block and log
    it as one record: DEBUG when the block succeeds, WARNING when it raises."""
    import wurlitzer

    captured = io.StringIO()
    failed = True
    try:
        with wurlitzer.pipes(stdout=captured, stderr=wurlitzer.STDOUT):
            yield
        failed = False
    finally:
        if text := " ".join(captured.getvalue().split()):
            logger.log(logging.WARNING if failed else logging.DEBUG, "%s: %s", what, text)


class LexiconLMDecoder:
    """CTC beam search constrained to a lexicon and scored by a word n-gram LM.

    The lexicon is the LM's vocabulary spelled in the CTC characters (words with other
    characters are left out). Decoding is serialised by a lock: flashlight's decoder keeps
    per-call state, and one decoder serves every request of a bundle.
    """

    def __init__(
        self,
        vocab: CharVocab,
        lm_path: str | os.PathLike,
        frame_seconds: float,
        config: LMDecoderConfig,
    ) -> None:
        from torchaudio.models.decoder import ctc_decoder

        self.vocab = vocab
        self.frame_seconds = frame_seconds
        self.config = config
        letters = set(vocab.tokens[1:]) - {vocab.tokens[vocab.word_sep_id]}
        words = [w for w in arpa_words(lm_path) if set(w) <= letters]
        sep = vocab.tokens[vocab.word_sep_id]
        with tempfile.NamedTemporaryFile("w", suffix=".lexicon", delete=False) as f:
            for word in words:
                f.write(f"{word}\t{' '.join(word)} {sep}\n")
        try:
            # KenLM writes its ARPA progress bar to the C-level stderr: logged instead, so a
            # service's log stream stays one JSON record per line
            with native_output_logged(f"KenLM loading {lm_path}"):
                self._decoder = ctc_decoder(
                    lexicon=f.name,
                    tokens=list(vocab.tokens),
                    lm=str(lm_path),
                    beam_size=config.beam_size,
                    lm_weight=config.lm_weight,
                    word_score=config.word_score,
                    blank_token=vocab.tokens[vocab.blank_id],
                    sil_token=sep,
                    unk_word="<unk>",
                )
        finally:
            os.unlink(f.name)
        self._lock = threading.Lock()

    def __call__(self, log_probs: Tensor) -> Transcript:
        """(T, V) log-probabilities of one utterance -> its best `Transcript`."""
        if log_probs.dim() != 2 or log_probs.shape[1] != len(self.vocab):
            raise ValueError(
                f"expected log_probs of shape (T, {len(self.vocab)}), "
                f"found {tuple(log_probs.shape)}"
            )
        emissions = log_probs.detach().float().cpu().contiguous()
        transcript = Transcript(text="", duration=emissions.shape[0] * self.frame_seconds)
        if emissions.shape[0] == 0:
            return transcript
        # The lexicon spells every word with a closing separator, but CTC targets have none
        # after the last word: the model gives "|" ~e^-25 at the end, and the search would
        # rather drop the last word than pay it. One closing frame of certain "|" ends the
        # utterance at a word boundary (timings keep to the real frames below).
        closing = torch.full((1, emissions.shape[1]), -1e4)
        closing[0, self.vocab.word_sep_id] = 0.0
        with self._lock:
            best = self._decoder(torch.cat([emissions, closing]).unsqueeze(0))[0][0]
        probs = emissions.exp()
        spelled: list[WordTiming] = []  # every letter run of the best token path, timed
        chars: list[tuple[str, int, float]] = []
        for token, t in zip(best.tokens.tolist(), best.timesteps.tolist(), strict=True):
            if token in (self.vocab.word_sep_id, self.vocab.blank_id):
                self._add_word(spelled, chars)
                continue
            frame = min(int(t), emissions.shape[0] - 1)
            chars.append((self.vocab.tokens[token], frame, float(probs[frame, token])))
        self._add_word(spelled, chars)
        # The path can end inside a word that the lexicon never completed: the decoder's words
        # are the transcript, each timed by its letter run.
        runs = iter(spelled)
        for word in best.words:
            timing = next((r for r in runs if r.word == word), None)
            if timing is None:  # not expected; keep the word, timed at the end
                end = round(emissions.shape[0] * self.frame_seconds, 3)
                timing = WordTiming(word, end, end, 0.0)
            transcript.words.append(timing)
        transcript.text = " ".join(w.word for w in transcript.words)
        return transcript

    def _add_word(self, words: list[WordTiming], chars: list[tuple[str, int, float]]) -> None:
        if not chars:
            return
        words.append(
            WordTiming(
                word="".join(c for c, _, _ in chars),
                start=round(chars[0][1] * self.frame_seconds, 3),
                end=round((chars[-1][1] + 1) * self.frame_seconds, 3),
                confidence=round(sum(p for _, _, p in chars) / len(chars), 4),
            )
        )
        chars.clear()


def make_decoder(
    vocab: CharVocab,
    frame_seconds: float,
    spec: dict[str, Any] | None = None,
    root: str | os.PathLike | None = None,
) -> UtteranceDecoder:
    """The utterance decoder a bundle's "decoder" entry asks for: greedy when `spec` is None,
    else `LexiconLMDecoder` with the LM at `root / spec["lm"]`."""
    if not spec:
        return partial(greedy_ctc_decode, vocab=vocab, frame_seconds=frame_seconds)
    config = LMDecoderConfig.from_dict(spec)
    lm_path = Path(root or ".") / config.lm
    if not lm_path.is_file():
        raise FileNotFoundError(f"the decoder's language model {lm_path} is missing")
    return LexiconLMDecoder(vocab, lm_path, frame_seconds, config)


def decode_batch(decoder: UtteranceDecoder, log_probs: Tensor, lengths: Tensor) -> list[Transcript]:
    """log_probs: (B, T, V); lengths: (B,) valid frames -> one `Transcript` per item."""
    with torch.no_grad():
        return [decoder(log_probs[b, : int(n)]) for b, n in enumerate(lengths.tolist())]
