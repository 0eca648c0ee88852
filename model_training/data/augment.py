"""On-the-fly augmentation of training batches (never applied at evaluation or serving).

Speed perturbation (Ko et al., "Audio Augmentation for Speech Recognition", Interspeech 2015;
Kaldi's `perturb_data_dir_speed.sh`): an utterance played `f` times as fast, which scales its
tempo, pitch and formants together, so the same sentence comes back from a new "speaker" every
epoch. Unlike the corpus's sox effects (fixed at synthesis), the factor is drawn per utterance
and per step, seeded, so a resumed run draws what an uninterrupted one would.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import gcd

import torch
import torchaudio.functional as AF

from model_training.data.collate import AudioBatch

SPEED_RANGE = (0.5, 2.0)  # wider factors are not speech any more


def validate_speed_factors(factors: Sequence[float], sample_rate: int) -> None:
    """Raise ValueError unless every factor is in SPEED_RANGE and f x sample_rate is a whole
    number of Hz whose ratio to sample_rate is cheap to resample (reduced denominator <= 100:
    0.9, 0.95, 1.1 are; 1.037 is not, its sinc kernel would be thousands of taps)."""
    lo, hi = SPEED_RANGE
    for f in factors:
        if not lo <= f <= hi:
            raise ValueError(f"speed factors must be in [{lo}, {hi}], found {f}")
        hz = f * sample_rate
        if abs(hz - round(hz)) > 1e-6 or sample_rate // gcd(round(hz), sample_rate) > 100:
            raise ValueError(
                f"speed factor {f} x {sample_rate} Hz is not a cheap resampling ratio "
                "(use steps of 0.05, e.g. 0.9, 1.0, 1.1)"
            )


def speed_perturb(
    batch: AudioBatch,
    factors: Sequence[float],
    generator: torch.Generator,
    sample_rate: int,
) -> AudioBatch:
    """Each item played at a speed drawn uniformly from `factors` (1.0 = unchanged).

    batch.waveforms (B, S) with lengths (B,) -> waveforms (B, S') zero-padded, lengths (B,)
    with item i's new length ceil(lengths[i] / f_i); texts and ids unchanged. Frame labels
    would no longer line up with the audio, so a batch with labels is refused. `factors` must
    pass `validate_speed_factors`; `generator` (CPU) makes the draw reproducible.
    """
    if batch.labels is not None:
        raise ValueError("speed_perturb changes lengths; frame labels would not line up")
    picks = torch.randint(len(factors), (len(batch.lengths),), generator=generator).tolist()
    waves = []
    for i, pick in enumerate(picks):
        wave = batch.waveforms[i, : int(batch.lengths[i])]
        f = factors[pick]
        if f != 1.0:
            # read as if recorded at f x the rate, then resampled back: f times as fast
            wave = AF.resample(wave, orig_freq=round(f * sample_rate), new_freq=sample_rate)
        waves.append(wave)
    lengths = torch.tensor([w.numel() for w in waves], dtype=torch.long)
    out = batch.waveforms.new_zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        out[i, : w.numel()] = w
    return AudioBatch(out, lengths.to(batch.lengths.device), batch.texts, batch.ids)
