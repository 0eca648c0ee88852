"""The whole demo pipeline (scripts/demo.mk) at tiny sizes into a temp folder, then its bundle
served: every size and path variable works at small values, stages follow the dependency graph
under `make -j2`, results stay under OUT, and nothing is written to docs/ or models/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.test_app_support import serve, test_settings

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ("make", "espeak-ng", "sox", "flite", "festival")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1800),
    pytest.mark.skipif(not all(shutil.which(t) for t in TOOLS), reason=f"needs {', '.join(TOOLS)}"),
]

TINY = {
    "HOURS": "0.03",
    "TEACHER_STEPS": "6",
    "DISTILL_HOURS": "0.02",
    "DISTILL_STEPS": "6",
    "CTC_HOURS": "0.02",
    "CTC_STEPS": "6",
    "CTC_EVAL_EVERY": "3",
    "FT_LOW_HOURS": "0.01",
    "FT_STEPS": "6",
    "FT_EVAL_EVERY": "3",
    "SYNTH_WORKERS": "1",
}


def _tracked_state(paths: list[str]) -> str:
    """`git status` of the published locations (the run must not touch them)."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True, text=True
    )
    return out.stdout


async def test_tiny_pipeline_into_a_temp_folder_then_serve_its_bundle(tmp_path: Path) -> None:
    before = _tracked_state(["docs", "models"])
    out, data = tmp_path / "run", tmp_path / "data"
    variables = [f"{k}={v}" for k, v in {**TINY, "OUT": out, "DATA": data}.items()]
    python = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"
    cmd = ["make", "-f", "scripts/demo.mk", "-j2", *variables, f"HL={python}/hubert-lstm"]
    cmd.append(f"PY={python}/python")
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    names = {r["name"] for r in results["rows"]}
    students = {"ce", "kd", "dkd_b1", "dkd_b4", "feature", "causal_dkd", "dkd_cnn"}
    assert {"fbank", "teacher1", "teacher2", *students} == names
    assert not results["pending"]  # every row of the table and every fine-tuning run finished
    # 4 starting points x 2 data sizes, the causal run, the DKD run trained FT_LONG_STEPS and
    # its continuation (its head and upstream, FT_MORE_STEPS more)
    assert len(results["finetuned_rows"]) == 11 and len(results["teacher_iterations"]) == 2
    more = yaml.safe_load((out / "ft_dkd_all_more" / "config.yaml").read_text())
    assert more["init_head"] == str(out / "ft_dkd_all_long") and more["max_steps"] == 48
    assert (out / "results.md").is_file() and _tracked_state(["docs", "models"]) == before
    for bundle in ("default", "streaming"):
        config = json.loads((out / "bundles" / bundle / "config.json").read_text())
        assert config["weights_dtype"] == "float16"
    streaming = json.loads((out / "bundles" / "streaming" / "config.json").read_text())
    assert streaming["upstream"]["config"]["bidirectional"] is False

    rerun = subprocess.run([*cmd, "-q"], cwd=ROOT, capture_output=True, text=True)
    assert rerun.returncode == 0  # -q: every target is up to date, nothing left to run

    # publish into a temp folder, then continue the published bundles (ft_*_shipped)
    docs, models = tmp_path / "docs", tmp_path / "models"  # publish creates them
    where = [f"PUBLISH_DOCS={docs}", f"PUBLISH_MODELS={models}", "FT_SHIPPED_STEPS=6"]
    shipped = [f"{out}/stamps/eval_ft_{b}_all_shipped" for b in ("dkd", "causal")]
    for targets in (["publish"], shipped):  # the continuations start from what was published
        proc = subprocess.run([*cmd, *where, *targets], cwd=ROOT, capture_output=True)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cont = yaml.safe_load((out / "ft_causal_all_shipped" / "config.yaml").read_text())
    assert cont["init_head"] == str(models / "streaming") and cont["max_steps"] == 6
    export = [f"{python}/python", "scripts/demo_export.py", "--runs", str(out), "--name", "x"]
    export += ["--fp16-manifest", str(out / "manifests" / "test_neural.tsv")]
    export += ["--corpus-card", str(data / "card.json"), "--out", str(tmp_path / "next")]
    proc = subprocess.run([*export, "--candidates", "ft_dkd_all_shipped"], cwd=ROOT)
    assert proc.returncode == 0
    # the continuation is shipped only if it beats the bundle it continued on dev
    source = json.loads((models / "default" / "config.json").read_text())["provenance"]
    scores = json.loads((out / "eval" / "ft_dkd_all_shipped.dev.json").read_text())
    provenance = json.loads((tmp_path / "next" / "config.json").read_text())["provenance"]
    if (scores["cer"], scores["wer"]) < (source["dev"]["cer"], source["dev"]["wer"]):
        assert provenance["continued_from"]["bundle"] == str(models / "default")
        assert provenance["continued_from"]["run"] == source["run"]
    else:
        assert provenance == source
    # the same run tried on the line between it and what it continued (weight 0.5 on dev)
    mixed = [*export[:-1], str(tmp_path / "mixed"), "--interpolate-grid", "0.5"]
    proc = subprocess.run([*mixed, "--candidates", "ft_dkd_all_shipped"], cwd=ROOT)
    assert proc.returncode == 0
    provenance = json.loads((tmp_path / "mixed" / "config.json").read_text())["provenance"]
    if "interpolation" in provenance:  # it beat both ends: its dev score is its own, measured
        measured = json.loads(
            (out / "eval" / "ft_dkd_all_shipped.interpolated.dev.json").read_text()
        )
        assert provenance["dev"]["cer"] == measured["cer"] < source["dev"]["cer"]
        assert provenance["interpolation"]["weight"] == 0.5

    from tests.test_app_support import make_wav, wav_file

    async with serve(test_settings(out / "bundles" / "default")) as (_, client):
        r = await client.post(
            "/v1/audio/transcriptions", files={"file": wav_file("a.wav", make_wav(1.5))}
        )
        assert r.status_code == 200 and "text" in r.json(), r.text
