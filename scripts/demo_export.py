"""Export the best demo student (lowest dev CER among the distilled students) as the bundled
default model, with a model card that says plainly what it is and what it is not."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from model_training.training.export import export_run

STUDENTS = ("ce", "kd", "dkd_b1", "dkd_b4", "feature")

CARD = """# hubert-lstm demo model: `{name}`

**What it is.** A compact student ({description}, {upstream_m:.2f}M parameters in the upstream,
{total_m:.2f}M with the CTC head) distilled from a *mini HuBERT teacher that this project
pretrained itself* on a ~{hours:.0f}-hour **synthetic** English corpus spoken by Debian's TTS
engines (espeak-ng voices and variants, festival kal/ked diphone voices, flite kal16), then a
SUPERB-style CTC recognizer (weighted layer sum -> Linear -> 2-layer BiLSTM -> 29 characters)
fine-tuned on the frozen student. Everything was trained on a 2-core CPU by `make demo-model`.

**What it is not.** It is *not* a LibriSpeech-trained HuBERT student and it has never heard
human speech. Expect poor accuracy on real recordings. It exists so that `make run` serves a real,
honestly trained model on a fresh machine, and to show the pipeline end to end.

## Scores (greedy CTC decoding, no language model)

| split | utterances | WER % | CER % |
|---|---:|---:|---:|
| dev (unseen sentences and voice variants) | {dev_utts} | {dev_wer:.1f} | {dev_cer:.1f} |
| test_unseen (reserved voices*) | {test_utts} | {test_wer} | {test_cer} |

\\* flite awb, rms and slt and festival's slt HTS voice: engines' voices never used in training.

The comparison with the other students, the teacher and an fbank baseline on the same splits is
in `docs/results.md` of the repository.

## Data

Synthetic corpus from `hubert-lstm data synth --hours {hours:g} --seed {seed}`: sentences from
Debian text packages (KJV bible, fortunes, WordNet glosses), normalised to the SUPERB character
set; train and dev share neither sentences nor voices; the test_unseen voices are never used for
training or model selection. Corpus card: `{corpus_card}`.

## Recipe

    make demo-model        # scripts/demo.mk; every stage resumes
    # teacher:  configs/teacher/demo.yaml   (MFCC k-means units -> masked prediction)
    # student:  configs/distill/demo_{name}.yaml
    # CTC head: configs/ctc/demo.yaml, {ctc_steps} steps on {ctc_hours:g} h of the train split

## Build the real thing

With a HuBERT Base fairseq checkpoint and LibriSpeech on GPUs:

    hubert-lstm data librispeech --root LibriSpeech --subsets train-clean-100 train-clean-360 \\
        train-other-500 --out data/ls960.tsv
    hubert-lstm targets --fairseq hubert_base_ls960.pt --manifest data/ls960.tsv --out cache/ls960
    torchrun --nproc_per_node 4 -m model_training.cli distill --config configs/distill/paper.yaml
    hubert-lstm finetune-ctc --upstream runs/paper/distill --train data/train-clean-100.tsv \\
        --dev data/dev-clean.tsv --out runs/paper/ctc --config configs/ctc/superb.yaml
    hubert-lstm evaluate --model runs/paper/ctc --manifest data/test-clean.tsv
    hubert-lstm export --run runs/paper/ctc --out models/paper

---

{export_card}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, default=Path("runs/demo"))
    parser.add_argument("--results", type=Path, default=Path("runs/demo/results.json"))
    parser.add_argument("--out", type=Path, default=Path("models/default"))
    parser.add_argument("--test-manifest", type=Path, default=Path("data/synth/test_unseen.tsv"))
    parser.add_argument("--corpus-card", type=Path, default=Path("data/synth/card.json"))
    parser.add_argument("--ctc-hours", type=float, default=2.0)
    parser.add_argument("--ctc-steps", type=int, default=450)
    parser.add_argument(
        "--head", choices=["equal", "long"], default="equal",
        help="export the best student's equal-budget head or its longer one (ctc_long_NAME)",
    )  # fmt: skip
    parser.add_argument("--print-best", action="store_true", help="print the best name, exit")
    args = parser.parse_args()

    results = json.loads(args.results.read_text())
    students = [r for r in results["rows"] if r["name"] in STUDENTS and r["dev_wer"] is not None]
    # by CER, as the CTC heads were selected: at this budget an empty transcript (WER 1.00)
    # would beat a useful one with insertions on WER
    best = min(students, key=lambda r: (r["dev_cer"], r["dev_wer"]))
    if args.print_best:
        print(best["name"])
        return
    eval_name = best["name"] if args.head == "equal" else f"long_{best['name']}"
    run = best["run"] if args.head == "equal" else str(args.runs / f"ctc_{eval_name}")
    provenance: dict[str, Any] = export_run(
        run,
        args.out,
        eval_manifest=args.test_manifest,
        name=f"hubert-lstm-demo-{best['name']}",
    )
    corpus = json.loads(args.corpus_card.read_text()) if args.corpus_card.is_file() else {}
    test = provenance.get("evaluation", {}).get("fp32", {})
    dev_eval = json.loads((args.runs / "eval" / f"{eval_name}.dev.json").read_text())
    export_card = (args.out / "README.md").read_text()
    card = CARD.format(
        name=best["name"],
        description=best["description"],
        upstream_m=best["upstream_parameters"] / 1e6,
        total_m=best["total_parameters"] / 1e6,
        hours=float(corpus.get("splits", {}).get("train", {}).get("hours", 0.0)),
        seed=corpus.get("seed", 0),
        dev_utts=dev_eval["utterances"],
        dev_wer=100 * dev_eval["wer"],
        dev_cer=100 * dev_eval["cer"],
        test_utts=test.get("utterances", "-"),
        test_wer=f"{100 * test['wer']:.1f}" if test.get("wer") is not None else "-",
        test_cer=f"{100 * test['cer']:.1f}" if test.get("cer") is not None else "-",
        corpus_card=args.corpus_card,
        ctc_hours=args.ctc_hours,
        ctc_steps=args.ctc_steps,
        export_card=export_card.replace("\n# ", "\n## ", 1)
        if export_card.startswith("# ")
        else export_card,
    )
    (args.out / "README.md").write_text(card)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"exported {best['name']} to {args.out} ({size / 1e6:.1f} MB)")
    if size > 50e6:
        raise SystemExit(f"bundle is {size / 1e6:.1f} MB, over the 50 MB limit for git")


if __name__ == "__main__":
    main()
