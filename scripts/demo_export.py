"""Export the demo pipeline's best run as a bundle with a model card that says plainly what it
is and what it is not.

Picks, among `--candidates` (run folders under `--runs`, each scored by `hubert-lstm evaluate`
into eval/RUN.dev.json), the lowest dev CER (`demo_pick.best_run`), writes the
bundle with float16 weights (cast back at load; the WER/CER change is measured on the unseen
neural voices and recorded) and fills the card from the evaluation files.

With `--interpolate-grid`, a run that continued a shipped bundle is also tried as weight
interpolations between that bundle and itself (`model_training/interpolation.py`): each weight
of the grid is scored on dev (greedy), with 0 (the bundle as it was) and 1 (the run) as
recorded, and the lowest dev (CER, WER) ships; an interpolation's card scores are measured anew.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from demo_pick import best_run

from model_training.bundle import lineage_chain, load_bundle
from model_training.data.manifest import read_manifest
from model_training.interpolation import interpolate_bundles
from model_training.training.evaluate import evaluate
from model_training.training.export import export_run

SPLITS = {
    "dev": "dev (unseen sentences and voices)",
    "test_neural": "unseen neural voices (Kokoro af_nicole, am_michael, bf_emma, bm_george)",
    "test_classic": "unseen classic voices (flite awb/rms/slt, festival slt HTS)*",
}

CARD = """# hubert-lstm demo model: `{name}`

**What it is.** {description}: {origin}. {upstream_m:.2f}M parameters in the upstream,
{total_m:.2f}M with the CTC head. {teacher} Its data is {corpus_size}: neural voices
(Kokoro-82M and Piper) and classic ones (espeak-ng, festival, flite). Everything was trained
on a 2-core CPU by `make demo-model` (run `{run}`){continued}.

**What it is not.** It is *not* a LibriSpeech-trained HuBERT student and it has never heard a
human speaker directly (Piper's joe voice and Kokoro's voices were trained on recordings of
people; this model only heard their synthetic speech). Expect much worse accuracy on real
recordings than on the voices below.

## Scores (greedy CTC decoding, no language model)

| split | utterances | WER % | CER % |
|---|---:|---:|---:|
{score_rows}

\\* engines' voices reserved from training and selection. Weights are stored in float16 (cast
to float32 at load): on the unseen neural voices that changes WER by {fp16_wer} and CER by
{fp16_cer} points. The comparison with the other students, the teacher and fbank on the same
splits is in `docs/results.md` of the repository.

## Data

{corpus_origin} (corpus card:
`card.json` of the corpus): sentences from Debian text packages (KJV bible, fortunes, WordNet
glosses), normalised to the SUPERB character set; train, dev and test_unseen share neither
sentences nor voices; Kokoro af_sarah, am_adam, bf_isabella, bm_lewis are never used.

## Recipe

    make demo-model      # scripts/demo.mk: every stage resumes; sizes are variables
    make demo-publish    # copies the bundles to models/ and the results to docs/
    # continue the shipped bundle on the corpus (FT_SHIPPED_STEPS); ships only if it wins on dev
    make -f scripts/demo.mk runs/demo/stamps/eval_ft_dkd_all_shipped

## Build the real thing

With a HuBERT Base fairseq checkpoint and LibriSpeech on GPUs:

    hubert-lstm data librispeech --root LibriSpeech --subsets train-clean-100 train-clean-360 \\\\
        train-other-500 --out data/ls960.tsv
    hubert-lstm targets --fairseq hubert_base_ls960.pt --manifest data/ls960.tsv --out cache/ls960
    torchrun --nproc_per_node 4 -m model_training.cli distill --config configs/distill/paper.yaml
    hubert-lstm finetune-ctc --upstream runs/paper/distill --train data/train-clean-100.tsv \\\\
        --dev data/dev-clean.tsv --out runs/paper/ctc --config configs/ctc/superb.yaml
    hubert-lstm evaluate --model runs/paper/ctc --manifest data/test-clean.tsv
    hubert-lstm export --run runs/paper/ctc --out models/paper

---

