"""Distillation throughput: cached teacher targets vs the teacher run on the fly.

Builds a tone corpus, a random-init demo-size teacher (configs/teacher/demo.yaml's shape) and
its target cache (k = C), then trains the demo student (CE + DKD) for a few steps in each mode,
alternating the modes in rounds so that machine load affects both alike. Reports steps/s and
audio seconds/s per mode (median over logged steps, the first steps of each run dropped as
warm-up) and their ratio; writes JSON + PNG to benchmarks/results/.

    .venv/bin/python benchmarks/distill_throughput.py [--steps 8] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from model_training.training.distill import DistillConfig, run
from model_training.training.fixtures import write_tone_corpus
from model_training.training.targets import build_target_cache
from model_training.training.teacher_pretrain import TeacherPretrainConfig

RESULTS = Path(__file__).parent / "results"


def make_teacher(out: Path, cfg: TeacherPretrainConfig) -> Path:
    from transformers import HubertModel

    from model_training.models.teacher import HubertTeacher, ProjectionHead

    torch.manual_seed(0)
    head = ProjectionHead(cfg.hidden_size, cfg.proj_dim, cfg.num_clusters)
    return HubertTeacher(HubertModel(cfg.hubert_config()), head).save(out)


def one_run(
    root: Path,
    name: str,
    manifest: Path,
    teacher: Path,
    cache: Path | None,
    args: argparse.Namespace,
) -> list[dict]:
    run_dir = root / name
    cfg = DistillConfig.from_dict(
        {
            "run_dir": str(run_dir),
            "data": {
                "train_manifest": str(manifest),
                "train_targets": str(cache) if cache else None,
                "crop_seconds": args.crop_seconds,
                "max_batch_seconds": args.batch_seconds,
                "max_batch_size": args.batch_size,
            },
            "teacher": {"dir": str(teacher)},
            "student": {"factory": "lstm_small"},
            "loss": {"ce": 1.0, "dkd": 1.0, "beta": 4.0},
            "optim": {"max_steps": args.steps, "lr": 2e-4},
            "log_every": 1,
            "eval_every": 10_000,
            "checkpoint_every": 10_000,
            "oom_check": False,
            "progress": False,
            "tensorboard": False,
        }
    )
    run(cfg)
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines][args.warmup :]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--utterances", type=int, default=24)
    p.add_argument("--crop-seconds", type=float, default=4.0)
    p.add_argument("--batch-seconds", type=float, default=32.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tcfg = TeacherPretrainConfig()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        manifest = write_tone_corpus(root / "corpus", args.utterances, 4.0, 6.0)
        teacher = make_teacher(root / "teacher", tcfg)
        from model_training.models.teacher import HubertTeacher

        t0 = time.perf_counter()
        cache = build_target_cache(
            HubertTeacher.from_hf_dir(teacher),
            manifest,
            root / "cache",
            top_k=tcfg.num_clusters,
            progress=False,
        )
        cache_seconds = time.perf_counter() - t0
        logs: dict[str, list[dict]] = {"cached": [], "on_the_fly": []}
        for r in range(args.rounds):
            logs["cached"] += one_run(root, f"cached{r}", manifest, teacher, cache, args)
            logs["on_the_fly"] += one_run(root, f"live{r}", manifest, teacher, None, args)
    result: dict = {
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "student": "lstm_small",
        "loss": "ce + dkd (beta 4)",
        "teacher": {k: getattr(tcfg, k) for k in ("hidden_size", "num_layers", "num_clusters")},
        "batch": {
            "crop_seconds": args.crop_seconds,
            "max_batch_seconds": args.batch_seconds,
            "max_batch_size": args.batch_size,
        },
        "cache_build_seconds": cache_seconds,
        "utterances": args.utterances,
        "steps_per_run": args.steps,
        "warmup_steps_dropped": args.warmup,
        "rounds": args.rounds,
        "modes": {},
    }
    for mode, rows in logs.items():
        sps = [1.0 / x["seconds_per_step"] for x in rows]
        result["modes"][mode] = {
            "steps_per_s": statistics.median(sps),
            "audio_seconds_per_s": statistics.median(x["audio_seconds_per_s"] for x in rows),
            "seconds_per_step": statistics.median(x["seconds_per_step"] for x in rows),
            "samples": len(rows),
        }
    m = result["modes"]
    result["speedup_cached_over_on_the_fly"] = (
        m["cached"]["steps_per_s"] / m["on_the_fly"]["steps_per_s"]
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "distill_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    names = list(m)
    for ax, key, label in zip(
        axes,
        ("steps_per_s", "audio_seconds_per_s"),
        ("steps / s", "audio seconds / s"),
        strict=True,
    ):
        ax.bar(names, [m[n][key] for n in names], color=["tab:blue", "tab:orange"])
        ax.set_ylabel(label)
    fig.suptitle(
        f"distillation throughput, lstm_small, CPU x{result['threads']} "
        f"(cached / on the fly = {result['speedup_cached_over_on_the_fly']:.2f})"
    )
    fig.tight_layout()
    fig.savefig(RESULTS / "distill_throughput.png", dpi=120)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
