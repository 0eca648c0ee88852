"""End-to-end CTC fine-tuning, a mode of `finetune-ctc`: the upstream trains (frozen mode leaves
it alone), gradients reach the CNN, the freeze phases hold, resume is exact, random-init
upstreams, and the exported bundle serves the run's own model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from model_training.bundle import load_bundle, read_bundle_config
from model_training.cli import app
from model_training.models.student import lstm_student_tiny
from model_training.training.evaluate import evaluate, load_recognizer, load_upstream
from model_training.training.finetune_ctc import FinetuneConfig, run
from model_training.training.fixtures import write_labelled_tones
from model_training.training.students import save_student
from tests.test_app_support import serve, test_settings

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "ctc" / "tiny.yaml"
TEXTS = ["A B", "HELLO", "YES", "NO WAY"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """Four tone clips with transcripts, and a distilled-student file (with its cluster head
    and dropout, so mode switches and RNG restore matter)."""
    root = tmp_path_factory.mktemp("e2e")
    manifest = write_labelled_tones(root, list(zip((0.7, 1.1, 0.5, 0.9), TEXTS, strict=True)))
    torch.manual_seed(0)
    student = save_student(
        root / "distill" / "student.safetensors",
        lstm_student_tiny(num_classes=20, dropout=0.2),
        factory="lstm_tiny",
        provenance={},
    )
    return {"root": root, "manifest": manifest, "student": student}


def _config(data: dict[str, Path], run_dir: Path, dev: bool = False, **values) -> FinetuneConfig:
    sets = [
        "max_steps=4",
        "max_batch_size=2",
        "eval_every=2",
        "checkpoint_every=2",
        "target_dev_cer=null",
        "feature_cache=none",
        "head={proj_dim: 16, lstm_hidden: 8, dropout: 0.1, time_masks: 1}",
    ]
    values.setdefault("upstream", str(data["student"]))
    return FinetuneConfig.from_yaml(
        TINY,
        sets,
        train_manifest=str(data["manifest"]),
        dev_manifest=str(data["manifest"]) if dev else None,
        run_dir=str(run_dir),
        **values,
    )


def _upstream_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_recognizer(run_dir).model.upstream.state_dict()


def _start_state(data: dict[str, Path]) -> dict[str, torch.Tensor]:
    """The distilled student's weights without its cluster head (CTC does not use it)."""
    state = load_upstream(data["student"])[0].state_dict()
    return {k: v for k, v in state.items() if not k.startswith("head.")}


