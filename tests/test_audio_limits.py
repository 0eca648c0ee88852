"""The decoder's cost model (issue 17, item 2): rate and channel bounds, decoded-sample limit,
resampling linear in the input for any rate, and durations measured on what was decoded."""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from app.audio import DecodeLimits, decode_audio
from app.errors import AudioDecodeError, PayloadTooLargeError, RequestTimeoutError
from app.resample import Resampler, resample

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
ROOT = Path(__file__).resolve().parents[1]


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    x = (0.4 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(x[:, None], channels, axis=1) if channels > 1 else x


def wav(x: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def peak_hz(samples: np.ndarray, rate: int = 16_000) -> float:
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[spectrum.argmax()])


@pytest.mark.parametrize("rate", [16_001, 44_101, 96_001, 22_051, 8_000, 192_000])
def test_any_rate_resamples_to_the_right_length_and_pitch(rate):
    """Rates whose ratio to 16 kHz does not reduce made the old resampler ask for gigabytes
    (RuntimeError, a 500); libsoxr's cost does not depend on the ratio."""
    audio = decode_audio(wav(tone(2.0, rate), rate), max_seconds=10)
    assert audio.source_sample_rate == rate
    assert abs(audio.waveform.numel() - 32_000) <= 1
    assert abs(peak_hz(audio.waveform.numpy()) - 440) < 2


def test_resampling_peak_memory_is_linear_in_the_input():
    """In a fresh process: 20 s at awkward rates add only tens of MB to the peak RSS."""
    script = f"""
import io, json, resource, sys
sys.path.insert(0, {str(ROOT)!r})
import numpy as np, soundfile as sf
from app.audio import decode_audio
out = {{}}
for rate in (44_101, 96_001, 191_999):
    x = (0.1 * np.random.default_rng(0).standard_normal(20 * rate)).astype(np.float32)
    buf = io.BytesIO(); sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    data = buf.getvalue()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    audio = decode_audio(data, max_seconds=60)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out[rate] = [(after - before) / 1024, audio.waveform.numel()]
print(json.dumps(out))
"""
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for rate, (added_mb, samples) in json.loads(result.stdout.splitlines()[-1]).items():
        # The input itself is 20 s x rate x 2 bytes (up to 7.7 MB); the 16 kHz output 1.3 MB.
        assert added_mb < 80, f"{rate} Hz: peak RSS grew {added_mb:.0f} MB"
        assert abs(samples - 320_000) <= 1


def test_streamed_resampling_equals_one_shot():
    x = np.random.default_rng(0).standard_normal(3 * 44_100).astype(np.float32)
    stream = Resampler(44_100)
    blocks = [stream.push(x[i : i + 4096]) for i in range(0, x.size, 4096)]
    streamed = np.concatenate([*blocks, stream.flush()])
    np.testing.assert_array_equal(streamed, resample(x, 44_100))
    passthrough = Resampler(16_000)
    assert passthrough.push(x) is x and passthrough.flush().size == 0


@pytest.mark.parametrize("rate", [4_000, 7_999, 384_000])
def test_sample_rate_bounds_are_400(rate):
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(wav(tone(0.5, rate), rate), max_seconds=10)
    assert info.value.reason == "sample_rate" and f"{rate} Hz" in info.value.message


def test_channel_bound_is_400_and_within_it_channels_are_averaged():
    limits = DecodeLimits(max_channels=4)
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(wav(tone(0.5, 16_000, channels=6), 16_000), limits)
    assert info.value.reason == "channels"
    four = decode_audio(wav(tone(0.5, 16_000, channels=4), 16_000), limits)
    assert four.channels == 4 and four.waveform.numel() == 8_000


def test_decoded_sample_limit_counts_channels_and_rate_not_seconds():
    """Same 2 s, same duration limit: 48 kHz stereo costs 6x 16 kHz mono and is refused."""
    limits = DecodeLimits(max_seconds=10, max_decoded_samples=100_000)
    assert decode_audio(wav(tone(2.0, 16_000), 16_000), limits).duration == 2.0
    with pytest.raises(PayloadTooLargeError) as info:
        decode_audio(wav(tone(2.0, 48_000, channels=2), 48_000), limits)
    assert (
        info.value.reason == "too_many_samples" and "2 channels at 48000 Hz" in info.value.message
    )


def test_decoded_sample_limit_holds_while_decoding_when_no_header_says_so():
    """A FLAC with an unknown length (STREAMINFO total 0) is stopped by counting blocks."""
    data = bytearray(wav(tone(3.0, 96_000, channels=2), 96_000, fmt="FLAC"))
    data[21] &= 0xF0  # STREAMINFO total samples: 36 bits from the low nibble of byte 21
    data[22:26] = b"\0\0\0\0"
    limits = DecodeLimits(max_seconds=60, max_decoded_samples=200_000)
    with pytest.raises(PayloadTooLargeError) as info:
        decode_audio(bytes(data), limits)
    assert info.value.reason == "too_many_samples"


def _flac_with_total(seconds: float, claimed_seconds: float, rate: int = 16_000) -> bytes:
    data = bytearray(wav(tone(seconds, rate), rate, fmt="FLAC"))
    total = int(claimed_seconds * rate)
    data[21] = (data[21] & 0xF0) | ((total >> 32) & 0x0F)
    data[22:26] = struct.pack(">I", total & 0xFFFFFFFF)
    return bytes(data)


def test_flac_whose_header_understates_its_length_is_decoded_whole():
    """The issue's report: header says 1 s, file holds 5 s; the old decoder returned 1 s."""
    data = _flac_with_total(5.0, claimed_seconds=1.0)
    assert decode_audio(data, max_seconds=10).duration == pytest.approx(5.0, abs=1e-3)
    with pytest.raises(PayloadTooLargeError, match=r"is 5\.0 s long, over the limit of 3 s"):
        decode_audio(data, max_seconds=3)


@needs_ffmpeg
def test_chained_ogg_is_decoded_across_links(tmp_path):
    """Two Ogg links (2 s + 3 s): the old decoder stopped after the first, returning 2 s."""
    parts = []
    for i, (seconds, freq) in enumerate([(2, 300), (3, 600)]):
        out = tmp_path / f"{i}.ogg"
        cmd = f"ffmpeg -loglevel error -y -f lavfi -i sine=frequency={freq}:duration={seconds}"
        subprocess.run([*cmd.split(), "-c:a", "libvorbis", str(out)], check=True, timeout=60)
        parts.append(out.read_bytes())
    chained = b"".join(parts)
    audio = decode_audio(chained, max_seconds=10)
    assert audio.duration == pytest.approx(5.0, abs=0.05)
    tail = audio.waveform.numpy()[-16_000:]
    assert abs(peak_hz(tail) - 600) < 3  # the second link's tone is there
    with pytest.raises(PayloadTooLargeError, match=r"is 5\.0 s long"):
        decode_audio(chained, max_seconds=4)


def test_decoding_stops_at_the_deadline():
    with pytest.raises(RequestTimeoutError):
        decode_audio(wav(tone(1.0, 16_000), 16_000), DecodeLimits(deadline=time.monotonic() - 1))
