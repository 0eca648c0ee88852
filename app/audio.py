"""Upload decoding: any common container/codec -> mono float32 at 16 kHz, within limits.

Formats libsndfile reads natively (WAV, FLAC, AIFF, Ogg) take the soundfile fast path; the rest
(mp3, webm, m4a, opus in Matroska, ...) go through PyAV. Both paths check the duration the
header or container declares before decoding anything (413 without allocating for a header
that claims hours), then decode in blocks and stop with 413 as soon as the decoded samples
pass the limit: audio is never silently truncated. Stereo and multichannel audio is averaged
to mono; any sample rate is resampled with torchaudio. Everything here is synchronous: call
it from a thread pool, not the event loop.
"""

from __future__ import annotations

import io
import logging
import math
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from app.errors import AudioDecodeError, PayloadTooLargeError, UnsupportedMediaError

logger = logging.getLogger(__name__)

TARGET_SAMPLE_RATE = 16_000
#: One 20 ms model frame needs 400 samples (the CNN's receptive field) at 16 kHz.
MIN_SAMPLES = 400
_SF_FAST_FORMATS = {"WAV", "WAVEX", "FLAC", "AIFF", "OGG", "W64", "RF64", "CAF"}
_SF_BLOCK = 1 << 16
_ALLOWED_TYPES = {"application/octet-stream", "application/ogg", "binary/octet-stream"}


