"""Which containers and codecs an upload may use, recognised from its first bytes.

FFmpeg's format probing would accept far more than audio files: playlists and manifests
(concat, HLS, DASH), session descriptions (SDP, which opens UDP sockets), metadata and text
formats. Several of those open other files or URLs while reading their header. Uploads
therefore never reach FFmpeg's prober: the container is recognised here from its magic bytes,
against an allow-list, and the demuxer is then named explicitly (`Container.demuxer`) with
FFmpeg's own `format_whitelist` and an empty `protocol_whitelist` as a second lock. Anything
else is a 415 before a single decoder runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import UnsupportedMediaError

#: Decoders an upload may use (FFmpeg decoder names; every `pcm_*` variant is allowed too).
ALLOWED_CODECS = frozenset(
    {"flac", "alac", "mp3float", "mp3", "vorbis", "opus", "libopus", "aac", "aac_fixed"}
)

#: Containers FFmpeg may demux for an upload (the names `format_whitelist` matches against).
ALLOWED_DEMUXERS = ("wav", "w64", "aiff", "caf", "flac", "ogg", "mp3", "aac", "matroska", "mov")

#: Container options that keep a demuxer from opening anything but the bytes given: no
#: protocol may be opened from inside (concat/HLS/DASH/references), no other demuxer may be
#: picked, QuickTime external data references stay off.
SAFE_DEMUXER_OPTIONS = {
    "format_whitelist": ",".join(ALLOWED_DEMUXERS),
    "protocol_whitelist": "none",
    "codec_whitelist": ",".join(sorted(ALLOWED_CODECS)),
    "enable_drefs": "0",
}

#: Human-readable list for error messages and docs.
ALLOWED_FORMATS_TEXT = (
    "WAV, FLAC, Ogg (Vorbis/Opus/FLAC), MP3, AAC (ADTS), M4A/MP4, WebM/Matroska, AIFF, CAF"
)


@dataclass(frozen=True)
class Container:
    """A recognised container.

    Attributes:
        name: short name for logs and errors ("wav", "flac", "ogg", "mp3", ...).
        demuxer: the FFmpeg demuxer to force (never probed).
        soundfile: True when libsndfile reads it completely and exactly (its fast path).
            FLAC and Ogg are not on it: libsndfile stops where the FLAC header's sample
            count or the first link of a chained Ogg ends, which would truncate silently.
    """

    name: str
    demuxer: str
    soundfile: bool = False


def codec_allowed(decoder_name: str) -> bool:
    """True for decoders on the allow-list (all PCM variants included)."""
    return decoder_name in ALLOWED_CODECS or decoder_name.startswith("pcm_")


def _skip_id3(data: bytes) -> int:
    """Offset after an ID3v2 tag at the start of `data` (0 when there is none)."""
    if len(data) < 10 or data[:3] != b"ID3":
        return 0
    size = 0
    for byte in data[6:10]:  # synchsafe: 7 bits per byte
        size = (size << 7) | (byte & 0x7F)
    footer = 10 if data[5] & 0x10 else 0
    return 10 + size + footer


def _mpeg_audio(head: bytes) -> str | None:
    """'mp3' for an MPEG audio frame header, 'aac' for ADTS, else None."""
    if len(head) < 4 or head[0] != 0xFF or head[1] & 0xE0 != 0xE0:
        return None
    layer = (head[1] >> 1) & 0x03
    if layer == 0:  # ADTS: sync 0xFFF, layer 00
        return "aac" if head[1] & 0xF0 == 0xF0 else None
    version = (head[1] >> 3) & 0x03
    bitrate = head[2] >> 4
    rate = (head[2] >> 2) & 0x03
    if version == 1 or bitrate == 0x0F or rate == 0x03:  # reserved values
        return None
    return "mp3"


def sniff_container(data: bytes, param: str = "file") -> Container:
    """Recognise the container of `data` from its magic bytes.

    Raises:
        UnsupportedMediaError (415): not one of the allowed containers (playlists, manifests,
            session descriptions, text, images, video-only formats, random bytes).
    """
    head = data[:64]
    if (head[:4] == b"RIFF" and head[8:12] == b"WAVE") or head[:4] == b"RF64":
        return Container("wav", "wav", soundfile=True)
    if head[:8] == b"riff\x2e\x91\xcf\x11" and head[24:28] == b"wave":
        return Container("w64", "w64", soundfile=True)
    if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
        return Container("aiff", "aiff", soundfile=True)
    if head[:4] == b"caff":
        return Container("caf", "caf", soundfile=True)
    if head[:4] == b"OggS":
        return Container("ogg", "ogg")
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return Container("matroska", "matroska")
    if head[4:8] == b"ftyp":
        return Container("mp4", "mov")
    offset = _skip_id3(data)
    body = data[offset : offset + 4]
    if body[:4] == b"fLaC":
        return Container("flac", "flac")
    kind = _mpeg_audio(body)
    if kind is not None:
        return Container(kind, kind)
    raise UnsupportedMediaError(
        f"unsupported file format: expected one of {ALLOWED_FORMATS_TEXT}",
        param=param,
        reason="unsupported_format",
    )
