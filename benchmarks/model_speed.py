"""Model speed: the LSTM students against HuBERT Base and DistilHuBERT, side by side in one run.

For every model and batch size (10-second inputs by default) on the CPU (and CUDA when present):
audio seconds processed per wall second (median of interleaved repeats after warm-up), peak
forward memory, multiply-accumulates (MACs) per audio second counted by running the model, and
the achieved share of this machine's fp32 matmul throughput measured in the same run.

Models (random weights: speed does not depend on the values):
    hubert_base         transformers HubertModel(HubertConfig()): CNN + 12 x 768 Transformer
    distilhubert        the DistilHuBERT architecture: the same CNN + 2 x 768 Transformer layers
                        (its layer-prediction heads are training-only and left out)
    student_paper       lstm_student_paper(num_classes=0): CNN + 4 BiLSTM x 384 (as served)
    student_paper_fast  lstm_student_paper_fast(num_classes=0): the same LSTMs on the light
                        log-mel front-end (models/frontend.py)
    student_demo        lstm_student_small(num_classes=0): the CPU demo student
each at a precision named by a suffix: none = fp32; `_bf16` and `_fp16` = autocast
(`model_training.precision.inference_autocast`; fp16 on CUDA only); `_int8` = dynamic int8
LSTM/Linear (`quantize_dynamic_int8`, convolutions stay fp32; CPU only). The default list is
`DEFAULT_MODELS`; `--models all` runs every combination.

Memory: on CPU, the peak RSS growth during one forward (torch's allocations are invisible to
tracemalloc): by default measured on the first warm-up call of each model and batch after
freed heap pages are returned to the OS (`--memory inline`, no extra forwards), or in a fresh
subprocess per model and batch (`--memory subprocess`, cleaner, costs one forward each); on
CUDA, max_memory_allocated above the memory held before the forward.

MACs: torch.utils.flop_counter.FlopCounterMode counts convolutions and matmuls but not the
fused LSTM kernels; the script checks that on a bare nn.LSTM and, where it misses them, adds
the LSTM MACs from the module shapes and the steps that actually ran (4 * H * (D_in + H) per
step and direction). The JSON says which.

    python benchmarks/model_speed.py                 # full run (several minutes on 2 cores)
    python benchmarks/model_speed.py --quick         # seconds; checks the script, not the speed
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import (
    RESULTS_DIR,
    grouped_bars,
    matmul_peak_gflops,
    peak_rss_mb,
    pyplot,
    release_free_memory,
    reset_peak_rss,
    rss_mb,
    save_figure,
    setup_logging,
    summarize,
    time_call,
    write_json,
)
from torch import Tensor, nn

from model_training import macs
from model_training.macs import flop_counter_counts_lstm

log = logging.getLogger("model_speed")

SAMPLE_RATE = 16_000
REFERENCE = "distilhubert"


@dataclass(frozen=True)
class ModelSpec:
    """A benchmarked model: how to build it, what it is, and where it runs."""

    name: str
    description: str
    build: Callable[[], nn.Module]
    call: Callable[[nn.Module, Tensor], Any]
    cpu_only: bool = False
    macs_from: str | None = None  # count MACs on this model instead (same arithmetic)
    base: str = ""  # the fp32 model this one derives from
    precision: str = "fp32"
    cuda_only: bool = False


def _hubert(num_layers: int) -> nn.Module:
    """transformers' HubertModel with `num_layers` Transformer layers, weight norm folded."""
    from transformers import HubertConfig, HubertModel

    # The positional conv's weight norm is recomputed every call in training form; a deployed
    # model folds it (and FlopCounterMode cannot trace the parametrization).
    model = HubertModel(HubertConfig(num_hidden_layers=num_layers)).eval()
    return macs.fold_parametrizations(model)


def _call_hf(model: nn.Module, x: Tensor) -> Any:
    return model(x, output_hidden_states=True)


def _call_student(model: nn.Module, x: Tensor) -> Any:
    return model(x)


