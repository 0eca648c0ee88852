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


def test_paper_findings_are_checked_against_the_numbers(results) -> None:
    def row(name: str, per: float, sid: float, cer: float = 0.5) -> dict:
        return {"name": name, "dev_per": per, "sid_test_acc": sid, "dev_cer": cer}

    rows = [row("fbank", 0.85, 0.3, 0.4), row("kd", 0.78, 0.45), row("dkd_b1", 0.80, 0.44)]
    rows += [row("feature", 0.9, 0.47), row("ce", 0.74, 0.46)]
    centres = {
        "kd": {"asr": {"centre": 1.7}, "pr": {"centre": 1.6}, "sid": {"centre": 1.9}},
        "teacher1": {"asr": {"centre": 2.2}, "pr": {"centre": 1.6}, "sid": {"centre": 1.0}},
    }
    text = "\n".join(results.paper_findings([*rows, row("dkd_b4", 0.84, 0.38)], centres))
    assert "beta 4 helps phone recognition*: does not hold" in text
    assert "costs speaker identification* (against feature distillation): holds" in text
    assert "for 1 of 2 upstreams" in text
    assert "4 of 5 students have a lower PER, 5 a higher SID accuracy, 0 a lower ASR CER" in text
    better = "\n".join(results.paper_findings([*rows, row("dkd_b4", 0.70, 0.5)], centres))
    assert "beta 4 helps phone recognition*: holds" in better
    assert "speaker identification* (against feature distillation): does not hold" in better
    assert results.paper_findings([row("fbank", 0.85, 0.3)], {}) == []


def test_previous_rows_are_carried_marked_and_lose_to_fresh_ones(results) -> None:
    """A new machine lost the runs: rows come from the published results.json, marked, unless
    this run measured them again; what this run still lacks stays pending."""
    previous = json.loads((ROOT / "docs" / "results.json").read_text())
    fresh = {**previous["finetuned_rows"][-1], "dev_cer": 0.3, "name": "ft_not_published_yet"}
    again = {**previous["rows"][0], "dev_cer": 0.2}  # fbank measured again
    for row in (fresh, again):
        row.pop("carried", None)
    result = {
        "sizes": "HOURS=4",
        "layer_centres": {},
        "teacher_iterations": [],
        "rows": [again],
        "finetuned_rows": [fresh],
        "pending": ["ctc_teacher1", "ft_ce_all", "ft_new"],
        "throughput": previous["throughput"],
    }
    merged = results.carry_previous(result, previous)
    names = [r["name"] for r in merged["rows"]]
    assert names == [r["name"] for r in previous["rows"]]
    assert merged["rows"][0] is again and not again.get("carried")
    assert all(r["carried"] for r in merged["rows"][1:])
    assert merged["finetuned_rows"][-1] is fresh
    assert len(merged["finetuned_rows"]) == len(previous["finetuned_rows"]) + 1
    assert merged["pending"] == ["ft_new"]
    assert merged["teacher_iterations"] == previous["teacher_iterations"]
    md = results.render_markdown(merged)
    assert md.count(" (carried) |") == len(previous["rows"]) - 1 + len(previous["finetuned_rows"])
    assert "a new machine" in md and "`ft_new`" in md