{export_card}
"""


# How each end-to-end run's upstream started (ft_<init>_<hours>, scripts/demo.mk)
ORIGINS = {
    "random": "trained from random initialisation with CTC only, end to end",
    "dkd": "distilled from the mini HuBERT teacher with CE + DKD, then fine-tuned end to end"
    " with CTC",
    "ce": "distilled from the mini HuBERT teacher's cluster labels (CE), then fine-tuned end to end"
    " with CTC",
    "feature": "distilled from the mini HuBERT teacher's layers (DistilHuBERT-style), then"
    " fine-tuned end to end with CTC",
    "causal": "distilled from the mini HuBERT teacher with CE + DKD, then fine-tuned end to end"
    " with a causal CTC head",
}
# a DistilHuBERT-style student's words; LSTM students are described from their config
DISTILHUBERT_SENTENCE = (
    "A DistilHuBERT-style student (128-channel CNN, 2 Transformer layers x 384) with a CTC head"
)


def architecture_sentence(config: dict[str, Any], causal_head: bool) -> str:
    """The card's first words from the bundle's config.json: front-end, LSTMs, head."""
    upstream = config["upstream"]
    if upstream["type"] != "lstm_student":
        return DISTILHUBERT_SENTENCE
    c = upstream["config"]
    if c.get("frontend") == "logmel":
        front = "log-mel front-end"
    else:
        norm = "layer-norm " if c.get("conv_norm") == "layer" else ""
        front = f"{norm}{c['conv_layers'][0][0]}-channel CNN"
    causal = not c["bidirectional"]
    lstm = "unidirectional LSTM" if causal else "BiLSTM"
    kind = "causal" if causal else "bidirectional"
    head = "a causal CTC head, for streaming" if causal_head else "a CTC head"
    return (
        f"A {kind} LSTM student ({front}, {c['num_layers']} {lstm} x {c['hidden_size']}) "
        f"with {head}"
    )


TEACHER = (
    "Its teacher is a *mini HuBERT that this project pretrained itself* (two HuBERT iterations) on"
    " the same corpus."
)
NO_TEACHER = "No teacher was involved (this run is the random-init baseline that won on dev)."


def _eval(runs: Path, run: str, split: str) -> dict[str, Any] | None:
    path = runs / "eval" / f"{run}.{split}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=Path, required=True)
    parser.add_argument("--candidates", required=True, help="run folder names, space-separated")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--name", required=True, help="the model id, e.g. hubert-lstm-demo")
    parser.add_argument(
        "--description", help="the card's first words (default: the chosen run's architecture)"
    )
    parser.add_argument("--fp16-manifest", type=Path, required=True)
    parser.add_argument("--corpus-card", type=Path, required=True)
    parser.add_argument(
        "--interpolate-grid",
        default="",
        help="weights of the run (0 < w < 1, space-separated) to try against the bundle it "
        "continued; dev is the corpus card's dev.tsv",
    )
    args = parser.parse_args()

    best = best_run(args.runs, args.candidates.split())
    grid = [float(w) for w in args.interpolate_grid.split()]
    base = continued_bundle(args.runs, best) if grid else None
    source = source_bundle_if_better(args.runs, best)
    if source is not None and base is None:  # the continuation lost to what it continued
        keep_bundle(source, args.out, best)
        return
    provenance = export_run(
        args.runs / best,
        args.out,
        eval_manifest=args.fp16_manifest,
        name=args.name,
        weights_dtype="float16",
        repeats=1,
    )
    scores = {split: _eval(args.runs, best, split) for split in SPLITS}
    if base is not None:
        manifests = split_manifests(args.runs, args.corpus_card)
        scored = score_interpolations(base, args.out, grid, manifests["dev"], scores["dev"])
        weight = min(scored, key=lambda w: scored[w])
        if weight == 0.0:
            keep_bundle(base, args.out, best)
            return
        if weight < 1.0:
            scores = interpolate_in_place(base, args.out, scored, manifests, args.runs, best)
    corpus = json.loads(args.corpus_card.read_text())
    settings = yaml.safe_load((args.runs / best / "config.yaml").read_text())
    trained = read_manifest(settings["train_manifest"]).hours
    init = best.split("_")[1] if best.startswith("ft_") else best
    rows = []
    for split, label in SPLITS.items():
        ev = scores[split] or {}
        rows.append(
            f"| {label} | {ev.get('utterances', '-')} | {_pct(ev.get('wer'))} "
            f"| {_pct(ev.get('cer'))} |"
        )
    config = json.loads((args.out / "config.json").read_text())
    export_card = (args.out / "README.md").read_text()
    fp16 = provenance.get("fp16_weights", {})
    card = CARD.format(
        name=args.name,
        description=args.description
        or architecture_sentence(config, causal_head=not config["head"]["bidirectional"]),
        origin=ORIGINS.get(init, best),
        teacher=NO_TEACHER if init == "random" else TEACHER,
        upstream_m=sum(p.numel() for p in load_bundle(args.out).upstream.parameters()) / 1e6,
        total_m=config["parameters"] / 1e6,
        **corpus_sentences(corpus, trained),
        run=best,
        continued=continued_sentence(provenance),
        score_rows="\n".join(rows),
        fp16_wer=_signed(fp16.get("wer")),
        fp16_cer=_signed(fp16.get("cer")),
        export_card=export_card.replace("\n# ", "\n## ", 1)
        if export_card.startswith("# ")
        else export_card,
    )
    (args.out / "README.md").write_text(card)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(f"exported {best} to {args.out} ({size / 1e6:.1f} MB)")


def synth_weight_options(corpus: dict[str, Any]) -> str:
    """ " --engine-weights ... --voice-weights '...'" as the corpus card recorded them: engines
    whose train share differs from the default, and the voice globs ("" for neither)."""
    from model_training.data.voices import engine_weights

    default = engine_weights("train")
    train = (corpus.get("engine_weights") or {}).get("train") or default
    changed = [f"{e}={w:g}" for e, w in train.items() if default.get(e) != w]
    voices = corpus.get("train_voice_weights") or {}
    out = f" --engine-weights {','.join(changed)}" if changed else ""
    if voices:
        out += " --voice-weights '" + ",".join(f"{g}={w:g}" for g, w in voices.items()) + "'"
    return out


def corpus_sentences(corpus: dict[str, Any], trained_hours: float | None = None) -> dict[str, str]:
    """The card's words for the corpus of the last run (`corpus_size`, `corpus_origin`), from
    its card.json. A corpus synthesized with `--train-start N` holds only *new* training audio:
    the utterances of the seed's train stream after the first N, which earlier runs heard.
    `trained_hours`: the hours of the run's train manifest, more than the corpus's when
    earlier corpora were appended to it (demo.mk FT_EXTRA_TRAIN)."""
    hours = float(corpus["splits"]["train"]["hours"])
    seed, start = corpus.get("seed", 0), int(corpus.get("train_start") or 0)
    command = f"`hubert-lstm data synth --hours {hours:g} --seed {seed}"
    command += f" --train-start {start}" if start else ""
    command += synth_weight_options(corpus) + "`"
    if not start:
        return {
            "corpus_size": f"a ~{hours:.3g}-hour **synthetic** English corpus",
            "corpus_origin": f"Synthetic corpus from {command}",
        }
    earlier = (trained_hours or 0.0) - hours
    size = f"~{hours:.3g} h of new training audio"
    origin = (
        f"Its last run trained on {command}: {hours:g} h of new training audio, the "
        f"utterances of the same seed's train stream after the first {start}, which the runs "
        "it continued were trained on"
    )
    if earlier > 0.05:
        size += f" and ~{earlier:.3g} h it had heard before"
        origin += (
            f", together with {earlier:.3g} h of those earlier utterances (the train split of "
            "the corpus the previous run was trained on)"
        )
    return {
        "corpus_size": f"a **synthetic** English corpus (its last run: {size})",
        "corpus_origin": f"{origin}; dev and test_unseen are the same",
    }


def continued_sentence(provenance: dict[str, Any]) -> str:
    """For a run that continued a shipped bundle: how many times, and from which first run."""
    chain = lineage_chain(provenance)
    if not chain:
        return ""
    first = Path(str(chain[-1].get("run"))).name
    times = "once" if len(chain) == 1 else f"{len(chain)} times"
    return (
        f", which continued the shipped bundle {times}, first from run `{first}`"
        " (the chain is under Training below)"
    )


def source_bundle_if_better(runs: Path, run: str) -> Path | None:
    """The bundle that `run` continued (its upstream, as in ft_dkd_all_shipped), when that
    bundle's recorded dev (CER, WER) is lower than the run's own dev evaluation; else None.

    Both are scored on the same dev split (the corpus is regenerated from its seed), so a
    continuation that did not improve leaves the shipped model as it was."""
    source = continued_bundle(runs, run)
    if source is None:
        return None
    before = read_bundle_dev(source)
    after = _eval(runs, run, "dev")
    if not before or not after:
        return None
    better = (before["cer"], before["wer"]) <= (after["cer"], after["wer"])
    return source if better else None


def keep_bundle(source: Path, out: Path, run: str) -> None:
    """Ship `source` again (it beat `run`, the best candidate that continued it, on dev)."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out)
    print(f"kept {source}: its dev scores beat {run}, the best candidate that continued it")


