"""Render the Grafana dashboard's panels to a PNG from Prometheus data (docs/img/dashboard.png).

Every panel of docker/grafana/dashboards/hubert-lstm.json is drawn at its grid position with
matplotlib, from `query_range` results of its own PromQL.

    # from a running Prometheus (e.g. the compose stack after some traffic)
    python scripts/render_dashboard.py --prometheus http://localhost:9090 --minutes 15
    # start Debian's prometheus with the repo's scrape config against a running service
    python scripts/render_dashboard.py --scrape localhost:8000 --seconds 120
    # no service at hand: real batcher + metrics with a stand-in model under synthetic load
    python scripts/render_dashboard.py --demo --seconds 90
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "hubert-lstm.json"
PROMETHEUS_CONFIG = REPO / "docker" / "prometheus" / "prometheus.yml"
JOB = "hubert-lstm"
logger = logging.getLogger("render_dashboard")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = json.load(resp)
    if body.get("status") != "success":
        raise RuntimeError(f"Prometheus {path} failed: {body}")
    return body["data"]


def start_prometheus(target: str, workdir: Path, scrape_s: int = 1) -> tuple[Any, str]:
    """Debian's prometheus with the repo config, the service job pointed at `target`."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise SystemExit("prometheus not found (Debian package `prometheus`)")
    port = _free_port()
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval=f"{scrape_s}s", evaluation_interval=f"{scrape_s}s")
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / r) for r in config["rule_files"]]
    for job in config["scrape_configs"]:
        job.update(scrape_interval=f"{scrape_s}s", scrape_timeout=f"{scrape_s}s")
        addr = target if job["job_name"] == JOB else f"127.0.0.1:{port}"
        for static in job["static_configs"]:
            static["targets"] = [addr]
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ]
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            with urllib.request.urlopen(f"{base}/-/ready", timeout=1):
                return proc, base
        except OSError:
            time.sleep(0.2)
    proc.terminate()
    raise SystemExit("prometheus did not become ready")


