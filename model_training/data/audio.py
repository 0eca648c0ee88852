"""Audio loading to mono float32 at a target rate (soundfile first, PyAV for other formats)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from model_training.data.manifest import SAMPLE_RATE

logger = logging.getLogger(__name__)


def _read_soundfile(path: Path) -> tuple[np.ndarray, int]:
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (S, C)
    return data.mean(axis=1), sr


def _read_av(path: Path) -> tuple[np.ndarray, int]:
    import av  # imported lazily: only needed for formats libsndfile cannot read

    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        stream = next((s for s in container.streams if s.type == "audio"), None)
        if stream is None:
            raise ValueError(f"{path}: no audio stream found")
        sr = stream.codec_context.sample_rate
        resampler = av.AudioResampler(format="fltp", layout="mono", rate=sr)
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    wave = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
    return wave.astype(np.float32, copy=False), sr


def load_audio(path: str | os.PathLike, target_sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Decode `path` to a mono float32 waveform of shape (S,) at `target_sr`.

    Channels are averaged; rate conversion uses torchaudio's windowed-sinc resampler.
    """
    path = Path(path)
    try:
        wave, sr = _read_soundfile(path)
    except sf.LibsndfileError:
        logger.debug("soundfile cannot read %s, falling back to PyAV", path)
        wave, sr = _read_av(path)
    tensor = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    if sr != target_sr:
        tensor = AF.resample(tensor, sr, target_sr)
    return tensor


def num_samples_at(path: str | os.PathLike, target_sr: int = SAMPLE_RATE) -> int:
    """Number of samples `load_audio(path, target_sr)` returns, from the header when possible."""
    try:
        info = sf.info(str(path))
        frames, sr = info.frames, info.samplerate
    except sf.LibsndfileError:
        return int(load_audio(path, target_sr).numel())
    if sr == target_sr:
        return int(frames)
    # torchaudio's resample returns ceil(frames * target / source) samples.
    return int(-(-frames * target_sr // sr))
