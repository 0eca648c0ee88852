"""The results table says which runs the step cap stopped while dev still improved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def results(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    import demo_results

    return demo_results


def _run(tmp_path: Path, name: str, cers: list[float]) -> Path:
    """A run folder whose metrics.json evaluates every 500 steps with these dev CERs."""
    evals = [{"step": 500 * (i + 1), "cer": c} for i, c in enumerate(cers)]
    best = min(evals, key=lambda e: e["cer"])
    run = tmp_path / name
    run.mkdir()
    metrics = {"step": evals[-1]["step"], "best": best, "evaluations": evals}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_capped_and_patience_stopped_runs_are_told_apart(results, tmp_path: Path) -> None:
    capped = results.training_stop(_run(tmp_path, "a", [0.6, 0.5, 0.4]), "head")
    stopped = results.training_stop(_run(tmp_path, "b", [0.6, 0.4, 0.45, 0.5]), "head")
    assert capped == {"head_steps": 1500, "head_best_step": 1500, "head_still_improving": True}
    assert stopped["head_still_improving"] is False and stopped["head_best_step"] == 1000
    assert (
        results.training_stop(tmp_path / "missing", "pr_head")["pr_head_still_improving"] is False
    )

    rows = [{"name": "a", **capped}, {"name": "b", **stopped}]
    note = " ".join(results._still_improving_note(rows, "head", "CTC heads"))
    assert "a (1500)" in note and "b (" not in note
    assert results._still_improving_note(rows[1:], "head", "CTC heads") == []