@dataclass
class DecodedAudio:
    """A decoded upload.

    Attributes:
        waveform: (S,) float32 mono at `sample_rate`.
        sample_rate: 16000 (the file's own rate only from `decode_audio(resample=False)`).
        source_format: container/format name found (e.g. "WAV", "mp3", "matroska,webm").
        source_sample_rate: the file's sample rate.
        channels: the file's channel count before downmixing.
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


def decode_audio(
    data: bytes, *, max_seconds: float, param: str = "file", resample: bool = True
) -> DecodedAudio:
    """Decode an upload to mono float32 16 kHz.

    With `resample=False` the audio stays at the file's rate and no torch operator runs
    (the service resamples on its torch thread, see `app/torch_worker.py`); finish with
    `to_model_rate`.

    Raises:
        AudioDecodeError (400): empty, undecodable, truncated, no audio stream, NaN/inf samples,
            or shorter than one frame (400 samples at 16 kHz).
        PayloadTooLargeError (413): declared or decoded duration over `max_seconds`.
    """
    if not data:
        raise AudioDecodeError("the uploaded file is empty", param=param, reason="empty")
    _check_wav_header(data, max_seconds, param)
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError, ValueError):
        info = None
    if info is not None and info.format in _SF_FAST_FORMATS:
        samples, rate, channels, fmt = _decode_soundfile(data, max_seconds, param)
    else:
        samples, rate, channels, fmt = _decode_pyav(data, max_seconds, param)
    decoded = _validate(samples, rate, channels, fmt, param)
    return to_model_rate(decoded, param) if resample else decoded


def _too_long(seconds: float, max_seconds: float, param: str, *, declared: bool) -> None:
    message = (
        f"audio declares {seconds:.1f} s, over the limit of {max_seconds:g} s"
        if declared
        else f"audio is longer than the limit of {max_seconds:g} s (decoding stopped there)"
    )
    raise PayloadTooLargeError(message, param=param, reason="too_long")


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
        if chunk_id == b"fmt " and pos + 16 <= len(data):
            byte_rate = struct.unpack("<I", data[pos + 16 : pos + 20])[0]
        elif chunk_id == b"data":
            if byte_rate > 0 and size not in (0, 0xFFFFFFFF):
                seconds = size / byte_rate
                if seconds > max_seconds:
                    _too_long(seconds, max_seconds, param, declared=True)
            return
        pos += 8 + size + (size & 1)


def _decode_soundfile(
    data: bytes, max_seconds: float, param: str
) -> tuple[np.ndarray, int, int, str]:
    """Fast path for formats libsndfile reads. Returns (samples (N,) float32, rate, ch, fmt)."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate, channels, fmt = f.samplerate, f.channels, f.format
            declared = f.frames
            if rate <= 0:
                raise AudioDecodeError(f"bad sample rate {rate}", param=param, reason="corrupt")
            if 0 < declared < (1 << 62) and declared / rate > max_seconds:
                _too_long(declared / rate, max_seconds, param, declared=True)
            limit = math.floor(max_seconds * rate)
            blocks, total = [], 0
            while True:
                block = f.read(_SF_BLOCK, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                total += block.shape[0]
                if total > limit:
                    _too_long(total / rate, max_seconds, param, declared=False)
                blocks.append(block.mean(axis=1, dtype=np.float32))
    except sf.LibsndfileError as exc:
        raise AudioDecodeError(
            f"could not decode the audio ({exc.error_string or exc})",
            param=param,
            reason="corrupt",
        ) from exc
    samples = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    return samples, rate, channels, fmt


def _decode_pyav(data: bytes, max_seconds: float, param: str) -> tuple[np.ndarray, int, int, str]:
    """PyAV path for everything else. Returns (samples (N,) float32, rate, channels, fmt)."""
    import av

    try:
        container = av.open(io.BytesIO(data), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise AudioDecodeError(
            "could not read the file as audio: unknown or corrupt format",
            param=param,
            reason="undecodable",
        ) from exc
    with container:
        if not container.streams.audio:
            raise AudioDecodeError(
                "the file has no audio stream", param=param, reason="no_audio_stream"
            )
        stream = container.streams.audio[0]
        declared = None
        if stream.duration is not None and stream.time_base is not None:
            declared = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            declared = container.duration / 1_000_000
        if declared is not None and declared > max_seconds:
            _too_long(declared, max_seconds, param, declared=True)
        rate = stream.rate or stream.codec_context.sample_rate or 0
        channels = stream.codec_context.channels or 1
        fmt = container.format.name
        # Planar float32, same layout and rate, so channels can be averaged here.
        resampler = av.AudioResampler(format="fltp")
        chunks, total = [], 0
        try:
            for frame in container.decode(stream):
                rate = frame.sample_rate or rate
                for out in resampler.resample(frame):
                    arr = out.to_ndarray()  # (C, n)
                    total += arr.shape[1]
                    if rate > 0 and total > max_seconds * rate:
                        _too_long(total / rate, max_seconds, param, declared=False)
                    chunks.append(arr.mean(axis=0, dtype=np.float32))
        except av.FFmpegError as exc:
            raise AudioDecodeError(
                f"could not decode the audio stream ({exc})", param=param, reason="corrupt"
            ) from exc
    if rate <= 0:
        raise AudioDecodeError("the audio stream has no sample rate", param=param, reason="corrupt")
    samples = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return samples, int(rate), int(channels), fmt


def _validate(samples: np.ndarray, rate: int, channels: int, fmt: str, param: str) -> DecodedAudio:
    """Reject empty or non-finite audio; wrap it at its own rate (no torch operator runs)."""
    if samples.size == 0:
        raise AudioDecodeError("the file contains no audio samples", param=param, reason="empty")
    if not np.isfinite(samples).all():
        raise AudioDecodeError(
            "the audio contains NaN or infinite samples", param=param, reason="non_finite"
        )
    waveform = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    return DecodedAudio(waveform, rate, fmt, rate, channels)


def needs_resampling(audio: DecodedAudio) -> bool:
    """True when `to_model_rate` has to run torchaudio's resampler (a parallel torch op)."""
    return audio.sample_rate != TARGET_SAMPLE_RATE


def to_model_rate(audio: DecodedAudio, param: str = "file") -> DecodedAudio:
    """Resample to 16 kHz (torchaudio's windowed sinc, as in training) and check the length.

    Raises:
        AudioDecodeError (400): shorter than one frame (400 samples at 16 kHz).
    """
    waveform = audio.waveform
    if needs_resampling(audio):
        waveform = AF.resample(waveform, audio.sample_rate, TARGET_SAMPLE_RATE)
    if waveform.numel() < MIN_SAMPLES:
        raise AudioDecodeError(
            f"audio too short: {waveform.numel()} samples at 16 kHz, need at least "
            f"{MIN_SAMPLES} (25 ms)",
            param=param,
            reason="too_short",
        )
    return DecodedAudio(
        waveform.contiguous(),
        TARGET_SAMPLE_RATE,
        audio.source_format,
        audio.source_sample_rate,
        audio.channels,
    )
