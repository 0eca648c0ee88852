"""Weight interpolation between bundles (model_training/interpolation.py) and the export
script's choice of a weight on dev (scripts/demo_export.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from model_training.bundle import load_bundle
from model_training.interpolation import interpolate_bundles, interpolate_state
from model_training.testing import build_tiny_bundle, test_signal

ROOT = Path(__file__).resolve().parents[1]


def test_interpolated_state_is_the_straight_line_between_the_two() -> None:
    base = {"w": torch.zeros(3), "n": torch.tensor([7])}
    other = {"w": torch.tensor([2.0, 4.0, -6.0]).half(), "n": torch.tensor([7])}
    assert torch.equal(interpolate_state(base, other, 0.0)["w"], base["w"].half())
    assert torch.equal(interpolate_state(base, other, 1.0)["w"], other["w"])
    mid = interpolate_state(base, other, 0.25)
    assert mid["w"].dtype == torch.float16  # stored like `other`
    assert torch.allclose(mid["w"].float(), torch.tensor([0.5, 1.0, -1.5]))
    assert torch.equal(mid["n"], base["n"])


@pytest.mark.parametrize(
    ("other", "message"),
    [
        ({"w": torch.zeros(3), "n": torch.tensor([8])}, "non-float"),
        ({"w": torch.zeros(4), "n": torch.tensor([7])}, "shape"),
        ({"w": torch.zeros(3)}, "different tensors"),
    ],
)
def test_interpolation_refuses_states_that_do_not_line_up(
    other: dict[str, torch.Tensor], message: str
) -> None:
    base = {"w": torch.ones(3), "n": torch.tensor([7])}
    with pytest.raises(ValueError, match=message):
        interpolate_state(base, other, 0.5)


def test_interpolation_weight_must_lie_between_the_two() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        interpolate_state({"w": torch.ones(1)}, {"w": torch.ones(1)}, 1.5)


def _logits(bundle_dir: Path) -> torch.Tensor:
    model = load_bundle(bundle_dir).model
    wave = test_signal(0.5).unsqueeze(0)
    with torch.no_grad():
        return model(wave, torch.tensor([wave.shape[1]]))[1]


def test_interpolated_bundle_runs_and_its_ends_are_the_two_bundles(tmp_path: Path) -> None:
    base = build_tiny_bundle(tmp_path / "base", seed=0)
    other = build_tiny_bundle(tmp_path / "other", seed=1)
    ends = {0.0: _logits(base), 1.0: _logits(other)}
    assert not torch.allclose(ends[0.0], ends[1.0])
    for weight, expected in ends.items():
        mixed = interpolate_bundles(base, other, weight, tmp_path / f"w{weight}")
        torch.testing.assert_close(_logits(mixed), expected)
    mixed = interpolate_bundles(base, other, 0.5, tmp_path / "half")
    halfway = _logits(mixed)  # a new model, not either end
    assert not torch.allclose(halfway, ends[0.0]) and not torch.allclose(halfway, ends[1.0])
    config = json.loads((mixed / "config.json").read_text())
    assert config["provenance"]["interpolation"]["weight"] == 0.5
    assert config["provenance"]["interpolation"]["base"] == str(base)
    assert "## Weight interpolation" in (mixed / "README.md").read_text()
    assert "interpolation" not in json.loads((other / "config.json").read_text())["provenance"]


def test_bundles_of_different_architectures_are_not_interpolated(tmp_path: Path) -> None:
    base = build_tiny_bundle(tmp_path / "base")
    causal = build_tiny_bundle(tmp_path / "causal", causal=True)
    with pytest.raises(ValueError, match="not one architecture"):
        interpolate_bundles(base, causal, 0.5, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _with_dev(bundle: Path, cer: float) -> None:
    config = json.loads((bundle / "config.json").read_text())
    config["provenance"]["dev"] = {"cer": cer, "wer": 0.5}
    (bundle / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(("base_cer", "run_cer", "picked"), [(0.3, 0.3, 0.4), (0.1, 0.3, 0.0)])
def test_export_picks_the_interpolation_weight_with_the_lowest_dev_cer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base_cer: float, run_cer: float, picked: float
) -> None:
    """The grid's weights are measured (here: a dev CER that is lowest at 0.4); the two ends
    compete with their recorded scores, so a worse line keeps the bundle as it was."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import demo_export

    def fake_dev(bundle: Path, manifest: Path) -> dict[str, Any]:
        config = json.loads((bundle / "config.json").read_text())
        weight = config["provenance"]["interpolation"]["weight"]
        return {"cer": 0.2 + (weight - 0.4) ** 2, "wer": 0.5}

    monkeypatch.setattr(demo_export, "_greedy", fake_dev)
    base = build_tiny_bundle(tmp_path / "base", seed=0)
    run = build_tiny_bundle(tmp_path / "run", seed=1)
    _with_dev(base, base_cer)
    scored = demo_export.score_interpolations(
        base, run, [0.2, 0.4, 0.6], tmp_path / "dev.tsv", {"cer": run_cer, "wer": 0.5}
    )
    assert set(scored) == {0.0, 0.2, 0.4, 0.6, 1.0}
    assert min(scored, key=lambda w: scored[w]) == picked
