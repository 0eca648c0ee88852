"""Greedy CTC decoding with word timestamps: the one decoder of training, evaluation and serving."""

from __future__ import annotations

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


def greedy_ctc_decode(log_probs: Tensor, vocab: CharVocab, frame_seconds: float) -> Transcript:
    """Best path: argmax per frame, merge repeats, drop blanks; words from the frame alignment.

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
    best_logp, best = log_probs.detach().float().max(dim=-1)
    ids = best.tolist()
    probs = best_logp.exp().tolist()
    duration = len(ids) * frame_seconds

    words: list[WordTiming] = []
    chars: list[str] = []
    char_probs: list[float] = []
    start = end = 0
    prev = vocab.blank_id

    def flush() -> None:
        if chars:
            words.append(
                WordTiming(
                    word="".join(chars),
                    start=round(start * frame_seconds, 3),
                    end=round(end * frame_seconds, 3),
                    confidence=round(sum(char_probs) / len(char_probs), 4),
                )
            )
            chars.clear()
            char_probs.clear()

    for t, token in enumerate(ids):
        if token == prev:
            if chars and token != vocab.blank_id and token != vocab.word_sep_id:
                end = t + 1  # a held character extends the word
            continue
        prev = token
        if token == vocab.blank_id:
            continue
        if token == vocab.word_sep_id:
            flush()
            continue
        if not chars:
            start = t
        chars.append(vocab.tokens[token])
        char_probs.append(probs[t])
        end = t + 1
    flush()
    return Transcript(text=" ".join(w.word for w in words), words=words, duration=duration)


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