def continued_bundle(runs: Path, run: str) -> Path | None:
    """The bundle `run` continued (its upstream, as in ft_dkd_all_shipped), or None."""
    metrics = runs / run / "metrics.json"
    upstream = json.loads(metrics.read_text()).get("upstream", {}) if metrics.is_file() else {}
    return Path(upstream["path"]) if upstream.get("kind") == "bundle" else None


def split_manifests(runs: Path, corpus_card: Path) -> dict[str, Path]:
    """Each card split's manifest, as scripts/demo.mk lays them out."""
    return {
        split: corpus_card.parent / "dev.tsv"
        if split == "dev"
        else runs / "manifests" / f"{split}.tsv"
        for split in SPLITS
    }


def _greedy(bundle: Path, manifest: Path) -> dict[str, Any]:
    return evaluate(bundle, manifest, decoder="greedy")


def score_interpolations(
    base: Path,
    bundle: Path,
    grid: list[float],
    dev_manifest: Path,
    run_dev: dict[str, Any] | None,
) -> dict[float, tuple[float, float]]:
    """Greedy dev (CER, WER) per weight of `bundle` (the run, exported) against `base` (what
    it continued): 0 and 1 as recorded, each grid weight measured. The lowest one ships."""
    scored: dict[float, tuple[float, float]] = {}
    before = read_bundle_dev(base)
    if before:
        scored[0.0] = (before["cer"], before["wer"])
    if run_dev:
        scored[1.0] = (run_dev["cer"], run_dev["wer"])
    with tempfile.TemporaryDirectory() as tmp:
        for weight in grid:
            mixed = interpolate_bundles(base, bundle, weight, Path(tmp) / f"w{weight}")
            dev = _greedy(mixed, dev_manifest)
            scored[weight] = (dev["cer"], dev["wer"])
            print(f"interpolation weight {weight:g}: dev CER {100 * dev['cer']:.2f}")
    return scored


