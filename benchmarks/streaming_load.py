"""Live streams under load: N realtime clients at real-time pace, step batcher on vs off.

Starts two servers (uvicorn `app.main:create_app` on free 127.0.0.1 ports, the same causal
bundle): one with the step batcher (HLSTM_STREAM_STEP_BATCHING=true: all streams' pending
audio in one batched forward) and one without (one forward per stream). For each level
N (1, 8, 32, 64, 128 by default), each server in turn (order reversed every other level)
gets N WebSocket clients speaking the OpenAI Realtime transcription protocol: 24 kHz PCM16
in 100 ms chunks, each sent at its real-time instant (clients offset evenly within 100 ms),
`--seconds` of audio, then a commit. Reported per level and server:

- delta latency p50/p99/max: from sending the 100 ms chunk that completes a character's
  frame to receiving its delta (the session's opt-in `hubert_lstm.timing` puts the
  character's audio time on each delta; the frame is complete 25 ms after it starts);
- streams that fell behind: their `completed` came over 1 s after their commit (or never,
  within `--drain-s`), or audio was refused because their buffer was full;
- CPU: the server's cores in use over the window (user + system time / wall time), and the
  client's (it runs on the same machine and takes CPU the server could use);
- from /metrics: mean streams per step and the steps' real-time factor.

The bundle: a demo-size causal student with random weights (the demo config's shapes, made
causal: unidirectional LSTMs, layer-norm CNN, unidirectional CTC head), its head fitted so
random transcripts change often (`model_training.testing.vary_transcripts`): speed does not
depend on the weights, and deltas then come about every 100 ms as with speech.

    python benchmarks/streaming_load.py            # ~6 minutes on 2 cores
    python benchmarks/streaming_load.py --quick    # seconds; checks the script (tiny model)
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import math
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import RESULTS_DIR, grouped_bars, pyplot, save_figure, setup_logging, write_json
from service_load import Server, running, scrape
from websockets.asyncio.client import connect

log = logging.getLogger("streaming_load")

CLIENT_RATE = 24_000
CHUNK_S = 0.1
FRAME_COMPLETE_MS = 25.0  # a frame's receptive field (400 samples at 16 kHz) ends 25 ms in
BEHIND_S = 1.0


# --- bundle -------------------------------------------------------------------------------


def build_bundle(
    out_dir: Path, quick: bool, shapes: Path | None = None
) -> tuple[Path, dict[str, Any]]:
    """The causal bundle the servers load (see module docstring): the shapes of the bundle
    in `shapes` (default: the shipped streaming bundle, else the default one) made causal,
    random weights; returns (dir, facts)."""
    import torch

    from model_training.bundle import save_bundle
    from model_training.models.ctc import CTCHead, CTCHeadConfig
    from model_training.models.student import LSTMStudent, LSTMStudentConfig
    from model_training.testing import CAUSAL_STUDENT, build_tiny_bundle, vary_transcripts
    from model_training.text import CharVocab

    if quick:
        path = build_tiny_bundle(out_dir / "tiny", causal=True, varied=True, name="tiny-causal")
        return path, {"kind": "tiny causal, random init (quick run)"}
    # the shipped streaming bundle's shapes (the default's on a checkout without one)
    models = Path(__file__).resolve().parents[1] / "models"
    if shapes is None:
        streaming = models / "streaming"
        shapes = streaming if (streaming / "config.json").is_file() else models / "default"
    demo = json.loads((shapes / "config.json").read_text())
    torch.manual_seed(0)
    student_cfg = {**demo["upstream"]["config"], **CAUSAL_STUDENT, "num_classes": 0}
    student = LSTMStudent(LSTMStudentConfig.from_dict(student_cfg))
    head_cfg = {**demo["head"], "layer_dims": student.hidden_dims, "bidirectional": False}
    head_cfg.pop("layer_indices", None)
    head = CTCHead(CTCHeadConfig.from_dict(head_cfg))
    vary_transcripts(student, head, steps=30)
    path = save_bundle(
        out_dir / "demo-causal",
        student,
        head,
        CharVocab(),
        name="demo-causal-random",
        provenance={"note": "random init, demo shapes made causal; for benchmarks only"},
    )
    params = sum(p.numel() for p in student.parameters()) + sum(
        p.numel() for p in head.parameters()
    )
    return path, {
        "kind": "demo shapes, causal, random init",
        "shapes_from": str(shapes),
        "student": student_cfg,
        "head": head.config.to_dict(),
        "parameters": params,
    }


def synth_pcm(seconds: float, seed: int, rate: int = CLIENT_RATE) -> bytes:
    """PCM16: harmonics under a syllable-rate envelope plus noise (speech-like level)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(100, 220)
    voiced = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 5) * t))
    wave = 0.2 * envelope * voiced + 0.02 * rng.standard_normal(t.shape)
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