def test_rows_carried_twice_keep_the_sizes_of_the_run_that_measured_them(results) -> None:
    """Stop N carried old rows (sizes A) beside its own row (sizes B); stop N+1 carries both:
    each must still name its own sizes, not stop N's."""
    row = {"name": "", "description": "d", "dev_wer": 0.5, "dev_cer": 0.2}
    previous = {
        "sizes": "HOURS=3 TRAIN_START=3811",
        "carried_sizes": "HOURS=4",  # as written before rows carried their own sizes
        "rows": [{**row, "name": "fbank", "carried": True}],
        "finetuned_rows": [
            {**row, "name": "ft_dkd_all_long", "carried": True},
            {**row, "name": "ft_dkd_all_shipped (stop 27)"},
        ],
    }
    result = {"sizes": "HOURS=3 TRAIN_START=6694", "rows": [], "pending": []}
    result["finetuned_rows"] = [{**row, "name": "ft_dkd_all_shipped"}]
    merged = results.carry_previous(result, previous)
    sizes = {r["name"]: r.get("sizes") for r in merged["rows"] + merged["finetuned_rows"]}
    assert sizes == {
        "fbank": "HOURS=4",
        "ft_dkd_all_long": "HOURS=4",
        "ft_dkd_all_shipped (stop 27)": "HOURS=3 TRAIN_START=3811",
        "ft_dkd_all_shipped": None,  # measured by this run: the run's own sizes apply
    }
    again = results.carry_previous({**result, "finetuned_rows": []}, merged)
    assert {r["name"]: r["sizes"] for r in again["finetuned_rows"]} == {
        k: v for k, v in sizes.items() if k != "fbank"
    } | {"ft_dkd_all_shipped": "HOURS=3 TRAIN_START=6694"}


def test_decoding_section_compares_greedy_and_lm_on_every_split(results, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert results.decoding_rows(runs) is None  # before eval_bundle_default ran
    (runs / "eval").mkdir(parents=True)
    (runs / "bundles" / "default").mkdir(parents=True)
    lm = {
        "lm_weight": 2.0,
        "word_score": 0.0,
        "beam_size": 50,
        "provenance": {"order": 3, "sentences": 10, "words": 40, "ngrams": {"1": 25}},
    }
    (runs / "bundles" / "default" / "config.json").write_text(json.dumps({"decoder": lm}))
    for i, dec in enumerate(("greedy", "lm")):
        for j, split in enumerate(results.SPLITS):
            score = {"wer": 0.5 - 0.2 * i + 0.01 * j, "cer": 0.25 - 0.1 * i, "rtf": 0.01}
            (runs / "eval" / f"bundle_default.{dec}.{split}.json").write_text(json.dumps(score))
    decoding = results.decoding_rows(runs)
    text = "\n".join(results._decoding_section(decoding))
    assert "| greedy (best path, no LM) | 50.0 | 25.0 | 51.0 | 25.0 | 52.0 | 25.0 |" in text
    assert "| lexicon + word n-gram LM, beam search | 30.0 | 15.0 | 31.0 | 15.0 | 32.0 |" in text
    assert "3-gram" in text and "25-word vocabulary" in text
    assert "Its weights are" not in text
    mix = {"base": "models/default", "weight": 0.4, "grid_dev_cer": {"0": 0.155, "0.4": 0.151}}
    config = {"decoder": lm, "provenance": {"interpolation": mix}}
    (runs / "bundles" / "default" / "config.json").write_text(json.dumps(config))
    text = "\n".join(results._decoding_section(results.decoding_rows(runs)))
    assert "0.60 x the bundle its run continued (`models/default`) + 0.40 x" in text
    assert "0: 15.5, 0.4: 15.1" in text


def test_a_corpus_that_extends_the_train_stream_is_described_as_new_audio(
    results, tmp_path: Path
) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "ft_all.tsv").write_text("path\tnum_samples\na.flac\t72000000\n")  # 1.25 h
    assert results.size_value("HOURS=2 TRAIN_START=3811 SEED=0", "TRAIN_START") == 3811
    assert results.size_value("HOURS=2", "TRAIN_START") == 0
    plain = results.finetuned_description(tmp_path, "ft_random_all")
    extended = results.finetuned_description(tmp_path, "ft_random_all", 3811)
    assert plain == "random init (no distillation), all 1.2 h"
    assert extended == plain + " of new audio (train utterances 3811 on)"


