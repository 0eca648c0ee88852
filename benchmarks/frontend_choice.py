"""Which light front-end for the student: compute, speed and a learning check, side by side.

Candidates (all with HuBERT's 50 Hz frames and frame counts; `model_training/models/`):
    hubert_cnn     HuBERT's waveform CNN, 7 layers x 512 channels (the paper student's)
    cnn128         the same CNN shape at 128 channels, HuBERT's per-utterance GroupNorm
                   (the demo student's front-end)
    cnn128_causal  cnn128 with a LayerNorm per frame instead (no per-utterance statistic:
                   streamable)
    logmel256      log-mel (80 bands, 10 ms) + Conv(3) + Conv(3, stride 2), 256 channels
    logmel128      the same at 128 channels

1. Speed at paper size: each front-end under the paper's 4 BiLSTM x 384 (no head). MACs per
   audio second counted as in `model_speed.py` (front-end alone and whole student); seconds per
   forward of the front-end alone and of the whole student at batch 1 and B x 10 s, in
   interleaved repeats (medians).
2. Learning check at demo size: each front-end under one BiLSTM x 128 and a linear head,
   trained from scratch with cross-entropy to predict k-means units of MFCC frames (50 units,
   fitted on the training split): the targets the demo teacher was pretrained on (HuBERT
   iteration 1), so a front-end that cannot follow them would not follow the teacher either.
   Same seed, data order and steps for all; dev frame accuracy along the way. The log-mel
   front-ends see a representation close to the MFCCs; the check says whether each can learn,
   the demo pipeline (DKD from the teacher, CTC on top) says what it costs in CER.

    python benchmarks/frontend_choice.py --manifest data/synth/train.tsv --dev data/synth/dev.tsv
    python benchmarks/frontend_choice.py --quick      # tone corpus, seconds; checks the script
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import RESULTS_DIR, pyplot, save_figure, setup_logging, summarize, time_call, write_json
from torch import nn

from model_training.data.audio import load_audio
from model_training.data.manifest import read_manifest
from model_training.macs import count_macs, flop_counter_counts_lstm
from model_training.models.student import DEMO_CONV_LAYERS, lstm_student
from model_training.training.teacher_pretrain import fit_mfcc_kmeans, mfcc_features

log = logging.getLogger("frontend_choice")
SAMPLE_RATE = 16_000

CANDIDATES: dict[str, dict[str, Any]] = {
    "hubert_cnn": {},
    "cnn128": {"conv_layers": DEMO_CONV_LAYERS},
    "cnn128_causal": {"conv_layers": DEMO_CONV_LAYERS, "conv_norm": "layer"},
    "logmel256": {"frontend": "logmel"},
    "logmel128": {"frontend": "logmel", "logmel": {"conv_layers": [(128, 3, 1), (128, 3, 2)]}},
}
PAPER = {"proj_dim": 512, "num_layers": 4, "hidden_size": 384}
PROBE = {"proj_dim": 128, "num_layers": 1, "hidden_size": 128, "dropout": 0.0}


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- 1. speed at paper size -----------------------------------------------------------------


def speed(args: argparse.Namespace) -> dict[str, Any]:
    """MACs and interleaved timings of every candidate under the paper's LSTM stack."""
    models = {n: lstm_student(num_classes=0, **PAPER, **CANDIDATES[n]).eval() for n in args.speed}
    samples = int(args.seconds * SAMPLE_RATE)
    count_lstm = flop_counter_counts_lstm()
    info: dict[str, Any] = {}
    x1 = torch.randn(1, samples) * 0.1
    for name, model in models.items():
        fe = model.feature_extractor
        info[name] = {
            "config": CANDIDATES[name],
            "params_student": _params(model),
            "params_frontend": _params(fe),
            "gmac_per_audio_s_student": count_macs(model, x1, count_lstm=count_lstm)[
                "macs_per_audio_second"
            ]
            / 1e9,
            "gmac_per_audio_s_frontend": count_macs(
                fe, x1, lambda f, x: f(x), count_lstm=count_lstm
            )["macs_per_audio_second"]
            / 1e9,
            "streamable_frontend": CANDIDATES[name].get("frontend") == "logmel"
            or CANDIDATES[name].get("conv_norm") == "layer",
        }
    cells = [(n, part, b) for b in args.batch_sizes for n in models for part in ("fe", "all")]
    inputs = {b: torch.randn(b, samples) * 0.1 for b in args.batch_sizes}

    def call(name: str, part: str, batch: int):
        model = models[name]
        fn = model.feature_extractor if part == "fe" else model

        def run() -> Any:
            with torch.inference_mode():
                return fn(inputs[batch])

        return run

    for cell in cells:  # warm-up
        time_call(call(*cell), "cpu")
    times: dict[tuple[str, str, int], list[float]] = {c: [] for c in cells}
    for r in range(args.speed_repeats):
        shift = r % len(cells)
        for cell in cells[shift:] + cells[:shift]:
            times[cell].append(time_call(call(*cell), "cpu"))
    rows = []
    for name, part, batch in cells:
        stats = summarize(times[(name, part, batch)])
        rows.append(
            {
                "frontend": name,
                "part": "front-end alone" if part == "fe" else "whole paper-size student",
                "batch": batch,
                "seconds_per_call": stats,
                "samples_s": times[(name, part, batch)],
                "audio_s_per_wall_s": batch * args.seconds / stats["median"],
            }
        )
    for name in models:
        for b in args.batch_sizes:
            fe = next(r for r in rows if r["frontend"] == name and r["batch"] == b)
            whole = next(
                r
                for r in rows
                if r["frontend"] == name and r["batch"] == b and r["part"].startswith("whole")
            )
            info[name][f"frontend_share_of_time_b{b}"] = (
                fe["seconds_per_call"]["median"] / whole["seconds_per_call"]["median"]
            )
    return {"models": info, "results": rows}


