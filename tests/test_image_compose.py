"""docker/compose.yaml as shipped, under podman-compose: the CPU profile and Prometheus.

The service image is the one tests/test_image.py builds (`HLSTM_TAG=test` names it, so
compose does not build). Prometheus is the public image where it can be pulled, otherwise one
built from Debian's `prometheus` package on the same local base (docker/prometheus-debian,
passed as `PROMETHEUS_IMAGE`). The tests check that the service turns healthy with the
compose file's hardening applied, that Prometheus scrapes it as `hlstm:8000` over the compose
network with the repository's config, that the alert rules evaluate, and that stopping the
service ends it with exit code 0. Grafana is not packaged in Debian: its provisioning is
checked statically (tests/test_deploy_static.py).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.podman_local import BASE_IMAGE, REPO, BuiltImage, Podman
from tests.test_deploy_prometheus import api, free_port, wait_for
from tests.test_deploy_static import find_tool

pytestmark = [pytest.mark.image, pytest.mark.timeout(3600)]

COMPOSE = REPO / "docker" / "compose.yaml"
PROMETHEUS_DEBIAN = REPO / "docker" / "prometheus-debian"
LOCAL_PROMETHEUS = "localhost/prometheus:debian-12"
PROJECT = f"hlstm-image-test-{os.getpid()}"
HEALTHY_WITHIN_S = 300


def public_prometheus_image() -> str:
    """The image docker/compose.yaml names for Prometheus by default."""
    image = yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]["image"]
    return image.split(":-", 1)[1].rstrip("}") if image.startswith("${") else image


@dataclass
class Stack:
    podman: Podman
    env: dict[str, str]
    hlstm: str  # the service's container name
    prometheus_url: str

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run podman-compose on the repository's compose file for this project."""
        tool = find_tool("podman-compose")
        assert tool, "podman-compose is not installed (`make test-image` installs it)"
        cmd = [tool, "-f", str(COMPOSE), "-p", PROJECT, "--profile", "cpu", *args]
        proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        return proc


def prometheus_image(podman: Podman) -> str:
    """The public Prometheus image if it can be pulled, else the Debian-package build."""
    public = public_prometheus_image()
    if podman.run("pull", public, check=False, timeout=180).returncode == 0:
        return public
    proc, _ = podman.build(LOCAL_PROMETHEUS, PROMETHEUS_DEBIAN / "Dockerfile", {"BASE": BASE_IMAGE})
    assert proc.returncode == 0, f"prometheus build failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
    return LOCAL_PROMETHEUS


@pytest.fixture(scope="module")
def stack(podman: Podman, service_image: BuiltImage) -> Iterator[Stack]:
    """`podman-compose --profile cpu up -d hlstm-cpu prometheus`, torn down with its volumes."""
    assert service_image.tag.endswith("/hubert-lstm:test-cpu")
    prom_port = free_port()
    env = {
        **podman.env,
        "HLSTM_TAG": "test",
        "HLSTM_PORT": str(free_port()),
        "HLSTM_TORCH_THREADS": "1",
        "PROMETHEUS_PORT": str(prom_port),
        "PROMETHEUS_IMAGE": prometheus_image(podman),
    }
    stack = Stack(podman, env, "", f"http://127.0.0.1:{prom_port}")
    try:
        stack.compose("--in-pod", "false", "up", "-d", "--no-build", "hlstm-cpu", "prometheus")
        names = podman.run(
            "ps",
            "-a",
            "--filter",
            f"label=com.docker.compose.project={PROJECT}",
            "--filter",
            "label=com.docker.compose.service=hlstm-cpu",
            "--format",
            "{{.Names}}",
        ).stdout.split()
        assert len(names) == 1, names
        stack.hlstm = names[0]
        # Started from the repository's compose file itself, not a copy.
        labels = podman.inspect(stack.hlstm)["Config"]["Labels"]
        workdir = Path(labels["com.docker.compose.project.working_dir"])
        assert workdir / labels["com.docker.compose.project.config_files"] == COMPOSE, labels
        yield stack
    finally:
        for name in (stack.hlstm,) if stack.hlstm else ():
            logs = podman.run("logs", name, check=False)
            (podman.workdir / f"{PROJECT}-hlstm.log").write_text(logs.stdout + logs.stderr)
        tool = find_tool("podman-compose") or "podman-compose"
        down = [tool, "-f", str(COMPOSE), "-p", PROJECT, "--profile", "cpu", "down", "-v"]
        subprocess.run(down, env=env, capture_output=True, timeout=300)


def test_service_healthy_with_the_compose_hardening(stack: Stack) -> None:
    podman, name = stack.podman, stack.hlstm
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    status = ""
    while time.monotonic() < deadline and status != "healthy":
        assert podman.inspect(name)["State"]["Running"], podman.run("logs", name).stderr[-3000:]
        status = podman.health(name)
        time.sleep(0 if status == "healthy" else 5)
    assert status == "healthy"
    host = podman.inspect(name)["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert any("no-new-privileges" in opt for opt in host["SecurityOpt"] or [])
    status_file = podman.run("exec", name, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status_file.splitlines() if ":" in line)
    assert fields["Uid"].split()[0] == "10001" and int(fields["CapEff"].strip(), 16) == 0


def _hlstm_target(base: str) -> dict[str, Any] | None:
    targets = api(base, "/api/v1/targets")["activeTargets"]
    target = next((t for t in targets if t["labels"]["job"] == "hubert-lstm"), None)
    return target if target and target["health"] == "up" else None


def test_prometheus_scrapes_hlstm_over_the_compose_network(stack: Stack) -> None:
    target = wait_for(lambda: _hlstm_target(stack.prometheus_url), 180, "hlstm target up")
    assert target["scrapeUrl"] == "http://hlstm:8000/metrics"
    ready = wait_for(
        lambda: api(stack.prometheus_url, "/api/v1/query", query="hlstm_model_ready")["result"],
        60,
        "hlstm_model_ready scraped",
    )
    assert ready[0]["value"][1] == "1"


def test_alert_rules_evaluate(stack: Stack) -> None:
    def evaluated() -> list[dict[str, Any]] | None:
        groups = api(stack.prometheus_url, "/api/v1/rules")["groups"]
        rules = [r for g in groups for r in g["rules"]]
        done = rules and all(r.get("lastEvaluation", "0001").startswith("2") for r in rules)
        return rules if done else None

    rules = wait_for(evaluated, 120, "alert rules evaluated")
    assert {"HlstmDown", "HlstmNotReady"} <= {r["name"] for r in rules}
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad, bad
    # Evaluate once more after the target is up: the service's availability alerts stay quiet.
    wait_for(lambda: _hlstm_target(stack.prometheus_url), 180, "hlstm target up")
    time.sleep(16)  # evaluation_interval 15 s
    rules = evaluated() or []
    firing = {r["name"] for r in rules if r["state"] != "inactive"}
    assert not firing & {"HlstmDown", "HlstmNotReady"}, firing


def test_compose_stop_exits_cleanly(stack: Stack) -> None:
    start = time.monotonic()
    stack.compose("stop", "hlstm-cpu")
    seconds = time.monotonic() - start
    state = stack.podman.inspect(stack.hlstm)["State"]
    assert state["ExitCode"] == 0, state
    assert seconds < 45  # compose's stop_grace_period
