"""Two CPU pitfalls for LSTMs in PyTorch, measured side by side: packed sequences and threads.

1. Padded batches. `pack_padded_sequence` keeps padding out of the outputs but, on CPU, moves
   the LSTM off oneDNN's fused kernel onto PyTorch's generic per-step path.
   `model_training.models.rnn.run_lstm` gets the same outputs from the fused kernel (forward
   direction on the padded batch, backward direction on each row reversed within its length).
   Timed: packed, `run_lstm`, and the same batch with no padding (the floor), for inference and
   for forward + backward, interleaved repeats.
2. Threads. GNU OpenMP (PyTorch's CPU backend) keeps a thread team per thread that ever ran a
   parallel region; with more OpenMP threads than CPUs it stops spinning between regions, and
   an LSTM, which opens small parallel regions every time step, slows down. Each scenario runs
   in a fresh subprocess (the effect lasts for the life of the process): the LSTM timed on a
   worker thread that is the only torch thread; after the main thread also ran it; after two
   other threads ran `torchaudio.functional.resample` (what the service's decode pool did).
   This is why the service runs all its torch work on one thread (`app/torch_worker.py`).

    python benchmarks/lstm_cpu.py            # about a minute on 2 cores
    python benchmarks/lstm_cpu.py --quick    # seconds; checks the script
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    RESULTS_DIR,
    grouped_bars,
    pyplot,
    save_figure,
    setup_logging,
    summarize,
    time_call,
    write_json,
)

from model_training.models.rnn import run_lstm, run_packed

log = logging.getLogger("lstm_cpu")

#: The CTC head's BiLSTM (2 x 256) and the demo student's (3 x 256, one layer per module).
SHAPES = {"ctc_head_2x256": (256, 256, 2), "student_layer_1x256": (256, 256, 1)}
SCENARIOS = ("one_thread", "main_thread_ran_lstm", "decode_threads_resampled")


def padded_batches(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Packed vs run_lstm vs unpadded, inference and training, per LSTM shape."""
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(args.min_frames, args.max_frames + 1, (args.batch,), generator=gen)
    lengths[0] = args.max_frames
    full = torch.full_like(lengths, args.max_frames)
    rows = []
    for shape, (d_in, hidden, layers) in SHAPES.items():
        torch.manual_seed(0)
        lstm = nn.LSTM(d_in, hidden, layers, batch_first=True, bidirectional=True)
        x = torch.randn(args.batch, args.max_frames, d_in)
        variants = {
            "packed": lambda x, lstm=lstm: run_packed(lstm, x, lengths),
            "run_lstm": lambda x, lstm=lstm: run_lstm(lstm, x, lengths),
            "unpadded": lambda x, lstm=lstm: run_lstm(lstm, x, full),
        }
        for mode in ("inference", "training"):
            lstm.train(mode == "training")
            xin = x.clone().requires_grad_(mode == "training")

            def call(fn, xin=xin, mode=mode):
                if mode == "inference":
                    with torch.inference_mode():
                        return fn(xin)
                fn(xin).square().mean().backward()

            samples: dict[str, list[float]] = {name: [] for name in variants}
            for fn in variants.values():
                call(fn)  # warm-up
            for r in range(args.repeats):
                names = list(variants)
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    samples[name].append(time_call(lambda fn=variants[name]: call(fn), "cpu"))
            stats = {name: summarize(s) for name, s in samples.items()}
            row = {
                "shape": shape,
                "mode": mode,
                "batch": args.batch,
                "frames": lengths.tolist(),
                "padding_ratio": 1 - lengths.sum().item() / (args.batch * args.max_frames),
                "ms": {name: 1000 * s["median"] for name, s in stats.items()},
                "samples_s": samples,
                "speedup_run_lstm_vs_packed": stats["packed"]["median"]
                / stats["run_lstm"]["median"],
            }
            log.info(
                "%-20s %-9s packed %7.1f ms  run_lstm %7.1f ms  unpadded %7.1f ms",
                shape, mode, *(row["ms"][n] for n in ("packed", "run_lstm", "unpadded")),
            )  # fmt: skip
            rows.append(row)
    return rows