def _demo_service(stop: threading.Event) -> int:
    """Serve the real `app.metrics` registry, fed by the real `DynamicBatcher` under load.

    The model is a stand-in whose compute time grows with padded frames; requests are
    1-20 s clips at a rate that ramps up and down. Returns the metrics port.
    """
    import torch
    from prometheus_client import start_http_server

    from app.batcher import DynamicBatcher, QueueFullError
    from app.metrics import Metrics

    metrics = Metrics()
    server, _ = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)

    def run_batch(waveforms: torch.Tensor, lengths: torch.Tensor) -> list[int]:
        time.sleep(0.005 + 2e-5 * waveforms.shape[0] * waveforms.shape[1] / 320)
        return [int(n) for n in lengths]

    async def client(batcher: DynamicBatcher, route: str, seconds: float) -> None:
        started = time.monotonic()
        status = "200"
        try:
            if random.random() < 0.01:  # an undecodable upload never reaches the batcher
                metrics.on_decode_failure("undecodable")
                metrics.on_error("bad_request")
                status = "400"
            else:
                await batcher.submit(torch.zeros(int(seconds * 16000)), timeout=5.0)
        except QueueFullError:
            metrics.on_error("queue_full")
            status = "429"
        metrics.requests.labels(route=route, method="POST", status=status).inc()
        metrics.request_duration.labels(route=route).observe(time.monotonic() - started)

    async def load() -> None:
        batcher = DynamicBatcher(run_batch, max_batch_size=16, queue_limit=64, observer=metrics)
        batcher.start()
        metrics.model_ready.set(1)
        t0, tasks = time.monotonic(), set()
        while not stop.is_set():
            phase = (time.monotonic() - t0) / 30.0
            rate = 15 + 35 * (0.5 - 0.5 * math.cos(phase * math.pi))
            route = "/v1/audio/transcriptions" if random.random() < 0.7 else "/v1/audio/embeddings"
            task = asyncio.create_task(client(batcher, route, random.uniform(1.0, 20.0)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(random.expovariate(rate))
        await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        server.shutdown()

    threading.Thread(target=lambda: asyncio.run(load()), daemon=True).start()
    return int(server.server_port)


def _legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or "value"


def render(base: str, start: float, end: float, out: Path) -> None:
    """Query every panel over [start, end] and draw the dashboard grid to `out`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    unit_w, unit_h = 0.75, 0.42  # inches per grid unit
    rows += 1  # room for the first row's titles
    fig = plt.figure(figsize=(24 * unit_w, rows * unit_h), facecolor="#111217")
    step = max(1.0, (end - start) / 300)
    window = f"{int(max(4 * step, 15))}s"
    for panel in panels:
        g = panel["gridPos"]
        pad = 0.35
        ax = fig.add_axes(
            (
                (g["x"] + pad) / 24,
                1 - (g["y"] + 1 + g["h"] - pad * 0.6) / rows,
                (g["w"] - 2 * pad) / 24,
                (g["h"] - 1.6 * pad) / rows,
            ),
            facecolor="#181b1f",
        )
        ax.set_title(panel["title"], loc="left", color="#d8d9da", fontsize=10)
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        for spine in ax.spines.values():
            spine.set_color("#2c3235")
        right = {
            o["matcher"]["options"]
            for o in panel["fieldConfig"].get("overrides", [])
            if {"id": "custom.axisPlacement", "value": "right"} in o["properties"]
        }
        twin = ax.twinx() if right else None
        if twin is not None:
            twin.tick_params(colors="#8e8e8e", labelsize=7)
        for target in panel["targets"]:
            expr = (
                target["expr"]
                .replace("$__rate_interval", window)
                .replace("$job", JOB)
                .replace("$instance", ".*")
            )
            result = _get(
                base,
                "/api/v1/query_range",
                query=expr,
                start=str(start),
                end=str(end),
                step=str(step),
            )["result"]
            for series in result:
                t = [float(v[0]) - start for v in series["values"]]
                y = [float(v[1]) for v in series["values"]]
                if panel["type"] == "stat":
                    unit = panel["fieldConfig"]["defaults"].get("unit", "")
                    text = f"{y[-1]:.0%}" if unit == "percentunit" else f"{y[-1]:.3g}"
                    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=22,
                            color="#73bf69", transform=ax.transAxes)  # fmt: skip
                    ax.plot(t, y, color="#73bf69", alpha=0.3)
                    ax.set_xticks([])
                    ax.set_yticks([])
                else:
                    label = _legend(target.get("legendFormat", ""), series["metric"])
                    on = twin if twin is not None and label in right else ax
                    color = f"C{len(ax.lines) + (len(twin.lines) if twin is not None else 0)}"
                    on.plot(t, y, lw=1.2, label=label, color=color)
        if panel["type"] != "stat":
            ax.set_xlabel("seconds", color="#8e8e8e", fontsize=7)
            ax.grid(color="#2c3235", lw=0.5)
            handles, labels = ax.get_legend_handles_labels()
            if twin is not None:
                more = twin.get_legend_handles_labels()
                handles, labels = handles + more[0], labels + [f"{x} (right)" for x in more[1]]
            if handles:
                ax.legend(handles, labels, fontsize=6, loc="upper left", facecolor="#181b1f",
                          labelcolor="#d8d9da", edgecolor="#2c3235", ncol=2)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())
    logger.info("wrote %s (%d panels, %.0f s of data)", out, len(panels), end - start)


def main() -> None:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", help="URL of a Prometheus that scrapes the service")
    source.add_argument("--scrape", help="HOST:PORT of a running service to scrape")
    source.add_argument("--demo", action="store_true", help="stand-in model under load")
    parser.add_argument("--minutes", type=float, default=15, help="window for --prometheus")
    parser.add_argument("--seconds", type=float, default=90, help="scrape time for --scrape/--demo")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "dashboard.png")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.prometheus:
        end = time.time()
        render(args.prometheus.rstrip("/"), end - 60 * args.minutes, end, args.out)
        return
    stop = threading.Event()
    target = args.scrape or f"127.0.0.1:{_demo_service(stop)}"
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_prometheus(target, Path(tmp))
        try:
            start = time.time()
            logger.info("scraping %s for %.0f s via %s", target, args.seconds, base)
            time.sleep(args.seconds)
            render(base, start, time.time(), args.out)
        finally:
            stop.set()
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