def test_new_audio_is_told_apart_from_earlier_corpora_appended_to_it(
    results, tmp_path: Path
) -> None:
    """FT_EXTRA_TRAIN appends earlier corpora's train splits: only utterances TRAIN_START on
    are new, and the description says how many hours of the whole they are."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    rows = [
        "../synth_next/train/006/train-006694.flac\t57600000",  # 1.0 h, new
        "../synth_next/train/006/train-006695.flac\t28800000",  # 0.5 h, new
        "../synth/train/003/train-003811.flac\t72000000",  # 1.25 h, earlier corpus
    ]
    (manifests / "ft_all.tsv").write_text("path\tnum_samples\n" + "\n".join(rows) + "\n")
    text = results.finetuned_description(tmp_path, "ft_random_all", 6694)
    assert text == (
        "random init (no distillation), all 2.8 h, of which 1.5 h of new audio "
        "(train utterances 6694 on)"
    )


def test_a_longer_run_names_its_steps_and_speed_perturbation(results, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    (manifests / "ft_all.tsv").write_text("path\tnum_samples\na.flac\t57600000\n")  # 1.0 h
    run = tmp_path / "ft_random_all_long"
    run.mkdir()
    (run / "config.yaml").write_text("max_steps: 8000\n")
    (run / "metrics.json").write_text(json.dumps({"step": 7000}))
    stopped = results.finetuned_description(tmp_path, "ft_random_all_long")
    assert stopped == "random init (no distillation), all 1.0 h, stopped at step 7000 of 8000"
    (run / "config.yaml").write_text("max_steps: 8000\nspeed_perturb: [0.9, 1.0, 1.1]\n")
    (run / "metrics.json").write_text(json.dumps({"step": 8000}))
    perturbed = results.finetuned_description(tmp_path, "ft_random_all_long")
    assert perturbed == (
        "random init (no distillation), all 1.0 h, 8000 steps, speed perturbation x0.9/1/1.1"
    )


def test_a_continued_interpolated_bundle_is_named_with_its_weights(results, tmp_path: Path) -> None:
    """A run that continued a bundle names that bundle's run and step, and, when the bundle was
    a weight interpolation, the weights: from the lineage the run recorded, else the bundle."""
    bundle = tmp_path / "default"
    bundle.mkdir()
    provenance = {"run": "/x/ft_b", "step": 5500, "interpolation": {"weight": 0.4}}
    from model_training.bundle import BUNDLE_FORMAT, BUNDLE_VERSION

    config = {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, "provenance": provenance}
    (bundle / "config.json").write_text(json.dumps(config))
    expected = (
        f"the bundle {bundle} (from ft_b, step 5500, "
        "weights 0.40 x that run + 0.60 x the bundle it continued)"
    )
    assert results.continued_what(bundle, None) == expected
    recorded = {"run": "/y/ft_a", "step": 7000, "interpolation_weight": None}
    assert results.continued_what(bundle, recorded) == f"the bundle {bundle} (from ft_a, step 7000)"


def test_decoding_section_lists_per_engine_cers_when_evaluated_per_engine(results, tmp_path):
    """eval JSON from `evaluate --per-engine` adds one line per decoder with each split's
    engines; splits scored without it are left out of the line, and no line without any."""
    runs = tmp_path / "runs"
    (runs / "eval").mkdir(parents=True)
    per_engine = {
        "espeak": {"cer": 0.182, "utterances": 35},
        "kokoro": {"cer": 0.143, "utterances": 96},
    }
    for dec in ("greedy", "lm"):
        for split in results.SPLITS:
            score = {"wer": 0.4, "cer": 0.2, "rtf": 0.01}
            if dec == "greedy" and split == "dev":
                score["by_engine"] = per_engine
            (runs / "eval" / f"bundle_default.{dec}.{split}.json").write_text(json.dumps(score))
    text = "\n".join(results._decoding_section(results.decoding_rows(runs)))
    assert (
        "- greedy (best path, no LM), CER % per engine: dev: espeak 18.2 (35), kokoro 14.3 (96)."
        in text
    )
    assert "beam search, CER % per engine" not in text
    for split in results.SPLITS:
        path = runs / "eval" / f"bundle_default.greedy.{split}.json"
        path.write_text(json.dumps({"wer": 0.4, "cer": 0.2, "rtf": 0.01}))
    text = "\n".join(results._decoding_section(results.decoding_rows(runs)))
    assert "per engine" not in text
