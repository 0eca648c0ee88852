"""Distillation throughput: cached teacher targets vs the teacher run on the fly, side by side.

Builds a tone corpus, a random-init teacher (the compute does not depend on the weights) and
its target cache, then trains each student (CE + DKD, beta 4) for a few steps in each mode,
alternating modes and students in rounds so that machine load affects all alike. Reports
steps/s and audio seconds/s per (student, mode) (median over logged steps, the first steps of
each run dropped as warm-up) and the ratio cached / on the fly per student.

Scales:
    paper   HuBERT Base-size teacher (12 x 768, C = 500 units, top-100 cache, as
            configs/distill/paper.yaml) with the paper student and the paper-fast student
    demo    the demo teacher's shape (configs/teacher/demo.yaml; k = C) with the demo student

    python benchmarks/distill_throughput.py --scale paper     # results/distill_throughput_paper.*
    python benchmarks/distill_throughput.py --scale demo      # results/distill_throughput.*
    python benchmarks/distill_throughput.py --quick           # seconds; checks the script
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from common import RESULTS_DIR, pyplot, save_figure, setup_logging, write_json

from model_training.training.distill import DistillConfig, run
from model_training.training.fixtures import write_tone_corpus
from model_training.training.targets import build_target_cache

MODES = ("cached", "on_the_fly")


def make_teacher(out: Path, scale: str) -> tuple[Path, dict[str, Any]]:
    """A random-init teacher with a projection head saved as a teacher dir: (dir, its shape)."""
    from transformers import HubertModel

    from model_training.models.teacher import HubertTeacher, ProjectionHead, hubert_base_config
    from model_training.training.teacher_pretrain import TeacherPretrainConfig

    torch.manual_seed(0)
    if scale == "paper":
        config, proj_dim, clusters = hubert_base_config(), 256, 500
    else:
        tcfg = TeacherPretrainConfig()
        config, proj_dim, clusters = tcfg.hubert_config(), tcfg.proj_dim, tcfg.num_clusters
    head = ProjectionHead(config.hidden_size, proj_dim, clusters)
    path = HubertTeacher(HubertModel(config), head).save(out)
    shape = {
        "hidden_size": config.hidden_size,
        "num_layers": config.num_hidden_layers,
        "conv_channels": list(config.conv_dim),
        "num_clusters": clusters,
    }
    return path, shape


def one_run(
    root: Path,
    name: str,
    student: str,
    manifest: Path,
    teacher: Path,
    cache: Path | None,
    args: argparse.Namespace,
) -> list[dict]:
    """`args.steps` distillation steps; returns the logged steps after the warm-up ones."""
    run_dir = root / name
    cfg = DistillConfig.from_dict(
        {
            "run_dir": str(run_dir),
            "data": {
                "train_manifest": str(manifest),
                "train_targets": str(cache) if cache else None,
                "crop_seconds": args.crop_seconds,
                "max_batch_seconds": args.crop_seconds * args.batch_size,
                "max_batch_size": args.batch_size,
            },
            "teacher": {"dir": str(teacher)},
            # no CNN copy: the paper-fast student has none, and speed does not depend on it
            "student": {"factory": student, "init_cnn_from_teacher": False},
            "loss": {"ce": 1.0, "dkd": 1.0, "beta": 4.0},
            "optim": {"max_steps": args.steps, "lr": 2e-4},
            "log_every": 1,
            "eval_every": 10_000,
            "checkpoint_every": 10_000,
            "oom_check": False,
            "progress": False,
            "tensorboard": False,
            "num_threads": args.threads,
        }
    )
    run(cfg)
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines][args.warmup :]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", choices=["paper", "demo"], default="paper")
    p.add_argument("--students", default=None, help="student factories (default by scale)")
    p.add_argument("--steps", type=int, default=5, help="steps per run (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="first steps of a run not counted")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--utterances", type=int, default=12)
    p.add_argument("--crop-seconds", type=float, default=4.0)
    p.add_argument("--batch-size", type=int, default=None, help="default: 2 (paper), 8 (demo)")
    p.add_argument("--top-k", type=int, default=None, help="cache top-k (default 100 / C)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--note", default="", help="free text for the JSON (machine load)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="demo scale, 3 steps, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.scale, args.steps, args.warmup, args.rounds = "demo", 3, 1, 1
        args.utterances, args.crop_seconds, args.batch_size = 4, 1.0, 2
    paper = args.scale == "paper"
    args.students = args.students or ("lstm_paper,lstm_paper_fast" if paper else "lstm_small")
    args.students = [s for s in args.students.split(",") if s]
    args.batch_size = args.batch_size or (2 if paper else 8)
    suffix = "_paper" if paper else ""
    args.out = args.out or RESULTS_DIR / f"distill_throughput{suffix}.json"
    if args.steps <= args.warmup:
        p.error("--steps must exceed --warmup")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = write_tone_corpus(root / "corpus", args.utterances, 4.0, 6.0)
        teacher, shape = make_teacher(root / "teacher", args.scale)
        from model_training.models.teacher import HubertTeacher

        top_k = args.top_k or (100 if args.scale == "paper" else shape["num_clusters"])
        t0 = time.perf_counter()
        cache = build_target_cache(
            HubertTeacher.from_hf_dir(teacher),
            manifest,
            root / "cache",
            top_k=top_k,
            progress=False,
        )
        cache_seconds = time.perf_counter() - t0
        logs: dict[tuple[str, str], list[dict]] = {(s, m): [] for s in args.students for m in MODES}
        for r in range(args.rounds):
            order = [(s, m) for s in args.students for m in MODES]
            if r % 2:
                order.reverse()
            for student, mode in order:
                logs[(student, mode)] += one_run(
                    root,
                    f"{student}-{mode}-{r}",
                    student,
                    manifest,
                    teacher,
                    cache if mode == "cached" else None,
                    args,
                )
    results: dict[str, Any] = {}
    for student in args.students:
        modes = {}
        for mode in MODES:
            rows = logs[(student, mode)]
            modes[mode] = {
                "steps_per_s": statistics.median(1.0 / x["seconds_per_step"] for x in rows),
                "audio_seconds_per_s": statistics.median(x["audio_seconds_per_s"] for x in rows),
                "seconds_per_step": statistics.median(x["seconds_per_step"] for x in rows),
                "seconds_per_step_samples": [x["seconds_per_step"] for x in rows],
                "samples": len(rows),
            }
        results[student] = {
            "modes": modes,
            "speedup_cached_over_on_the_fly": modes["cached"]["steps_per_s"]
            / modes["on_the_fly"]["steps_per_s"],
        }
    payload = {
        "settings": {
            "scale": args.scale,
            "students": args.students,
            "loss": "ce + dkd (alpha 1, beta 4)",
            "crop_seconds": args.crop_seconds,
            "batch_size": args.batch_size,
            "steps_per_run": args.steps,
            "warmup_steps_dropped": args.warmup,
            "rounds": args.rounds,
            "utterances": args.utterances,
            "top_k": top_k,
            "threads": torch.get_num_threads(),
            "note": args.note,
        },
        "device": "cpu",
        "teacher": shape,
        "cache_build_seconds": cache_seconds,
        "results": results,
        "elapsed_s": time.monotonic() - start,
    }
    write_json(args.out, "distill_throughput", payload)
    plot(payload, args.out.with_suffix(".png"))
    for student, r in results.items():
        m = r["modes"]
        print(
            f"{student}: cached {m['cached']['steps_per_s']:.3f} steps/s, on the fly "
            f"{m['on_the_fly']['steps_per_s']:.3f} steps/s, "
            f"ratio {r['speedup_cached_over_on_the_fly']:.2f}"
        )
    return 0


def plot(payload: dict[str, Any], path: Path) -> None:
    """Steps per second per student and mode."""
    plt = pyplot()
    if plt is None:
        return
    results = payload["results"]
    fig, ax = plt.subplots(figsize=(3 + 2.5 * len(results), 3.5))
    width = 0.38
    for i, mode in enumerate(MODES):
        xs = [j + (i - 0.5) * width for j in range(len(results))]
        ax.bar(xs, [r["modes"][mode]["steps_per_s"] for r in results.values()], width, label=mode)
    ax.set_xticks(range(len(results)))
    ax.set_xticklabels(
        [f"{s}\n(x{r['speedup_cached_over_on_the_fly']:.2f})" for s, r in results.items()]
    )
    ax.set_ylabel("steps / s")
    teacher = payload["teacher"]
    ax.set_title(
        f"distillation, {teacher['num_layers']} x {teacher['hidden_size']} teacher, "
        f"CPU x{payload['settings']['threads']}",
        fontsize=9,
    )
    ax.legend()
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
