"""Raw PCM16 for live audio: base64 decoding with checks, and a resampler that keeps its state.

Realtime clients send little-endian 16-bit mono PCM in base64, at 24 kHz by OpenAI's
definition (16 kHz is accepted too). A chunk boundary must not change the audio the model
sees, so 24 kHz goes through soxr's streaming resampler (`soxr.ResampleStream`, with the
upload path's settings: `app.resample.new_stream`), which carries its filter state from chunk
to chunk; flushing at a commit gives the same samples as resampling the whole buffer at once.
Everything here is numpy/C (no torch operator), cheap enough for the event loop: decoding and
resampling 100 ms takes tens of microseconds.
"""

from __future__ import annotations

import base64
import binascii

import numpy as np

from app.resample import TARGET_SAMPLE_RATE, new_stream

MODEL_RATE = TARGET_SAMPLE_RATE
#: PCM sample rates a realtime session accepts.
SUPPORTED_RATES = (16_000, 24_000)


class PCMError(ValueError):
    """The audio payload is not valid base64 PCM16 mono."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def decode_pcm16(payload: object, max_bytes: int) -> np.ndarray:
    """base64 little-endian PCM16 -> (S,) float32 in [-1, 1).

    Raises:
        PCMError: not a string, over `max_bytes` of base64 text, invalid base64, or an odd
            number of bytes (half a sample).
    """
    if not isinstance(payload, str):
        raise PCMError("audio must be a base64 string", "invalid_value")
    if len(payload) > max_bytes:
        raise PCMError(
            f"audio of {len(payload)} base64 bytes is over the limit of {max_bytes} per event",
            "audio_too_large",
        )
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise PCMError("audio is not valid base64", "invalid_base64") from None
    if len(raw) % 2:
        raise PCMError(
            f"PCM16 audio needs an even number of bytes, found {len(raw)}", "invalid_audio"
        )
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


class StreamResampler:
    """Chunks at `rate` in, chunks at 16 kHz out, continuous across chunks (identity at 16k)."""

    def __init__(self, rate: int) -> None:
        if rate not in SUPPORTED_RATES:
            raise ValueError(f"sample rate must be one of {SUPPORTED_RATES}, found {rate}")
        self.rate = rate
        self._stream = new_stream(rate, MODEL_RATE) if rate != MODEL_RATE else None

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        """(S,) float32 at `rate` -> (S',) float32 at 16 kHz (soxr holds back its filter delay)."""
        if self._stream is None:
            return chunk
        return self._stream.resample_chunk(chunk)

    def flush(self) -> np.ndarray:
        """The held-back tail at the end of a buffer; the resampler then starts afresh."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream.clear()
        return tail
