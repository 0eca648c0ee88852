"""The service under load: dynamic batching on vs off, concurrency 1 to 64, on loopback.

Starts its servers itself (uvicorn `app.main:create_app`, each on a free 127.0.0.1 port, the
same bundle): one per batching size (HLSTM_MAX_BATCH_SIZE=16 and 4 by default) and one without
batching (HLSTM_MAX_BATCH_SIZE=1). For each concurrency level, each server in turn (order
reversed every other level) gets a closed loop of `c` clients (httpx async) that POST
synthetic audio files of 2-8 s back to back: a short warm-up, then a measured window.
Reported per level and server: requests/s and audio seconds/s completed inside the window,
p50/p95/p99 latency of requests started in it, errors by status, and from the server's
/metrics (scraped at the window's edges) the mean batch size and the padding ratio.

The bundle: --model-dir, default models/default when it holds a bundle, else a random-init
tiny bundle built with model_training.testing.build_tiny_bundle (the JSON says which). The
client shares the machine's cores with the server: on a small machine it takes some of the
CPU the server could use; the JSON records the client's CPU seconds per level.

    python benchmarks/service_load.py            # ~3.5 minutes on 2 cores (3 servers)
    python benchmarks/service_load.py --quick    # seconds; checks the script
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import logging
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf
from common import (
    REPO_ROOT,
    RESULTS_DIR,
    grouped_bars,
    pyplot,
    save_figure,
    setup_logging,
    write_json,
)
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("service_load")

SAMPLE_RATE = 16_000
DEFAULT_MODEL_DIR = REPO_ROOT / "models" / "default"


# --- audio --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AudioFile:
    """One synthetic upload: WAV bytes and its duration."""

    name: str
    data: bytes
    seconds: float


def synth_audio(count: int, min_s: float, max_s: float, seed: int = 0) -> list[AudioFile]:
    """`count` WAV files (16 kHz mono PCM16) with lengths spread evenly over [min_s, max_s].

    Content: a few harmonics under a syllable-rate envelope plus noise. The model's compute
    does not depend on the content, only on the length; the order is shuffled with `seed`.
    """
    if count < 1 or not 0 < min_s <= max_s:
        raise ValueError(f"need count >= 1 and 0 < min_s <= max_s, found {count}, {min_s}, {max_s}")
    rng = np.random.default_rng(seed)
    lengths = np.linspace(min_s, max_s, count)
    rng.shuffle(lengths)
    files = []
    for i, seconds in enumerate(lengths):
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        f0 = rng.uniform(100, 220)
        voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
        envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 5) * t))
        wave = 0.2 * envelope * voiced + 0.02 * rng.standard_normal(t.shape)
        buf = io.BytesIO()
        sf.write(buf, wave.astype(np.float32), SAMPLE_RATE, format="WAV", subtype="PCM_16")
        files.append(AudioFile(f"synth_{i:02d}.wav", buf.getvalue(), float(len(t) / SAMPLE_RATE)))
    return files


# --- server -------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A service subprocess on loopback."""

    name: str
    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    #: Run `hubert-lstm serve` (app/server.py: h11 limits, header timeout) instead of bare uvicorn.
    cli: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        cmd = [
            sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        if self.cli:
            cmd = [
                sys.executable, "-m", "model_training.cli", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--model-dir", self.env["HLSTM_MODEL_DIR"],
            ]  # fmt: skip
        log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env={**os.environ, **self.env}, stdout=log_file, stderr=log_file
        )

    def wait_ready(self, timeout_s: float) -> None:
        """Poll /readyz until 200; RuntimeError with the server log when it dies or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.name} exited:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"server {self.name} not ready after {timeout_s} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server process so far (Linux /proc)."""
        if self.proc is None:
            return None
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def running(servers: list[Server], timeout_s: float) -> Iterator[list[Server]]:
    """Start all servers (in parallel), wait until each is ready, stop them on exit."""
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready(timeout_s)
        yield servers
    finally:
        for s in servers:
            s.stop()


