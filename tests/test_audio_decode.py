"""Upload decoding: formats, resampling, downmix, limits and the bad-input list."""

from __future__ import annotations

import io
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from app.audio import MIN_SAMPLES, check_content_type, decode_audio
from app.errors import AudioDecodeError, PayloadTooLargeError, UnsupportedMediaError


def sine(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def encode(x: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def ffmpeg_encode(
    tmp_path: Path, suffix: str, codec_args: list[str], seconds: float = 1.0
) -> bytes:
    out = tmp_path / f"a{suffix}"
    cmd = ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi"]
    cmd += ["-i", f"sine=frequency=440:duration={seconds}:sample_rate=48000", "-ac", "2"]
    subprocess.run([*cmd, *codec_args, str(out)], check=True, timeout=60)
    return out.read_bytes()


needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


def test_wav_16k_passthrough_is_exact():
    x = sine(0.5, 16_000)
    a = decode_audio(encode(x, 16_000, "WAV", "FLOAT"), max_seconds=10)
    assert a.sample_rate == 16_000 and a.waveform.dtype == torch.float32
    np.testing.assert_array_equal(a.waveform.numpy(), x)


def test_stereo_44k1_flac_is_downmixed_and_resampled():
    left, right = sine(1.0, 44_100, 300), sine(1.0, 44_100, 500)
    a = decode_audio(encode(np.stack([left, right], 1), 44_100, "FLAC"), max_seconds=10)
    assert a.channels == 2 and a.source_sample_rate == 44_100
    assert a.waveform.numel() == 16_000
    # Both tones survive the average at half amplitude: check the spectrum.
    spec = np.abs(np.fft.rfft(a.waveform.numpy()))
    assert spec[300] > 0.2 * spec.max() and spec[500] > 0.2 * spec.max()


@needs_ffmpeg
@pytest.mark.parametrize(
    ("suffix", "args"),
    [
        (".mp3", ["-c:a", "libmp3lame"]),
        (".ogg", ["-c:a", "libopus"]),
        (".webm", ["-c:a", "libopus"]),
        (".m4a", ["-c:a", "aac"]),
    ],
)
def test_compressed_formats_decode(tmp_path, suffix, args):
    a = decode_audio(ffmpeg_encode(tmp_path, suffix, args), max_seconds=10)
    assert a.sample_rate == 16_000
    assert abs(a.duration - 1.0) < 0.1
    spec = np.abs(np.fft.rfft(a.waveform.numpy()))
    freqs = np.fft.rfftfreq(a.waveform.numel(), 1 / 16_000)
    assert abs(freqs[spec.argmax()] - 440) < 5


def test_duration_limit_from_header_and_from_decoding():
    data = encode(sine(3.0, 16_000), 16_000, "WAV")
    with pytest.raises(PayloadTooLargeError, match="declares"):
        decode_audio(data, max_seconds=2.0)
    assert decode_audio(data, max_seconds=3.0).waveform.numel() == 48_000


@needs_ffmpeg
def test_duration_limit_while_streaming_without_header_duration(tmp_path):
    # A WAV written to a pipe has no data size (libsndfile counts the bytes instead).
    cmd = "ffmpeg -loglevel error -f lavfi -i sine=duration=3:sample_rate=16000 -f wav -"
    data = subprocess.run(cmd.split(), check=True, capture_output=True, timeout=60).stdout
    with pytest.raises(PayloadTooLargeError):
        decode_audio(data, max_seconds=2.0)
    # And a webm whose container duration is stripped (live-style) still stops at the limit.
    webm = tmp_path / "live.webm"
    subprocess.run(
        "ffmpeg -loglevel error -y -f lavfi -i sine=duration=3:sample_rate=48000 -c:a libopus "
        f"-live 1 {webm}".split(),
        check=True,
        timeout=60,
    )
    # The real length is counted from the packets left (demuxed, not decoded).
    with pytest.raises(PayloadTooLargeError, match=r"is 3\.0 s long"):
        decode_audio(webm.read_bytes(), max_seconds=2.0)


def test_wav_header_claiming_hours_is_413_without_decoding():
    data = bytearray(encode(sine(0.1, 16_000), 16_000, "WAV", "PCM_16"))
    pos = data.find(b"data")
    data[pos + 4 : pos + 8] = struct.pack("<I", 16_000 * 2 * 3600 * 3)  # 3 hours claimed
    with pytest.raises(PayloadTooLargeError, match="declares 10800"):
        decode_audio(bytes(data), max_seconds=600)


def test_flac_streaminfo_claiming_hours_is_413():
    data = bytearray(encode(sine(0.1, 16_000), 16_000, "FLAC"))
    total = 16_000 * 3600 * 5  # STREAMINFO total samples: 36 bits at byte 21 (low nibble)
    data[21] = (data[21] & 0xF0) | ((total >> 32) & 0x0F)
    data[22:26] = struct.pack(">I", total & 0xFFFFFFFF)
    with pytest.raises(PayloadTooLargeError):
        decode_audio(bytes(data), max_seconds=600)


@pytest.mark.parametrize(
    ("name", "make", "reason"),
    [
        ("empty", lambda: b"", "empty"),
        ("truncated_mp3_header", lambda: b"\xff\xfb\x90\x00" + bytes(200), "undecodable"),
        ("truncated_flac", lambda: encode(sine(1.0, 16_000), 16_000, "FLAC")[:3000], "corrupt"),
        ("one_sample", lambda: encode(np.zeros(1, np.float32), 16_000, "WAV"), "too_short"),
        ("nan", lambda: encode(np.full(800, np.nan, np.float32), 16_000, "WAV", "FLOAT"), None),
        ("inf", lambda: encode(np.full(800, np.inf, np.float32), 16_000, "WAV", "FLOAT"), None),
        ("header_only", lambda: encode(sine(1.0, 16_000), 16_000, "WAV")[:44], "empty"),
    ],
)
def test_bad_inputs_raise_400(name, make, reason):
    # Random bytes are a 415 (not an allowed container): tests/test_audio_containers.py.
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(make(), max_seconds=600)
    assert info.value.status_code == 400
    if reason is not None:
        assert info.value.reason == reason
    else:
        assert info.value.reason == "non_finite"


def test_minimum_length_is_one_frame():
    ok = decode_audio(encode(sine(0.025, 16_000), 16_000, "WAV", "FLOAT"), max_seconds=1)
    assert ok.waveform.numel() == MIN_SAMPLES
    with pytest.raises(AudioDecodeError, match="too short"):
        decode_audio(encode(sine(0.02, 16_000), 16_000, "WAV", "FLOAT"), max_seconds=1)


def test_content_type_check():
    for ok in (None, "", "audio/wav", "audio/x-wav", "video/webm", "application/octet-stream"):
        check_content_type(ok)
    for bad in ("text/plain", "image/png", "application/json"):
        with pytest.raises(UnsupportedMediaError):
            check_content_type(bad)
