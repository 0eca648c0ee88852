"""Where the LSTM student's time goes, and which cheap changes make it faster.

Part 1 (stages): forward hooks time the CNN front-end (and each conv block), the LayerNorm +
projection, each LSTM layer and the training head, for the paper and the demo student at each
batch size; a torch.profiler table lists the top ops.

Part 2 (variants): each change is timed against the baseline (torch.no_grad, default threads,
oneDNN on) in interleaved repeats, and its outputs (every hidden state) are compared with the
baseline's: bitwise identical, equal up to float32 rounding, or different (bf16, int8 are
reported apart as approximations).

    python benchmarks/profile_student.py            # 10 s inputs, batch 1 and 16
    python benchmarks/profile_student.py --quick    # seconds; checks the script
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import torch
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
from torch import Tensor, nn

from model_training.bundle import quantize_dynamic_int8
from model_training.models import student as student_module
from model_training.models.rnn import run_packed
from model_training.models.student import LSTMStudent, lstm_student_paper, lstm_student_small

log = logging.getLogger("profile_student")

SAMPLE_RATE = 16_000
STUDENTS: dict[str, Callable[..., LSTMStudent]] = {
    "student_paper": lstm_student_paper,
    "student_demo": lstm_student_small,
}


# --- part 1: stages ------------------------------------------------------------------------


def stage_modules(model: LSTMStudent) -> dict[str, nn.Module]:
    """Named stages of the student, in forward order (conv blocks listed inside the CNN)."""
    stages: dict[str, nn.Module] = {"cnn": model.feature_extractor}
    for i, block in enumerate(model.feature_extractor.conv_layers):
        stages[f"cnn.conv{i}"] = block
    stages["norm+projection"] = model.feature_norm  # timed together with the projection below
    stages["projection"] = model.projection
    for i, lstm in enumerate(model.lstms):
        stages[f"lstm{i + 1}"] = lstm
    if model.head is not None:
        stages["head"] = model.head
    return stages


@contextlib.contextmanager
def stage_timer(model: LSTMStudent, totals: dict[str, float]) -> Iterator[None]:
    """Add each stage's wall time (seconds) to `totals` while the context is open."""
    starts: dict[str, float] = {}
    handles = []
    for name, module in stage_modules(model).items():

        def pre(_m: nn.Module, _a: Any, name: str = name) -> None:
            starts[name] = time.perf_counter()

        def post(_m: nn.Module, _a: Any, _o: Any, name: str = name) -> None:
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - starts[name]

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def profile_stages(
    model: LSTMStudent, x: Tensor, repeats: int
) -> dict[str, dict[str, float] | float]:
    """Median seconds per stage over `repeats` forwards, plus the share of the total."""
    samples: dict[str, list[float]] = {}
    totals_s: list[float] = []
    with torch.inference_mode():
        model(x)  # warm-up
        for _ in range(repeats):
            totals: dict[str, float] = {}
            start = time.perf_counter()
            with stage_timer(model, totals):
                model(x)
            totals_s.append(time.perf_counter() - start)
            for k, v in totals.items():
                samples.setdefault(k, []).append(v)
    med = {k: summarize(v)["median"] for k, v in samples.items()}
    # feature_norm and projection are separate modules; report them as one stage
    med["norm+projection"] = med.get("norm+projection", 0.0) + med.pop("projection", 0.0)
    total = summarize(totals_s)["median"]
    top = ["cnn", "norm+projection"] + [k for k in med if k.startswith("lstm")]
    top += ["head"] if "head" in med else []
    med["other (masks, glue)"] = max(total - sum(med[k] for k in top), 0.0)
    return {
        "total_s": total,
        "stages_s": med,
        "share": {k: v / total for k, v in med.items() if not k.startswith("cnn.")},
        "cnn_blocks_share_of_cnn": {
            k: v / med["cnn"] for k, v in med.items() if k.startswith("cnn.")
        },
    }


