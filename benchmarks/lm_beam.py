"""What a wider LM beam buys in WER and costs in decoding time, on a bundle that ships an LM.

The model runs once per manifest (`manifest_emissions`); then each beam size re-decodes the
same log-probs with the bundle's own lexicon + LM decoder settings (LM weight, word score),
so the only thing that changes is `beam_size`. Reports WER, CER and the decoding real-time
factor (decoder seconds / audio seconds, one thread: flashlight's beam search runs on the
calling thread, and the service serialises decoding per bundle, so 1 / RTF bounds the audio
seconds per second one replica can transcribe with the LM).

    python benchmarks/lm_beam.py --model models/default \\
        --manifest dev=data/synth/dev.tsv --manifest test_neural=runs/demo/manifests/test_neural.tsv
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS_DIR, pyplot, save_figure, setup_logging, write_json

from model_training.decoding import LM_DECODER_TYPE, make_decoder
from model_training.training.evaluate import load_recognizer, score
from model_training.training.lm_decoding import manifest_emissions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="bundle with an LM decoder")
    p.add_argument(
        "--manifest",
        action="append",
        required=True,
        help="NAME=PATH of a manifest with transcripts (repeatable)",
    )
    p.add_argument("--beams", default="50 100 200 500 1000", help="beam sizes to compare")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the model pass")
    p.add_argument("--note", default="", help="free text for the JSON (machine load)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "lm_beam.json")
    args = p.parse_args(argv)
    args.beams = [int(b) for b in args.beams.split()]
    if not args.beams or min(args.beams) < 1:
        p.error("--beams: give positive integers")
    if any("=" not in m for m in args.manifest):
        p.error("--manifest takes NAME=PATH")
    args.manifest = dict(m.split("=", 1) for m in args.manifest)
    return args


def decode_all(
    recognizer: Any, spec: dict[str, Any], bundle: Path, emissions: list[torch.Tensor]
) -> tuple[list[str], float]:
    """Hypotheses for every (T_i, V) emission with decoder `spec`, and the seconds it took."""
    frame_seconds = 1.0 / float(recognizer.model.frame_rate)
    decode = make_decoder(recognizer.vocab, frame_seconds, spec, root=bundle)
    start = time.perf_counter()
    hyps = [decode(e).text for e in emissions]
    return hyps, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    torch.set_num_threads(args.threads)
    recognizer = load_recognizer(args.model, "cpu")
    spec = recognizer.decoder_spec or {}  # the bundle's "decoder" entry, as loaded
    if spec.get("type") != LM_DECODER_TYPE:
        raise SystemExit(f"{args.model} has no LM decoder (attach one: `hubert-lstm lm attach`)")
    results: dict[str, list[dict[str, Any]]] = {}
    audio: dict[str, float] = {}
    for name, path in args.manifest.items():
        refs, emissions = manifest_emissions(recognizer, path)
        audio[name] = sum(e.shape[0] for e in emissions) / float(recognizer.model.frame_rate)
        results[name] = []
        for beam in args.beams:
            widened = {**spec, "beam_size": beam}
            hyps, seconds = decode_all(recognizer, widened, args.model, emissions)
            row = {"beam_size": beam, **score(refs, hyps), "decode_rtf": seconds / audio[name]}
            results[name].append(row)
            print(
                f"{name:14} beam {beam:5d}  WER {100 * row['wer']:6.2f}  "
                f"CER {100 * row['cer']:6.2f}  decode RTF {row['decode_rtf']:.4f}"
            )
    payload = {
        "settings": {
            "model": str(args.model),
            "manifests": args.manifest,
            "audio_seconds": audio,
            "lm_weight": spec.get("lm_weight"),
            "word_score": spec.get("word_score"),
            "shipped_beam_size": spec.get("beam_size"),
            "threads": torch.get_num_threads(),
            "note": args.note,
        },
        "results": results,
    }
    write_json(args.out, "lm_beam", payload)
    write_markdown(args.out.with_suffix(".md"), payload)
    plot(args.out.with_suffix(".png"), results)
    return 0


def write_markdown(path: Path, payload: dict[str, Any]) -> None:
    """One table per manifest: beam, WER, CER, decoding RTF."""
    lines = [f"# LM beam size on `{payload['settings']['model']}`", ""]
    for name, rows in payload["results"].items():
        lines += [f"## {name}", "", "| beam | WER % | CER % | decode RTF |", "|---|---|---|---|"]
        lines += [
            f"| {r['beam_size']} | {100 * r['wer']:.2f} | {100 * r['cer']:.2f} | "
            f"{r['decode_rtf']:.4f} |"
            for r in rows
        ]
        lines.append("")
    path.write_text("\n".join(lines))


def plot(path: Path, results: dict[str, list[dict[str, Any]]]) -> None:
    """WER against decoding RTF, one line per manifest, each point labelled with its beam."""
    plt = pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, rows in results.items():
        xs = [r["decode_rtf"] for r in rows]
        ys = [100 * r["wer"] for r in rows]
        ax.plot(xs, ys, marker="o", label=name)
        for r, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(str(r["beam_size"]), (x, y), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("decoding real-time factor (one thread, log scale)")
    ax.set_ylabel("WER %")
    ax.set_title("LM beam size: WER vs decoding time")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
