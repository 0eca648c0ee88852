"""Headless Chromium (Debian's chromium + chromium-driver) driven by selenium, for the try-it page.

Nothing is downloaded: the driver path is given, so selenium's driver manager never runs.
The microphone is Chromium's fake capture device playing a WAV file in a loop, and the
permission prompt is answered yes (`--use-fake-ui-for-media-stream`). Used by
tests/test_tryit_page.py and scripts/tryit_screenshot.py.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

#: Debian's browser binary (the /usr/bin/chromium launcher is a shell script around it).
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "chromium", "chromium-browser")
CHROMEDRIVER_CANDIDATES = ("/usr/bin/chromedriver", "chromedriver")


def _first(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        found = name if Path(name).is_file() else shutil.which(name)
        if found:
            return found
    return None


def browser_paths() -> tuple[str, str] | None:
    """(chromium, chromedriver), or None when either is missing."""
    chromium, driver = _first(CHROMIUM_CANDIDATES), _first(CHROMEDRIVER_CANDIDATES)
    return (chromium, driver) if chromium and driver else None


def make_driver(fake_audio: Path | None = None, size: tuple[int, int] = (1100, 1500)) -> Any:
    """A headless Chromium whose microphone plays `fake_audio` (a WAV file), if given."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = browser_paths()
    if paths is None:
        raise RuntimeError("chromium and chromium-driver are not installed (make setup-apt)")
    chromium, driver = paths
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI containers
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-extensions",
        "--no-first-run",
        "--mute-audio",
        "--autoplay-policy=no-user-gesture-required",
        f"--window-size={size[0]},{size[1]}",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
    ):
        options.add_argument(arg)
    if fake_audio is not None:
        options.add_argument(f"--use-file-for-fake-audio-capture={fake_audio}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(executable_path=driver))
    # Generous: on a busy machine one script call can wait seconds for the renderer.
    browser.set_script_timeout(120)
    browser.set_page_load_timeout(120)
    return browser


def speak(text: str, path: Path, voice: str = "en-us+f3", speed: int = 150) -> Path:
    """espeak-ng `text` into the WAV `path` (22.05 kHz mono PCM16)."""
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


def pad_with_silence(path: Path, seconds: float) -> Path:
    """Append `seconds` of silence to a WAV file in place (the fake microphone loops the file)."""
    audio, rate = sf.read(path, dtype="int16")
    silence = np.zeros(int(seconds * rate), dtype=np.int16)
    sf.write(path, np.concatenate([audio, silence]), rate, subtype="PCM_16")
    return path


def wait_for(
    driver: Any,
    condition: Callable[[Any], Any],
    message: str = "condition",
    timeout: float = 90.0,
) -> Any:
    """Poll `condition(driver)` until truthy; on timeout, fail with the page's state and log."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition(driver)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {message}; {page_report(driver)}")
        time.sleep(0.05)


def text_of(driver: Any, element_id: str) -> str:
    """textContent (not innerText, which hides hidden elements) of an element."""
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent;")


def page_state(driver: Any) -> str | None:
    """The page's `data-state` (loading, ready, recording, finishing, done, error, ...)."""
    return driver.execute_script("return document.body.dataset.state || null;")


def page_report(driver: Any) -> str:
    """State, message and console log of the page, for failure messages."""
    try:
        state = page_state(driver)
        message = text_of(driver, "message")
        logs = [f"{e['level']}: {e['message']}" for e in driver.get_log("browser")]
    except Exception as exc:  # the page or the browser is gone
        return f"(no page report: {exc})"
    return f"page state={state!r} message={message!r} console={logs}"


def fetch_blob(driver: Any, url: str) -> bytes:
    """The bytes of a blob: URL made by the page, read inside the page."""
    encoded = driver.execute_async_script(
        """
        const [url, done] = arguments;
        fetch(url).then((r) => r.arrayBuffer()).then((buffer) => {
          const bytes = new Uint8Array(buffer);
          let binary = "";
          for (let i = 0; i < bytes.length; i += 0x8000) {
            binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
          }
          done(btoa(binary));
        }).catch((err) => done("ERROR " + err));
        """,
        url,
    )
    if encoded.startswith("ERROR"):
        raise AssertionError(f"could not read {url} in the page: {encoded}")
    return base64.b64decode(encoded)


def canvas_colours(driver: Any, element_id: str) -> int:
    """How many distinct colours a canvas shows (a blank or uniform canvas has 1 or 2)."""
    return driver.execute_script(
        """
        const canvas = document.getElementById(arguments[0]);
        const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
        const seen = new Set();
        for (let i = 0; i < data.length && seen.size < 1000; i += 4 * 7) {
          seen.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
        }
        return seen.size;
        """,
        element_id,
    )
