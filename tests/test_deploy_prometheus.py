"""Debian's real `prometheus` scrapes the service's metrics with the repository's config.

The scrape config (docker/prometheus/prometheus.yml) and alert rules are used as shipped; only
the target is rewritten to a local server exporting the service's registry (`app.metrics`)
while a thread feeds it traffic. Through Prometheus's HTTP API the test checks that the
target is up, that project metrics have values, that every Grafana panel query returns data,
and that every alert rule evaluates.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.test_deploy_static import (
    PROMETHEUS_CONFIG,
    concrete_expr,
    dashboard_targets,
    find_tool,
    require_tool,
)

SCRAPE_MS = 500
JOB = "hubert-lstm"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api(base: str, path: str, **params: str) -> Any:
    """GET a Prometheus API path and return its `data`, asserting success."""
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `check` until it returns something truthy (connection errors count as not yet)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
            last = result
        except OSError as e:  # the server may not be listening yet
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


class _Traffic(threading.Thread):
    """Feeds the service's metrics as a running server would (requests, batches, errors)."""

    def __init__(self, metrics: Any) -> None:
        super().__init__(daemon=True)
        self.metrics = metrics
        self.stop = threading.Event()

    def run(self) -> None:
        m, i = self.metrics, 0
        m.model_ready.set(1)
        while not self.stop.wait(0.05):
            i += 1
            status = "200" if i % 10 else ("400" if i % 20 else "503")
            route = "/v1/audio/transcriptions" if i % 3 else "/v1/audio/embeddings"
            m.requests.labels(route=route, method="POST", status=status).inc()
            m.request_duration.labels(route=route).observe(0.05 + 0.01 * (i % 7))
            m.on_queue_depth(i % 5)
            size = 1 + i % 8
            m.on_batch(
                size=size,
                padded_frames=250 * size,
                padding_ratio=0.05 * (i % 4),
                queue_waits=[0.002 * (i % 5)] * size,
                inference_seconds=0.02 + 0.002 * size,
                audio_seconds=2.5 * size,
            )
            if i % 10 == 0:
                m.on_error("bad_request")
                m.on_decode_failure("undecodable")


@pytest.fixture(scope="module")
def metrics_server() -> Iterator[int]:
    """Port of an HTTP server exporting the service's registry, fed by a traffic thread."""
    from prometheus_client import start_http_server

    from app.metrics import Metrics

    metrics = Metrics()
    server, thread = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    traffic = _Traffic(metrics)
    traffic.start()
    try:
        yield int(server.server_port)
    finally:
        traffic.stop.set()
        traffic.join(timeout=2)
        server.shutdown()
        server.server_close()
        thread.join(timeout=2)


def write_test_config(tmp: Path, target_port: int, prom_port: int) -> Path:
    """The repository's Prometheus config with targets on localhost and fast intervals."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["global"].update(scrape_interval=f"{SCRAPE_MS}ms", evaluation_interval=f"{SCRAPE_MS}ms")
    config["rule_files"] = [str(PROMETHEUS_CONFIG.parent / r) for r in config["rule_files"]]
    rewritten = False
    for job in config["scrape_configs"]:
        job.update(scrape_interval=f"{SCRAPE_MS}ms", scrape_timeout=f"{SCRAPE_MS}ms")
        port = target_port if job["job_name"] == JOB else prom_port
        for static in job["static_configs"]:
            static["targets"] = [f"127.0.0.1:{port}"]
            rewritten |= job["job_name"] == JOB
    assert rewritten, f"no job {JOB!r} in {PROMETHEUS_CONFIG}"
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, metrics_server: int) -> Iterator[str]:
    """Base URL of a real Prometheus scraping `metrics_server` with the repo's config."""
    binary = require_tool("prometheus")
    tmp_path = tmp_path_factory.mktemp("prometheus")
    port = free_port()
    config = write_test_config(tmp_path, metrics_server, port)
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
            with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as r:
                return r.status == 200

        wait_for(ready, 20, "prometheus /-/ready")
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_promtool_accepts_config_and_rules() -> None:
    promtool = find_tool("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    proc = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def _scalar(base: str, query: str) -> float | None:
    result = api(base, "/api/v1/query", query=query)["result"]
    return float(result[0]["value"][1]) if result else None


def test_prometheus_scrapes_the_service(prometheus: str) -> None:
    def target_up() -> dict[str, Any] | None:
        targets = api(prometheus, "/api/v1/targets")["activeTargets"]
        job = [t for t in targets if t["labels"]["job"] == JOB]
        return job[0] if job and job[0]["health"] == "up" else None

    target = wait_for(target_up, 15, f"target {JOB} up")
    assert target["scrapeUrl"].endswith("/metrics")
    assert target["labels"]["service"] == "hubert-lstm"  # the label set in the repo config

    assert wait_for(lambda: _scalar(prometheus, f'up{{job="{JOB}"}}'), 10, "up == 1") == 1
    ready = wait_for(lambda: _scalar(prometheus, "hlstm_model_ready"), 10, "hlstm_model_ready")
    assert ready == 1
    requests = _scalar(prometheus, 'sum(hlstm_requests_total{job="hubert-lstm"})')
    assert requests is not None and requests > 0

    # Rates need two scrapes inside the window; then every dashboard query returns data.
    window = f"{6 * SCRAPE_MS}ms"
    wait_for(
        lambda: _scalar(prometheus, f"sum(rate(hlstm_requests_total[{window}]))"),
        10,
        "a non-zero request rate",
    )
    empty = []
    for panel, target in dashboard_targets():
        expr = concrete_expr(target["expr"], rate_window=window)
        result = api(prometheus, "/api/v1/query", query=expr)["result"]
        if not result:
            empty.append(f"{panel['title']} [{target['refId']}]: {expr}")
    assert not empty, "dashboard queries without data:\n" + "\n".join(empty)


def test_alert_rules_load_and_evaluate(prometheus: str) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = api(prometheus, "/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return (
            rules
            if rules and all(r.get("lastEvaluation", "0001").startswith("2") for r in rules)
            else None
        )

    rules = wait_for(evaluated, 10, "alert rules evaluated")
    assert {r["name"] for r in rules} >= {"HlstmDown", "HlstmNotReady", "HlstmHighErrorRate"}
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad, bad
    # The service is up and ready, so the availability alerts stay quiet.
    firing = {r["name"] for r in rules if r["state"] == "firing"}
    assert not firing & {"HlstmDown", "HlstmNotReady"}
