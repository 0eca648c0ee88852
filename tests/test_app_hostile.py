"""Crafted uploads over HTTP (issue 17): each is refused with a 4xx, nothing is read from the
server's disk, and the service keeps answering."""

# ruff: noqa: F811  (pytest fixtures imported from tests.test_app_support)

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_app_support import (  # noqa: F401
    app_client,
    make_wav,
    tiny_bundle_dir,
    wav_file,
)

URL = "/v1/audio/transcriptions"


async def test_concat_playlist_naming_a_server_file_is_415(app_client, tmp_path: Path, monkeypatch):
    """The issue's report: an ffconcat text naming a relative path was transcribed (200)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "server-secret.wav").write_bytes(make_wav(1.0, seed=5))
    playlist = b"ffconcat version 1.0\nfile server-secret.wav\n"
    async with app_client() as (_, client):
        for content_type in ("audio/wav", "application/octet-stream"):
            r = await client.post(URL, files={"file": wav_file("a.wav", playlist, content_type)})
            assert r.status_code == 415, r.text
            error = r.json()["error"]
            assert error["type"] == "unsupported_media_type" and "text" not in r.json()
        assert (await client.get("/readyz")).status_code == 200
        assert (await client.post(URL, files={"file": wav_file("b.wav", make_wav(1.0))})).is_success


@pytest.mark.parametrize(
    "payload",
    [
        b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\nserver-secret.wav\n#EXT-X-ENDLIST\n",
        b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        b"m=audio 5006 RTP/AVP 0\r\n",
    ],
    ids=["hls", "sdp"],
)
async def test_other_playlists_are_415_at_once(app_client, payload):
    async with app_client() as (_, client):
        r = await client.post(URL, files={"file": wav_file("a.m3u8", payload)})
        assert r.status_code == 415, r.text


async def test_odd_rates_are_200_and_out_of_bounds_rates_400(app_client):
    """A WAV at 44101 Hz made the old resampler allocate gigabytes, then fail with a 500."""
    async with app_client(max_sample_rate=96_000) as (_, client):
        r = await client.post(URL, files={"file": wav_file("a.wav", make_wav(1.0, rate=44_101))})
        assert r.status_code == 200, r.text
        r = await client.post(URL, files={"file": wav_file("a.wav", make_wav(0.5, rate=96_001))})
        assert r.status_code == 400 and "96001 Hz" in r.json()["error"]["message"]