def top_ops(model: nn.Module, x: Tensor, limit: int = 10) -> list[dict[str, Any]]:
    """The ops with the most self CPU time in one forward (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        model(x)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        {
            "op": e.key,
            "self_cpu_ms": e.self_cpu_time_total / 1000,
            "share": e.self_cpu_time_total / total,
            "calls": e.count,
        }
        for e in events[:limit]
    ]


# --- part 2: variants ----------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A change to try: `prepare(model)` returns the model to run and a context for the call."""

    name: str
    description: str
    prepare: Callable[[LSTMStudent], tuple[nn.Module, Callable[[], Any]]]
    exact_candidate: bool = True  # False: a known approximation (bf16, int8), reported apart
    where: str = ""


def _same(model: LSTMStudent, ctx: Callable[[], Any] = torch.no_grad) -> tuple[nn.Module, Any]:
    return model, ctx


def _threads(n: int) -> Callable[[], contextlib.AbstractContextManager]:
    @contextlib.contextmanager
    def ctx() -> Iterator[None]:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            with torch.no_grad():
                yield
        finally:
            torch.set_num_threads(before)

    return ctx


def _mkldnn_off() -> contextlib.AbstractContextManager:
    stack = contextlib.ExitStack()
    stack.enter_context(torch.backends.mkldnn.flags(enabled=False))
    stack.enter_context(torch.no_grad())
    return stack


def _lstm_native(model: LSTMStudent) -> tuple[nn.Module, Any]:
    """oneDNN off for the LSTM layers only (PyTorch's own LSTM kernel); the CNN keeps oneDNN."""
    model = copy.deepcopy(model)
    for lstm in model.lstms:
        state: dict[str, Any] = {}

        def pre(_m: nn.Module, _a: Any, state: dict[str, Any] = state) -> None:
            state["ctx"] = torch.backends.mkldnn.flags(enabled=False)
            state["ctx"].__enter__()

        def post(_m: nn.Module, _a: Any, _o: Any, state: dict[str, Any] = state) -> None:
            state.pop("ctx").__exit__(None, None, None)

        lstm.register_forward_pre_hook(pre)
        lstm.register_forward_hook(post)
    return model, torch.no_grad


def _always_pack(model: LSTMStudent) -> tuple[nn.Module, Any]:
    """Packed sequences even without padding (what `run_lstm` skips when nothing is padded)."""

    @contextlib.contextmanager
    def ctx() -> Iterator[None]:
        with torch.no_grad(), mock.patch.object(student_module, "run_lstm", run_packed):
            yield

    return model, ctx


def _contiguous_features(model: LSTMStudent) -> tuple[nn.Module, Any]:
    """Make the CNN's transposed (B, T, C) output contiguous before the LayerNorm."""
    model = copy.deepcopy(model)
    model.feature_norm.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(),))
    return model, torch.no_grad


def _bf16(model: LSTMStudent) -> tuple[nn.Module, Any]:
    def ctx() -> contextlib.AbstractContextManager:
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast("cpu", dtype=torch.bfloat16))
        stack.enter_context(torch.no_grad())
        return stack

    return model, ctx


def _int8(model: LSTMStudent) -> tuple[nn.Module, Any]:
    return quantize_dynamic_int8(copy.deepcopy(model)), torch.no_grad


