"""Soak: the service under mixed, partly hostile traffic for minutes; memory and files sampled.

Starts `hubert-lstm serve` (the production path: h11 head limit, header timeout, admission
middleware) on a free loopback port with the bundle given (default models/default), then runs
at once, for `--minutes`:

- `valid`: closed-loop clients uploading short files of several formats and rates (WAV 16 kHz,
  WAV 44101 Hz, WAV 8 kHz, FLAC 44.1 kHz stereo, MP3, Ogg/Opus, WebM, M4A) for transcripts;
- `embeddings`: pooled and unpooled embeddings, and requests over the response bound (413);
- `hostile`: the crafted inputs of issue 17 in turn (concat/HLS/SDP playlists, random bytes,
  truncated FLAC, a WAV header claiming hours, NaN samples, 384 kHz, 16 channels, a FLAC whose
  header understates 10 minutes, a 192 kHz 8-channel FLAC with no length, ten minutes of Opus
  asked for every layer unpooled, a 1 MB header);
- `disconnects`: uploads abandoned mid-body and requests whose client gives up while waiting;
- `slow`: connections that send half a request head and stall (closed by the header timeout).

Every second it samples the server's RSS and open file descriptors (psutil) and /readyz.
The JSON has every sample, per-kind status counts and latencies, and a summary (peak RSS,
RSS and fd drift from the first to the last third of the run, 5xx count, readiness failures);
the PNG plots RSS and fds over time and the status mix.

    python benchmarks/soak.py                 # 10 minutes (the issue's soak)
    python benchmarks/soak.py --minutes 3     # what docs/performance.md reports (busy machine)
    python benchmarks/soak.py --quick         # 20 s; checks the script
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import struct
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import soundfile as sf
from common import RESULTS_DIR, pyplot, save_figure, setup_logging, write_json
from service_load import DEFAULT_MODEL_DIR, Server, running

log = logging.getLogger("soak")


# --- inputs -------------------------------------------------------------------------------


def _tone(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0 = rng.uniform(120, 220)
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 5))
    x = (0.2 * x * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))).astype(np.float32)
    return np.repeat(x[:, None], channels, 1) if channels > 1 else x


def _sf(x: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


def _ffmpeg(tmp: Path, suffix: str, source: str, codec_args: list[str]) -> bytes:
    out = tmp / f"x{suffix}"
    cmd = ["ffmpeg", "-loglevel", "error", "-y", "-f", "lavfi", "-i", source, *codec_args]
    subprocess.run([*cmd, str(out)], check=True, timeout=300)
    return out.read_bytes()


def _flac_total(data: bytes, total: int) -> bytes:
    """Rewrite FLAC STREAMINFO's 36-bit total-samples field."""
    out = bytearray(data)
    out[21] = (out[21] & 0xF0) | ((total >> 32) & 0x0F)
    out[22:26] = struct.pack(">I", total & 0xFFFFFFFF)
    return bytes(out)


SDP = (
    b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 5004 RTP/AVP 0\r\n"
)


@dataclass
class Inputs:
    valid: list[tuple[str, bytes]]
    hostile: list[tuple[str, bytes]]
    long_opus: bytes


