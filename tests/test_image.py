"""The CPU image built from docker/Dockerfile and run as users run it (`make test-image`).

The image is built under podman on a local Debian 12 base (tests/podman_local.py: the same
Dockerfile, its outside sources pointed at local ones by build arguments) and started the way
docker/compose.yaml starts it: read-only root, tmpfs /tmp, all capabilities dropped, no new
privileges, uid 10001, the port published. The tests wait for the image's own HEALTHCHECK to
report healthy, transcribe a file and fetch embeddings through the published port, read
/metrics, and stop the container to see it exit 0 within the grace period. The image size and
build time are printed (`make test-image` shows them) and written to the session's tmp dir.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.podman_local import REPO, BuiltImage, Podman
from tests.test_app_support import make_wav
from tests.test_deploy_prometheus import free_port, wait_for

pytestmark = [pytest.mark.image, pytest.mark.timeout(5400)]

UID = "10001"
# compose's stop_grace_period; the service's own HLSTM_SHUTDOWN_GRACE_S (30 s) is below it.
STOP_GRACE_S = 45
# The HEALTHCHECK's start period is 120 s; loading and warming take far less on 2 cores.
HEALTHY_WITHIN_S = 300
BUNDLE = json.loads((REPO / "models" / "default" / "config.json").read_text())


@pytest.fixture(scope="module")
def service(podman: Podman, service_image: BuiltImage) -> Iterator[tuple[str, str]]:
    """The image running as users run it; yields (container name, base URL)."""
    name = f"hlstm-image-test-{os.getpid()}"
    port = free_port()
    podman.run(
        "run",
        "-d",
        "--name",
        name,
        "--read-only",
        "--tmpfs",
        "/tmp",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--user",
        f"{UID}:{UID}",
        "--ulimit",
        "host",
        "-e",
        "HLSTM_TORCH_THREADS=1",
        "-p",
        f"127.0.0.1:{port}:8000",
        service_image.tag,
    )
    try:
        yield name, f"http://127.0.0.1:{port}"
    finally:
        logs = podman.run("logs", name, check=False)
        (podman.workdir / f"{name}.log").write_text(logs.stdout + logs.stderr)
        podman.run("rm", "-f", "-t", "0", name, check=False)


def test_image_metadata(podman: Podman, service_image: BuiltImage) -> None:
    image = podman.inspect(service_image.tag, kind="image")
    config = image["Config"]
    assert config["User"] == f"{UID}:{UID}"
    assert config["Entrypoint"] == ["hubert-lstm"]
    assert config["Cmd"][:3] == ["serve", "--model-dir", "/models/default"]
    assert "8000/tcp" in config["ExposedPorts"]
    # podman reports the health check beside Config, docker inside it
    health = image.get("Healthcheck") or config.get("Healthcheck") or {}
    assert "/readyz" in " ".join(health.get("Test", [])), "HEALTHCHECK lost in the build"


def test_healthcheck_reports_healthy(podman: Podman, service: tuple[str, str]) -> None:
    name, _ = service
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    status = ""
    while time.monotonic() < deadline:
        state = podman.inspect(name)["State"]
        assert state["Running"], (
            f"container exited {state['ExitCode']}: {podman_logs(podman, name)}"
        )
        status = podman.health(name)
        if status == "healthy":
            break
        time.sleep(5)
    assert status == "healthy", f"health {status!r} after {HEALTHY_WITHIN_S} s:\n" + podman_logs(
        podman, name
    )


def podman_logs(podman: Podman, name: str) -> str:
    proc = podman.run("logs", "--tail", "40", name, check=False)
    return (proc.stdout + proc.stderr)[-4000:]


def test_runs_as_uid_10001_read_only_without_capabilities(
    podman: Podman, service: tuple[str, str]
) -> None:
    name, _ = service
    status = podman.run("exec", name, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split()[:2] == [UID, UID]
    assert int(fields["CapEff"].strip(), 16) == 0 and int(fields["CapBnd"].strip(), 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    touch = podman.run("exec", name, "touch", "/models/x", check=False)
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr
    podman.run("exec", name, "touch", "/tmp/x")  # the tmpfs is writable


def test_models_listed(service: tuple[str, str]) -> None:
    _, url = service
    wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60, "ready")
    models = {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}
    ids = set(models)
    assert BUNDLE["name"] in ids
    # the image decodes as the bundle says: with its word LM when it ships one (lm.arpa.gz)
    expected = (BUNDLE.get("decoder") or {}).get("type", "greedy")
    assert models[BUNDLE["name"]]["decoder"] == expected
    # The streaming bundle rides along exactly when the checkout has one.
    streaming = REPO / "models" / "streaming" / "config.json"
    if streaming.exists():
        assert json.loads(streaming.read_text())["name"] in ids


def test_transcribe_and_embed_through_the_published_port(service: tuple[str, str]) -> None:
    _, url = service
    wav = make_wav(2.0, seed=3)
    r = httpx.post(
        f"{url}/v1/audio/transcriptions",
        files={"file": ("a.wav", wav, "audio/wav")},
        data={"model": BUNDLE["name"], "response_format": "json"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["text"], str)

    r = httpx.post(
        f"{url}/v1/audio/embeddings",
        files={"file": ("a.wav", wav, "audio/wav")},
        data={"pooling": "mean"},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == BUNDLE["name"]
    item = body["data"][0]
    assert item["duration"] == pytest.approx(2.0)
    assert abs(item["num_frames"] - 2.0 * BUNDLE["frame_rate"]) <= 2
    (layer,) = item["layers"]
    assert layer["shape"] == [BUNDLE["hidden_dims"][-1]]
    values = np.asarray(layer["embedding"], dtype=np.float32)
    assert np.isfinite(values).all() and values.std() > 0


def test_metrics_count_the_requests(service: tuple[str, str]) -> None:
    _, url = service
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    assert "hlstm_model_ready 1.0" in text
    for route in ("/v1/audio/transcriptions", "/v1/audio/embeddings"):
        line = next(
            (
                ln
                for ln in text.splitlines()
                if ln.startswith("hlstm_requests_total{")
                and f'route="{route}"' in ln
                and 'status="200"' in ln
            ),
            None,
        )
        assert line is not None and float(line.split()[-1]) >= 1, route
    assert "hlstm_audio_seconds_total" in text


def test_stop_exits_cleanly_within_the_grace_period(
    podman: Podman, service: tuple[str, str]
) -> None:
    name, _ = service
    start = time.monotonic()
    podman.run("stop", "-t", str(STOP_GRACE_S), name, timeout=STOP_GRACE_S + 60)
    seconds = time.monotonic() - start
    state = podman.inspect(name)["State"]
    # SIGKILL at the end of the grace period would show as 137.
    assert state["ExitCode"] == 0, f"exit {state['ExitCode']}:\n{podman_logs(podman, name)}"
    assert seconds < STOP_GRACE_S
    print(f"\nstopped in {seconds:.1f} s, exit code 0")