# --- one client ---------------------------------------------------------------------------


@dataclass
class ClientResult:
    """What one client saw."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    commit_to_completed: float | None = None
    connect_error: str | None = None

    @property
    def fell_behind(self) -> bool:
        return (
            self.connect_error is not None
            or "input_audio_buffer_full" in self.errors
            or self.commit_to_completed is None
            or self.commit_to_completed > BEHIND_S
        )


async def run_client(
    url: str, pcm: bytes, start_at: float, drain_s: float, ready: asyncio.Event
) -> ClientResult:
    """Connect, configure, stream `pcm` at real-time pace from `start_at`, commit, wait."""
    result = ClientResult()
    chunk_bytes = int(CLIENT_RATE * CHUNK_S) * 2
    chunks = [pcm[i : i + chunk_bytes] for i in range(0, len(pcm), chunk_bytes)]
    sent: list[float] = []
    done = asyncio.Event()
    commit_at: list[float] = []
    ws_url = url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    try:
        async with connect(ws_url, max_size=None, open_timeout=60) as ws:
            json.loads(await ws.recv())  # session.created
            session = {
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": CLIENT_RATE},
                        "turn_detection": None,
                    }
                },
                "hubert_lstm": {"timing": True},
            }
            await ws.send(json.dumps({"type": "session.update", "session": session}))
            json.loads(await ws.recv())  # session.updated

            async def receive() -> None:
                async for message in ws:
                    now = time.monotonic()
                    event = json.loads(message)
                    kind = event["type"]
                    if kind.endswith("input_audio_transcription.delta"):
                        done_ms = event["hubert_lstm"]["audio_ms"] + FRAME_COMPLETE_MS
                        k = int(done_ms // (CHUNK_S * 1000))
                        origin = sent[k] if k < len(sent) else (commit_at or [now])[0]
                        result.latencies.append(now - origin)
                    elif kind.endswith("input_audio_transcription.completed"):
                        result.commit_to_completed = now - commit_at[0]
                        done.set()
                        return
                    elif kind == "error":
                        result.errors.append(event["error"].get("code") or "error")

            receiver = asyncio.get_running_loop().create_task(receive())
            ready.set()
            for k, chunk in enumerate(chunks):
                delay = start_at + k * CHUNK_S - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                audio = base64.b64encode(chunk).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
                sent.append(time.monotonic())
            commit_at.append(time.monotonic())
            await ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), drain_s)
            receiver.cancel()
    except Exception as exc:  # a refused or broken connection is a result too
        result.connect_error = f"{type(exc).__name__}: {exc}"
        ready.set()
    return result


# --- one level ------------------------------------------------------------------------------


STREAM_SAMPLES = frozenset({
    "hlstm_stream_step_streams_sum", "hlstm_stream_step_streams_count",
    "hlstm_stream_real_time_factor_sum", "hlstm_stream_real_time_factor_count",
})  # fmt: skip


def _ratio(after: dict[str, float], before: dict[str, float], name: str) -> float | None:
    n = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
    s = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
    return s / n if n else None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


async def run_level(server: Server, n: int, seconds: float, drain_s: float) -> dict[str, Any]:
    pcms = [synth_pcm(seconds, seed=i) for i in range(min(n, 8))]
    before = scrape(server.url, STREAM_SAMPLES)
    cpu0, wall0 = server.cpu_seconds(), time.monotonic()
    client0 = resource.getrusage(resource.RUSAGE_SELF)
    start_at = time.monotonic() + 2.0 + 0.02 * n  # time for everyone to connect
    readies = [asyncio.Event() for _ in range(n)]
    tasks = [
        run_client(server.url, pcms[i % len(pcms)], start_at + i * CHUNK_S / n, drain_s, readies[i])
        for i in range(n)
    ]
    results: list[ClientResult] = await asyncio.gather(*tasks)
    wall = time.monotonic() - wall0
    cpu1 = server.cpu_seconds()
    client1 = resource.getrusage(resource.RUSAGE_SELF)
    after = scrape(server.url, STREAM_SAMPLES)
    latencies = [x for r in results for x in r.latencies]
    client_cpu = (client1.ru_utime + client1.ru_stime) - (client0.ru_utime + client0.ru_stime)
    row = {
        "server": server.name,
        "streams": n,
        "deltas": len(latencies),
        "latency_p50_s": percentile(latencies, 0.50),
        "latency_p99_s": percentile(latencies, 0.99),
        "latency_max_s": max(latencies) if latencies else None,
        "fell_behind": sum(r.fell_behind for r in results),
        "commit_to_completed_median_s": statistics.median(
            [r.commit_to_completed for r in results if r.commit_to_completed is not None] or [0]
        ),
        "errors": sorted({e for r in results for e in r.errors}),
        "connect_errors": sorted({r.connect_error for r in results if r.connect_error}),
        "server_cores_used": (cpu1 - cpu0) / wall
        if cpu0 is not None and cpu1 is not None
        else None,
        "client_cores_used": client_cpu / wall,
        "mean_streams_per_step": _ratio(after, before, "hlstm_stream_step_streams"),
        "mean_step_real_time_factor": _ratio(after, before, "hlstm_stream_real_time_factor"),
        "wall_s": wall,
    }
    log.info(
        "%-9s N=%-3d p50 %s p99 %s fell behind %d/%d server %.2f cores, %s streams/step",
        server.name, n, _ms(row["latency_p50_s"]), _ms(row["latency_p99_s"]),
        row["fell_behind"], n, row["server_cores_used"] or 0, _num(row["mean_streams_per_step"]),
    )  # fmt: skip
    return row


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:.0f} ms"


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


# --- main -----------------------------------------------------------------------------------


def model_steps(
    bundle_dir: Path, levels: list[int], repeats: int, threads: int
) -> list[dict[str, Any]]:
    """The model alone, in this process: 100 ms for N streams as one stacked step vs N steps.

    Interleaved repeats (stacked, separate, stacked, ...) so machine load hits both alike;
    medians. A stream keeps up while the time per 100 ms of audio stays under 100 ms.
    """
    import torch

    from model_training.bundle import load_bundle
    from model_training.streaming import StreamingModel

    torch.set_num_threads(threads)
    model = StreamingModel(load_bundle(bundle_dir))
    pcm = np.frombuffer(synth_pcm(CHUNK_S, seed=0, rate=16_000), dtype="<i2")
    chunk = torch.from_numpy(pcm.astype(np.float32) / 32768.0)  # 100 ms at 16 kHz
    rows = []
    for n in levels:
        stacked_states = [model.new_state() for _ in range(n)]
        single_states = [model.new_state() for _ in range(n)]
        model.step(stacked_states, [chunk] * n)  # warm-up, and past the first frame's samples
        for state in single_states:
            model.step([state], [chunk])
        stacked, separate = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.step(stacked_states, [chunk] * n)
            stacked.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for state in single_states:
                model.step([state], [chunk])
            separate.append(time.perf_counter() - t0)
        row = {
            "streams": n,
            "stacked_ms_per_100ms": 1000 * statistics.median(stacked),
            "separate_ms_per_100ms": 1000 * statistics.median(separate),
        }
        row["speedup"] = row["separate_ms_per_100ms"] / row["stacked_ms_per_100ms"]
        rows.append(row)
        log.info(
            "model only, N=%-3d 100 ms of audio: stacked %.1f ms, separate %.1f ms (x%.1f)",
            n, row["stacked_ms_per_100ms"], row["separate_ms_per_100ms"], row["speedup"],
        )  # fmt: skip
    return rows


def run_service(
    bundle_dir: Path, levels: list[int], args: argparse.Namespace, tmp: Path
) -> list[dict[str, Any]]:
    """Both servers, every level (see module docstring)."""
    env = {
        "HLSTM_MODEL_DIR": str(bundle_dir),
        "HLSTM_DEVICE": "cpu",
        "HLSTM_TORCH_THREADS": str(args.torch_threads),
        "HLSTM_MAX_STREAMS": str(max(levels) + 8),
        "HLSTM_JSON_LOGS": "false",
        "HLSTM_LOG_LEVEL": "WARNING",
        "HLSTM_STREAM_IDLE_TIMEOUT_S": "600",
    }
    servers = [
        Server("batched", {**env, "HLSTM_STREAM_STEP_BATCHING": "true"}, tmp / "b.log"),
        Server("unbatched", {**env, "HLSTM_STREAM_STEP_BATCHING": "false"}, tmp / "u.log"),
    ]
    rows = []
    with running(servers, timeout_s=180):
        for i, n in enumerate(levels):
            order = servers if i % 2 == 0 else servers[::-1]
            for server in order:
                rows.append(asyncio.run(run_level(server, n, args.seconds, args.drain_s)))
                time.sleep(1.0)  # let the server drop what the last level left
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,8,32,64,128", help="concurrent streams")
    parser.add_argument("--seconds", type=float, default=15.0, help="audio per client")
    parser.add_argument("--drain-s", type=float, default=10.0, help="wait after commit")
    parser.add_argument("--torch-threads", type=int, default=1, help="HLSTM_TORCH_THREADS")
    parser.add_argument("--parts", default="service,model", help="service and/or model")
    parser.add_argument("--repeats", type=int, default=7, help="model part: timed repeats")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "streaming_load.json")
    parser.add_argument("--quick", action="store_true", help="tiny model, N=1,2, 2 s")
    parser.add_argument(
        "--shapes",
        type=Path,
        default=None,
        help="bundle whose shapes to use (default: models/streaming, else models/default)",
    )
    args = parser.parse_args(argv)
    setup_logging()
    if args.quick:
        args.levels, args.seconds, args.drain_s, args.repeats = "1,2", 2.0, 5.0, 2
    levels = [int(v) for v in args.levels.split(",")]
    parts = set(args.parts.split(","))
    if not parts or parts - {"service", "model"}:
        parser.error(f"--parts takes service and/or model, found {args.parts!r}")
    rows: list[dict[str, Any]] = []
    model_rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        bundle_dir, bundle_facts = build_bundle(Path(tmp), args.quick, args.shapes)
        if "service" in parts:
            rows = run_service(bundle_dir, levels, args, Path(tmp))
        if "model" in parts:
            model_rows = model_steps(bundle_dir, levels, args.repeats, args.torch_threads)
    best = max(
        (r["streams"] for r in rows if r["server"] == "batched" and _meets_target(r)), default=0
    )
    write_json(
        args.out,
        "streaming_load",
        {
            "bundle": bundle_facts,
            "settings": {
                "levels": levels,
                "parts": sorted(parts),
                "seconds_per_client": args.seconds,
                "chunk_s": CHUNK_S,
                "client_rate": CLIENT_RATE,
                "torch_threads": args.torch_threads,
                "fell_behind_after_s": BEHIND_S,
                "drain_s": args.drain_s,
                "repeats": args.repeats,
            },
            "target": "p99 delta latency <= 0.5 s and no stream behind",
            "most_streams_meeting_target_batched": best if rows else None,
            "rows": rows,
            "model_only": model_rows,
        },
    )
    plot(rows, model_rows, args.out.with_suffix(".png"))
    return 0


def _meets_target(row: dict[str, Any]) -> bool:
    p99 = row["latency_p99_s"]
    return p99 is not None and p99 <= 0.5 and row["fell_behind"] == 0


def plot(rows: list[dict[str, Any]], model_rows: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if rows:
        levels = sorted({r["streams"] for r in rows})
        by = {(r["server"], r["streams"]): r for r in rows}
        for name in ("batched", "unbatched"):
            p99 = [by[(name, n)]["latency_p99_s"] for n in levels]
            axes[0].plot(
                levels, [v if v is not None else float("nan") for v in p99], "o-", label=name
            )
        axes[0].axhline(0.5, color="grey", ls="--", lw=1, label="target 0.5 s")
        axes[0].set_xscale("log", base=2)
        axes[0].set_yscale("log")
        axes[0].set_xlabel("concurrent real-time streams")
        axes[0].set_ylabel("p99 delta latency (s)")
        axes[0].legend(fontsize=8)
        axes[0].grid(alpha=0.3)
        grouped_bars(
            axes[1],
            [str(n) for n in levels],
            {
                name: [float(by[(name, n)]["fell_behind"]) for n in levels]
                for name in ("batched", "unbatched")
            },
            "streams that fell behind",
            fmt="{:.0f}",
        )
        axes[1].set_xlabel("concurrent streams (service)")
    if model_rows:
        grouped_bars(
            axes[2],
            [str(r["streams"]) for r in model_rows],
            {
                "stacked (one step)": [r["stacked_ms_per_100ms"] for r in model_rows],
                "separate steps": [r["separate_ms_per_100ms"] for r in model_rows],
            },
            "ms per 100 ms of audio (model only)",
            log_scale=True,
            fmt="{:.0f}",
        )
        axes[2].axhline(100, color="grey", ls="--", lw=1)
        axes[2].set_xlabel("streams")
    fig.suptitle("Live streams on the shared 2-core CPU (1 torch thread)", fontsize=10)
    save_figure(fig, path)


if __name__ == "__main__":
    sys.exit(main())
