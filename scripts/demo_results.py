"""Build the demo comparison table from the pipeline's JSON outputs (scripts/demo.mk).

Reads, per row, the evaluation JSON of `hubert-lstm evaluate` on the dev split and on the two
halves of test_unseen (neural: the corpus's unseen Kokoro voices; classic: the reserved flite and
festival voices) and measures every recognizer's CPU throughput side by side on the
same inputs (interleaved repeats, medians). Writes results JSON and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from model_training.bundle import bundle_lineage, interpolated_phrase
from model_training.data.manifest import Manifest, read_manifest
from model_training.data.synth import utterance_index
from model_training.training.evaluate import load_recognizer

ROWS: dict[str, str] = {
    "fbank": "log-mel fbank (no upstream model)",
    "teacher1": "mini HuBERT teacher, iteration 1 (MFCC units)",
    "teacher2": "mini HuBERT teacher, iteration 2 (units of iteration 1's layer)",
    "ce": "LSTM student (log-mel front-end), CE only",
    "kd": "LSTM student (log-mel front-end), CE + KD",
    "dkd_b1": "LSTM student (log-mel front-end), CE + DKD (beta 1)",
    "dkd_b4": "LSTM student (log-mel front-end), CE + DKD (beta 4)",
    "dkd_cnn": "LSTM student (CNN front-end copied from the teacher), CE + DKD (beta 4)",
    "feature": "DistilHuBERT-style student (feature loss)",
    "causal_dkd": "causal LSTM student (unidirectional, log-mel front-end), CE + DKD (beta 1)",
}
TEST_SPLITS = ("test_neural", "test_classic")


def _upstream_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.upstream.parameters())


def measure_throughput(
    runs: dict[str, Path], seconds: float, repeats: int, threads: int
) -> dict[str, float]:
    """Audio seconds per wall second (batch 1, one `seconds`-long input), interleaved."""
    torch.set_num_threads(threads)
    models = {name: load_recognizer(path).model.eval() for name, path in runs.items()}
    wave = torch.randn(1, int(seconds * 16000), generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(wave)  # warm-up
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(wave)
                times[name].append(time.perf_counter() - start)
    return {name: round(seconds / statistics.median(t), 2) for name, t in times.items()}


FT_INITS = {
    "random": "random init (no distillation)",
    "dkd": "DKD student",
    "ce": "CE student",
    "feature": "DistilHuBERT-style student",
    "causal": "causal DKD student (causal head)",
}


def _manifest_hours(path: Path, train_start: int = 0) -> tuple[float, float] | None:
    """(all hours, hours of train utterances `train_start` on) of a manifest, None if absent."""
    if not path.is_file():
        return None
    manifest = read_manifest(path)
    # a path synth did not write cannot be placed in the stream: counted as new
    new = [e for e in manifest if (utterance_index(e.path) or train_start) >= train_start]
    return manifest.hours, Manifest(manifest.root, new).hours


def finetuned_description(runs: Path, run: str, train_start: int = 0) -> str:
    """ "DKD student (dkd_b4), all 12.0 h" for ft_dkd_all, from the run folders themselves;
    a run trained longer than the others (ft_dkd_all_long) names its steps, a continuation
    (ft_dkd_all_more) also the run it continued, and its speed perturbation if any.
    `train_start` > 0: the corpus is new audio after that many utterances of the train
    stream (demo.mk's TRAIN_START), said so."""
    _, init, data = run.split("_", 2)
    data, _, longer = data.partition("_")
    text = FT_INITS.get(init, init)
    link = runs / f"distill_{init}"
    if init == "dkd" and link.is_symlink():
        text += f" ({Path(link.readlink()).name.removeprefix('distill_')})"
    hours = _manifest_hours(runs / "manifests" / f"ft_{data}.tsv", train_start)
    text = f"{text}, {data}" + ("" if hours is None else f" {hours[0]:.1f} h")
    if train_start:  # FT_EXTRA_TRAIN may have appended earlier corpora: say which part is new
        whole = hours is None or abs(hours[0] - hours[1]) < 0.05
        new = "" if whole else f", of which {hours[1]:.1f} h"
        text += f"{new} of new audio (train utterances {train_start} on)"
    config, metrics = runs / run / "config.yaml", runs / run / "metrics.json"
    if longer and config.is_file():
        settings = yaml.safe_load(config.read_text())
        planned = settings["max_steps"]
        done = json.loads(metrics.read_text()).get("step") if metrics.is_file() else None
        stopped = done is not None and done < planned
        source = settings.get("init_head")
        if source:  # a continuation: of a run (ft_dkd_all_more) or of a shipped bundle
            info = json.loads(metrics.read_text()) if metrics.is_file() else {}
            lineage = info.get("upstream", {}).get("continued_from")
            text += f", {continued_what(Path(source), lineage)} continued"
        text += f", stopped at step {done} of {planned}" if stopped else f", {planned} steps"
        if settings.get("speed_perturb"):
            factors = "/".join(f"{f:g}" for f in settings["speed_perturb"])
            text += f", speed perturbation x{factors}"
    return text


def size_value(sizes: str, name: str) -> int:
    """NAME's integer value in a "HOURS=4 TRAIN_START=3811 ..." sizes string (0 if absent)."""
    values = dict(item.split("=", 1) for item in sizes.split() if "=" in item)
    return int(values.get(name, 0))


def continued_what(source: Path, lineage: dict[str, Any] | None) -> str:
    """A continued run's source: the run's name, or for a bundle "the bundle models/default
    (from run R, step N)", with the weights if that bundle was an interpolation.

    Read from the lineage the run recorded when it started (the bundle may have been replaced
    since), else from the bundle's provenance now."""
    if not lineage and not (source / "config.json").is_file():
        return source.name
    lineage = lineage or bundle_lineage({"kind": "bundle", "path": str(source)}) or {}
    run = Path(str(lineage.get("run"))).name
    step = f"step {lineage.get('step')}{interpolated_phrase(lineage)}"
    return f"the bundle {source} (from {run}, {step})"


def teacher_accuracy(runs: Path) -> list[dict[str, Any]]:
    """Masked-unit accuracy per HuBERT iteration (the last teacher's metrics.json lists all)."""
    for name in ("teacher2", "teacher1"):
        path = runs / name / "metrics.json"
        if path.is_file():
            return json.loads(path.read_text()).get("iterations", [])
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"))
    parser.add_argument("--students", default="dkd_b1 dkd_b4 ce kd feature causal_dkd dkd_cnn")
    parser.add_argument("--finetuned", default="", help="end-to-end runs, e.g. ft_dkd_all")
    parser.add_argument("--out-json", type=Path, default=Path("runs/demo/results.json"))
    parser.add_argument("--out-md", type=Path, default=Path("runs/demo/results.md"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sizes", default="", help="the run's size variables, for the text")
    parser.add_argument(
        "--previous",
        type=Path,
        help="an earlier results.json (e.g. docs/results.json): rows whose runs are not under "
        "--runs (a new machine lost them) are carried from it and marked",
    )
    args = parser.parse_args()

    names = ["fbank", "teacher1", "teacher2", *args.students.split()]
    # a row appears once its run has been evaluated; the others are listed as pending
    runs = {n: args.runs / f"ctc_{n}" for n in names if _evaluated(args.runs, f"ctc_{n}")}
    pending = [f"ctc_{n}" for n in names if n not in runs]
    speed = measure_throughput(runs, args.seconds, args.repeats, args.threads)
    rows = [score_row(args.runs, name, run, speed[name]) for name, run in runs.items()]
    ft_rows = []
    train_start = size_value(args.sizes, "TRAIN_START")
    for run in args.finetuned.split():
        if not _evaluated(args.runs, run):
            pending.append(run)
        else:
            row = score_row(args.runs, run, args.runs / run, None)
            description = finetuned_description(args.runs, run, train_start)
            ft_rows.append({**row, "description": description})
    centres = args.runs / "img" / "layer_weights.json"
    result = {
        "sizes": args.sizes,
        "layer_centres": json.loads(centres.read_text()) if centres.is_file() else {},
        "teacher_iterations": teacher_accuracy(args.runs),
        "rows": rows,
        "finetuned_rows": ft_rows,
        "pending": pending,
        "throughput": {
            "input_seconds": args.seconds,
            "batch": 1,
            "repeats": args.repeats,
            "threads": args.threads,
            "what": "upstream + CTC head forward, median of interleaved repeats",
        },
    }
    result["decoding"] = decoding_rows(args.runs)
    if args.previous is not None:
        result = carry_previous(result, json.loads(args.previous.read_text()))
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(result, indent=2) + "\n")
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_md.write_text(render_markdown(result))
    print(render_markdown(result))


def carry_previous(result: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """`result` with the rows it lacks taken from `previous` (marked `carried`), in
    `previous`'s order with this run's new rows after them; pending runs that `previous` has
    are no longer pending, and the layer centres, teacher iterations and sizes fill in where
    this run has none. Rows this run measured win over carried ones."""
    out = dict(result)
    pending = set(result["pending"])
    for key in ("rows", "finetuned_rows"):
        fresh = {r["name"]: r for r in result[key]}
        merged = []
        for row in previous.get(key, []):
            if row["name"] in fresh:
                merged.append(fresh.pop(row["name"]))
            else:  # the sizes of the run that measured it (a row carried twice keeps its own)
                sizes = row.get("sizes") or (
                    previous.get("carried_sizes") if row.get("carried") else previous.get("sizes")
                )
                merged.append({**row, "carried": True, "sizes": sizes})
                pending.discard(row["name"])
                pending.discard(f"ctc_{row['name']}")
        out[key] = merged + list(fresh.values())
    for key in ("layer_centres", "teacher_iterations", "sizes"):
        out[key] = result.get(key) or previous.get(key)
    out["pending"] = [p for p in result["pending"] if p in pending]
    return out


def score_row(runs: Path, name: str, run: Path, speed: float | None) -> dict[str, Any]:
    """One table row from `hubert-lstm evaluate`'s JSON files for `name` and its run."""
    dev = json.loads((runs / "eval" / f"{run.name}.dev.json").read_text())
    rec = load_recognizer(run)
    row: dict[str, Any] = {
        "name": name,
        "description": ROWS.get(name, name),
        "upstream_parameters": _upstream_parameters(rec.model),
        "total_parameters": rec.parameters,
        "dev_wer": dev["wer"],
        "dev_cer": dev["cer"],
    }
    for split in TEST_SPLITS:
        path = runs / "eval" / f"{run.name}.{split}.json"
        test = json.loads(path.read_text()) if path.is_file() else {}
        row[f"{split}_wer"], row[f"{split}_cer"] = test.get("wer"), test.get("cer")
    row.update(probe_scores(runs, name))
    row.update(training_stop(run, "head"))
    return {**row, "cpu_audio_seconds_per_second": speed, "run": str(run)}


def training_stop(run: Path, prefix: str) -> dict[str, Any]:
    """How the run's training ended: its last step, its best dev step, and whether its last
    evaluation was still its best (then the step cap stopped it, not patience: more steps
    would likely have helped)."""
    path = run / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    evals = metrics.get("evaluations") or []
    best_step = (metrics.get("best") or {}).get("step")
    return {
        f"{prefix}_steps": metrics.get("step"),
        f"{prefix}_best_step": best_step,
        f"{prefix}_still_improving": bool(evals) and best_step == evals[-1].get("step"),
    }


def probe_scores(runs: Path, name: str) -> dict[str, Any]:
    """The upstream's probes (issue 16), None where not run: PER of its PR head
    (eval/pr_NAME.SPLIT.json) and test accuracy of its SID head (sid_NAME/metrics.json)."""
    out: dict[str, Any] = {}
    for split in ("dev", *TEST_SPLITS):
        path = runs / "eval" / f"pr_{name}.{split}.json"
        out[f"{split}_per"] = json.loads(path.read_text()).get("per") if path.is_file() else None
    sid = runs / f"sid_{name}" / "metrics.json"
    metrics = json.loads(sid.read_text()) if sid.is_file() else {}
    out.update(training_stop(runs / f"pr_{name}", "pr_head"))
    out["sid_test_acc"] = metrics.get("test_acc")
    out["sid_chance"] = metrics.get("chance")
    out["sid_speakers"] = metrics.get("speakers")
    return out


def _evaluated(runs: Path, run: str) -> bool:
    return (runs / run).is_dir() and (runs / "eval" / f"{run}.dev.json").is_file()


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


HEADER = """# Demo results: students, teacher and fbank on the synthetic corpus

Produced by `make demo-model` (`scripts/demo.mk`; this file is written by
`scripts/demo_results.py` from the run's JSON and published to docs/ by
`make -f scripts/demo.mk publish`). Sizes of this run: {sizes}. Everything was trained and
measured on a 2-core CPU. The same CTC downstream (configs/ctc/demo.yaml, frozen upstream) on
every upstream. Dev = unseen sentences and voices; unseen neural = the corpus's four held-out
Kokoro voices; unseen classic = the reserved flite awb/rms/slt and festival slt HTS voices;
none of them used for training or selection. WER/CER in %, greedy decoding, no LM. These are
small-budget numbers, not the paper's setting.

"""


def _table(rows: list[dict[str, Any]], speed: bool) -> list[str]:
    head = (
        "| upstream | upstream params | dev WER % | dev CER % | unseen neural WER % "
        "| unseen neural CER % | unseen classic WER % | unseen classic CER % |"
    )
    # the probes' columns (issue 16) only once some row has them; missing scores are "-"
    probes = any(r.get("dev_per") is not None or r.get("sid_test_acc") is not None for r in rows)
    head += " dev PER % | SID test acc % |" if probes else ""
    lines = [head + (" CPU audio s/s |" if speed else ""), "|---|" + "---:|" * (7 + speed)]
    lines[1] += "---:|---:|" if probes else ""
    for r in rows:
        mark = " (carried)" if r.get("carried") else ""
        cells = [r["description"] + mark, f"{r['upstream_parameters'] / 1e6:.2f}M"]
        cells += [_pct(r[k]) for k in ("dev_wer", "dev_cer")]
        cells += [_pct(r.get(f"{s}_{m}")) for s in TEST_SPLITS for m in ("wer", "cer")]
        if probes:
            cells += [_pct(r.get("dev_per")), _pct(r.get("sid_test_acc"))]
        if speed:
            cells.append(str(r["cpu_audio_seconds_per_second"]))  # carried: as measured then
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _fmt(row: dict[str, Any] | None, key: str) -> str:
    return _pct(row.get(key)) if row else "-"


def paper_findings(rows: list[dict[str, Any]], centres: dict[str, Any]) -> list[str]:
    """The paper's PR/SID findings, each checked against this run's rows (said as measured).

    `centres`: {upstream: {task: {"centre": weighted mean layer index}}} from
    scripts/plot_layer_weights.py.
    """
    by = {r["name"]: r for r in rows}
    b1, b4, kd, ce, feat = (by.get(n) for n in ("dkd_b1", "dkd_b4", "kd", "ce", "feature"))
    lines = ["", "### The paper's findings at this scale", ""]
    if b4 and b1 and kd and b4.get("dev_per") is not None:
        holds = b4["dev_per"] < min(b1["dev_per"], kd["dev_per"])
        lines.append(
            f"- *DKD with beta 4 helps phone recognition*: {'holds' if holds else 'does not hold'}"
            f" here. Dev PER {_fmt(b4, 'dev_per')} with beta 4, {_fmt(b1, 'dev_per')} with "
            f"beta 1, {_fmt(kd, 'dev_per')} with KD, {_fmt(ce, 'dev_per')} with CE alone."
        )
    logit = [r for r in (kd, b1, b4) if r and r.get("sid_test_acc") is not None]
    if feat and feat.get("sid_test_acc") is not None and logit:
        holds = all(r["sid_test_acc"] < feat["sid_test_acc"] for r in logit)
        accs = ", ".join(f"{_fmt(r, 'sid_test_acc')} ({r['name']})" for r in logit)
        lines.append(
            f"- *Logit distillation costs speaker identification* (against feature "
            f"distillation): {'holds' if holds else 'does not hold'} here. SID accuracy "
            f"{accs} against {_fmt(feat, 'sid_test_acc')} for the DistilHuBERT-style student "
            f"(CE alone: {_fmt(ce, 'sid_test_acc')})."
        )
    both = {
        n: c
        for n, c in centres.items()
        if n != "fbank" and all(t in c for t in ("asr", "pr", "sid"))
    }
    if both:
        earlier = [
            n
            for n, c in both.items()
            if c["sid"]["centre"] < min(c["asr"]["centre"], c["pr"]["centre"])
        ]
        detail = ", ".join(
            f"{n} {c['sid']['centre']:.1f} vs {c['asr']['centre']:.1f}/{c['pr']['centre']:.1f}"
            for n, c in both.items()
        )
        lines.append(
            f"- *The explanation: speaker cues sit in early layers, so SID heads weight them*: "
            f"the SID head's layer-weight centre lies below both the ASR and the PR head's for "
            f"{len(earlier)} of {len(both)} upstreams (SID vs ASR/PR centre, in hidden-state "
            f"index: {detail})."
        )
    fb = by.get("fbank")
    students = [r for r in rows if r["name"] not in ("fbank", "teacher1", "teacher2")]
    if fb and fb.get("dev_per") is not None and students:
        per = sum(r.get("dev_per") is not None and r["dev_per"] < fb["dev_per"] for r in students)
        sid = sum(
            r.get("sid_test_acc") is not None
            and fb.get("sid_test_acc") is not None
            and r["sid_test_acc"] > fb["sid_test_acc"]
            for r in students
        )
        asr = sum(r["dev_cer"] < fb["dev_cer"] for r in students)
        lines.append(
            f"- Against log-mel fbank: {per} of {len(students)} students have a lower PER, "
            f"{sid} a higher SID accuracy, {asr} a lower ASR CER. The PR and SID heads are "
            f"linear; the ASR head's BiLSTM can learn from fbank what a linear head cannot."
        )
    return lines if len(lines) > 3 else []


def _still_improving_note(rows: list[dict[str, Any]], prefix: str, what: str) -> list[str]:
    """A sentence naming the rows whose training the step cap stopped while dev still improved."""
    capped = [r for r in rows if r.get(f"{prefix}_still_improving")]
    if not capped:
        return []
    names = ", ".join(f"{r['name']} ({r[f'{prefix}_steps']})" for r in capped)
    return [
        "",
        f"{what} whose best dev score came at their last evaluation, so the step cap or the "
        f"end of a session (last step in brackets) stopped them, not patience, and more steps "
        f"would likely lower their numbers: {names}.",
    ]


DECODERS = {"greedy": "greedy (best path, no LM)", "lm": "lexicon + word n-gram LM, beam search"}
SPLITS = ("dev", "test_neural", "test_classic")


def decoding_rows(runs: Path) -> dict[str, Any] | None:
    """The exported default bundle scored with each decoder (eval/bundle_default.DEC.SPLIT.json,
    from demo.mk's eval_bundle_default), and its LM's facts; None before that stage ran."""
    rows = []
    for decoder, what in DECODERS.items():
        scores = {}
        for split in SPLITS:
            path = runs / "eval" / f"bundle_default.{decoder}.{split}.json"
            if not path.is_file():
                return None
            result = json.loads(path.read_text())
            scores[split] = {"wer": result["wer"], "cer": result["cer"], "rtf": result["rtf"]}
            if result.get("by_engine"):  # evaluate --per-engine
                scores[split]["by_engine"] = result["by_engine"]
        rows.append({"decoder": what, **scores})
    config_path = runs / "bundles" / "default" / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    interpolation = (config.get("provenance") or {}).get("interpolation")
    return {"rows": rows, "lm": config.get("decoder"), "interpolation": interpolation}


def _decoding_section(decoding: dict[str, Any]) -> list[str]:
    lm = decoding.get("lm") or {}
    prov = lm.get("provenance") or {}
    names = ("dev", "unseen neural", "unseen classic")
    header = "| decoder | " + " | ".join(f"{n} WER % | {n} CER %" for n in names) + " |"
    lines = [
        "",
        "## The shipped default: greedy against lexicon + LM decoding",
        "",
        "The exported default bundle decoded two ways. The LM is a word "
        f"{prov.get('order', '?')}-gram (interpolated Kneser-Ney, `hubert-lstm lm build`) of "
        f"the corpus's *training* sentence pool ({prov.get('sentences', '?')} sentences, "
        f"{prov.get('words', '?')} words; no dev or test sentence is in it), n-grams of order "
        f">= 2 seen fewer than {prov.get('pruned_below_count') or 1} times pruned; its weight "
        f"({lm.get('lm_weight')}) and word score ({lm.get('word_score')}) were picked on dev "
        f"(`hubert-lstm lm attach --tune-manifest`), beam {lm.get('beam_size')}. Words outside "
        f"its {(prov.get('ngrams') or {}).get('1', '?')}-word vocabulary cannot come out.",
        "",
        header,
        "|---|" + "---:|" * 6,
    ]
    for row in decoding["rows"]:
        cells = " | ".join(f"{_pct(row[s]['wer'])} | {_pct(row[s]['cer'])}" for s in SPLITS)
        lines.append(f"| {row['decoder']} | {cells} |")
    lines += _per_engine_lines(decoding["rows"], names)
    mix = decoding.get("interpolation")
    if mix:
        grid = ", ".join(f"{w}: {_pct(cer)}" for w, cer in (mix.get("grid_dev_cer") or {}).items())
        lines += [
            "",
            f"Its weights are {1 - mix['weight']:.2f} x the bundle its run continued "
            f"(`{mix['base']}`) + {mix['weight']:.2f} x the run's own, the weight picked on dev "
            f"(`demo_export.py --interpolate-grid`; greedy dev CER % per weight of the run, 0 "
            f"and 1 as recorded: {grid or '-'}).",
        ]
    return lines


def _per_engine_lines(rows: list[dict[str, Any]], names: tuple[str, ...]) -> list[str]:
    """One line per decoder: CER % per TTS engine on each split that `evaluate --per-engine`
    scored (utterances in brackets); nothing when no split was."""
    lines = []
    for row in rows:
        parts = []
        for split, name in zip(SPLITS, names, strict=True):
            engines = row[split].get("by_engine") or {}
            cells = ", ".join(
                f"{engine} {_pct(s['cer'])} ({s['utterances']})" for engine, s in engines.items()
            )
            if cells:
                parts.append(f"{name}: {cells}")
        if parts:
            lines.append(f"- {row['decoder']}, CER % per engine: " + "; ".join(parts) + ".")
    return ["", *lines] if lines else []


def render_markdown(result: dict[str, Any]) -> str:
    """The results table as Markdown."""
    lines = _table(result["rows"], speed=True)
    t = result["throughput"]
    lines.append("")
    lines.append(
        f"CPU throughput: {t['what']}; batch {t['batch']}, {t['input_seconds']:.0f} s input, "
        f"{t['threads']} threads, {t['repeats']} repeats."
    )
    lines += _still_improving_note(result["rows"], "head", "CTC heads")
    lines += _still_improving_note(result["rows"], "pr_head", "PR heads")
    chance = {r["sid_speakers"]: r["sid_chance"] for r in result["rows"] if r.get("sid_chance")}
    if chance:
        lines += [
            "",
            "Probes (`make -f scripts/demo.mk probes`, then `results PROBES=1`; SUPERB "
            "protocol, frozen upstream, weighted layer sum): PER = phone error "
            "rate of a linear CTC head on espeak-ng's en-us phones (configs/ctc/pr_demo.yaml); "
            "SID = accuracy of mean pooling + a linear layer over the corpus's voices, "
            "utterance-level splits of the same voices (configs/sid/demo.yaml); chance "
            + ", ".join(f"{100 * c:.1f}% ({n} voices)" for n, c in sorted(chance.items()))
            + ".",
            "",
            "![Learned layer weights of the ASR, PR and SID heads](img/layer_weights.png)",
            *paper_findings(result["rows"], result.get("layer_centres") or {}),
        ]
    if result.get("finetuned_rows"):
        lines += [
            "",
            "## End-to-end fine-tuning: what distillation buys",
            "",
            "The whole model (upstream unfrozen at a tenth of the head's learning rate, frozen "
            "for the first tenth of the steps) fine-tuned with CTC from each starting point, "
            "with the same steps and data for each (except a row that names its steps: the "
            "same run as its namesake, only longer, a candidate for the shipped default).",
            "",
            *_table(result["finetuned_rows"], speed=False),
            *_still_improving_note(result["finetuned_rows"], "head", "Fine-tunes"),
        ]
    if result.get("decoding"):
        lines += _decoding_section(result["decoding"])
    if result.get("teacher_iterations"):
        lines += [
            "",
            "## Teacher pretraining",
            "",
            "Masked-unit accuracy on dev (eval mode, fixed masks). Each iteration predicts its "
            "own units, so the numbers describe each task, not one teacher against the other.",
            "",
            "| iteration | units | steps | dev masked-unit accuracy % |",
            "|---:|---|---:|---:|",
        ]
        for it in result["teacher_iterations"]:
            acc = (it.get("eval") or {}).get("acc_masked")
            units = it.get("units", "-")
            if isinstance(units, dict):
                units = ", ".join(
                    f"{k} {Path(v).name if k == 'teacher' else v}"
                    for k, v in units.items()
                    if not isinstance(v, dict)
                )
            lines.append(
                f"| {it.get('iteration')} | {units} | {it.get('step', '-')} | {_pct(acc)} |"
            )
    carried: dict[str, list[str]] = {}
    for r in result["rows"] + result.get("finetuned_rows", []):
        if r.get("carried"):
            carried.setdefault(r.get("sizes") or "as above", []).append(r["name"])
    if carried:
        lines += [
            "",
            "Rows marked *(carried)* were measured by earlier runs of this pipeline whose run "
            "folders are not under this run's OUT (another OUT, or a new machine); they are "
            "copied from the results.json given as `--previous`. The corpus is regenerated from "
            "the same seed, so the splits are the same sentences and voices. Their sizes:",
            "",
            *(f"- {', '.join(names)}: {sizes}" for sizes, names in carried.items()),
        ]
    if result.get("pending"):
        lines += [
            "",
            "**Not finished yet** (the run stopped before these were evaluated; `make demo-model` "
            "resumes them): " + ", ".join(f"`{r}`" for r in result["pending"]) + ".",
        ]
    return HEADER.format(sizes=result.get("sizes") or "see the run") + "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
