"""Greedy CTC decoding with word timestamps: the one decoder of training, evaluation, serving and
streaming (frames pushed chunk by chunk give the same transcript, append-only)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from model_training.text import CharVocab


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
    lengths_list = lengths.tolist()
    with torch.no_grad():
        return [
            greedy_ctc_decode(log_probs[b, : int(n)], vocab, frame_seconds)
            for b, n in enumerate(lengths_list)
        ]
