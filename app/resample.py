"""Sample-rate conversion to the model's 16 kHz with libsoxr (the `soxr` binding).

libsoxr's cost is linear in the input for any pair of rates: a rate whose ratio to 16 kHz does
not reduce (16001 Hz, 44101 Hz, a prime) costs what 44.1 kHz costs. The polyphase resampler
this replaced (`torchaudio.functional.resample`) builds a kernel per reduced ratio, which for
such rates asked for gigabytes (benchmarks and tests: `tests/test_audio_limits.py`).

`Resampler` is the streaming form: blocks in, blocks out, state carried between them, and the
same samples as the one-shot `resample` (libsoxr guarantees it; tested). Uploads are resampled
block by block as they are decoded, so a request never holds its audio at the source rate.
The realtime route can share `new_stream`'s settings.
"""

from __future__ import annotations

import numpy as np
import soxr

#: The model's sample rate.
TARGET_SAMPLE_RATE = 16_000
#: libsoxr's "high quality" preset: 20-bit precision, passband to 91% of Nyquist.
QUALITY = "HQ"


def new_stream(in_rate: int, out_rate: int = TARGET_SAMPLE_RATE) -> soxr.ResampleStream:
    """A mono float32 libsoxr stream with the service's quality settings."""
    return soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality=QUALITY)


def resample(samples: np.ndarray, in_rate: int, out_rate: int = TARGET_SAMPLE_RATE) -> np.ndarray:
    """One-shot conversion of mono float32 samples (N,) -> (M,), M ~= N * out_rate / in_rate.

    Identity (the same array) when the rates match.
    """
    if in_rate == out_rate:
        return samples
    return soxr.resample(
        np.ascontiguousarray(samples, dtype=np.float32), in_rate, out_rate, QUALITY
    )


class Resampler:
    """Blocks of mono float32 at `in_rate` -> blocks at `out_rate`, memory bounded by a block.

    Pass-through (no copy, no filter) when the rates match, so 16 kHz input stays bit-exact.
    """

    def __init__(self, in_rate: int, out_rate: int = TARGET_SAMPLE_RATE) -> None:
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream = None if in_rate == out_rate else new_stream(in_rate, out_rate)

    def push(self, block: np.ndarray) -> np.ndarray:
        """Resample one block (N,) float32; returns what is ready so far (may be empty)."""
        if self._stream is None:
            return block
        return self._stream.resample_chunk(np.ascontiguousarray(block, dtype=np.float32))

    def flush(self) -> np.ndarray:
        """The samples still held in the filter; call once at the end."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        return self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