def variants(cores: int) -> list[Variant]:
    """The changes tried, baseline first."""
    out = [
        Variant("baseline", "torch.no_grad, default threads, oneDNN on", lambda m: _same(m)),
        Variant(
            "inference_mode",
            "torch.inference_mode instead of torch.no_grad",
            lambda m: _same(m, torch.inference_mode),
            where="service: app/inference.py run_batch",
        ),
    ]
    if cores > 1:
        out.append(
            Variant(
                "threads_1",
                f"torch.set_num_threads(1) (default {torch.get_num_threads()})",
                lambda m: _same(m, _threads(1)),
                where="service: HLSTM_TORCH_THREADS",
            )
        )
    out += [
        Variant(
            "mkldnn_off",
            "torch.backends.mkldnn disabled for the whole forward (conv and LSTM)",
            lambda m: _same(m, _mkldnn_off),
            where="service: around the forward in app/inference.py",
        ),
        Variant(
            "lstm_native",
            "oneDNN disabled for the LSTM layers only (PyTorch's LSTM kernel)",
            _lstm_native,
            where="model: models/rnn.py run_lstm, wrap the lstm call in "
            "torch.backends.mkldnn.flags(enabled=False) on CPU",
        ),
        Variant(
            "always_pack",
            "packed sequences even without padding (the skip in run_lstm removed)",
            _always_pack,
            where="already in models/rnn.py run_lstm (this measures what the skip saves)",
        ),
        Variant(
            "contiguous_features",
            "CNN output made contiguous before feature_norm",
            _contiguous_features,
            where="model: ConvFeatureExtractor.forward, return x.transpose(1, 2).contiguous()",
        ),
        Variant(
            "bf16_autocast",
            "torch.autocast('cpu', dtype=torch.bfloat16)",
            _bf16,
            exact_candidate=False,
        ),
        Variant(
            "int8_dynamic",
            "quantize_dynamic_int8 (LSTM and Linear weights int8)",
            _int8,
            exact_candidate=False,
        ),
    ]
    return out


def compare(out: Any, ref: Any) -> dict[str, Any]:
    """Bitwise equality and the largest differences over all hidden states."""
    identical = True
    max_abs = 0.0
    max_rel = 0.0
    for a, b in zip(out.hidden_states, ref.hidden_states, strict=True):
        a = a.float()
        identical = identical and torch.equal(a, b)
        diff = (a - b).abs().max().item()
        max_abs = max(max_abs, diff)
        max_rel = max(max_rel, diff / max(b.abs().max().item(), 1e-12))
    verdict = "identical" if identical else ("fp32-rounding" if max_rel < 1e-5 else "different")
    return {"bitwise_identical": identical, "max_abs_diff": max_abs, "max_rel_diff": max_rel,
            "verdict": verdict}  # fmt: skip