def _scenario_child(scenario: str, repeats: int) -> None:
    """In a fresh process: time a BiLSTM on a worker thread after `scenario` happened."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import torchaudio.functional as AF

    torch.manual_seed(0)
    lstm = nn.LSTM(256, 256, 3, batch_first=True, bidirectional=True).eval()
    x = torch.randn(1, 250, 256)

    def timed() -> list[float]:
        with torch.inference_mode():
            lstm(x)
            return [time_call(lambda: lstm(x), "cpu") for _ in range(repeats)]

    worker = ThreadPoolExecutor(1)
    worker.submit(timed).result()  # the worker thread's own team exists first
    if scenario == "main_thread_ran_lstm":
        timed()
    elif scenario == "decode_threads_resampled":
        pool = ThreadPoolExecutor(2)
        waves = [torch.randn(44_100 * s) for s in (5, 6)]
        for f in [pool.submit(AF.resample, w, 44_100, 16_000) for w in waves]:
            f.result()
    samples = worker.submit(timed).result()
    threads = threading.active_count()
    print(json.dumps({"scenario": scenario, "samples_s": samples, "python_threads": threads}))


def thread_scenarios(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for scenario in SCENARIOS:
        out = subprocess.run(
            [sys.executable, __file__, "--child", scenario, "--repeats", str(args.repeats)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        row = json.loads(out.strip().splitlines()[-1])
        row["ms"] = 1000 * summarize(row["samples_s"])["median"]
        log.info("%-26s %7.1f ms per 3-layer BiLSTM call (1 x 250 frames)", scenario, row["ms"])
        rows.append(row)
    base = rows[0]["ms"]
    for row in rows:
        row["slowdown_vs_one_thread"] = row["ms"] / base
    return rows


def markdown(padded: list[dict[str, Any]], threads: list[dict[str, Any]]) -> str:
    lines = [
        "| LSTM | mode | packed (ms) | run_lstm (ms) | unpadded (ms) | packed / run_lstm |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in padded:
        ms = r["ms"]
        lines.append(
            f"| {r['shape']} | {r['mode']} | {ms['packed']:.1f} | {ms['run_lstm']:.1f} "
            f"| {ms['unpadded']:.1f} | {r['speedup_run_lstm_vs_packed']:.2f}x |"
        )
    lines += ["", "| scenario | BiLSTM call (ms) | vs one torch thread |", "|---|---:|---:|"]
    for r in threads:
        lines.append(f"| {r['scenario']} | {r['ms']:.1f} | {r['slowdown_vs_one_thread']:.2f}x |")
    return "\n".join(lines) + "\n"


def plot(padded: list[dict[str, Any]], threads: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    groups = [f"{r['shape']}\n{r['mode']}" for r in padded]
    grouped_bars(
        axes[0],
        groups,
        {v: [r["ms"][v] for r in padded] for v in ("packed", "run_lstm", "unpadded")},
        "ms per call",
        log_scale=True,
        fmt="{:.0f}",
    )
    axes[0].set_title(f"padded batch of {padded[0]['batch']}: packed vs run_lstm")
    grouped_bars(
        axes[1], [r["scenario"] for r in threads], {"ms": [r["ms"] for r in threads]},
        "ms per call", fmt="{:.0f}",
    )  # fmt: skip
    axes[1].set_title("3-layer BiLSTM on a worker thread, after ...")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--min-frames", type=int, default=150, help="shortest row (50 frames/s)")
    p.add_argument("--max-frames", type=int, default=250, help="longest row")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "lstm_cpu.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes, 2 repeats (smoke test)")
    p.add_argument("--child", choices=SCENARIOS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _scenario_child(args.child, args.repeats)
        return 0
    setup_logging()
    if args.quick:
        args.batch, args.min_frames, args.max_frames, args.repeats = 4, 20, 40, 2
    padded = padded_batches(args)
    threads = thread_scenarios(args)
    write_json(
        args.out,
        "lstm_cpu",
        {
            "settings": {
                k: getattr(args, k)
                for k in ("batch", "min_frames", "max_frames", "repeats", "quick")
            },
            "padded_batches": padded,
            "thread_scenarios": threads,
        },
    )
    plot(padded, threads, args.out.with_suffix(".png"))
    args.out.with_suffix(".md").write_text(markdown(padded, threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
