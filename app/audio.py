"""Upload decoding: allowed containers/codecs -> mono float32 at 16 kHz, within a cost budget.

Every upload is hostile until decoded (design section 6b):
- Only the bytes given are read. The container is recognised from its magic bytes against an
  allow-list (`app/containers.py`); FFmpeg's prober never runs, the demuxer is named, and FFmpeg
  may open no protocol and no other demuxer, so playlists (concat, HLS, DASH), session
  descriptions (SDP) and references to other files are unreachable. Decoders are allow-listed.
- Cost is bounded per byte in. Sample rate and channel count must lie within bounds; the
  duration the header declares is checked before decoding; while decoding, blocks are counted
  (seconds and channel-samples) and decoding stops with 413 as soon as either passes its limit;
  each block is mixed to mono and resampled to 16 kHz at once (libsoxr, `app/resample.py`), so
  memory is the 16 kHz output plus one block, whatever the source rate; an optional deadline
  stops decoding that runs too long.
- Nothing is cut short silently. FLAC and Ogg are decoded to the end of the bytes (libsndfile
  would stop where a FLAC header's sample count or an Ogg chain's first link ends); audio over
  the limit is a 413 that states its real length when the container lets it be counted.

WAV, AIFF, W64 and CAF take libsndfile (fast, exact); everything else PyAV. Synchronous: call
from a thread pool, not the event loop.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import struct
import time
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch

from app.containers import SAFE_DEMUXER_OPTIONS, Container, codec_allowed, sniff_container
from app.errors import (
    AudioDecodeError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnsupportedMediaError,
)
from app.resample import TARGET_SAMPLE_RATE, Resampler

logger = logging.getLogger(__name__)

#: One 20 ms model frame needs 400 samples (the CNN's receptive field) at 16 kHz.
MIN_SAMPLES = 400
_SF_BLOCK = 1 << 16
_ALLOWED_TYPES = {"application/octet-stream", "application/ogg", "binary/octet-stream"}


@dataclass(frozen=True)
class DecodeLimits:
    """What one upload may cost to decode (the service builds it from `Settings`).

    Attributes:
        max_seconds: longest audio (413 beyond).
        min_sample_rate, max_sample_rate: accepted source rates in Hz (400 outside).
        max_channels: most channels (400 beyond).
        max_decoded_samples: most samples decoded over all channels, frames x channels (413
            beyond): the decoder's work, which seconds alone do not bound (a 192 kHz
            8-channel file decodes 96x the samples of 16 kHz mono for the same duration).
        deadline: `time.monotonic()` value by which decoding must end (504 after), or None.
    """

    max_seconds: float = 600.0
    min_sample_rate: int = 8_000
    max_sample_rate: int = 192_000
    max_channels: int = 8
    max_decoded_samples: int = 115_200_000
    deadline: float | None = None


@dataclass
class DecodedAudio:
    """A decoded upload.

    Attributes:
        waveform: (S,) float32 mono at 16 kHz.
        sample_rate: 16000.
        source_format: container found (e.g. "wav", "mp3", "matroska").
        source_sample_rate: the file's sample rate (the first one, for chained streams).
        channels: the file's channel count before downmixing (the most seen).
    """

    waveform: torch.Tensor
    sample_rate: int
    source_format: str
    source_sample_rate: int
    channels: int

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.waveform.numel() / self.sample_rate


def check_content_type(content_type: str | None, param: str = "file") -> None:
    """Reject uploads whose declared media type is plainly not audio (415).

    Accepted: missing, audio/*, video/* (webm/mp4 carry audio), application/ogg and the
    generic octet-stream types clients send when they do not know.
    """
    if not content_type:
        return
    media = content_type.split(";")[0].strip().lower()
    if media.startswith(("audio/", "video/")) or media in _ALLOWED_TYPES:
        return
    raise UnsupportedMediaError(
        f"unsupported media type {media!r}: expected an audio file (audio/*)",
        param=param,
        reason="unsupported_media",
    )


class _TooLong(Exception):
    """Internal: decoding passed `max_seconds`; the caller measures the real length."""

    def __init__(self, decoded_seconds: float) -> None:
        super().__init__(decoded_seconds)
        self.decoded_seconds = decoded_seconds


def _too_long(seconds: float, limit: float, param: str, *, how: str) -> PayloadTooLargeError:
    """413 error. `how`: 'declared' (a header's claim), 'measured' or 'at_least'."""
    if how == "declared":
        message = f"audio declares {seconds:.1f} s, over the limit of {limit:g} s"
    elif how == "measured":
        message = f"audio is {seconds:.1f} s long, over the limit of {limit:g} s"
    else:
        message = f"audio is longer than the limit of {limit:g} s (at least {seconds:.1f} s)"
    return PayloadTooLargeError(message, param=param, reason="too_long")


class _Sink:
    """Takes decoded blocks (C, n) at some rate; checks the limits; keeps mono 16 kHz only."""

    def __init__(self, limits: DecodeLimits, param: str) -> None:
        self.limits = limits
        self.param = param
        self.seconds = 0.0
        self.channel_samples = 0
        self.first_rate = 0
        self.max_channels = 0
        self._resampler: Resampler | None = None
        self._out: list[np.ndarray] = []

    def check_format(self, rate: int, channels: int) -> None:
        """400 for a sample rate or channel count outside the bounds."""
        lim = self.limits
        if not lim.min_sample_rate <= rate <= lim.max_sample_rate:
            raise AudioDecodeError(
                f"sample rate {rate} Hz is outside the supported range "
                f"{lim.min_sample_rate}-{lim.max_sample_rate} Hz",
                param=self.param,
                reason="sample_rate",
            )
        if not 1 <= channels <= lim.max_channels:
            raise AudioDecodeError(
                f"{channels} channels: between 1 and {lim.max_channels} are supported",
                param=self.param,
                reason="channels",
            )

    def check_declared(self, seconds: float, rate: int, channels: int, how: str) -> None:
        """413 before decoding when a header's length passes the duration or sample limit."""
        lim = self.limits
        if seconds > lim.max_seconds:
            raise _too_long(seconds, lim.max_seconds, self.param, how=how)
        self._check_samples(seconds * rate * channels, rate, channels)

    def _check_samples(self, count: float, rate: int, channels: int) -> None:
        limit = self.limits.max_decoded_samples
        if count > limit:
            raise PayloadTooLargeError(
                f"audio decodes to more than {limit} samples (frames x channels; this file: "
                f"{channels} channels at {rate} Hz); send it at a lower sample rate or in mono",
                param=self.param,
                reason="too_many_samples",
            )

    def add(self, block: np.ndarray, rate: int) -> None:
        """One block of decoded float32 samples, channels first: (C, n)."""
        channels, n = block.shape
        self.check_format(rate, channels)
        lim = self.limits
        if lim.deadline is not None and time.monotonic() > lim.deadline:
            raise RequestTimeoutError("request not processed in time (while decoding)")
        self.channel_samples += channels * n
        self._check_samples(self.channel_samples, rate, channels)
        self.seconds += n / rate
        if self.seconds > lim.max_seconds:
            raise _TooLong(self.seconds)
        mono = block.mean(axis=0, dtype=np.float32) if channels > 1 else block[0]
        if not np.isfinite(mono).all():
            raise AudioDecodeError(
                "the audio contains NaN or infinite samples", param=self.param, reason="non_finite"
            )
        self.first_rate = self.first_rate or rate
        self.max_channels = max(self.max_channels, channels)
        if self._resampler is None or self._resampler.in_rate != rate:
            # A chained stream may change rate: close the old filter, start another.
            self._flush()
            self._resampler = Resampler(rate)
        self._out.append(self._resampler.push(mono))

    def _flush(self) -> None:
        if self._resampler is not None:
            self._out.append(self._resampler.flush())

    def finish(self, fmt: str) -> DecodedAudio:
        """The mono 16 kHz waveform; 400 when empty or shorter than one model frame."""
        self._flush()
        if self.channel_samples == 0:
            raise AudioDecodeError(
                "the file contains no audio samples", param=self.param, reason="empty"
            )
        samples = np.concatenate(self._out) if self._out else np.zeros(0, np.float32)
        if not np.isfinite(samples).all():  # finite input of absurd size can still overflow
            raise AudioDecodeError(
                "the audio's sample values are out of range", param=self.param, reason="non_finite"
            )
        if samples.size < MIN_SAMPLES:
            raise AudioDecodeError(
                f"audio too short: {samples.size} samples at 16 kHz, need at least "
                f"{MIN_SAMPLES} (25 ms)",
                param=self.param,
                reason="too_short",
            )
        waveform = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
        return DecodedAudio(
            waveform, TARGET_SAMPLE_RATE, fmt, self.first_rate, max(self.max_channels, 1)
        )


def decode_audio(
    data: bytes,
    limits: DecodeLimits | None = None,
    *,
    max_seconds: float | None = None,
    param: str = "file",
) -> DecodedAudio:
    """Decode an upload to mono float32 at 16 kHz within `limits`.

    Args:
        data: the uploaded bytes (nothing else is ever read).
        limits: the cost budget (defaults: `DecodeLimits()`).
        max_seconds: overrides `limits.max_seconds`.

    Raises:
        UnsupportedMediaError (415): not an allowed container or codec.
        AudioDecodeError (400): empty, undecodable, truncated, no audio stream, NaN/inf
            samples, sample rate or channels out of bounds, shorter than one frame.
        PayloadTooLargeError (413): declared or decoded duration over the limit, or more
            decoded samples than allowed.
        RequestTimeoutError (504): `limits.deadline` passed while decoding.
    """
    limits = limits or DecodeLimits()
    if max_seconds is not None:
        limits = dataclasses.replace(limits, max_seconds=max_seconds)
    if not data:
        raise AudioDecodeError("the uploaded file is empty", param=param, reason="empty")
    container = sniff_container(data, param)
    if container.name == "wav":
        _check_wav_header(data, limits.max_seconds, param)
    if container.soundfile:
        decoded = _decode_soundfile(data, container, limits, param)
        if decoded is not None:
            return decoded
    return _decode_pyav(data, container, limits, param)


def _check_wav_header(data: bytes, max_seconds: float, param: str) -> None:
    """413 when a RIFF/WAVE header's data chunk claims more than `max_seconds`.

    libsndfile clamps a lying data-chunk size to the bytes present, so the claim is read here.
    Sizes 0 and 0xFFFFFFFF mean "unknown" (streamed WAV) and are left to the decoder.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return
    pos, byte_rate = 12, 0
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk_id == b"fmt " and pos + 20 <= len(data):
            byte_rate = struct.unpack("<I", data[pos + 16 : pos + 20])[0]
        elif chunk_id == b"data":
            if byte_rate > 0 and size not in (0, 0xFFFFFFFF):
                seconds = size / byte_rate
                if seconds > max_seconds:
                    raise _too_long(seconds, max_seconds, param, how="declared")
            return
        pos += 8 + size + (size & 1)


def _decode_soundfile(
    data: bytes, container: Container, limits: DecodeLimits, param: str
) -> DecodedAudio | None:
    """libsndfile for WAV/AIFF/W64/CAF; None when it cannot open the file (try PyAV)."""
    try:
        f = sf.SoundFile(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, ValueError):
        return None  # e.g. WAV with a codec libsndfile lacks (MP3-in-WAV): PyAV decides
    sink = _Sink(limits, param)
    try:
        with f:
            rate, channels, frames = f.samplerate, f.channels, f.frames
            sink.check_format(rate, channels)
            # libsndfile's frame count is what the bytes hold (it clamps lying headers).
            if 0 < frames < (1 << 62):
                sink.check_declared(frames / rate, rate, channels, how="measured")
            while True:
                block = f.read(_SF_BLOCK, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                sink.add(block.T, rate)
    except _TooLong as exc:
        raise _too_long(exc.decoded_seconds, limits.max_seconds, param, how="at_least") from None
    except sf.LibsndfileError as exc:
        raise AudioDecodeError(
            f"could not decode the audio ({exc.error_string or exc})",
            param=param,
            reason="corrupt",
        ) from exc
    return sink.finish(container.name)


def _declared_seconds(container, stream) -> float | None:
    """Duration the container or stream header claims, if any."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000
    return None


def _remaining_seconds(container, stream, deadline: float | None) -> float | None:
    """Seconds in the packets not yet read (demuxed, not decoded); None if not countable."""
    total = 0.0
    for packet in container.demux(stream):
        if deadline is not None and time.monotonic() > deadline:
            return None
        if packet.size == 0:
            continue
        if packet.duration is None or packet.time_base is None:
            return None
        total += float(packet.duration * packet.time_base)
    return total


def _planar_float(frame) -> np.ndarray:
    """An audio frame's samples as float32 (C, n) in [-1, 1], whatever its sample format.

    Done here rather than with a PyAV resampler, which is fixed to the first frame's rate and
    layout (a chained Ogg stream may change both).
    """
    array = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:  # packed: (1, n * C), interleaved
        array = array.reshape(-1, channels).T
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    if array.dtype.kind == "u":  # u8: midpoint 128
        half = float(1 << (8 * array.dtype.itemsize - 1))
        return (array.astype(np.float32) - half) / half
    return array.astype(np.float32) / float(1 << (8 * array.dtype.itemsize - 1))


def _decode_pyav(data: bytes, found: Container, limits: DecodeLimits, param: str) -> DecodedAudio:
    """PyAV with the demuxer forced and the safe options (`app/containers.py`)."""
    import av

    try:
        container = av.open(
            io.BytesIO(data),
            mode="r",
            format=found.demuxer,
            container_options=SAFE_DEMUXER_OPTIONS,
            metadata_errors="ignore",
        )
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise AudioDecodeError(
            f"could not read the file as {found.name}: corrupt or unsupported",
            param=param,
            reason="undecodable",
        ) from exc
    sink = _Sink(limits, param)
    with container:
        if not container.streams.audio:
            raise AudioDecodeError(
                "the file has no audio stream", param=param, reason="no_audio_stream"
            )
        stream = container.streams.audio[0]
        context = stream.codec_context
        codec = context.codec.name if context is not None and context.codec else "unknown"
        if not codec_allowed(codec):
            raise UnsupportedMediaError(
                f"unsupported audio codec {codec!r}", param=param, reason="unsupported_codec"
            )
        rate, channels = context.sample_rate or 0, context.channels
        if rate > 0 and channels > 0:  # else known only from the frames (checked there)
            sink.check_format(rate, channels)
        declared = _declared_seconds(container, stream)
        if declared is not None:
            sink.check_declared(declared, max(rate, 1), max(channels, 1), how="declared")
        try:
            for frame in container.decode(stream):
                sink.add(_planar_float(frame), frame.sample_rate)
        except _TooLong as exc:
            rest = _remaining_seconds(container, stream, limits.deadline)
            if rest is None:
                raise _too_long(
                    exc.decoded_seconds, limits.max_seconds, param, how="at_least"
                ) from None
            raise _too_long(
                exc.decoded_seconds + rest, limits.max_seconds, param, how="measured"
            ) from None
        except av.FFmpegError as exc:
            raise AudioDecodeError(
                f"could not decode the audio stream ({exc})", param=param, reason="corrupt"
            ) from exc
    return sink.finish(found.name)
