"""The official `openai` client against a real uvicorn server on loopback."""

# ruff: noqa: F811  (pytest fixtures imported from tests.test_app_support)

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.main import create_app
from tests.test_app_support import (  # noqa: F401
    make_wav,
    test_settings,
    tiny_bundle_dir,
    uvicorn_server,
)

openai = pytest.importorskip("openai")

API_KEY = "test-key"


@pytest.fixture
def server_url(tiny_bundle_dir) -> Iterator[str]:
    """Start uvicorn in a thread on a free loopback port; yield its base URL."""
    with uvicorn_server(create_app(test_settings(tiny_bundle_dir, api_key=API_KEY))) as url:
        yield url


def test_openai_client_transcriptions(server_url, tmp_path):
    audio = tmp_path / "speech.wav"
    audio.write_bytes(make_wav(1.2, seed=9))
    client = openai.OpenAI(base_url=f"{server_url}/v1", api_key=API_KEY, max_retries=0)

    with audio.open("rb") as f:
        result = client.audio.transcriptions.create(model="tiny-test", file=f)
    assert isinstance(result.text, str)

    with audio.open("rb") as f:
        verbose = client.audio.transcriptions.create(
            model="tiny-test",
            file=f,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert verbose.text == result.text
    assert verbose.duration == pytest.approx(1.2)
    assert " ".join(w.word for w in verbose.words or []) == result.text
    for segment in verbose.segments or []:
        assert 0 <= segment.start <= segment.end <= 1.2

    with audio.open("rb") as f:
        srt = client.audio.transcriptions.create(model="tiny-test", file=f, response_format="srt")
    assert isinstance(srt, str)

    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny-test"]

    bad = openai.OpenAI(base_url=f"{server_url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError), audio.open("rb") as f:
        bad.audio.transcriptions.create(model="tiny-test", file=f)
    with pytest.raises(openai.BadRequestError):
        client.audio.transcriptions.create(model="tiny-test", file=("x.wav", b"not audio"))
