"""The decoder reads only the bytes it was given: no playlist, manifest, session description or
reference to another file or URL is ever followed (issue 17, item 1).

Each family is a real input FFmpeg's prober would accept. The file it names is a FIFO watched
by a thread: the moment anything opens it for reading, the watcher's non-blocking open for
writing succeeds, so "never read" is observed, not assumed.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from app.audio import decode_audio
from app.errors import APIError, AudioDecodeError, UnsupportedMediaError

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")


class FifoWatch:
    """A FIFO at `path`; `opened` becomes True if any process opens it for reading."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.opened = False
        self._stop = threading.Event()
        os.mkfifo(path)
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as exc:  # ENXIO: no reader yet
                if exc.errno != errno.ENXIO:
                    raise
                time.sleep(0.002)
                continue
            self.opened = True
            os.close(fd)  # the reader sees EOF and goes on

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@pytest.fixture
def secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FifoWatch]:
    """A watched FIFO `secret.wav` in the working directory (where relative names resolve)."""
    monkeypatch.chdir(tmp_path)
    watch = FifoWatch(tmp_path / "secret.wav")
    yield watch
    watch.stop()


def _playlists(secret: Path) -> dict[str, bytes]:
    """Inputs that make FFmpeg open other files or sockets when probed."""
    return {
        # The report: a relative path in FFmpeg's concat format.
        "ffconcat_relative": b"ffconcat version 1.0\nfile secret.wav\n",
        "ffconcat_absolute": f"ffconcat version 1.0\nfile '{secret}'\n".encode(),
        "hls_m3u8": (
            b"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n"
            b"#EXTINF:1.0,\nsecret.wav\n#EXT-X-ENDLIST\n"
        ),
        "hls_master": b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1000\nsecret.wav\n",
        "dash_mpd": (
            b'<?xml version="1.0"?>\n<MPD xmlns="urn:mpeg:dash:schema:mpd:2011" type="static" '
            b'mediaPresentationDuration="PT1S"><Period><AdaptationSet mimeType="audio/wav">'
            b'<Representation id="1" bandwidth="1000"><BaseURL>secret.wav</BaseURL>'
            b"</Representation></AdaptationSet></Period></MPD>\n"
        ),
        # SDP makes FFmpeg's RTP demuxer listen on a UDP port (the old decoder sat there 20 s).
        "sdp_rtp": (
            b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio 5004 RTP/AVP 0\r\n"
        ),
        "ffmetadata": b";FFMETADATA1\ntitle=x\n",
        "plain_text": b"secret.wav\n",
    }


@pytest.mark.parametrize("family", list(_playlists(Path("x"))))
def test_playlists_and_references_are_415_and_never_read(secret, family):
    data = _playlists(secret.path)[family]
    started = time.monotonic()
    with pytest.raises(UnsupportedMediaError) as info:
        decode_audio(data, max_seconds=60)
    assert info.value.status_code == 415 and info.value.reason == "unsupported_format"
    assert time.monotonic() - started < 2.0  # no socket, no network timeout
    time.sleep(0.05)  # give the watcher a chance to see a late open
    assert not secret.opened, f"{family}: the decoder opened a file named by the upload"


def test_the_ffmpeg_level_lock_holds_even_if_a_playlist_demuxer_were_named(secret):
    """Second lock: with the options every upload is opened with, FFmpeg refuses the concat
    demuxer and any nested open, even when asked for it by name."""
    import av

    from app.containers import SAFE_DEMUXER_OPTIONS

    data = b"ffconcat version 1.0\nfile secret.wav\n"
    with pytest.raises((av.FFmpegError, ValueError)):
        av.open(io.BytesIO(data), format="concat", container_options=SAFE_DEMUXER_OPTIONS)
    options = {**SAFE_DEMUXER_OPTIONS, "format_whitelist": "concat"}
    with pytest.raises((av.FFmpegError, ValueError)):  # concat allowed: protocols still are not
        av.open(io.BytesIO(data), format="concat", container_options=options)
    time.sleep(0.05)
    assert not secret.opened


@needs_ffmpeg
@pytest.mark.parametrize(
    ("suffix", "args"),
    [(".mka", ["-c:a", "ac3"]), (".mka", ["-c:a", "mp2"]), (".m4a", ["-c:a", "ac3"])],
)
def test_codecs_off_the_allow_list_are_415(tmp_path, suffix, args):
    out = tmp_path / f"a{suffix}"
    cmd = ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1"]
    subprocess.run([*cmd, *args, str(out)], check=True, timeout=60)
    with pytest.raises(APIError) as info:
        decode_audio(out.read_bytes(), max_seconds=60)
    assert info.value.status_code == 415, info.value.message


@needs_ffmpeg
def test_video_only_container_is_400_no_audio(tmp_path):
    out = tmp_path / "v.webm"
    cmd = "ffmpeg -loglevel error -y -f lavfi -i color=size=16x16:duration=0.2 -c:v libvpx"
    subprocess.run([*cmd.split(), str(out)], check=True, timeout=60)
    with pytest.raises(AudioDecodeError) as info:
        decode_audio(out.read_bytes(), max_seconds=60)
    assert info.value.reason in {"no_audio_stream", "undecodable"}


def test_allowed_containers_still_decode():
    x = (0.3 * np.sin(np.arange(16_000) / 7)).astype(np.float32)
    for fmt in ("WAV", "FLAC", "AIFF", "CAF", "W64"):  # lossless: exact
        buf = io.BytesIO()
        sf.write(buf, x, 16_000, format=fmt, subtype="FLOAT" if fmt != "FLAC" else "PCM_24")
        audio = decode_audio(buf.getvalue(), max_seconds=60)
        np.testing.assert_allclose(audio.waveform.numpy(), x, atol=1e-6, err_msg=fmt)
    buf = io.BytesIO()
    sf.write(buf, x, 16_000, format="OGG")  # Vorbis: FFmpeg trims the last 256-sample block
    assert abs(decode_audio(buf.getvalue(), max_seconds=60).duration - 1.0) < 0.02
