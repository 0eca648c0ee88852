"""Build the demo comparison table from the pipeline's JSON outputs (scripts/demo_model.sh).

Reads, per row, the evaluation JSON of `hubert-lstm evaluate` on the dev split (and on
test_unseen when present) and measures every recognizer's CPU throughput side by side on the
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

from model_training.training.evaluate import load_recognizer

ROWS: dict[str, str] = {
    "fbank": "log-mel fbank (no upstream model)",
    "teacher": "mini HuBERT teacher (transformer)",
    "ce": "LSTM student, CE only",
    "kd": "LSTM student, CE + KD",
    "dkd_b1": "LSTM student, CE + DKD (beta 1)",
    "dkd_b4": "LSTM student, CE + DKD (beta 4)",
    "feature": "DistilHuBERT-style student (feature loss)",
}


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"))
    parser.add_argument("--students", default="ce kd dkd_b1 dkd_b4 feature")
    parser.add_argument("--out-json", type=Path, default=Path("runs/demo/results.json"))
    parser.add_argument("--out-md", type=Path, default=Path("docs/results.md"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--long", default="", help="upstreams that also have a longer head (runs/ctc_long_NAME)"
    )
    parser.add_argument("--long-steps", type=int, default=None, help="for the table's text")
    parser.add_argument("--long-hours", type=float, default=None, help="for the table's text")
    args = parser.parse_args()

    names = ["fbank", "teacher", *args.students.split()]
    runs = {n: args.runs / f"ctc_{n}" for n in names if (args.runs / f"ctc_{n}").is_dir()}
    speed = measure_throughput(runs, args.seconds, args.repeats, args.threads)
    rows = [score_row(args.runs, name, run, speed[name]) for name, run in runs.items()]
    long_rows = [
        score_row(args.runs, f"long_{name}", args.runs / f"ctc_long_{name}", None)
        for name in args.long.split()
    ]
    result = {
        "rows": rows,
        "long_rows": long_rows,
        "long_head": {"steps": args.long_steps, "hours": args.long_hours},
        "throughput": {
            "input_seconds": args.seconds,
            "batch": 1,
            "repeats": args.repeats,
            "threads": args.threads,
            "what": "upstream + CTC head forward, median of interleaved repeats",
        },
    }
    args.out_json.parent.mkdir(parents=True, exist_ok=True)
    args.out_json.write_text(json.dumps(result, indent=2) + "\n")
    args.out_md.parent.mkdir(parents=True, exist_ok=True)
    args.out_md.write_text(render_markdown(result))
    print(render_markdown(result))


def score_row(runs: Path, name: str, run: Path, speed: float | None) -> dict[str, Any]:
    """One table row from `hubert-lstm evaluate`'s JSON files for `name` and its run."""
    dev = json.loads((runs / "eval" / f"{name}.dev.json").read_text())
    test_path = runs / "eval" / f"{name}.test_unseen.json"
    test = json.loads(test_path.read_text()) if test_path.is_file() else None
    rec = load_recognizer(run)
    return {
        "name": name,
        "description": ROWS.get(name.removeprefix("long_"), name),
        "upstream_parameters": _upstream_parameters(rec.model),
        "total_parameters": rec.parameters,
        "dev_wer": dev["wer"],
        "dev_cer": dev["cer"],
        "test_unseen_wer": test["wer"] if test else None,
        "test_unseen_cer": test["cer"] if test else None,
        "cpu_audio_seconds_per_second": speed,
        "run": str(run),
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


HEADER = """# Demo results: students, teacher and fbank on the synthetic corpus

Produced by `make demo-model` (`scripts/demo_model.sh`, seed 0; this file is written by
`scripts/demo_results.py` from the run's JSON). Everything below was trained and measured on
a 2-core CPU in about two hours: a 10 h synthetic corpus (`hubert-lstm data synth --hours 10
--seed 0`), a mini HuBERT teacher (600 steps), students distilled for 300 steps on 2 h of it,
and the same CTC downstream (configs/ctc/demo.yaml, 450 steps on 1 h) on every upstream. Dev =
unseen sentences and voice variants; unseen voices = test_unseen (flite awb/rms/slt, festival
slt HTS), never used for training or selection. WER/CER in %, greedy decoding, no LM.
These are tiny-budget numbers for checking the pipeline, not the paper's setting.

"""


def render_markdown(result: dict[str, Any]) -> str:
    """The results table as Markdown."""
    lines = [
        "| upstream | upstream params | dev WER % | dev CER % | unseen-voices WER % "
        "| unseen-voices CER % | CPU audio s/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['description']} | {r['upstream_parameters'] / 1e6:.2f}M | {_pct(r['dev_wer'])} "
            f"| {_pct(r['dev_cer'])} | {_pct(r['test_unseen_wer'])} | {_pct(r['test_unseen_cer'])} "
            f"| {r['cpu_audio_seconds_per_second']} |"
        )
    t = result["throughput"]
    lines.append("")
    lines.append(
        f"CPU throughput: {t['what']}; batch {t['batch']}, {t['input_seconds']:.0f} s input, "
        f"{t['threads']} threads, {t['repeats']} repeats."
    )
    if result.get("long_rows"):
        head = result["long_head"]
        lines += [
            "",
            "## A longer CTC head",
            "",
            f"The best student by dev CER above and fbank again, each with a CTC head trained "
            f"{head['steps']} steps on {head['hours']:g} h of the train split (same config "
            "otherwise). The bundled model (`models/default`) is the student row.",
            "",
            "| upstream | upstream params | dev WER % | dev CER % | unseen-voices WER % "
            "| unseen-voices CER % |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for r in result["long_rows"]:
            lines.append(
                f"| {r['description']} | {r['upstream_parameters'] / 1e6:.2f}M "
                f"| {_pct(r['dev_wer'])} | {_pct(r['dev_cer'])} | {_pct(r['test_unseen_wer'])} "
                f"| {_pct(r['test_unseen_cer'])} |"
            )
    return HEADER + "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