def interpolate_in_place(
    base: Path,
    bundle: Path,
    scored: dict[float, tuple[float, float]],
    manifests: dict[str, Path],
    runs: Path,
    run: str,
) -> dict[str, dict[str, Any]]:
    """Replace `bundle`'s weights by the interpolation at the best weight of `scored`, score it
    on every split (greedy; kept as eval/RUN.interpolated.SPLIT.json) and record its dev score
    as the bundle's own, with every weight's dev CER (interpolation.grid_dev_cer)."""
    weight = min(scored, key=lambda w: scored[w])
    interpolate_bundles(base, bundle, weight, bundle)
    scores = {split: _greedy(bundle, manifest) for split, manifest in manifests.items()}
    for split, result in scores.items():
        (runs / "eval" / f"{run}.interpolated.{split}.json").write_text(
            json.dumps(result, indent=2) + "\n"
        )
    config = json.loads((bundle / "config.json").read_text())
    config["provenance"]["dev"] = {k: scores["dev"][k] for k in ("wer", "cer")}
    grid = {f"{w:g}": cer for w, (cer, _) in sorted(scored.items())}
    config["provenance"]["interpolation"]["grid_dev_cer"] = grid
    (bundle / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return scores


def read_bundle_dev(bundle: Path) -> dict[str, Any] | None:
    """A bundle's recorded dev scores (provenance "dev"), or None."""
    dev = json.loads((bundle / "config.json").read_text()).get("provenance", {}).get("dev")
    return dev if dev and dev.get("cer") is not None else None


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f}"


if __name__ == "__main__":
    main()