# --- 2. learning check at demo size ---------------------------------------------------------


def load_split(manifest: Path, max_utts: int | None) -> list[torch.Tensor]:
    """Waveforms of a manifest's first `max_utts` rows."""
    m = read_manifest(manifest)
    n = len(m.entries) if max_utts is None else min(max_utts, len(m.entries))
    return [load_audio(m.audio_path(i)) for i in range(n)]


def crops(
    waves: list[torch.Tensor],
    labels: list[torch.Tensor],
    batch: int,
    seconds: float,
    rng: random.Random,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of random crops starting at frame boundaries (so labels stay aligned)."""
    hop, span = 320, int(seconds * SAMPLE_RATE)
    xs, ys = [], []
    for _ in range(batch):
        i = rng.randrange(len(waves))
        w, y = waves[i], labels[i]
        frames = (min(span, w.numel()) - 400) // hop + 1
        start = rng.randrange(max(1, y.numel() - frames + 1))
        xs.append(w[start * hop : start * hop + span])
        ys.append(y[start : start + frames])
    lengths = torch.tensor([x.numel() for x in xs])
    x = torch.zeros(batch, int(lengths.max()))
    y = torch.full((batch, max(v.numel() for v in ys)), -100, dtype=torch.long)
    for b, (xi, yi) in enumerate(zip(xs, ys, strict=True)):
        x[b, : xi.numel()] = xi
        y[b, : yi.numel()] = yi
    return x, lengths, y


def evaluate(model: nn.Module, waves: list[torch.Tensor], labels: list[torch.Tensor]) -> dict:
    """Frame accuracy and cross-entropy over whole dev utterances, one at a time."""
    correct = total = 0
    ce = 0.0
    model.eval()
    with torch.inference_mode():
        for w, y in zip(waves, labels, strict=True):
            logits = model(w[None]).logits[0]
            correct += int((logits.argmax(-1) == y).sum())
            ce += float(F.cross_entropy(logits, y, reduction="sum"))
            total += y.numel()
    model.train()
    return {"frame_accuracy": correct / total, "cross_entropy": ce / total}


def learning(args: argparse.Namespace, train: list[torch.Tensor], dev: list[torch.Tensor]) -> dict:
    """Train every candidate on the same k-means targets; return curves and final scores."""
    feats = [mfcc_features(w) for w in train]
    kmeans = fit_mfcc_kmeans(feats, args.units, seed=0)
    y_train = [kmeans.predict(f) for f in feats]
    y_dev = [kmeans.predict(mfcc_features(w)) for w in dev]
    majority = torch.cat(y_dev).bincount(minlength=args.units).max().item() / sum(
        y.numel() for y in y_dev
    )
    out: dict[str, Any] = {
        "task": f"frame classification: {args.units} k-means units of MFCC+deltas (39-d, 50 Hz)",
        "train_utterances": len(train),
        "dev_utterances": len(dev),
        "train_audio_s": sum(w.numel() for w in train) / SAMPLE_RATE,
        "dev_majority_class_accuracy": majority,
        "probe": PROBE,
        "steps": args.steps,
        "batch": args.batch,
        "crop_seconds": args.crop_seconds,
        "lr": args.lr,
        "candidates": {},
    }
    for name in args.learn:
        torch.manual_seed(0)
        rng = random.Random(0)
        model = lstm_student(num_classes=args.units, **PROBE, **CANDIDATES[name])
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
        warm = max(1, args.steps // 10)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s, w=warm: min(1.0, (s + 1) / w))
        curve = []
        start = time.perf_counter()
        for step in range(1, args.steps + 1):
            x, lengths, y = crops(train, y_train, args.batch, args.crop_seconds, rng)
            out_ = model(x, lengths)
            loss = F.cross_entropy(out_.logits.transpose(1, 2), y[:, : out_.logits.shape[1]])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            if step % args.eval_every == 0 or step == args.steps:
                curve.append(
                    {"step": step, "train_loss": loss.item(), **evaluate(model, dev, y_dev)}
                )
                log.info("%s step %d: %s", name, step, curve[-1])
        out["candidates"][name] = {
            "params": _params(model),
            "seconds_per_step": (time.perf_counter() - start) / args.steps,
            "curve": curve,
            "final": curve[-1],
        }
    return out


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--manifest", type=Path, default=None, help="training split (default: tones)")
    p.add_argument("--dev", type=Path, default=None, help="dev split")
    p.add_argument("--max-utterances", type=int, default=None)
    p.add_argument("--speed", default=",".join(CANDIDATES), help="candidates timed")
    p.add_argument("--learn", default="cnn128,cnn128_causal,logmel256,logmel128")
    p.add_argument("--batch-sizes", default="1,16")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--speed-repeats", type=int, default=3)
    p.add_argument("--units", type=int, default=50)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop-seconds", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "frontend_choice.json")
    p.add_argument("--quick", action="store_true", help="tones, tiny sizes (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.speed_repeats, args.batch_sizes = 1.0, 1, "1,2"
        args.steps, args.eval_every, args.units, args.batch = 4, 2, 8, 2
        args.speed = "cnn128,logmel128"
        args.learn = "cnn128,logmel128"
    args.speed = [s for s in args.speed.split(",") if s]
    args.learn = [s for s in args.learn.split(",") if s]
    unknown = sorted(set(args.speed + args.learn) - set(CANDIDATES))
    if unknown:
        p.error(f"unknown candidates {unknown}; known: {list(CANDIDATES)}")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        if args.manifest is None:
            from model_training.training.fixtures import write_tone_corpus

            args.manifest = write_tone_corpus(tmp, 12, 2.0, 3.0, name="train")
            args.dev = write_tone_corpus(tmp, 4, 2.0, 3.0, seed=1, name="dev")
        train = load_split(args.manifest, args.max_utterances)
        dev = load_split(args.dev or args.manifest, args.max_utterances)
    learn = learning(args, train, dev) if args.learn else None
    timing = speed(args) if args.speed else None
    payload = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "speed": timing,
        "learning": learn,
        "elapsed_s": time.monotonic() - start,
    }
    write_json(args.out, "frontend_choice", payload)
    plot(payload, args.out.with_suffix(".png"))
    return 0


def plot(payload: dict[str, Any], path: Path) -> None:
    """Throughput of the whole paper-size student per front-end; dev accuracy curves."""
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    if payload["speed"]:
        rows = [r for r in payload["speed"]["results"] if r["part"].startswith("whole")]
        for b in sorted({r["batch"] for r in rows}):
            sel = [r for r in rows if r["batch"] == b]
            axes[0].plot(
                [r["frontend"] for r in sel],
                [r["audio_s_per_wall_s"] for r in sel],
                marker="o",
                label=f"batch {b}",
            )
        axes[0].set_yscale("log")
        axes[0].set_ylabel("audio s per wall s (paper-size student)")
        axes[0].legend()
        axes[0].grid(alpha=0.3)
    if payload["learning"]:
        for name, c in payload["learning"]["candidates"].items():
            axes[1].plot(
                [p["step"] for p in c["curve"]],
                [p["frame_accuracy"] for p in c["curve"]],
                marker=".",
                label=name,
            )
        axes[1].axhline(
            payload["learning"]["dev_majority_class_accuracy"],
            color="grey",
            ls=":",
            label="majority",
        )
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("dev frame accuracy (MFCC k-means units)")
        axes[1].legend()
        axes[1].grid(alpha=0.3)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