def _student(factory: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from model_training.models import student

        return getattr(student, factory)(num_classes=0).eval()

    return build


Builder = Callable[[], nn.Module]
Caller = Callable[[nn.Module, Tensor], Any]
BASE_MODELS: dict[str, tuple[str, Builder, Caller]] = {
    "hubert_base": (
        "HuBERT Base (transformers HubertConfig(), 12 x 768 Transformer), random init",
        lambda: _hubert(12),
        _call_hf,
    ),
    "distilhubert": (
        "DistilHuBERT architecture (HuBERT CNN + 2 x 768 Transformer), random init",
        lambda: _hubert(2),
        _call_hf,
    ),
    "student_paper": (
        "paper student: HuBERT CNN + 4 BiLSTM x 384, no training head",
        _student("lstm_student_paper"),
        _call_student,
    ),
    "student_paper_fast": (
        "paper-fast student: log-mel + conv subsampler + 4 BiLSTM x 384, no training head",
        _student("lstm_student_paper_fast"),
        _call_student,
    ),
    "student_demo": (
        "demo student (lstm_student_small, as configured in student.py), no head",
        _student("lstm_student_small"),
        _call_student,
    ),
}


def _autocast_call(call: Caller, precision: str) -> Caller:
    def run(model: nn.Module, x: Tensor) -> Any:
        from model_training.precision import inference_autocast

        with inference_autocast(x.device, precision):
            return call(model, x)

    return run


def _int8(build: Builder) -> Builder:
    def run() -> nn.Module:
        from model_training.bundle import quantize_dynamic_int8

        return quantize_dynamic_int8(build())

    return run


def _model_specs() -> list[ModelSpec]:
    """Every base model at fp32, bf16, fp16 (CUDA) and int8 (CPU)."""
    specs = []
    for base, (description, build, call) in BASE_MODELS.items():
        specs.append(ModelSpec(base, f"{description} (fp32)", build, call, base=base))
        for precision in ("bf16", "fp16"):
            specs.append(
                ModelSpec(
                    f"{base}_{precision}",
                    f"{description} ({precision} autocast)",
                    build,
                    _autocast_call(call, precision),
                    macs_from=base,
                    base=base,
                    precision=precision,
                    cuda_only=precision == "fp16",
                )
            )
        specs.append(
            ModelSpec(
                f"{base}_int8",
                f"{description} (dynamic int8 LSTM/Linear, quantize_dynamic_int8)",
                _int8(build),
                call,
                cpu_only=True,
                macs_from=base,
                base=base,
                precision="int8",
            )
        )
    return specs


MODELS: dict[str, ModelSpec] = {s.name: s for s in _model_specs()}
DEFAULT_MODELS = (
    "hubert_base",
    "hubert_base_bf16",
    "distilhubert",
    "distilhubert_bf16",
    "student_paper",
    "student_paper_fast",
    "student_paper_fast_bf16",
    "student_paper_fast_int8",
    "student_demo",
)


# --- MAC counting -------------------------------------------------------------------------


def count_macs(spec: ModelSpec, model: nn.Module, x: Tensor, count_lstm: bool) -> dict[str, Any]:
    """Run `model` once on `x` (B=1) and count its MACs per audio second
    (`model_training.macs.count_macs`: total, by top-level submodule and by op, LSTM method)."""
    return macs.count_macs(model, x, spec.call, sample_rate=SAMPLE_RATE, count_lstm=count_lstm)


# --- memory probe (CPU: one fresh subprocess per model and batch) --------------------------


def probe_cpu_memory(name: str, batch: int, seconds: float, threads: int) -> dict[str, Any]:
    """In this (fresh) process: build the model, then measure RSS growth over one forward."""
    torch.set_num_threads(threads)
    spec = MODELS[name]
    model = spec.build()
    x = torch.randn(batch, int(seconds * SAMPLE_RATE)) * 0.1
    before = rss_mb()
    exact = reset_peak_rss()
    with torch.inference_mode():
        spec.call(model, x)
    peak = peak_rss_mb()
    return {
        "peak_memory_mb": peak - before if exact else None,
        "rss_before_mb": before,
        "process_peak_rss_mb": peak,
        "method": "VmHWM reset via /proc/self/clear_refs, peak minus RSS before the forward"
        if exact
        else "unsupported: /proc/self/clear_refs not writable",
    }


def run_memory_probe(name: str, batch: int, seconds: float, threads: int) -> dict[str, Any]:
    """Run `probe_cpu_memory` in a subprocess (a clean heap) and return its result."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--probe-memory",
        f"{name}:{batch}",
        "--seconds",
        str(seconds),
        "--threads",
        str(threads),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        log.warning("memory probe %s b%d failed: %s", name, batch, proc.stderr[-2000:])
        return {"peak_memory_mb": None, "method": "probe failed", "error": proc.stderr[-500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def inline_cpu_memory(fn: Callable[[], Any]) -> dict[str, Any]:
    """Peak RSS growth over one call of `fn` in this process, from freed-memory-trimmed RSS."""
    release_free_memory()
    before = rss_mb()
    exact = reset_peak_rss()
    fn()
    peak = peak_rss_mb()
    return {
        "peak_memory_mb": peak - before if exact else None,
        "rss_before_mb": before,
        "method": "in process: gc + malloc_trim, VmHWM reset, peak minus RSS before the call"
        if exact
        else "unsupported: /proc/self/clear_refs not writable",
    }


def cuda_forward_memory(spec: ModelSpec, model: nn.Module, x: Tensor) -> dict[str, Any]:
    """Peak CUDA memory allocated during one forward, above what was held before it."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    with torch.inference_mode():
        spec.call(model, x)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {
        "peak_memory_mb": (peak - before) / 2**20,
        "allocated_before_mb": before / 2**20,
        "method": "torch.cuda.max_memory_allocated minus memory_allocated before the forward",
    }


# --- timing ---------------------------------------------------------------------------------


@dataclass
class Item:
    """One (model, device, batch) cell of the benchmark."""

    model: str
    device: str
    batch: int
    inner: int = 1
    warmup_s: float = 0.0
    samples: list[float] | None = None


def run_device(
    device: str,
    names: list[str],
    built: dict[str, nn.Module],
    args: argparse.Namespace,
    deadline: float,
) -> tuple[list[Item], dict[str, dict[str, Any]]]:
    """Warm up, then time every (model, batch) on `device` in interleaved repeats."""
    samples = int(args.seconds * SAMPLE_RATE)
    models = {n: built[n].to(device) for n in names}
    inputs = {b: torch.randn(b, samples, device=device) * 0.1 for b in args.batch_sizes}
    items = [Item(n, device, b) for b in args.batch_sizes for n in names]
    memory: dict[str, dict[str, Any]] = {}

    def forward(item: Item) -> Callable[[], Any]:
        spec, model, x = MODELS[item.model], models[item.model], inputs[item.batch]

        def call() -> Any:
            with torch.inference_mode():
                return spec.call(model, x)

        return call

    for item in items:
        fn = forward(item)
        if device == "cpu" and args.memory == "inline":
            memory[f"{item.model}:{item.batch}"] = inline_cpu_memory(fn)
        for _ in range(args.warmup):
            item.warmup_s = time_call(fn, device)
        item.inner = max(1, min(20, math.ceil(args.min_sample_s / max(item.warmup_s, 1e-6))))
        log.info(
            "%s %s b%d: warm-up %.3f s/call, %d call(s) per sample",
            device,
            item.model,
            item.batch,
            item.warmup_s,
            item.inner,
        )
        if device == "cuda":
            memory[f"{item.model}:{item.batch}"] = cuda_forward_memory(
                MODELS[item.model], models[item.model], inputs[item.batch]
            )
    per_repeat = sum(i.warmup_s * i.inner for i in items)
    left = deadline - time.monotonic()
    if device == "cpu" and args.memory == "subprocess":
        left -= sum(i.warmup_s for i in items) + 5.0 * len(items)  # the probes come after
    repeats = max(args.min_repeats, min(args.repeats, int(left // max(per_repeat, 1e-6))))
    log.info(
        "%s: one repeat ~%.1f s, %.0f s left in the budget -> %d repeats",
        device,
        per_repeat,
        left,
        repeats,
    )
    for item in items:
        item.samples = []
    for r in range(repeats):
        # rotate the order each repeat so slow drifts of the machine hit every model alike
        shift = r % len(items)
        for item in items[shift:] + items[:shift]:
            assert item.samples is not None
            item.samples.append(time_call(forward(item), device, inner=item.inner))
    for n in names:
        built[n].to("cpu")
    if device == "cuda":
        torch.cuda.empty_cache()
    return items, memory


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated (default: DEFAULT_MODELS); `all` = every model and precision",
    )
    p.add_argument(
        "--note", default="", help="free text stored in the JSON, e.g. what else loads the machine"
    )
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,16)")
    p.add_argument("--seconds", type=float, default=10.0, help="input length (default 10)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats at most (default 5)")
    p.add_argument("--min-repeats", type=int, default=2, help="repeats even past the budget")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per cell first")
    p.add_argument(
        "--min-sample-s", type=float, default=0.5, help="repeat short calls up to this per sample"
    )
    p.add_argument(
        "--budget-s",
        type=float,
        default=300.0,
        help="wall-clock budget of the whole run (default 300); caps the repeats",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--devices", default="auto", help="auto (cpu + cuda if present), cpu, cuda")
    p.add_argument(
        "--memory",
        choices=["inline", "subprocess", "off"],
        default="inline",
        help="CPU memory: first warm-up call in process (default), a fresh subprocess per "
        "model and batch (one more forward each), or not at all",
    )
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "model_speed.json")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --out)")
    p.add_argument(
        "--quick", action="store_true", help="1 s inputs, batches 1,2, one repeat (smoke test)"
    )
    p.add_argument("--probe-memory", default=None, help=argparse.SUPPRESS)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats, args.min_repeats = 1.0, 1, 1
        args.batch_sizes = args.batch_sizes or "1,2"
        args.min_sample_s, args.budget_s = 0.0, 60.0
    if args.models == "all":
        args.models = ",".join(MODELS)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown models {unknown}; known: {list(MODELS)}")
    args.batch_sizes = [int(b) for b in str(args.batch_sizes or "1,16").split(",")]
    if min(args.batch_sizes) < 1 or args.seconds <= 0:
        p.error("batch sizes and --seconds must be positive")
    if args.threads is None:
        args.threads = torch.get_num_threads()
    if args.devices == "auto":
        args.devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    else:
        args.devices = [d.strip() for d in args.devices.split(",")]
        if "cuda" in args.devices and not torch.cuda.is_available():
            p.error("--devices cuda but torch.cuda.is_available() is False")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe_memory:
        name, batch = args.probe_memory.split(":")
        print(json.dumps(probe_cpu_memory(name, int(batch), args.seconds, args.threads)))
        return 0
    setup_logging(args.verbose)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    start = time.monotonic()
    deadline = start + args.budget_s

    count_lstm = flop_counter_counts_lstm()
    models_info: dict[str, dict[str, Any]] = {}
    built: dict[str, nn.Module] = {}
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    for name in args.models:
        spec = MODELS[name]
        # autocast rows run the fp32 model itself: build it once
        shared = spec.precision in ("bf16", "fp16") and spec.base in built
        built[name] = built[spec.base] if shared else spec.build()
        models_info[name] = {
            "description": spec.description,
            "base": spec.base,
            "precision": spec.precision,
            "parameters": sum(p.numel() for p in built[name].parameters()),
            "cpu_only": spec.cpu_only,
            "cuda_only": spec.cuda_only,
        }
    # MACs, counted by running each model once at batch 1 on the benchmark's input length
    count_input = torch.randn(1, int(args.seconds * SAMPLE_RATE)) * 0.1
    counts: dict[str, dict[str, Any]] = {}
    for name in args.models:
        source = MODELS[name].macs_from or name
        if source not in counts:
            model = built[source] if source in built else MODELS[source].build()
            counts[source] = count_macs(MODELS[source], model, count_input, count_lstm)
        models_info[name]["macs"] = {**counts[source], "counted_model": source}
        if source != name:
            models_info[name]["macs"]["note"] = (
                f"same arithmetic as {source}; FlopCounterMode does not see quantized kernels"
            )
        # the int8 model's parameters live in packed params; report the fp32 count it came from
        if models_info[name]["parameters"] == 0 or source != name:
            fp32 = built[source] if source in built else MODELS[source].build()
            models_info[name]["parameters"] = sum(p.numel() for p in fp32.parameters())

    results: list[dict[str, Any]] = []
    peaks: dict[str, dict[str, Any]] = {}
    for device in args.devices:
        names = [
            n
            for n in args.models
            if not (device != "cpu" and MODELS[n].cpu_only)
            and not (device != "cuda" and MODELS[n].cuda_only)
        ]
        peaks[device] = matmul_peak_gflops(device)
        log.info("%s fp32 matmul: %.1f GFLOP/s (best)", device, peaks[device]["gflops_best"])
        items, memory = run_device(device, names, built, args, deadline)
        if device == "cpu" and args.memory == "subprocess":
            for item in items:
                memory[f"{item.model}:{item.batch}"] = run_memory_probe(
                    item.model, item.batch, args.seconds, args.threads
                )
        for item in items:
            assert item.samples is not None
            stats = summarize(item.samples)
            audio = item.batch * args.seconds
            macs = models_info[item.model]["macs"]["macs_per_audio_second"]
            throughput = audio / stats["median"]
            achieved = 2 * macs * throughput / 1e9
            results.append(
                {
                    "model": item.model,
                    "base": MODELS[item.model].base,
                    "precision": MODELS[item.model].precision,
                    "device": device,
                    "batch": item.batch,
                    "input_seconds": args.seconds,
                    "calls_per_sample": item.inner,
                    "seconds_per_call": stats,
                    "samples_s": item.samples,
                    "audio_s_per_wall_s": throughput,
                    "achieved_gflops": achieved,
                    "fraction_of_matmul_peak": achieved / peaks[device]["gflops_best"],
                    "memory": memory.get(f"{item.model}:{item.batch}"),
                    "repeats": len(item.samples),
                }
            )
    ratios = compute_ratios(results)
    payload = {
        "settings": {
            "models": args.models,
            "batch_sizes": args.batch_sizes,
            "input_seconds": args.seconds,
            "repeats_max": args.repeats,
            "warmup": args.warmup,
            "min_sample_s": args.min_sample_s,
            "budget_s": args.budget_s,
            "threads": args.threads,
            "devices": args.devices,
            "quick": args.quick,
            "note": args.note,
            "load_average_1m_at_start": load_at_start,
            "grad_mode": "torch.inference_mode",
            "interleaving": "every repeat times every (model, batch) once, order rotated",
        },
        "mac_counting": {
            "tool": "torch.utils.flop_counter.FlopCounterMode (MACs = FLOPs / 2)",
            "flop_counter_counts_lstm": count_lstm,
            "lstm": "counted by FlopCounterMode"
            if count_lstm
            else "FlopCounterMode misses LSTM kernels here; LSTM MACs added from module shapes "
            "and the steps that ran: 4*H*(D_in+H) per step, direction and layer",
        },
        "matmul_peak": peaks,
        "models": models_info,
        "results": results,
        "ratios": ratios,
        "elapsed_s": time.monotonic() - start,
    }
    write_json(args.out, "model_speed", payload)
    plot(results, args.plot or args.out.with_suffix(".png"))
    args.out.with_suffix(".md").write_text(markdown(models_info, results, ratios, peaks))
    print_table(results, ratios)
    return 0


def markdown(
    models_info: dict[str, dict[str, Any]],
    results: list[dict[str, Any]],
    ratios: list[dict[str, Any]],
    peaks: dict[str, dict[str, Any]],
) -> str:
    """The results as Markdown tables (for docs/performance.md)."""
    lines = [
        "| model | parameters | GMAC per audio second |",
        "|---|---:|---:|",
    ]
    for name, info in models_info.items():
        macs = info["macs"]["macs_per_audio_second"] / 1e9
        lines.append(f"| {name} | {info['parameters'] / 1e6:.2f} M | {macs:.2f} |")
    lines += [
        "",
        "| device | model | precision | batch | audio s per s | vs DistilHuBERT fp32 "
        "| vs HuBERT Base fp32 | vs DistilHuBERT best | vs HuBERT Base best "
        "| % of fp32 matmul peak | peak memory (MiB) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    index = {(r["model"], r["device"], r["batch"]): r for r in ratios}
    for r in results:
        ratio = index[(r["model"], r["device"], r["batch"])]
        mem = (r["memory"] or {}).get("peak_memory_mb")
        lines.append(
            f"| {r['device']} | {r['model']} | {r.get('precision', 'fp32')} | {r['batch']} "
            f"| {r['audio_s_per_wall_s']:.1f} | "
            + " | ".join(
                f"{ratio[k]:.2f}" if k in ratio else "-"
                for k in ("vs_distilhubert", "vs_hubert_base")
            )
            + " | "
            + " | ".join(
                f"{ratio[k]:.2f} ({ratio[k + '_precision']})" if k in ratio else "-"
                for k in ("vs_distilhubert_best", "vs_hubert_base_best")
            )
            + f" | {100 * r['fraction_of_matmul_peak']:.0f}% | "
            + (f"{mem:.0f}" if mem is not None else "-")
            + " |"
        )
    lines.append("")
    for device, peak in peaks.items():
        lines.append(
            f"{device} fp32 matmul peak ({peak['n']}x{peak['n']} torch.mm, "
            f"{peak['threads']} threads): {peak['gflops_best']:.0f} GFLOP/s."
        )
    return "\n".join(lines) + "\n"


def compute_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Throughput of each model over DistilHuBERT's and HuBERT Base's, same device and batch.

    `vs_REF` divides medians by the fp32 reference's; `vs_REF_best` by the reference at its
    fastest precision in this run (named in `vs_REF_best_precision`); `..._paired_range` gives
    the min and max of the same ratio taken repeat by repeat (each repeat times both models
    close together), a measure of its noise.
    """
    index = {(r["model"], r["device"], r["batch"]): r for r in results}
    out = []
    for r in results:
        row: dict[str, Any] = {
            "model": r["model"],
            "precision": r.get("precision", "fp32"),
            "device": r["device"],
            "batch": r["batch"],
        }
        for ref in (REFERENCE, "hubert_base"):
            same = [
                o
                for o in results
                if o.get("base", o["model"]) == ref
                and (o["device"], o["batch"]) == (r["device"], r["batch"])
            ]
            refs = {"": index.get((ref, r["device"], r["batch"]))}
            if same:
                refs["_best"] = max(same, key=lambda o: o["audio_s_per_wall_s"])
            for suffix, other in refs.items():
                if other is None:
                    continue
                key = f"vs_{ref}{suffix}"
                row[key] = r["audio_s_per_wall_s"] / other["audio_s_per_wall_s"]
                if suffix:
                    row[f"{key}_precision"] = other.get("precision", "fp32")
                paired = [
                    t_ref / t
                    for t, t_ref in zip(r["samples_s"], other["samples_s"], strict=False)
                    if t > 0
                ]
                if paired:
                    row[f"{key}_paired_range"] = [min(paired), max(paired)]
        out.append(row)
    return out


def print_table(results: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> None:
    """A console summary of the run."""
    ratio_index = {(r["model"], r["device"], r["batch"]): r for r in ratios}
    print(
        f"{'device':6} {'model':26} {'batch':>5} {'audio s/s':>10} {'vs distil':>9} "
        f"{'vs base':>8} {'vs distil best':>14} {'vs base best':>12} {'GMAC/s':>7} {'%peak':>6} "
        f"{'mem MB':>8}"
    )
    for r in results:
        ratio = ratio_index[(r["model"], r["device"], r["batch"])]
        mem = (r["memory"] or {}).get("peak_memory_mb")
        print(
            f"{r['device']:6} {r['model']:26} {r['batch']:>5} {r['audio_s_per_wall_s']:>10.2f} "
            f"{ratio.get('vs_distilhubert', float('nan')):>9.2f} "
            f"{ratio.get('vs_hubert_base', float('nan')):>8.2f} "
            f"{ratio.get('vs_distilhubert_best', float('nan')):>14.2f} "
            f"{ratio.get('vs_hubert_base_best', float('nan')):>12.2f} "
            f"{r['achieved_gflops'] / 2:>7.1f} {100 * r['fraction_of_matmul_peak']:>5.0f}% "
            f"{(f'{mem:.0f}' if mem is not None else '-'):>8}"
        )


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Throughput and peak memory per model, one column per device, one bar per batch size."""
    plt = pyplot()
    if plt is None:
        return
    devices = list(dict.fromkeys(r["device"] for r in results))
    fig, axes = plt.subplots(2, len(devices), figsize=(7 * len(devices), 8), squeeze=False)
    for col, device in enumerate(devices):
        rows = [r for r in results if r["device"] == device]
        models = list(dict.fromkeys(r["model"] for r in rows))
        batches = sorted({r["batch"] for r in rows})
        idx = {(r["model"], r["batch"]): r for r in rows}
        tput = {
            f"batch {b}": [
                idx[(m, b)]["audio_s_per_wall_s"] if (m, b) in idx else None for m in models
            ]
            for b in batches
        }
        mem = {
            f"batch {b}": [
                ((idx[(m, b)]["memory"] or {}).get("peak_memory_mb") if (m, b) in idx else None)
                for m in models
            ]
            for b in batches
        }
        seconds = rows[0]["input_seconds"]
        grouped_bars(axes[0][col], models, tput, "audio seconds per wall second", log_scale=True)
        axes[0][col].set_title(f"{device}: throughput on {seconds:g} s inputs (higher is better)")
        grouped_bars(axes[1][col], models, mem, "peak forward memory (MiB)", fmt="{:.0f}")
        axes[1][col].set_title(f"{device}: memory growth during one forward")
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
