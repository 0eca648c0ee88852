"""What CPU inference precision costs in accuracy, and what it buys in speed, on any bundle.

Evaluates one recognizer (a bundle or a fine-tuning run) on one manifest at each precision,
in one run, through `model_training.training.evaluate.evaluate_recognizer` (the code behind
`hubert-lstm evaluate`):

    fp32        the default
    bf16        autocast to bfloat16 (the service's HLSTM_CPU_BF16=true)
    int8        dynamic int8 LSTM/Linear (`quantize_dynamic_int8`, a bundle exported with
                `--quantize int8`); convolutions stay fp32
(int8 under bf16 autocast does not run: torch.ao's dynamic int8 Linear takes float32 only.)

Reports WER, CER and the real-time factor (model time / audio time; forward + CTC decoding)
per precision, with the change against fp32. The timing repeats `--rounds` times, precisions
interleaved, and reports the median.

    python benchmarks/precision_cer.py --model models/default --manifest data/synth/dev.tsv
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS_DIR, setup_logging, write_json

from model_training.bundle import quantize_dynamic_int8
from model_training.training.evaluate import evaluate_recognizer, load_recognizer

PRECISIONS = ("fp32", "bf16", "int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="bundle or fine-tuning run dir")
    p.add_argument("--manifest", type=Path, required=True, help="manifest with transcripts")
    p.add_argument("--precisions", default=",".join(PRECISIONS))
    p.add_argument("--rounds", type=int, default=2, help="timed passes per precision")
    p.add_argument("--max-batch-size", type=int, default=1, help="1 = the CPU service's default")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--note", default="", help="free text for the JSON (machine load)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "precision_cer.json")
    args = p.parse_args(argv)
    args.precisions = [x for x in args.precisions.split(",") if x]
    unknown = sorted(set(args.precisions) - set(PRECISIONS))
    if unknown or "fp32" not in args.precisions:
        p.error(f"precisions must include fp32 and come from {PRECISIONS}; found {unknown}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    base = load_recognizer(args.model, "cpu")
    if base.info.get("quantize"):
        raise SystemExit(f"{args.model} is already quantized; give its fp32 bundle")
    int8 = dataclasses.replace(base, model=quantize_dynamic_int8(copy.deepcopy(base.model)))
    variants = {
        "fp32": (base, "fp32"),
        "bf16": (base, "bf16"),
        "int8": (int8, "fp32"),
    }
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in args.precisions}
    for r in range(args.rounds):
        order = args.precisions if r % 2 == 0 else list(reversed(args.precisions))
        for name in order:
            recognizer, autocast = variants[name]
            runs[name].append(
                evaluate_recognizer(
                    recognizer,
                    args.manifest,
                    max_batch_size=args.max_batch_size,
                    precision=autocast,
                )
            )
    results = {}
    for name, passes in runs.items():
        first = passes[0]
        results[name] = {
            "wer": first["wer"],
            "cer": first["cer"],
            "rtf": statistics.median(p["rtf"] for p in passes),
            "rtf_samples": [p["rtf"] for p in passes],
            "deterministic": all(p["cer"] == first["cer"] for p in passes),
        }
    ref = results["fp32"]
    for r in results.values():
        r["cer_change_points"] = 100 * (r["cer"] - ref["cer"])
        r["wer_change_points"] = 100 * (r["wer"] - ref["wer"])
        r["speedup_vs_fp32"] = ref["rtf"] / r["rtf"]
    payload = {
        "settings": {
            "model": str(args.model),
            "manifest": str(args.manifest),
            "utterances": runs["fp32"][0]["utterances"],
            "audio_seconds": runs["fp32"][0]["audio_seconds"],
            "rounds": args.rounds,
            "max_batch_size": args.max_batch_size,
            "threads": torch.get_num_threads(),
            "note": args.note,
        },
        "results": results,
        "elapsed_s": time.monotonic() - start,
    }
    write_json(args.out, "precision_cer", payload)
    print(f"{'precision':10} {'WER %':>7} {'CER %':>7} {'dCER pt':>8} {'RTF':>8} {'speed-up':>8}")
    for name, r in results.items():
        print(
            f"{name:10} {100 * r['wer']:>7.2f} {100 * r['cer']:>7.2f} "
            f"{r['cer_change_points']:>+8.2f} {r['rtf']:>8.4f} {r['speedup_vs_fp32']:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
