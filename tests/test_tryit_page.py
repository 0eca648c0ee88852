"""The try-it page (`GET /`): served files and headers, and the page itself in a real browser.

Browser tests drive Debian's headless Chromium with selenium (tests/browser_support.py). The
microphone is Chromium's fake capture device playing an espeak-ng WAV in a loop, so the
record button streams real speech over /v1/realtime to uvicorn on loopback; the upload path
sends the same WAV file. The models are tiny random students (gibberish transcripts), so the
checks are that the page shows what the service says for the same audio: the recording the
page streamed (downloaded from the page) is transcribed by the HTTP route and must match the
page's live transcript; words, timings and the layers' shape must match the HTTP routes'.

`HLSTM_SCREENSHOT=path.png` saves the page after the upload's transcript (for docs/; with a
real model use scripts/tryit_screenshot.py).
"""

# ruff: noqa: F811  (pytest fixtures imported from tests.test_app_support)

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import soxr

from app.main import create_app
from app.routes.demo import STATIC
from model_training.testing import build_tiny_bundle
from tests.browser_support import (
    browser_paths,
    canvas_colours,
    fetch_blob,
    make_driver,
    pad_with_silence,
    page_report,
    page_state,
    speak,
    text_of,
    wait_for,
)
from tests.test_app_support import (  # noqa: F401
    app_client,
    serve_in_thread,
    test_settings,
    tiny_bundle_dir,
)

CAUSAL = "tiny-causal"
API_KEY = "page-key"
SENTENCE = "the quick brown fox jumps over the lazy dog"


# ------------------------------------------------------------------ served files (no browser)


async def test_page_and_files_are_served_with_a_strict_policy(app_client):
    async with app_client() as (_, client):
        page = await client.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp
        assert "frame-ancestors 'none'" in csp
        assert "unsafe" not in csp  # no unsafe-inline, no unsafe-eval
        assert page.headers["x-content-type-options"] == "nosniff"
        for name, media in [
            ("demo.js", "text/javascript"),
            ("pcm-worklet.js", "text/javascript"),
            ("demo.css", "text/css"),
        ]:
            response = await client.get(f"/demo/{name}")
            assert response.status_code == 200, name
            assert response.headers["content-type"].startswith(media)
            assert response.headers["content-security-policy"] == csp
        assert (await client.get("/demo/index.html")).status_code == 404
        assert (await client.get("/demo/..%2Fsettings.py")).status_code == 404
        config = (await client.get("/demo/config.json")).json()
        assert config["api_key_required"] is False
        assert config["max_upload_mb"] == 50.0 and config["max_audio_seconds"] == 600.0
        # not part of the API schema
        paths = (await client.get("/openapi.json")).json()["paths"]
        assert not any(p == "/" or p.startswith("/demo") for p in paths)


async def test_page_is_off_with_the_setting(app_client):
    async with app_client(demo_page=False) as (_, client):
        assert (await client.get("/")).status_code == 404
        assert (await client.get("/demo/demo.js")).status_code == 404
        assert (await client.get("/demo/config.json")).status_code == 404
        assert (await client.get("/healthz")).status_code == 200


async def test_page_loads_without_the_key_and_the_api_still_needs_it(app_client):
    async with app_client(api_key=API_KEY) as (_, client):
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/demo/config.json")).json()["api_key_required"] is True
        assert (await client.get("/v1/models")).status_code == 401


def test_page_files_have_no_inline_code_and_nothing_external():
    html = (STATIC / "index.html").read_text()
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, flags=re.S)
    assert scripts and all('src="demo/' in attrs and not body.strip() for attrs, body in scripts)
    assert not re.search(r"\son[a-z]+\s*=", html), "inline event handler"
    assert not re.search(r"\sstyle\s*=", html), "inline style"
    for path in STATIC.iterdir():
        text = path.read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, flags=re.I), path
        if path.suffix == ".js":
            for banned in ("eval(", "new Function", "innerHTML", "document.write", "localStorage"):
                assert banned not in text, (path.name, banned)


# ------------------------------------------------------------------ in a browser

