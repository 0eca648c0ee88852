"""Pick the best of several demo runs by dev CER (then WER), as the CTC heads are selected.

    demo_pick.py --runs OUT ctc_dkd_b1 ctc_dkd_b4      # prints the winner's run name

At this budget an empty transcript (WER 1.00) would beat a useful one with insertions on WER,
so CER decides. Runs are scored by `hubert-lstm evaluate` into OUT/eval/RUN.dev.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def best_run(runs: Path, candidates: list[str]) -> str:
    """The candidate with the lowest (dev CER, dev WER); SystemExit if none was evaluated."""
    scored = []
    for run in candidates:
        path = runs / "eval" / f"{run}.dev.json"
        if path.is_file():
            dev = json.loads(path.read_text())
            if dev.get("cer") is not None:
                scored.append(((dev["cer"], dev["wer"]), run))
    if not scored:
        raise SystemExit(f"no candidate of {candidates} has a dev evaluation under {runs}/eval")
    return min(scored)[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("candidates", nargs="+")
    args = parser.parse_args()
    print(best_run(args.runs, args.candidates))


if __name__ == "__main__":
    main()