def build_inputs(tmp: Path) -> Inputs:
    """All uploads, made once (ffmpeg for the compressed ones)."""
    sine = "sine=frequency=220:duration=3:sample_rate=48000"
    valid = [
        ("wav16k", _sf(_tone(3.0, 16_000), 16_000, "WAV", "PCM_16")),
        ("wav44101", _sf(_tone(2.0, 44_101, seed=1), 44_101, "WAV", "PCM_16")),
        ("wav8k", _sf(_tone(4.0, 8_000, seed=2), 8_000, "WAV", "PCM_16")),
        ("flac44k_stereo", _sf(_tone(2.5, 44_100, 2, seed=3), 44_100, "FLAC")),
        ("mp3", _ffmpeg(tmp, ".mp3", sine, ["-c:a", "libmp3lame"])),
        ("opus", _ffmpeg(tmp, ".ogg", sine, ["-c:a", "libopus"])),
        ("webm", _ffmpeg(tmp, ".webm", sine, ["-c:a", "libopus"])),
        ("m4a", _ffmpeg(tmp, ".m4a", sine, ["-c:a", "aac"])),
    ]
    hours = bytearray(_sf(_tone(0.5, 16_000), 16_000, "WAV", "PCM_16"))
    pos = hours.find(b"data")
    hours[pos + 4 : pos + 8] = struct.pack("<I", 16_000 * 2 * 3600 * 3)
    silence = "anullsrc=r=8000:cl=mono"
    understated = _ffmpeg(tmp, ".flac", silence, ["-t", "605", "-c:a", "flac"])
    bomb = _ffmpeg(tmp, "b.flac", "anullsrc=r=192000:cl=7.1", ["-t", "80", "-c:a", "flac"])
    hostile = [
        ("concat", b"ffconcat version 1.0\nfile secret.wav\n"),
        ("hls", b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nsecret.wav\n#EXT-X-ENDLIST\n"),
        ("sdp", SDP),
        ("random", np.random.default_rng(0).bytes(20_000)),
        ("truncated_flac", valid[3][1][:5000]),
        ("wav_claims_hours", bytes(hours)),
        ("nan", _sf(np.full(8000, np.nan, np.float32), 16_000, "WAV", "FLOAT")),
        ("rate_384k", _sf(_tone(0.2, 384_000), 384_000, "WAV", "PCM_16")),
        ("channels_16", _sf(_tone(0.5, 16_000, 16), 16_000, "WAV", "PCM_16")),
        ("flac_understated_605s", _flac_total(understated, 8_000)),
        ("flac_192k_8ch_no_length", _flac_total(bomb, 0)),
    ]
    long_opus = _ffmpeg(tmp, "l.ogg", silence, ["-t", "590", "-c:a", "libopus", "-b:a", "6k"])
    return Inputs(valid, hostile, long_opus)


# --- traffic ------------------------------------------------------------------------------


@dataclass
class Result:
    kind: str
    name: str
    start: float
    end: float
    status: int | str


class Soak:
    def __init__(self, url: str, port: int, inputs: Inputs, seconds: float) -> None:
        self.url, self.port, self.inputs = url, port, inputs
        self.results: list[Result] = []
        self.deadline = time.monotonic() + seconds

    def alive(self) -> bool:
        return time.monotonic() < self.deadline

    def record(self, kind: str, name: str, start: float, status: int | str) -> None:
        self.results.append(Result(kind, name, start, time.monotonic(), status))

    async def post(
        self, client: httpx.AsyncClient, kind: str, name: str, route: str, files: Any, data=None
    ) -> None:
        start = time.monotonic()
        try:
            r = await client.post(route, files=files, data=data)
            status: int | str = r.status_code
        except httpx.TimeoutException:
            status = "client_timeout"
        except httpx.HTTPError as exc:
            status = type(exc).__name__
        self.record(kind, name, start, status)

    async def valid(self, worker: int) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=120) as client:
            i = worker
            while self.alive():
                name, data = self.inputs.valid[i % len(self.inputs.valid)]
                i += 1
                await self.post(client, "valid", name, "/v1/audio/transcriptions",
                                {"file": (f"{name}.bin", data, "audio/mpeg")})  # fmt: skip

    async def embeddings(self) -> None:
        wav = self.inputs.valid[0][1]
        plans = [
            ("pooled_all", [("file", ("a.wav", wav))] * 2, {"layers": "all", "pooling": "mean"}),
            ("unpooled_last", [("file", ("a.wav", wav))], {"layers": "last"}),
            ("10min_all_unpooled", [("file", ("l.ogg", self.inputs.long_opus))],
             {"layers": "all"}),
        ]  # fmt: skip
        async with httpx.AsyncClient(base_url=self.url, timeout=120) as client:
            i = 0
            while self.alive():
                name, files, data = plans[i % len(plans)]
                i += 1
                await self.post(client, "embeddings", name, "/v1/audio/embeddings", files, data)

    async def hostile(self, worker: int) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=120) as client:
            i = worker
            while self.alive():
                items = self.inputs.hostile
                if i % (len(items) + 1) == len(items):
                    start = time.monotonic()
                    try:  # a 1 MB header: refused by the h11 head limit
                        r = await client.get("/healthz", headers={"X-Big": "a" * 1_000_000})
                        status: int | str = r.status_code
                    except httpx.HTTPError as exc:
                        status = type(exc).__name__
                    self.record("hostile", "header_1mb", start, status)
                else:
                    name, data = items[i % (len(items) + 1)]
                    upload = {"file": (f"{name}.bin", data, "application/octet-stream")}
                    await self.post(client, "hostile", name, "/v1/audio/transcriptions", upload)
                i += 1

    async def disconnects(self) -> None:
        wav = self.inputs.valid[0][1]
        i = 0
        while self.alive():
            start = time.monotonic()
            if i % 2 == 0:  # half a body, then the connection is closed
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                head = (
                    "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
                    "Content-Type: multipart/form-data; boundary=b\r\n"
                    f"Content-Length: {len(wav) + 200}\r\n\r\n"
                )
                part = (
                    b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
                )
                writer.write(head.encode() + part + wav[: len(wav) // 2])
                await writer.drain()
                await asyncio.sleep(0.2)
                writer.close()
                self.record("disconnects", "mid_body", start, "closed")
            else:  # the client gives up while its request waits
                async with httpx.AsyncClient(base_url=self.url, timeout=0.3) as client:
                    await self.post(client, "disconnects", "gave_up", "/v1/audio/transcriptions",
                                    {"file": ("a.wav", wav)})  # fmt: skip
            i += 1
            await asyncio.sleep(0.5)

    async def slow(self) -> None:
        while self.alive():
            start = time.monotonic()
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(100), 60)
                status: int | str = int(data.split()[1]) if data else "closed"
            except (TimeoutError, IndexError, ValueError):
                status = "no_answer"
            writer.close()
            self.record("slow", "half_head", start, status)


async def sample(proc: psutil.Process, url: str, soak: Soak, every_s: float) -> list[dict]:
    """RSS, open fds, and readiness every `every_s` until the soak ends."""
    samples = []
    t0 = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while soak.alive():
            try:
                ready = (await client.get("/readyz")).status_code == 200
            except httpx.HTTPError:
                ready = False
            samples.append(
                {
                    "t": round(time.monotonic() - t0, 2),
                    "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                    "open_fds": proc.num_fds(),
                    "ready": ready,
                }
            )
            await asyncio.sleep(every_s)
    return samples


async def run_soak(server: Server, inputs: Inputs, seconds: float, valid_workers: int) -> dict:
    assert server.proc is not None
    proc = psutil.Process(server.proc.pid)
    soak = Soak(server.url, server.port, inputs, seconds)
    tasks = [
        *(soak.valid(i) for i in range(valid_workers)),
        soak.embeddings(),
        soak.hostile(0),
        soak.hostile(5),
        soak.disconnects(),
        soak.slow(),
    ]
    samples, *_ = await asyncio.gather(sample(proc, server.url, soak, 1.0), *tasks)
    return {"samples": samples, "results": soak.results}


# --- summary ------------------------------------------------------------------------------


def _thirds(values: list[float]) -> tuple[float, float]:
    third = max(1, len(values) // 3)
    return float(np.median(values[:third])), float(np.median(values[-third:]))


def summarize(samples: list[dict], results: list[Result], minutes: float) -> dict[str, Any]:
    by_kind: dict[str, Any] = {}
    groups: dict[tuple[str, str], list[Result]] = defaultdict(list)
    for r in results:
        groups[(r.kind, r.name)].append(r)
    for (kind, name), rs in sorted(groups.items()):
        latencies = sorted(r.end - r.start for r in rs)
        by_kind.setdefault(kind, {})[name] = {
            "count": len(rs),
            "statuses": dict(Counter(str(r.status) for r in rs)),
            "latency_p50_s": round(float(np.percentile(latencies, 50)), 3),
            "latency_max_s": round(latencies[-1], 3),
        }
    rss = [s["rss_mb"] for s in samples]
    fds = [s["open_fds"] for s in samples]
    rss_first, rss_last = _thirds(rss)
    fds_first, fds_last = _thirds(fds)
    server_errors = sum(1 for r in results if isinstance(r.status, int) and r.status >= 500)
    return {
        "minutes": minutes,
        "requests": len(results),
        "server_errors_5xx": server_errors,
        "not_ready_samples": sum(1 for s in samples if not s["ready"]),
        "rss_mb": {"start": rss[0], "peak": max(rss), "end": rss[-1],
                   "median_first_third": rss_first, "median_last_third": rss_last},
        "open_fds": {"start": fds[0], "max": max(fds), "end": fds[-1],
                     "median_first_third": fds_first, "median_last_third": fds_last},
        "by_kind": by_kind,
    }  # fmt: skip


def plot(samples: list[dict], summary: dict, path: Path) -> None:
    plt = pyplot()
    if plt is None:
        return
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    t = [s["t"] / 60 for s in samples]
    ax1.plot(t, [s["rss_mb"] for s in samples], color="tab:blue", label="RSS (MiB)")
    ax1.set_xlabel("minutes")
    ax1.set_ylabel("server RSS (MiB)", color="tab:blue")
    ax1.set_ylim(bottom=0)
    twin = ax1.twinx()
    twin.plot(t, [s["open_fds"] for s in samples], color="tab:orange", label="open fds")
    twin.set_ylabel("open file descriptors", color="tab:orange")
    twin.set_ylim(bottom=0)
    ax1.set_title(f"server RSS and open fds ({summary['requests']} requests, "
                  f"{summary['server_errors_5xx']} 5xx)")  # fmt: skip
    kinds = list(summary["by_kind"])
    statuses = sorted({st for k in kinds for v in summary["by_kind"][k].values()
                       for st in v["statuses"]})  # fmt: skip
    bottom = np.zeros(len(kinds))
    for st in statuses:
        counts = np.array([sum(v["statuses"].get(st, 0) for v in summary["by_kind"][k].values())
                           for k in kinds])  # fmt: skip
        ax2.bar(kinds, counts, bottom=bottom, label=st)
        bottom += counts
    ax2.set_ylabel("requests")
    ax2.set_title("responses by kind of traffic")
    ax2.legend(fontsize=7, ncol=2, loc="upper left")
    ax2.set_ylim(top=bottom.max() * 1.25)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--quick", action="store_true", help="20 s (checks the script)")
    p.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    p.add_argument("--valid-workers", type=int, default=4)
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "soak.json")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    seconds = 20.0 if args.quick else args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        log.info("building inputs")
        inputs = build_inputs(tmp)
        env = {
            "HLSTM_MODEL_DIR": str(args.model_dir.resolve()),
            "HLSTM_DEVICE": "cpu",
            "HLSTM_TORCH_THREADS": str(args.torch_threads),
            "HLSTM_HEADER_TIMEOUT_S": "5",
            "HLSTM_LOG_LEVEL": "WARNING",
            "OMP_NUM_THREADS": str(args.torch_threads),
        }
        server = Server("soak", env, tmp / "server.log", cli=True)
        with running([server], timeout_s=300):
            log.info("soaking %s for %.0f s", server.url, seconds)
            run = asyncio.run(run_soak(server, inputs, seconds, args.valid_workers))
            log_tail = server.log_tail(4000)
    summary = summarize(run["samples"], run["results"], seconds / 60)
    payload = {
        "bundle": str(args.model_dir),
        "settings": {k: v for k, v in env.items() if k != "HLSTM_MODEL_DIR"},
        "valid_workers": args.valid_workers,
        "summary": summary,
        "samples": run["samples"],
        "server_log_tail": log_tail,
    }
    write_json(args.out, "soak", payload)
    plot(run["samples"], summary, args.out.with_suffix(".png"))
    log.info("peak RSS %.0f MiB, 5xx %d, not-ready samples %d", summary["rss_mb"]["peak"],
             summary["server_errors_5xx"], summary["not_ready_samples"])  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