needs_browser = pytest.mark.skipif(
    browser_paths() is None or shutil.which("espeak-ng") is None,
    reason="needs chromium, chromium-driver and espeak-ng (make setup-apt installs them)",
)


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An espeak-ng sentence (22.05 kHz), with a little silence after it."""
    path = speak(SENTENCE, tmp_path_factory.mktemp("speech") / "speech.wav")
    return pad_with_silence(path, 0.4)


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("page") / "causal"
    return build_tiny_bundle(path, seed=3, causal=True, varied=True, name=CAUSAL)


@pytest.fixture(scope="module")
def server(tiny_bundle_dir, causal_dir) -> Iterator[str]:
    """The default tiny bundle (listed first) and a tiny causal bundle for streaming."""
    settings = test_settings(tiny_bundle_dir, streaming_model_dir=causal_dir)
    with serve_in_thread(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server(causal_dir) -> Iterator[str]:
    """An API key, 1.5 s of audio at most, one upload at a time and none waiting."""
    settings = test_settings(
        causal_dir,
        api_key=API_KEY,
        max_audio_seconds=1.5,
        max_concurrent_uploads=1,
        upload_queue_limit=0,
        body_idle_timeout_s=60.0,
    )
    with serve_in_thread(create_app(settings)) as url:
        yield url


@pytest.fixture(scope="module")
def driver(speech_wav: Path) -> Iterator[Any]:
    pytest.importorskip("selenium")
    browser = make_driver(speech_wav)
    try:
        yield browser
    finally:
        browser.quit()


def transcribe(url: str, wav: bytes, model: str, key: str | None = None) -> dict:
    """verbose_json with word timings from the HTTP route."""
    response = httpx.post(
        f"{url}/v1/audio/transcriptions",
        files={"file": ("clip.wav", wav, "audio/wav")},
        data={
            "model": model,
            "response_format": "verbose_json",
            "timestamp_granularities[]": "word",
        },
        headers={"Authorization": f"Bearer {key}"} if key else {},
        timeout=60,
    )
    response.raise_for_status()
    return response.json()


def embedding_frames(url: str, wav: bytes, model: str) -> tuple[int, int]:
    """(layers, frames) of every layer of `wav` from the embeddings route."""
    response = httpx.post(
        f"{url}/v1/audio/embeddings",
        files={"file": ("clip.wav", wav, "audio/wav")},
        data={"model": model, "layers": "all", "pooling": "mean"},
        timeout=60,
    )
    response.raise_for_status()
    item = response.json()["data"][0]
    return len(item["layers"]), item["num_frames"]


def prop(driver: Any, element_id: str, path: str) -> Any:
    """`document.getElementById(element_id).<path>` in the page, e.g. `dataset.deltas`."""
    return driver.execute_script(f"return document.getElementById('{element_id}').{path};")


def seek(driver: Any, seconds: float) -> None:
    driver.execute_script("document.getElementById('player').currentTime = arguments[0]", seconds)


def page_words(driver: Any) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('#words span')].map((s) => s.textContent);"
    )


def layers_shape(driver: Any) -> tuple[int, int]:
    data = driver.execute_script("return {...document.getElementById('layers').dataset};")
    return int(data.get("layers", 0)), int(data.get("frames", 0))


def console_errors(driver: Any, allowed: tuple[int, ...] = ()) -> list[str]:
    """SEVERE console lines (script errors, CSP violations), less the failed requests whose
    status is in `allowed` (Chromium logs every 4xx as a failed resource load)."""
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    expected = [f"status of {status} " for status in allowed]
    return [e for e in errors if not any(x in e for x in expected)]


def open_page(driver: Any, url: str) -> None:
    driver.get(url + "/")
    wait_for(driver, lambda d: page_state(d) in ("ready", "error"), "the page to load")


def similarity(recorded: np.ndarray, reference: np.ndarray) -> float:
    """Largest normalised cross-correlation of `reference` inside `recorded` (both 16 kHz)."""
    n = len(recorded) + len(reference)
    size = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(recorded, size) * np.conj(np.fft.rfft(reference, size)), size)
    # energy of each window of `recorded` under the reference
    energy = np.convolve(recorded**2, np.ones(len(reference)), "full")[len(reference) - 1 :]
    energy = np.concatenate([energy, np.zeros(max(0, size - len(energy)))])[:size]
    scores = corr / (np.sqrt(np.maximum(energy, 1e-9)) * np.linalg.norm(reference))
    return float(scores[: len(recorded)].max())


@needs_browser
def test_microphone_streams_over_realtime_and_the_page_shows_the_service_transcript(
    driver, server, speech_wav
):
    open_page(driver, server)
    options = driver.execute_script(
        "return [...document.getElementById('model').options].map((o) => o.value);"
    )
    assert options == ["tiny-test", CAUSAL]  # /v1/models, default first
    assert f"streams to {CAUSAL}" in text_of(driver, "model-caps")
    speech_seconds = sf.info(speech_wav).duration

    driver.find_element("id", "record").click()
    wait_for(driver, lambda d: page_state(d) in ("recording", "error"), "recording to start")
    assert page_state(driver) == "recording", page_report(driver)
    # Deltas arrive while the microphone is still open.
    live = wait_for(driver, lambda d: text_of(d, "partial"), "a live delta")
    wait_for(
        driver,
        lambda d: float(prop(d, "record", "dataset.seconds") or 0) >= speech_seconds + 0.3,
        "the sentence to be recorded",
    )
    assert page_state(driver) == "recording"
    driver.find_element("id", "record").click()
    wait_for(driver, lambda d: page_state(d) in ("done", "error"), "the final transcript")
    assert page_state(driver) == "done", page_report(driver)

    final = text_of(driver, "final")
    assert final and final.startswith(live), (live, final)
    assert text_of(driver, "partial") == ""
    assert int(prop(driver, "transcript", "dataset.deltas")) >= 2

    # The recording the page streamed: 16 kHz PCM16, and it is the espeak sentence.
    wav = fetch_blob(driver, prop(driver, "download", "href"))
    recorded, rate = sf.read(io.BytesIO(wav), dtype="float32")
    assert rate == 16_000 and len(recorded) >= speech_seconds * rate
    reference, ref_rate = sf.read(speech_wav, dtype="float32")
    reference = soxr.resample(reference[: int(ref_rate * (speech_seconds - 0.4))], ref_rate, 16_000)
    # Measured: white noise 0.02, another espeak-ng sentence 0.08; 0.57 in a run on a starved
    # CPU where the browser dropped capture blocks.
    assert similarity(recorded, reference) > 0.3

    # The page's live transcript is the service's transcript of that audio.
    expected = transcribe(server, wav, CAUSAL)
    assert final == expected["text"]
    assert page_words(driver) == [w["word"] for w in expected["words"]]
    assert layers_shape(driver) == embedding_frames(server, wav, CAUSAL)
    assert canvas_colours(driver, "layers") > 50
    assert canvas_colours(driver, "wave") > 2
    assert console_errors(driver) == []


@needs_browser
def test_upload_shows_the_transcript_and_highlights_each_word_during_playback(
    driver, server, speech_wav
):
    from selenium.webdriver.support.ui import Select

    open_page(driver, server)
    Select(driver.find_element("id", "model")).select_by_value(CAUSAL)
    driver.find_element("id", "file").send_keys(str(speech_wav))
    wait_for(driver, lambda d: page_state(d) in ("done", "error"), "the transcript")
    assert page_state(driver) == "done", page_report(driver)

    data = speech_wav.read_bytes()
    expected = transcribe(server, data, CAUSAL)
    assert text_of(driver, "final") == expected["text"]
    words = expected["words"]
    assert len(words) >= 2 and page_words(driver) == [w["word"] for w in words]
    assert layers_shape(driver) == embedding_frames(server, data, CAUSAL)
    assert canvas_colours(driver, "layers") > 50

    def current(d: Any) -> int:
        return int(prop(d, "words", "dataset.current") or -1)

    # Seeking into a word highlights that word (and only it).
    for k in (0, len(words) - 1):
        middle = (words[k]["start"] + words[k]["end"]) / 2
        seek(driver, middle)
        wait_for(driver, lambda d, k=k: current(d) == k, f"word {k} highlighted")
        marked = driver.find_elements("css selector", "#words span.current")
        assert [m.text for m in marked] == [words[k]["word"]]

    # Playing it through highlights the words in order.
    driver.execute_script(
        "const p = document.getElementById('player'); p.currentTime = 0; p.play();"
    )
    seen: list[int] = []
    deadline = time.monotonic() + sf.info(speech_wav).duration + 10
    while time.monotonic() < deadline:
        index = current(driver)
        if index >= 0 and (not seen or seen[-1] != index):
            seen.append(index)
        if prop(driver, "player", "ended"):
            break
        time.sleep(0.03)
    assert len(set(seen)) >= 2 and seen == sorted(seen), seen

    shot = os.environ.get("HLSTM_SCREENSHOT")
    if shot:
        k = len(words) // 2
        seek(driver, (words[k]["start"] + words[k]["end"]) / 2)
        wait_for(driver, lambda d: current(d) == k, "the highlighted word")
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(shot)
    assert console_errors(driver) == []


class HeldUpload:
    """A multipart upload that sends its head and part of its body, then waits: it holds one
    of the service's upload slots until closed."""

    def __init__(self, url: str, key: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        head = (
            "POST /v1/audio/transcriptions HTTP/1.1\r\n"
            f"Host: {host}\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
        )
        self.sock.sendall(head.encode() + b"--b\r\n")

    def close(self) -> None:
        self.sock.close()


@needs_browser
def test_errors_are_explained_401_413_429_and_the_key_reaches_the_realtime_route(
    driver, keyed_server, speech_wav
):
    from selenium.webdriver.common.keys import Keys

    open_page(driver, keyed_server)
    assert driver.find_element("id", "api-key").is_displayed()
    message = text_of(driver, "message")
    assert "401" in message and "needs an API key" in message

    key_field = driver.find_element("id", "api-key")
    key_field.send_keys("wrong" + Keys.ENTER)
    wait_for(driver, lambda d: "refused" in text_of(d, "message"), "the refused key")
    assert "401" in text_of(driver, "message")
    key_field.clear()
    key_field.send_keys(API_KEY + Keys.ENTER)
    wait_for(driver, lambda d: page_state(d) == "ready", "the models with the key")
    assert not driver.find_element("id", "message").is_displayed()

    # 413: the sentence is longer than the 1.5 s this server takes.
    driver.find_element("id", "file").send_keys(str(speech_wav))
    wait_for(driver, lambda d: page_state(d) == "error", "the 413")
    message = text_of(driver, "message")
    assert "413" in message and "over the limit of 1.5 s" in message and "1.5 s of audio" in message

    # 429: the only upload slot is taken and nothing may wait.
    held = HeldUpload(keyed_server, API_KEY)
    try:
        time.sleep(0.5)  # the server has admitted it
        driver.execute_script("document.getElementById('file').value = ''")
        driver.find_element("id", "file").send_keys(str(speech_wav))
        wait_for(driver, lambda d: "429" in text_of(d, "message"), "the 429")
        assert "retry in 1 s" in text_of(driver, "message")
    finally:
        held.close()

    # The microphone with the key (as a WebSocket subprotocol): recording stops by itself at
    # the 1.5 s limit and the transcript arrives.
    driver.find_element("id", "record").click()
    wait_for(driver, lambda d: page_state(d) in ("done", "error"), "the recording to end")
    assert page_state(driver) == "done", page_report(driver)
    wav = fetch_blob(driver, prop(driver, "download", "href"))
    assert sf.info(io.BytesIO(wav)).frames == 24_000
    assert text_of(driver, "final") == transcribe(keyed_server, wav, CAUSAL, API_KEY)["text"]
    assert "stopped at 1.5 s" in text_of(driver, "message")
    assert console_errors(driver, allowed=(401, 413, 429)) == []
