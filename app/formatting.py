"""Transcript -> response bodies: segments, OpenAI json / verbose_json, SRT and WebVTT."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

from model_training.decoding import Transcript, WordTiming

#: A pause longer than this between two words starts a new segment.
SEGMENT_PAUSE_S = 0.5
#: Segments are also cut when they would get longer than this.
SEGMENT_MAX_S = 15.0
SEGMENT_MAX_WORDS = 40


@dataclass
class Segment:
    """A run of words: id, times in seconds, text, and the words themselves."""

    id: int
    start: float
    end: float
    words: list[WordTiming]

    @property
    def text(self) -> str:
        return " ".join(w.word for w in self.words)


def segment_words(
    words: list[WordTiming],
    *,
    pause_s: float = SEGMENT_PAUSE_S,
    max_seconds: float = SEGMENT_MAX_S,
    max_words: int = SEGMENT_MAX_WORDS,
) -> list[Segment]:
    """Split a word sequence at pauses over `pause_s`, or before exceeding the size limits."""
    segments: list[Segment] = []
    current: list[WordTiming] = []
    for word in words:
        if current and (
            word.start - current[-1].end > pause_s
            or word.end - current[0].start > max_seconds
            or len(current) >= max_words
        ):
            segments.append(Segment(len(segments), current[0].start, current[-1].end, current))
            current = []
        current.append(word)
    if current:
        segments.append(Segment(len(segments), current[0].start, current[-1].end, current))
    return segments


def _compression_ratio(text: str) -> float:
    raw = text.encode("utf-8")
    return round(len(raw) / len(zlib.compress(raw)), 4) if raw else 0.0


def _avg_logprob(words: list[WordTiming]) -> float:
    if not words:
        return 0.0
    return round(sum(math.log(max(w.confidence, 1e-9)) for w in words) / len(words), 4)


def json_body(transcript: Transcript) -> dict:
    """OpenAI `json` response."""
    return {
        "text": transcript.text,
        "usage": {"type": "duration", "seconds": math.ceil(transcript.duration)},
    }


def verbose_json_body(
    transcript: Transcript, *, include_words: bool, include_segments: bool
) -> dict:
    """OpenAI `verbose_json`: task, language, duration, text, segments, words (on request)."""
    body: dict = {
        "task": "transcribe",
        "language": "english",
        "duration": round(transcript.duration, 3),
        "text": transcript.text,
    }
    if include_segments:
        body["segments"] = [
            {
                "id": s.id,
                "seek": 0,
                "start": s.start,
                "end": s.end,
                "text": s.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": _avg_logprob(s.words),
                "compression_ratio": _compression_ratio(s.text),
                "no_speech_prob": 0.0,
            }
            for s in segment_words(transcript.words)
        ]
    if include_words:
        body["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in transcript.words]
    body["usage"] = {"type": "duration", "seconds": math.ceil(transcript.duration)}
    return body


def _timestamp(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt_body(transcript: Transcript) -> str:
    """SubRip subtitles, one cue per segment (empty string when nothing was recognised)."""
    cues = [
        f"{s.id + 1}\n{_timestamp(s.start, ',')} --> {_timestamp(s.end, ',')}\n{s.text}\n"
        for s in segment_words(transcript.words)
    ]
    return "\n".join(cues)


def vtt_body(transcript: Transcript) -> str:
    """WebVTT subtitles, one cue per segment."""
    cues = [
        f"{_timestamp(s.start, '.')} --> {_timestamp(s.end, '.')}\n{s.text}\n"
        for s in segment_words(transcript.words)
    ]
    return "WEBVTT\n\n" + "\n".join(cues)