BATCH_SAMPLES = frozenset({
    "hlstm_batch_size_sum", "hlstm_batch_size_count",
    "hlstm_batch_padding_ratio_sum", "hlstm_batch_padding_ratio_count",
    "hlstm_batch_padded_frames_sum", "hlstm_audio_seconds_total",
    "hlstm_inference_seconds_sum",
})  # fmt: skip


def scrape(url: str, wanted: frozenset[str] = BATCH_SAMPLES) -> dict[str, float]:
    """Samples named in `wanted` from /metrics (default: the batch histograms' sums and counts,
    audio seconds), summed over labels."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                out[sample.name] = out.get(sample.name, 0.0) + float(sample.value)
    return out


def batch_stats(
    before: dict[str, float], after: dict[str, float], frame_rate: float
) -> dict[str, float | None]:
    """Mean batch size and padding between two scrapes."""
    d = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = d.get("hlstm_batch_size_count", 0.0)
    padded = d.get("hlstm_batch_padded_frames_sum", 0.0)
    valid = d.get("hlstm_audio_seconds_total", 0.0) * frame_rate
    return {
        "batches": batches,
        "mean_batch_size": d["hlstm_batch_size_sum"] / batches if batches else None,
        "mean_padding_ratio": d["hlstm_batch_padding_ratio_sum"] / batches if batches else None,
        # frame-weighted: the share of all computed frames that were padding
        "padded_frame_share": max(0.0, 1 - valid / padded) if padded else None,
        "inference_seconds": d.get("hlstm_inference_seconds_sum", 0.0),
    }


# --- load -----------------------------------------------------------------------------------


@dataclass
class Sample:
    start: float
    end: float
    status: int
    seconds: float


async def closed_loop(
    url: str,
    endpoint: str,
    form: dict[str, str],
    files: list[AudioFile],
    concurrency: int,
    warmup_s: float,
    window_s: float,
    on_window_edge: Any,
    drain_s: float = 60.0,
) -> tuple[list[Sample], float, float, int]:
    """`concurrency` clients POST back to back; returns samples and the window's edges."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    samples: list[Sample] = []
    counter = 0
    loop = asyncio.get_running_loop()
    t0 = loop.time() + warmup_s
    t1 = t0 + window_s

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:

        async def worker() -> None:
            nonlocal counter
            while loop.time() < t1:
                audio = files[counter % len(files)]
                counter += 1
                start = loop.time()
                try:
                    resp = await client.post(
                        endpoint, files={"file": (audio.name, audio.data, "audio/wav")}, data=form
                    )
                    status = resp.status_code
                except httpx.HTTPError:
                    status = -1
                samples.append(Sample(start, loop.time(), status, audio.seconds))

        async def edges() -> None:
            await asyncio.sleep(max(t0 - loop.time(), 0))
            await asyncio.to_thread(on_window_edge, "start")
            await asyncio.sleep(max(t1 - loop.time(), 0))
            await asyncio.to_thread(on_window_edge, "end")

        edge_task = asyncio.ensure_future(edges())
        workers = [asyncio.ensure_future(worker()) for _ in range(concurrency)]
        # bounded: requests still running drain_s after the window are cancelled and
        # counted as unfinished (latency percentiles then understate the tail; see JSON)
        _, pending = await asyncio.wait(workers, timeout=warmup_s + window_s + drain_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await edge_task
    unfinished = len(pending)
    return samples, t0, t1, unfinished


def summarize_level(samples: list[Sample], t0: float, t1: float) -> dict[str, Any]:
    """Throughput inside [t0, t1] and latency of the requests started inside it."""
    done = [s for s in samples if t0 <= s.end <= t1 and s.status == 200]
    started = [s for s in samples if t0 <= s.start < t1]
    ok = sorted(s.end - s.start for s in started if s.status == 200)
    errors: dict[str, int] = {}
    for s in started:
        if s.status != 200:
            errors[str(s.status)] = errors.get(str(s.status), 0) + 1
    window = t1 - t0

    def pct(q: float) -> float | None:
        return float(np.percentile(ok, q)) if ok else None

    return {
        "window_s": window,
        "completed": len(done),
        "requests_per_s": len(done) / window,
        "audio_s_per_s": sum(s.seconds for s in done) / window,
        "latency_s": {
            "p50": pct(50),
            "p95": pct(95),
            "p99": pct(99),
            "mean": statistics.fmean(ok) if ok else None,
            "max": ok[-1] if ok else None,
            "count": len(ok),
        },
        "errors": errors,
    }


def run_level(
    server: Server,
    endpoint: str,
    form: dict[str, str],
    files: list[AudioFile],
    concurrency: int,
    warmup_s: float,
    window_s: float,
    frame_rate: float,
    drain_s: float = 60.0,
) -> dict[str, Any]:
    """One concurrency level against one server."""
    scrapes: dict[str, dict[str, float]] = {}
    cpu: dict[str, tuple[float, float | None]] = {}

    def edge(which: str) -> None:
        scrapes[which] = scrape(server.url)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu[which] = (usage.ru_utime + usage.ru_stime, server.cpu_seconds())

    samples, t0, t1, unfinished = asyncio.run(
        closed_loop(
            server.url, endpoint, form, files, concurrency, warmup_s, window_s, edge, drain_s
        )
    )
    result = summarize_level(samples, t0, t1)
    result["unfinished_at_drain_limit"] = unfinished
    result.update(batch_stats(scrapes["start"], scrapes["end"], frame_rate))
    result["client_cpu_s"] = cpu["end"][0] - cpu["start"][0]
    s0, s1 = cpu["start"][1], cpu["end"][1]
    result["server_cpu_s"] = s1 - s0 if s0 is not None and s1 is not None else None
    return result


# --- main -----------------------------------------------------------------------------------


RANDOM_BUNDLE_STUDENTS = {
    "demo": "lstm_student_small",
    "paper": "lstm_student_paper",
    "paper_fast": "lstm_student_paper_fast",
}


def build_sized_bundle(out_dir: Path, shape: str = "demo") -> Path:
    """A random-init bundle with a real model's shapes: the student of `shape` (demo, paper,
    paper_fast) + the demo CTC head (configs/ctc/demo.yaml: projection 256, 2 BiLSTM x 256).
    Same compute as a trained one.
    """
    import torch

    from model_training.bundle import save_bundle
    from model_training.models import student as students
    from model_training.models.ctc import CTCHead, CTCHeadConfig
    from model_training.text import CharVocab

    torch.manual_seed(0)
    student = getattr(students, RANDOM_BUNDLE_STUDENTS[shape])(num_classes=0)
    vocab = CharVocab()
    head = CTCHead(
        CTCHeadConfig(
            layer_dims=student.hidden_dims, vocab_size=len(vocab), proj_dim=256,
            lstm_layers=2, lstm_hidden=256, dropout=0.0,
        )
    )  # fmt: skip
    return save_bundle(
        out_dir, student, head, vocab, name=f"{shape}-sized-random",
        provenance={"note": f"random init, {shape} model shapes, for benchmarks only"},
    )  # fmt: skip


def resolve_bundle(
    model_dir: Path | None, random_bundle: str | None, tmp: Path
) -> tuple[Path, str]:
    """The bundle to serve and where it came from: --model-dir, else --random-bundle, else
    models/default, else a tiny random one."""
    if model_dir is not None:
        if not (model_dir / "config.json").is_file():
            raise SystemExit(f"--model-dir {model_dir} holds no bundle (config.json missing)")
        return model_dir, "given"
    if random_bundle in RANDOM_BUNDLE_STUDENTS:
        path = build_sized_bundle(tmp / f"{random_bundle}-sized-bundle", random_bundle)
        return path, f"random-init bundle, {random_bundle} model shapes (--random-bundle)"
    if (DEFAULT_MODEL_DIR / "config.json").is_file() and random_bundle is None:
        return DEFAULT_MODEL_DIR, "models/default"
    log.warning("serving a random-init tiny bundle")
    from model_training.testing import build_tiny_bundle

    path = build_tiny_bundle(tmp / "tiny-bundle")
    return path, "tiny random-init bundle (model_training.testing.build_tiny_bundle)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", type=Path, default=None, help="bundle (default models/default)")
    p.add_argument(
        "--random-bundle",
        choices=["tiny", *RANDOM_BUNDLE_STUDENTS],
        default=None,
        help="serve a random-init bundle of this shape instead of models/default (tiny, or "
        "the demo / paper / paper_fast student + the demo CTC head: their real speed)",
    )
    p.add_argument("--levels", default="1,4,16,32,64", help="concurrency levels")
    p.add_argument("--window-s", type=float, default=8.0, help="measured seconds per level")
    p.add_argument("--warmup-s", type=float, default=2.0, help="unmeasured seconds first")
    p.add_argument(
        "--drain-s", type=float, default=30.0, help="wait this long for requests in flight"
    )
    p.add_argument("--files", type=int, default=24, help="synthetic files")
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--max-seconds", type=float, default=8.0)
    p.add_argument(
        "--max-batch-sizes",
        default="16,4",
        help="one batching server per size (HLSTM_MAX_BATCH_SIZE), next to one with 1",
    )
    p.add_argument("--max-wait-ms", type=float, default=10.0, help="batching servers")
    p.add_argument("--modes", default="batching,no_batching", help="which servers to run")
    p.add_argument("--endpoint", choices=["auto", "transcriptions", "embeddings"], default="auto")
    p.add_argument("--device", default="auto", help="HLSTM_DEVICE for the servers")
    p.add_argument("--torch-threads", type=int, default=None, help="HLSTM_TORCH_THREADS")
    p.add_argument("--startup-timeout-s", type=float, default=180.0)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "service_load.json")
    p.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to --out)")
    p.add_argument("--quick", action="store_true", help="levels 1,4; 3 s windows (smoke test)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.levels, args.window_s, args.warmup_s, args.files = "1,4", 3.0, 0.5, 4
    args.levels = [int(c) for c in args.levels.split(",")]
    args.modes = [m.strip() for m in args.modes.split(",")]
    args.max_batch_sizes = [int(b) for b in args.max_batch_sizes.split(",")]
    if min(args.levels) < 1 or not set(args.modes) <= {"batching", "no_batching"}:
        p.error("levels must be >= 1; modes are batching and/or no_batching")
    if min(args.max_batch_sizes) < 2:
        p.error("--max-batch-sizes are the batching servers' sizes: each must be >= 2")
    return args


def server_batch_sizes(modes: list[str], max_batch_sizes: list[int]) -> dict[str, int]:
    """Server name -> HLSTM_MAX_BATCH_SIZE: "batch16", "batch4", ... and "no_batching" (1)."""
    sizes = {f"batch{b}": b for b in max_batch_sizes} if "batching" in modes else {}
    if "no_batching" in modes:
        sizes["no_batching"] = 1
    return sizes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hlstm-load-") as tmp_str:
        tmp = Path(tmp_str)
        bundle_dir, bundle_source = resolve_bundle(args.model_dir, args.random_bundle, tmp)
        config = json.loads((bundle_dir / "config.json").read_text())
        has_ctc = bool(config.get("head"))
        endpoint = args.endpoint if args.endpoint != "auto" else (
            "transcriptions" if has_ctc else "embeddings"
        )  # fmt: skip
        if endpoint == "transcriptions" and not has_ctc:
            raise SystemExit(f"bundle {bundle_dir} has no CTC head: use --endpoint embeddings")
        path = f"/v1/audio/{endpoint}"
        form = (
            {"response_format": "json"}
            if endpoint == "transcriptions"
            else {"layers": "last", "pooling": "mean"}
        )
        files = synth_audio(args.files, args.min_seconds, args.max_seconds)
        base_env = {
            "HLSTM_MODEL_DIR": str(bundle_dir.resolve()),
            "HLSTM_DEVICE": args.device,
            "HLSTM_MAX_WAIT_MS": str(args.max_wait_ms),
            "HLSTM_QUEUE_LIMIT": str(max(256, 4 * max(args.levels))),
            "HLSTM_LOG_LEVEL": "WARNING",
            "HLSTM_JSON_LOGS": "false",
        }
        if args.torch_threads:
            base_env["HLSTM_TORCH_THREADS"] = str(args.torch_threads)
        batch_sizes = server_batch_sizes(args.modes, args.max_batch_sizes)
        servers = [
            Server(m, {**base_env, "HLSTM_MAX_BATCH_SIZE": str(size)}, tmp / f"{m}.log")
            for m, size in batch_sizes.items()
        ]
        frame_rate = float(config.get("frame_rate", 50.0))
        levels: list[dict[str, Any]] = []
        with running(servers, args.startup_timeout_s):
            log.info("servers ready after %.1f s", time.monotonic() - start)
            for i, c in enumerate(args.levels):
                order = servers if i % 2 == 0 else servers[::-1]
                for server in order:
                    res = run_level(
                        server, path, form, files, c, args.warmup_s, args.window_s, frame_rate,
                        args.drain_s,
                    )  # fmt: skip
                    res.update({"mode": server.name, "concurrency": c,
                                "max_batch_size": batch_sizes[server.name]})  # fmt: skip
                    levels.append(res)
                    lat = res["latency_s"]
                    log.info(
                        "%-11s c=%-3d %6.2f req/s  p50 %s p99 %s  batch %s  errors %s",
                        server.name, c, res["requests_per_s"], _fmt(lat["p50"]),
                        _fmt(lat["p99"]), _fmt(res["mean_batch_size"]), res["errors"] or "-",
                    )  # fmt: skip
            for server in servers:
                if "Traceback" in server.log_tail(20000):
                    log.warning("server %s logged a traceback:\n%s", server.name, server.log_tail())
    comparison = compare_modes(levels)
    payload = {
        "settings": {
            "levels": args.levels,
            "servers": {m: {"max_batch_size": size} for m, size in batch_sizes.items()},
            "max_wait_ms": args.max_wait_ms,
            "window_s": args.window_s,
            "warmup_s": args.warmup_s,
            "drain_s": args.drain_s,
            "endpoint": path,
            "form": form,
            "device": args.device,
            "torch_threads": args.torch_threads,
            "quick": args.quick,
            "load": "closed loop: each of c clients sends its next request when the last "
            "returns; throughput counts requests completed inside the window, latency "
            "covers requests started inside it",
        },
        "bundle": {
            "path": str(bundle_dir),
            "source": bundle_source,
            "name": config.get("name"),
            "upstream": config.get("upstream", {}).get("type"),
            "parameters": config.get("parameters"),
            "quantize": config.get("quantize"),
        },
        "audio": {
            "files": len(files),
            "seconds": sorted(round(f.seconds, 2) for f in files),
            "mean_seconds": statistics.fmean(f.seconds for f in files),
            "content": "synthetic harmonics + noise, 16 kHz PCM16 WAV",
        },
        "levels": levels,
        "batching_vs_no_batching": comparison,
        "elapsed_s": time.monotonic() - start,
    }
    write_json(args.out, "service_load", payload)
    plot(levels, args.plot or args.out.with_suffix(".png"))
    args.out.with_suffix(".md").write_text(markdown(levels, comparison))
    return 0


def markdown(levels: list[dict[str, Any]], comparison: list[dict[str, Any]]) -> str:
    """The results as Markdown tables (for docs/performance.md)."""

    def f(v: float | None, digits: int = 2) -> str:
        return f"{v:.{digits}f}" if v is not None else "-"

    lines = [
        "| clients | max batch | req/s | audio s/s | p50 (s) | p95 (s) | p99 (s) "
        "| mean batch | padding ratio | errors |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(levels, key=lambda r: (r["concurrency"], -r["max_batch_size"])):
        lat = r["latency_s"]
        errors = ", ".join(f"{k}: {v}" for k, v in r["errors"].items())
        if r.get("unfinished_at_drain_limit"):
            errors += f"{', ' if errors else ''}unfinished: {r['unfinished_at_drain_limit']}"
        errors = errors or "-"
        lines.append(
            f"| {r['concurrency']} | {r['max_batch_size']} "
            f"| {f(r['requests_per_s'])} | {f(r['audio_s_per_s'], 1)} | {f(lat['p50'])} "
            f"| {f(lat['p95'])} | {f(lat['p99'])} | {f(r['mean_batch_size'], 1)} "
            f"| {f(r['mean_padding_ratio'])} | {errors} |"
        )
    lines += ["", "| clients | max batch | throughput with / without batching | p99 with "
              "| p99 without |", "|---:|---:|---:|---:|---:|"]  # fmt: skip
    for c in comparison:
        lines.append(
            f"| {c['concurrency']} | {c['max_batch_size']} | {f(c['throughput_ratio'])} "
            f"| {f(c['p99_s']['batching'])} | {f(c['p99_s']['no_batching'])} |"
        )
    return "\n".join(lines) + "\n"


def _fmt(v: float | None) -> str:
    return f"{v:.3f}" if v is not None else "-"


def compare_modes(levels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per concurrency and batching server: throughput ratio to no batching, both p99s."""
    index = {(r["mode"], r["concurrency"]): r for r in levels}
    batching = sorted({(r["max_batch_size"], r["mode"]) for r in levels if r["max_batch_size"] > 1})
    out = []
    concurrencies = sorted({r["concurrency"] for r in levels})
    for c, mode in ((c, m) for c in concurrencies for _, m in reversed(batching)):
        on, off = index.get((mode, c)), index.get(("no_batching", c))
        if on is None or off is None:
            continue
        out.append(
            {
                "concurrency": c,
                "max_batch_size": on["max_batch_size"],
                "throughput_ratio": on["requests_per_s"] / off["requests_per_s"]
                if off["requests_per_s"]
                else None,
                "requests_per_s": {"batching": on["requests_per_s"],
                                   "no_batching": off["requests_per_s"]},
                "p99_s": {"batching": on["latency_s"]["p99"],
                          "no_batching": off["latency_s"]["p99"]},
            }
        )  # fmt: skip
    return out


def plot(levels: list[dict[str, Any]], path: Path) -> None:
    """Throughput, p50/p99 latency and mean batch size against concurrency, per mode."""
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    modes = list(dict.fromkeys(r["mode"] for r in levels))
    for mode in modes:
        rows = sorted((r for r in levels if r["mode"] == mode), key=lambda r: r["concurrency"])
        cs = [r["concurrency"] for r in rows]
        axes[0].plot(cs, [r["requests_per_s"] for r in rows], marker="o", label=mode)
        for q, style in (("p50", "--"), ("p99", "-")):
            axes[1].plot(
                cs,
                [r["latency_s"][q] for r in rows],
                linestyle=style,
                marker="o",
                label=f"{mode} {q}",
            )
    for ax, ylabel in zip(axes[:2], ("requests per second", "latency (s)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("throughput")
    axes[1].set_title("latency")
    axes[1].set_yscale("log")
    cs = sorted({r["concurrency"] for r in levels})
    index = {(r["mode"], r["concurrency"]): r for r in levels}
    grouped_bars(
        axes[2],
        [str(c) for c in cs],
        {m: [(index.get((m, c)) or {}).get("mean_batch_size") for c in cs] for m in modes},
        "mean batch size",
        fmt="{:.1f}",
    )
    axes[2].set_xlabel("concurrent clients")
    axes[2].set_title("mean batch size (from /metrics)")
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
