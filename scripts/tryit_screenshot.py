"""Screenshot of the try-it page after a transcription, for the README (docs/img/tryit.png).

Serves MODEL_DIR (and a streaming bundle, if given or beside it) on a free loopback port,
opens the page in Debian's headless Chromium, and then either uploads an espeak-ng sentence
(default) or records it through Chromium's fake microphone (`--record`, needs a causal
bundle), waits for the transcript, highlights a word in the middle and saves the page.

    python scripts/tryit_screenshot.py --model-dir models/default --out docs/img/tryit.png
    python scripts/tryit_screenshot.py --model-dir models/default --record   # streaming bundle

Needs `make setup` (chromium, chromium-driver, espeak-ng, selenium).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.main import create_app  # noqa: E402
from app.settings import Settings  # noqa: E402
from tests.browser_support import (  # noqa: E402
    make_driver,
    pad_with_silence,
    page_report,
    page_state,
    speak,
    wait_for,
)
from tests.test_app_support import serve_in_thread  # noqa: E402

SENTENCE = "the quick brown fox jumps over the lazy dog"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "default")
    parser.add_argument("--streaming-model-dir", type=Path, default=None)
    parser.add_argument("--model", default=None, help="model id to pick (default: the first)")
    parser.add_argument("--text", default=SENTENCE)
    parser.add_argument("--voice", default="en-us+f3", help="espeak-ng voice")
    parser.add_argument("--record", action="store_true", help="record instead of uploading")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "tryit.png")
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=1400)
    args = parser.parse_args()

    settings = Settings(
        model_dir=args.model_dir,
        streaming_model_dir=args.streaming_model_dir,
        device="cpu",
        json_logs=False,
        torch_threads=1,
    )
    with tempfile.TemporaryDirectory() as tmp:
        wav = pad_with_silence(speak(args.text, Path(tmp) / "speech.wav", args.voice), 0.5)
        with serve_in_thread(create_app(settings)) as url:
            driver = make_driver(wav, size=(args.width, args.height))
            try:
                take(driver, url, wav, args)
            finally:
                driver.quit()
    print(f"wrote {args.out}")


def take(driver, url: str, wav: Path, args: argparse.Namespace) -> None:
    """Drive the page to a finished transcript and save the screenshot."""
    import soundfile as sf
    from selenium.webdriver.support.ui import Select

    driver.get(url + "/")
    wait_for(driver, lambda d: page_state(d) == "ready", "the page", 300)
    if args.model:
        Select(driver.find_element("id", "model")).select_by_value(args.model)
    if args.record:
        seconds = sf.info(wav).duration
        driver.find_element("id", "record").click()
        time.sleep(seconds + 1.0)
        driver.find_element("id", "record").click()
    else:
        driver.find_element("id", "file").send_keys(str(wav))
    wait_for(driver, lambda d: page_state(d) in ("done", "error"), "the transcript", 600)
    if page_state(driver) != "done":
        raise SystemExit(f"the page did not finish: {page_report(driver)}")
    words = driver.execute_script("return document.querySelectorAll('#words span').length")
    if words:
        middle = words // 2
        driver.execute_script(
            "const span = document.querySelectorAll('#words span')[arguments[0]];"
            "span.click(); document.getElementById('player').pause();",
            middle,
        )
        time.sleep(0.5)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(args.out))


if __name__ == "__main__":
    main()
