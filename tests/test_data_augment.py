"""Speed perturbation of training batches: lengths, pitch, padding, reproducibility."""

import math

import pytest
import torch

from model_training.data.augment import speed_perturb, validate_speed_factors
from model_training.data.collate import AudioItem, collate_audio

SR = 16000


def _tone(hz: float, seconds: float) -> torch.Tensor:
    t = torch.arange(int(seconds * SR)) / SR
    return torch.sin(2 * math.pi * hz * t)


def _peak_hz(wave: torch.Tensor) -> float:
    spectrum = torch.fft.rfft(wave * torch.hann_window(wave.numel(), periodic=False)).abs()
    return float(spectrum.argmax()) * SR / wave.numel()


def _batch(*waves: torch.Tensor):
    return collate_audio([AudioItem(f"u{i}", w, "TEXT") for i, w in enumerate(waves)])


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_scales_length_and_pitch(factor: float) -> None:
    batch = _batch(_tone(440, 1.0), _tone(440, 0.5))
    out = speed_perturb(batch, [factor], torch.Generator().manual_seed(0), SR)
    expected = [math.ceil(n / factor) for n in (SR, SR // 2)]
    assert out.lengths.tolist() == expected
    assert out.waveforms.shape == (2, max(expected))
    assert out.texts == batch.texts and out.ids == batch.ids
    # faster playback raises the pitch by the same factor (1 Hz bins on the 1 s tone)
    assert _peak_hz(out.waveforms[0, : expected[0]]) == pytest.approx(440 * factor, abs=2)
    # the shorter item stays zero past its new length
    assert torch.all(out.waveforms[1, expected[1] :] == 0)


def test_each_item_draws_its_speed_and_the_draw_is_seeded() -> None:
    batch = _batch(*[_tone(300, 0.2) for _ in range(8)])
    factors = [0.9, 1.0, 1.1]
    a = speed_perturb(batch, factors, torch.Generator().manual_seed(3), SR)
    b = speed_perturb(batch, factors, torch.Generator().manual_seed(3), SR)
    assert torch.equal(a.waveforms, b.waveforms) and torch.equal(a.lengths, b.lengths)
    # items of one batch get different speeds (8 draws of 3 factors are not all one)
    assert len(set(a.lengths.tolist())) > 1
    # a factor of 1.0 returns the item unchanged
    same = speed_perturb(batch, [1.0], torch.Generator().manual_seed(0), SR)
    assert torch.equal(same.waveforms, batch.waveforms)


def test_labelled_batches_and_costly_factors_are_refused() -> None:
    item = AudioItem("u", _tone(200, 0.1), "X", labels=torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        speed_perturb(collate_audio([item]), [0.9], torch.Generator(), SR)
    validate_speed_factors([0.9, 0.95, 1.0, 1.05, 1.1], SR)
    with pytest.raises(ValueError, match="cheap"):
        validate_speed_factors([1.037], SR)
    with pytest.raises(ValueError, match=r"\[0.5, 2.0\]"):
        validate_speed_factors([0.3], SR)
