"""Helpers shared by the benchmark scripts: machine facts, JSON output, timing, memory, plots.

Every result file is one JSON object with `benchmark`, `schema_version`, `created_utc`,
`command`, `machine` (CPU model, cores, torch version, threads, GPU) and the script's own keys.
Numbers taken on a shared machine are noisy: report ratios measured side by side in one run
(interleaved repeats, medians), never absolute timings from different runs.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform.processor() as a fallback)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:
    """The ISA extensions that matter for fp32/bf16/int8 kernels, when the CPU reports them."""
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    return [f for f in wanted if f in flags]


def git_commit() -> str | None:
    """The repository's HEAD commit, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    """Facts about this machine and software that a reader needs to compare numbers."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "memory_total_gb": _memory_total_gb(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkldnn_enabled": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
        "cuda": None,
        "git_commit": git_commit(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["cuda"] = {
            "device": props.name,
            "memory_gb": round(props.total_memory / 2**30, 1),
            "cuda_version": torch.version.cuda,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }
    return info


def _memory_total_gb() -> float | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"MemTotal:\s+(\d+) kB", text)
    return round(int(match.group(1)) / 2**20, 1) if match else None


def write_json(path: str | Path, benchmark: str, payload: dict[str, Any]) -> Path:
    """Write `payload` with the common header (benchmark, time, command, machine) to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": benchmark,
        "schema_version": 1,
        "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        **payload,
    }
    path.write_text(json.dumps(doc, indent=2, default=_json_default) + "\n")
    log.info("wrote %s", path)
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, min, max and relative spread (max-min over median) of timing samples."""
    if not samples:
        raise ValueError("summarize needs at least one sample, found none")
    med = statistics.median(samples)
    return {
        "median": med,
        "min": min(samples),
        "max": max(samples),
        "spread": (max(samples) - min(samples)) / med if med > 0 else 0.0,
    }


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so wall-clock timings include it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], device: torch.device | str, inner: int = 1) -> float:
    """Seconds per call of `fn`, averaged over `inner` back-to-back calls."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / inner


def matmul_peak_gflops(
    device: torch.device | str = "cpu", n: int | None = None, repeats: int = 5
) -> dict[str, Any]:
    """Measured fp32 throughput of a large square `torch.mm` (the machine's practical peak).

    Returns the best and the median GFLOP/s over `repeats` timed calls (after one warm-up);
    n defaults to 2048 on CPU and 8192 on CUDA.
    """
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    inner = 20 if device.type == "cuda" else 2
    time_call(lambda: torch.mm(a, b), device, inner=1)
    rates = []
    for _ in range(repeats):
        seconds = time_call(lambda: torch.mm(a, b), device, inner=inner)
        rates.append(2 * n**3 / seconds / 1e9)
    return {
        "n": n,
        "dtype": "float32",
        "tf32": bool(device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32),
        "threads": torch.get_num_threads(),
        "gflops_best": max(rates),
        "gflops_median": statistics.median(rates),
        "samples_gflops": rates,
    }


# --- memory -------------------------------------------------------------------------------


def rss_mb() -> float:
    """Current resident set size of this process in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_free_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc malloc_trim), so a
    following RSS measurement starts from what is really in use."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss_mb() -> float:
    """Peak RSS (VmHWM) since start or since the last `reset_peak_rss`, in MiB."""
    try:
        text = Path("/proc/self/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", text)
        if match:
            return int(match.group(1)) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# --- plotting -----------------------------------------------------------------------------


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed); None when not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed; skipping the plot")
        return None
    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Lay out, write `fig` as a PNG at `path` (creating folders) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    log.info("wrote %s", path)


def grouped_bars(
    ax: Any,
    groups: Sequence[str],
    series: dict[str, Sequence[float | None]],
    ylabel: str,
    log_scale: bool = False,
    fmt: str = "{:.2g}",
) -> None:
    """Draw one bar per (group, series) on `ax`, labelled with its value; None draws nothing."""
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        heights = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, heights, width, label=name)
        for bar, v in zip(bars, values, strict=True):
            if v is not None:
                ax.annotate(
                    fmt.format(v),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=15, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    if log_scale:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def setup_logging(verbose: bool = False) -> None:
    """Plain console logging for the scripts."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "httpcore"):  # one line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