def run_variants(
    model: LSTMStudent,
    x: Tensor,
    repeats: int,
    min_sample_s: float,
    cores: int,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Time every variant (or those in `only`) against the baseline in interleaved repeats."""
    prepared = []
    for v in variants(cores):
        if only and v.name != "baseline" and v.name not in only:
            continue
        run_model, ctx = v.prepare(model)
        prepared.append((v, run_model, ctx))

    def call(run_model: nn.Module, ctx: Callable[[], Any]) -> Any:
        with ctx():
            return run_model(x)

    outputs: dict[str, Any] = {}
    inner: dict[str, int] = {}
    for v, run_model, ctx in prepared:
        call(run_model, ctx)  # warm-up (kernel selection, weight packing)
        start = time.perf_counter()
        outputs[v.name] = call(run_model, ctx)
        elapsed = time.perf_counter() - start
        inner[v.name] = max(1, min(10, math.ceil(min_sample_s / max(elapsed, 1e-6))))
    samples: dict[str, list[float]] = {v.name: [] for v, _, _ in prepared}
    for r in range(repeats):
        shift = r % len(prepared)
        for v, run_model, ctx in prepared[shift:] + prepared[:shift]:
            samples[v.name].append(
                time_call(lambda m=run_model, c=ctx: call(m, c), "cpu", inner=inner[v.name])
            )
    base = outputs["baseline"]
    base_t = samples["baseline"]
    out: dict[str, Any] = {}
    for v, _, _ in prepared:
        paired = [b / t for b, t in zip(base_t, samples[v.name], strict=True)]
        out[v.name] = {
            "description": v.description,
            "approximation": not v.exact_candidate,
            "where": v.where,
            "seconds": summarize(samples[v.name]),
            "speedup_vs_baseline": summarize(base_t)["median"]
            / summarize(samples[v.name])["median"],
            "speedup_paired_range": [min(paired), max(paired)],
            "outputs": compare(outputs[v.name], base),
        }
    return out


# --- main -----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=",".join(STUDENTS), help="comma-separated subset")
    p.add_argument("--batch-sizes", default=None, help="comma-separated (default 1,16)")
    p.add_argument("--seconds", type=float, default=10.0, help="input length (default 10)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    p.add_argument("--min-sample-s", type=float, default=0.3, help="repeat short calls")
    p.add_argument("--no-variants", action="store_true", help="stage profile only")
    p.add_argument("--variants", default=None, help="comma-separated subset (default: all)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "profile_student.json")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --out)")
    p.add_argument("--quick", action="store_true", help="1 s inputs, batch 1 and 2, 1 repeat")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats, args.min_sample_s = 1.0, 1, 0.0
        args.batch_sizes = args.batch_sizes or "1,2"
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in STUDENTS]
    if unknown:
        p.error(f"unknown models {unknown}; known: {list(STUDENTS)}")
    args.batch_sizes = [int(b) for b in str(args.batch_sizes or "1,16").split(",")]
    known = [v.name for v in variants(2)]
    args.variants = [v.strip() for v in args.variants.split(",")] if args.variants else None
    if args.variants and set(args.variants) - set(known):
        p.error(f"unknown variants {sorted(set(args.variants) - set(known))}; known: {known}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    torch.manual_seed(0)
    cores = torch.get_num_threads()
    start = time.monotonic()
    results: dict[str, Any] = {}
    for name in args.models:
        # with the training head for the stage profile; without it (as served) for variants
        trained = STUDENTS[name]().eval()
        served = STUDENTS[name](num_classes=0).eval()
        served.load_state_dict({k: v for k, v in trained.state_dict().items() if "head" not in k})
        results[name] = {"parameters": sum(p.numel() for p in trained.parameters())}
        for batch in args.batch_sizes:
            x = torch.randn(batch, int(args.seconds * SAMPLE_RATE)) * 0.1
            log.info("%s batch %d: stages", name, batch)
            entry: dict[str, Any] = {"stages": profile_stages(trained, x, args.repeats)}
            if batch == args.batch_sizes[0]:
                entry["top_ops"] = top_ops(served, x)
            if not args.no_variants:
                log.info("%s batch %d: variants", name, batch)
                entry["variants"] = run_variants(
                    served, x, args.repeats, args.min_sample_s, cores, args.variants
                )
            results[name][f"batch_{batch}"] = entry
            # written after every cell so a long run that is cut short keeps what it measured
            write_json(args.out, "profile_student", payload(args, cores, results, start))
    write_json(args.out, "profile_student", payload(args, cores, results, start))
    plot(results, args.batch_sizes, args.plot or args.out.with_suffix(".png"))
    args.out.with_suffix(".md").write_text(markdown(results, args.batch_sizes))
    print_summary(results, args.batch_sizes)
    return 0


def payload(
    args: argparse.Namespace, cores: int, results: dict[str, Any], start: float
) -> dict[str, Any]:
    """The JSON document (without the common header)."""
    return {
        "settings": {
            "models": args.models,
            "batch_sizes": args.batch_sizes,
            "input_seconds": args.seconds,
            "repeats": args.repeats,
            "threads": cores,
            "quick": args.quick,
            "stage_timing": "forward pre/post hooks, median over repeats (with the training "
            "head; served bundles drop it)",
            "variant_model": "the served student (num_classes=0)",
            "not_tried": {
                "channels_last": "a 4-D memory format; the CNN's Conv1d tensors are (B, C, T) "
                "and already contiguous",
            },
        },
        "results": results,
        "elapsed_s": time.monotonic() - start,
    }


def markdown(results: dict[str, Any], batches: list[int]) -> str:
    """Stage shares and variant speed-ups as Markdown tables (for docs/performance.md)."""
    lines = [
        "| model | batch | forward (s) | CNN | norm + projection | LSTMs | head | other |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, res in results.items():
        for b in batches:
            st = res[f"batch_{b}"]["stages"]
            share = st["share"]
            lstm = sum(v for k, v in share.items() if k.startswith("lstm"))
            cells = [share.get("cnn", 0), share.get("norm+projection", 0), lstm,
                     share.get("head", 0), share.get("other (masks, glue)", 0)]  # fmt: skip
            lines.append(
                f"| {name} | {b} | {st['total_s']:.3f} | "
                + " | ".join(f"{100 * c:.0f}%" for c in cells)
                + " |"
            )
    cells = [(n, b) for n in results for b in batches if "variants" in results[n][f"batch_{b}"]]
    if cells:
        names = list(results[cells[0][0]][f"batch_{cells[0][1]}"]["variants"])
        lines += ["", "| variant | outputs | " + " | ".join(f"{n} b{b}" for n, b in cells) + " |",
                  "|---|---|" + "---:|" * len(cells)]  # fmt: skip
        for v in names:
            first = results[cells[0][0]][f"batch_{cells[0][1]}"]["variants"][v]
            verdicts = {results[n][f"batch_{b}"]["variants"][v]["outputs"]["verdict"]
                        for n, b in cells}  # fmt: skip
            lines.append(
                f"| {v}: {first['description']} | {'/'.join(sorted(verdicts))} | "
                + " | ".join(
                    f"x{results[n][f'batch_{b}']['variants'][v]['speedup_vs_baseline']:.2f}"
                    for n, b in cells
                )
                + " |"
            )
    return "\n".join(lines) + "\n"


def print_summary(results: dict[str, Any], batches: list[int]) -> None:
    """Stage shares and variant speed-ups on the console."""
    for name, res in results.items():
        for b in batches:
            entry = res[f"batch_{b}"]
            shares = ", ".join(
                f"{k} {100 * v:.0f}%"
                for k, v in entry["stages"]["share"].items()
                if not k.startswith("lstm") or k == "lstm1"
            )
            lstm = sum(v for k, v in entry["stages"]["share"].items() if k.startswith("lstm"))
            print(f"{name} b{b}: total {entry['stages']['total_s']:.3f} s; {shares}; "
                  f"all LSTMs {100 * lstm:.0f}%")  # fmt: skip
            for vname, v in entry.get("variants", {}).items():
                print(
                    f"    {vname:22} x{v['speedup_vs_baseline']:.2f} "
                    f"[{v['speedup_paired_range'][0]:.2f}-{v['speedup_paired_range'][1]:.2f}] "
                    f"{v['outputs']['verdict']} (max abs diff {v['outputs']['max_abs_diff']:.1e})"
                )


def plot(results: dict[str, Any], batches: list[int], path: Path) -> None:
    """Left: stage shares per (model, batch); right: variant speed-ups per (model, batch)."""
    plt = pyplot()
    if plt is None:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 5))
    cells = [(n, b) for n in results for b in batches]
    labels = [f"{n} b{b}" for n, b in cells]
    bottoms = [0.0] * len(cells)
    stage_names = ["cnn", "norm+projection", "lstm", "head", "other (masks, glue)"]
    for stage in stage_names:
        vals = []
        for n, b in cells:
            share = results[n][f"batch_{b}"]["stages"]["share"]
            vals.append(sum(v for k, v in share.items() if k == stage or
                            (stage == "lstm" and k.startswith("lstm"))))  # fmt: skip
        ax1.bar(labels, vals, bottom=bottoms, label=stage)
        bottoms = [a + v for a, v in zip(bottoms, vals, strict=True)]
    ax1.set_ylabel("share of forward time")
    ax1.set_title("where the student's time goes")
    ax1.legend(fontsize=8)
    ax1.tick_params(axis="x", labelrotation=15, labelsize=8)
    if any("variants" in results[n][f"batch_{b}"] for n, b in cells):
        names = list(results[cells[0][0]][f"batch_{cells[0][1]}"]["variants"])[1:]
        series = {
            label: [results[n][f"batch_{b}"]["variants"][v]["speedup_vs_baseline"] for v in names]
            for label, (n, b) in zip(labels, cells, strict=True)
        }
        grouped_bars(ax2, names, series, "speed-up over baseline (x)")
        ax2.axhline(1.0, color="black", linewidth=0.8)
        ax2.set_title("variants (bf16/int8 change outputs)")
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