def _changed(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> set[str]:
    assert a.keys() == b.keys()
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_end_to_end_trains_the_upstream_and_frozen_mode_does_not(data, tmp_path) -> None:
    start = _start_state(data)
    run(_config(data, tmp_path / "frozen"))
    assert not (tmp_path / "frozen" / "best" / "upstream.safetensors").exists()
    frozen = {k: v for k, v in _upstream_state(tmp_path / "frozen").items() if k in start}
    assert not _changed(start, frozen)

    run(_config(data, tmp_path / "e2e", end_to_end=True))
    tuned = _upstream_state(tmp_path / "e2e")
    assert "head.weight" not in tuned  # the distillation head is dropped
    changed = _changed(start, tuned)
    # gradients reach every layer, the CNN's first convolution included
    assert "feature_extractor.conv_layers.0.conv.weight" in changed
    assert {k for k in start if k.startswith("lstms.")} <= changed
    metrics = json.loads((tmp_path / "e2e" / "metrics.json").read_text())
    assert metrics["end_to_end"] and metrics["upstream_parameters_trained"] > 0
    assert metrics["upstream"]["kind"] == "student"  # where it started


def test_freeze_options_hold_the_upstream(data, tmp_path) -> None:
    start = _start_state(data)
    # frozen for every step: the head trains, the upstream stays as it was
    run(_config(data, tmp_path / "all", end_to_end=True, freeze_upstream_steps=4))
    assert not _changed(start, _upstream_state(tmp_path / "all"))
    # frozen CNN: everything after it trains, the CNN does not
    run(_config(data, tmp_path / "cnn", end_to_end=True, freeze_feature_extractor=True))
    changed = _changed(start, _upstream_state(tmp_path / "cnn"))
    assert changed and not any(k.startswith("feature_extractor.") for k in changed)
    assert "projection.weight" in changed


def test_end_to_end_resume_equals_uninterrupted(data, tmp_path) -> None:
    """Stop at step 3 (after the 2 frozen steps, mid-epoch), resume to 6: bit-identical
    upstream and head, as a run that never stopped (upstream dropout and speed perturbation
    on: the resumed run draws the same speeds)."""
    opts = dict(end_to_end=True, freeze_upstream_steps=2, max_steps=6, checkpoint_every=3)
    opts["speed_perturb"] = [0.9, 1.0, 1.1]
    run(_config(data, tmp_path / "whole", dev=True, **opts))
    run(_config(data, tmp_path / "split", dev=True, stop_at_step=3, **opts))
    assert json.loads((tmp_path / "split" / "metrics.json").read_text())["step"] == 3
    run(_config(data, tmp_path / "split", dev=True, **opts))
    for name in ("head.safetensors", "upstream.safetensors"):
        a = load_file(str(tmp_path / "whole" / "best" / name))
        b = load_file(str(tmp_path / "split" / "best" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    ma = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "split" / "metrics.json").read_text())
    assert ma["evaluations"] == mb["evaluations"]
    # and the perturbation is not a no-op: without it the same run ends elsewhere
    opts["speed_perturb"] = []
    run(_config(data, tmp_path / "plain", dev=True, **opts))
    a = load_file(str(tmp_path / "whole" / "best" / "upstream.safetensors"))
    b = load_file(str(tmp_path / "plain" / "best" / "upstream.safetensors"))
    assert not all(torch.equal(a[k], b[k]) for k in a)


async def test_cli_end_to_end_export_serves_the_runs_model(data, tmp_path, caplog) -> None:
    """`finetune-ctc --end-to-end` -> `export` -> the bundle loads, scores and serves exactly
    like the run's best model; the feature cache is turned off with a warning; the card names
    the run's speed perturbation."""
    out, bundle = tmp_path / "run", tmp_path / "bundle"
    args = ["finetune-ctc", "--upstream", str(data["student"]), "--train", str(data["manifest"])]
    args += ["--dev", str(data["manifest"]), "--out", str(out), "--config", str(TINY)]
    args += ["--max-steps", "6", "--end-to-end", "--upstream-lr-scale", "0.5"]
    args += ["--freeze-upstream-steps", "1", "--feature-cache", "memory"]
    args += ["--set", "eval_every=3", "--set", "target_dev_cer=null"]
    args += ["--set", "speed_perturb=[0.9,1.1]"]
    with caplog.at_level(logging.WARNING):
        result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert any("feature_cache=memory disabled" in r.getMessage() for r in caplog.records)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["feature_cache"] == "none" and saved["upstream_lr_scale"] == 0.5
    best = json.loads((out / "metrics.json").read_text())["best"]

    result = CliRunner().invoke(app, ["export", "--run", str(out), "--out", str(bundle)])
    assert result.exit_code == 0, result.output
    config = read_bundle_config(bundle)
    assert config["provenance"]["end_to_end"] and config["upstream"]["config"]["num_classes"] == 0
    card = (bundle / "README.md").read_text()
    assert "fine-tuned end to end" in card and "played at x0.9, x1.1" in card
    assert config["provenance"]["speed_perturb"] == [0.9, 1.1]
    # exported from the run's `best/` folder, the card still finds the run's config
    result = CliRunner().invoke(app, ["export", "--run", str(out / "best"), "--out", str(bundle)])
    assert result.exit_code == 0, result.output
    assert "played at x0.9, x1.1" in (bundle / "README.md").read_text()

    run_model = load_recognizer(out)
    served = load_bundle(bundle)
    waves, lengths = 0.1 * torch.randn(2, 12000), torch.tensor([12000, 7000])
    with torch.no_grad():
        out_a, lp_a = run_model.model(waves, lengths)
        out_b, lp_b = served.model(waves, lengths)
    assert torch.equal(lp_a, lp_b) and torch.equal(out_a.lengths, out_b.lengths)
    for model_dir in (out, bundle):  # the run's own dev scores, from the run and the bundle
        scores = evaluate(model_dir, data["manifest"])
        assert (scores["wer"], scores["cer"]) == pytest.approx((best["wer"], best["cer"]))

    details: list[dict] = []
    from model_training.training.evaluate import evaluate_recognizer

    evaluate_recognizer(run_model, data["manifest"], details=details)
    async with serve(test_settings(bundle)) as (_, client):
        for i, d in enumerate(details):
            audio = (data["root"] / f"c{i}.wav").read_bytes()
            r = await client.post(
                "/v1/audio/transcriptions", files={"file": (f"c{i}.wav", audio, "audio/wav")}
            )
            assert r.status_code == 200 and r.json()["text"] == d["hyp"]


def test_random_init_upstreams(data, tmp_path) -> None:
    """random:FACTORY and random:DISTILL_CONFIG.yaml build seeded students without a cluster
    head; the reference rebuilds the same weights, so a frozen random run exports too."""
    up, ref = load_upstream(f"random:{ROOT / 'configs' / 'distill' / 'demo_ce.yaml'}", seed=3)
    assert ref["kind"] == "random" and ref["config"]["factory"] == "lstm_small_fast"
    assert up.config.num_classes == 0
    again, _ = load_upstream(ref)
    assert not _changed(up.state_dict(), again.state_dict())
    other, _ = load_upstream("random:lstm_small_fast", seed=4)
    assert _changed(up.state_dict(), other.state_dict())
    with pytest.raises(ValueError, match="unknown student factory"):
        load_upstream("random:lstm_huge")

    run(_config(data, tmp_path / "frozen", upstream="random:lstm_tiny"))
    run(_config(data, tmp_path / "e2e", upstream="random:lstm_tiny", end_to_end=True))
    start = load_upstream("random:lstm_tiny")[0].state_dict()
    assert not _changed(start, _upstream_state(tmp_path / "frozen"))
    assert _changed(start, _upstream_state(tmp_path / "e2e"))
    from model_training.training.export import export_run

    export_run(tmp_path / "frozen", tmp_path / "bundle")  # rebuilt from the seeded reference


def test_end_to_end_refuses_upstreams_without_trainable_weights(data, tmp_path) -> None:
    with pytest.raises(ValueError, match="fbank upstream has no weights"):
        run(_config(data, tmp_path / "f", upstream="fbank", end_to_end=True))
    with pytest.raises(ValueError, match="need end_to_end"):
        _config(data, tmp_path / "g", freeze_upstream_steps=2)


def test_continued_bundles_keep_their_lineage(data, tmp_path, monkeypatch) -> None:
    """A run that continues a bundle (its upstream and head) exports a bundle whose provenance
    and card name the bundle, run and step it came from (and its weights when that bundle was
    an interpolation), through two continuations, as they were when the run started."""
    from model_training.interpolation import interpolate_bundles
    from model_training.training.export import export_run

    run(_config(data, tmp_path / "r0", dev=True, end_to_end=True))
    export_run(tmp_path / "r0", tmp_path / "b0")
    assert "continued_from" not in read_bundle_config(tmp_path / "b0")["provenance"]
    for i in (1, 2):
        src = tmp_path / f"b{i - 1}"
        run(
            _config(
                data,
                tmp_path / f"r{i}",
                dev=True,
                end_to_end=True,
                upstream=str(src),
                init_head=str(src),
            )
        )
        if i == 2:  # a publish replaces the continued bundle before the export: no matter
            config = json.loads((src / "config.json").read_text())
            config["provenance"] = {"run": "a later run"}
            (src / "config.json").write_text(json.dumps(config))
        export_run(tmp_path / f"r{i}", tmp_path / f"b{i}")
        if i == 1:  # b1 becomes a weight interpolation: 0.7 x b0 + 0.3 x r1's own weights
            interpolate_bundles(tmp_path / "b0", tmp_path / "b1", 0.3, tmp_path / "b1")
    link = read_bundle_config(tmp_path / "b2")["provenance"]["continued_from"]
    assert link["bundle"] == str(tmp_path / "b1")
    assert link["run"] == str((tmp_path / "r1").resolve()) and link["step"] is not None
    assert link["continued_from"]["run"] == str((tmp_path / "r0").resolve())
    assert link["continued_from"]["continued_from"] is None
    assert link["interpolation_weight"] == 0.3
    assert link["continued_from"]["interpolation_weight"] is None
    card = (tmp_path / "b2" / "README.md").read_text()
    assert f"run `{(tmp_path / 'r1').resolve()}` (step {link['step']}, weights 0.30 x" in card
    assert f"run `{(tmp_path / 'r0').resolve()}`" in card
    # exported from the folder that holds the runs, the card shows no machine's absolute paths
    monkeypatch.chdir(tmp_path)
    export_run(tmp_path / "r2", tmp_path / "b2_here")
    card = (tmp_path / "b2_here" / "README.md").read_text()
    assert "run `r1`" in card and "run `r0`" in card and "bundle `b1`" in card
    assert str(tmp_path.resolve()) not in card
    # ... and neither does its config.json, which holds the lineage once (not again upstream)
    config = read_bundle_config(tmp_path / "b2_here")
    assert str(tmp_path.resolve()) not in json.dumps(config)
    provenance = config["provenance"]
    assert provenance["run"] == "r2" and provenance["continued_from"]["run"] == "r1"
    assert provenance["continued_from"]["continued_from"]["run"] == "r0"
    assert "continued_from" not in provenance["upstream"]
