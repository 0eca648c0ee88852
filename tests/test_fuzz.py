"""Property-based and schema-driven fuzzing, bounded for the default suite (issue 17, item 5).

- hypothesis over the decoder: random bytes and mutated real containers (byte flips,
  truncation, spliced copies) either decode to finite 16 kHz mono within the limits or raise
  a 4xx `APIError`; nothing else escapes.
- schemathesis against the service's own OpenAPI schema, over a real server: every route,
  no 5xx, status codes, content types, headers and bodies as documented.

Examples are derandomized (the same each run) and capped; `HLSTM_FUZZ_EXAMPLES=N` runs more.
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.test_app_support)

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.audio import DecodeLimits, decode_audio
from app.errors import APIError
from tests.test_app_support import serve_in_thread, test_settings, tiny_bundle_dir  # noqa: F401

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = int(os.environ.get("HLSTM_FUZZ_EXAMPLES", "0")) or None
LIMITS = DecodeLimits(max_seconds=20.0, max_decoded_samples=2_000_000)
FUZZ = settings(
    max_examples=EXAMPLES or 150,
    deadline=None,
    derandomize=EXAMPLES is None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _seed_containers() -> list[bytes]:
    """Small real files of every allowed family (ffmpeg-made ones when ffmpeg exists)."""
    t = np.arange(4000) / 8000
    x = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    seeds = []
    for fmt, subtype in [("WAV", "PCM_16"), ("WAV", "FLOAT"), ("FLAC", None), ("OGG", None),
                         ("AIFF", None), ("CAF", None)]:  # fmt: skip
        buf = io.BytesIO()
        sf.write(buf, np.stack([x, x[::-1]], 1), 8000, format=fmt, subtype=subtype)
        seeds.append(buf.getvalue())
    if shutil.which("ffmpeg"):
        with tempfile.TemporaryDirectory() as tmp:
            for suffix, codec in [(".mp3", "libmp3lame"), (".webm", "libopus"), (".m4a", "aac"),
                                  (".aac", "aac"), (".opus", "libopus")]:  # fmt: skip
                out = Path(tmp) / f"s{suffix}"
                cmd = "ffmpeg -loglevel error -y -f lavfi -i sine=duration=0.5:sample_rate=16000"
                subprocess.run([*cmd.split(), "-c:a", codec, str(out)], check=True, timeout=60)
                seeds.append(out.read_bytes())
    return seeds


SEEDS = _seed_containers()


def _check_decode(data: bytes) -> None:
    """The property: a valid result or a 4xx APIError, nothing else."""
    try:
        audio = decode_audio(data, LIMITS)
    except APIError as exc:
        assert 400 <= exc.status_code < 500, (exc.status_code, exc.message)
        return
    samples = audio.waveform.numpy()
    assert audio.sample_rate == 16_000 and samples.ndim == 1 and samples.size >= 400
    assert np.isfinite(samples).all()
    assert audio.duration <= LIMITS.max_seconds + 0.1


@FUZZ
@given(st.binary(max_size=8192))
def test_decoder_on_random_bytes(data):
    _check_decode(data)


@FUZZ
@given(
    seed=st.sampled_from(range(len(SEEDS))),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=12),
    cut=st.one_of(st.none(), st.floats(0, 1)),
    splice=st.one_of(st.none(), st.tuples(st.floats(0, 1), st.floats(0, 1), st.integers(1, 3))),
)
def test_decoder_on_mutated_containers(seed, flips, cut, splice):
    data = bytearray(SEEDS[seed])
    for where, value in flips:
        data[int(where * len(data))] = value
    if splice is not None:  # repeat a slice in place (chunk sizes and counts stop matching)
        a, b = sorted(int(f * len(data)) for f in splice[:2])
        data[b:b] = bytes(data[a:b]) * splice[2]
    if cut is not None:
        data = data[: int(cut * len(data))]
    _check_decode(bytes(data))


@settings(FUZZ, max_examples=EXAMPLES or 60)
@given(rate=st.integers(1, 1 << 20), channels=st.integers(1, 40))
def test_decoder_on_wav_headers_with_any_rate_and_channel_count(rate, channels):
    """The header fields the cost model reads, rewritten (rate, channels, byte rate, align)."""
    data = bytearray(SEEDS[0])  # 16-bit PCM WAV, canonical 44-byte header
    data[22:24] = channels.to_bytes(2, "little")
    data[24:28] = rate.to_bytes(4, "little")
    data[28:32] = (rate * channels * 2).to_bytes(4, "little")
    data[32:34] = (channels * 2).to_bytes(2, "little")
    _check_decode(bytes(data))


# -- schemathesis over a real server ----------------------------------------------------


@pytest.fixture(scope="module")
def served_url(tiny_bundle_dir) -> Iterator[str]:
    from app.main import create_app

    with serve_in_thread(create_app(test_settings(tiny_bundle_dir, max_audio_seconds=30.0))) as url:
        yield url


def _openapi() -> dict:
    """The service's schema, as `GET /openapi.json` serves it (no model needed to build it)."""
    from app.main import create_app
    from app.settings import Settings

    return create_app(Settings(json_logs=False)).openapi()


schema = schemathesis.openapi.from_dict(_openapi())


@schema.parametrize()
@settings(
    max_examples=EXAMPLES or 25,
    deadline=None,
    derandomize=EXAMPLES is None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_matches_its_schema_and_never_5xx(case, served_url):
    # Not `positive_data_acceptance`: a schema cannot say "valid audio", so schema-valid
    # uploads are rightly refused (400/415); everything else schemathesis checks, is checked.
    case.call_and_validate(
        base_url=served_url,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )
