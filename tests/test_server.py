"""`hubert-lstm serve` as a real process on loopback (issue 17, items 4 and 7): limits that live
in the connection (header size and read timeout), auth before the body, body-read timeouts,
and graceful shutdown on SIGTERM. Raw sockets, so the client can misbehave on purpose."""

# ruff: noqa: F811  (pytest fixtures imported from tests.test_app_support)

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_app_support import make_wav, tiny_bundle_dir  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "k3y"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """A `hubert-lstm serve` subprocess on a free loopback port."""

    def __init__(self, model_dir: Path, tmp: Path, **env: str) -> None:
        self.port = _free_port()
        self.log = (tmp / f"serve-{self.port}.log").open("w+")
        environ = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "OMP_NUM_THREADS": "1",
            "HLSTM_WARMUP": "false",
            "HLSTM_TORCH_THREADS": "1",
            "HLSTM_LOG_LEVEL": "INFO",
            **env,
        }
        cmd = [sys.executable, "-m", "model_training.cli", "serve", "--model-dir", str(model_dir)]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=environ, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not ready in 120 s: {self.output()}")
            time.sleep(0.2)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.settimeout(10)
        return sock

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        self.log.close()


def _read_response(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes or `timeout` passes; and the time taken."""
    sock.settimeout(timeout)
    started, chunks = time.monotonic(), []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and b"connection: close" not in b"".join(chunks):
                break
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks), time.monotonic() - started


@pytest.fixture(scope="module")
def server(tiny_bundle_dir, tmp_path_factory) -> Iterator[Served]:
    served = Served(
        tiny_bundle_dir,
        tmp_path_factory.mktemp("serve"),
        HLSTM_API_KEY=API_KEY,
        HLSTM_HEADER_TIMEOUT_S="1",
        HLSTM_BODY_IDLE_TIMEOUT_S="1",
        HLSTM_MAX_HEADER_BYTES="8192",
    )
    yield served
    served.stop()


def test_stalled_request_head_is_closed_after_the_header_timeout(server):
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
        data, took = _read_response(sock, timeout=8)
    assert data.startswith(b"HTTP/1.1 408"), (data, server.output())
    assert took < 5


def test_oversized_request_head_is_refused(server):
    with server.connect() as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n"
        )
        data, _ = _read_response(sock, timeout=8)
    assert data.split(b"\r\n")[0] in (b"HTTP/1.1 400 Bad Request", b"HTTP/1.1 431 ")
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def _upload_head(content_length: int, authorization: str = "") -> bytes:
    """The head of a multipart transcription upload (the body is up to the test)."""
    return (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: x\r\n"
        + (f"Authorization: {authorization}\r\n" if authorization else "")
        + "Content-Type: multipart/form-data; boundary=b\r\n"
        + f"Content-Length: {content_length}\r\n\r\n"
    ).encode()


def test_auth_is_checked_before_the_body_is_read(server):
    """A 45 MB upload without a key gets its 401 at once; the body is never waited for."""
    with server.connect() as sock:
        sock.sendall(_upload_head(45_000_000) + b"--b\r\n")
        data, took = _read_response(sock, timeout=8)
    assert data.startswith(b"HTTP/1.1 401"), data[:200]
    assert took < 3


def test_a_stalled_body_gets_408(server):
    head = _upload_head(100_000, f"Bearer {API_KEY}")
    with server.connect() as sock:
        sock.sendall(head + b'--b\r\nContent-Disposition: form-data; name="file"')
        data, took = _read_response(sock, timeout=10)
    assert data.startswith(b"HTTP/1.1 408"), data[:300]
    assert took < 6
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def _post(url: str, data: bytes, results: list) -> None:
    try:
        r = httpx.post(
            f"{url}/v1/audio/transcriptions", files={"file": ("a.wav", data)}, timeout=30
        )
        results.append(r.status_code)
    except httpx.HTTPError as exc:
        results.append(type(exc).__name__)


def test_sigterm_finishes_in_flight_requests_refuses_new_ones_and_exits_0(
    tiny_bundle_dir, tmp_path
):
    # A lone request waits max_wait_ms for a batch to fill: in flight for ~2 s.
    served = Served(tiny_bundle_dir, tmp_path, HLSTM_MAX_BATCH_SIZE="8", HLSTM_MAX_WAIT_MS="2000")
    try:
        results: list = []
        thread = threading.Thread(target=_post, args=(served.url, make_wav(1.0), results))
        thread.start()
        time.sleep(0.7)
        served.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{served.url}/healthz", timeout=2)
        thread.join(30)
        assert results == [200], served.output()
        assert served.proc.wait(30) == 0, served.output()
    finally:
        served.stop()


def test_sigterm_grace_period_bounds_the_wait_for_slow_requests(tiny_bundle_dir, tmp_path):
    """A request that would take 20 s more does not hold the process past the grace period."""
    served = Served(
        tiny_bundle_dir,
        tmp_path,
        HLSTM_MAX_BATCH_SIZE="8",
        HLSTM_MAX_WAIT_MS="20000",
        HLSTM_SHUTDOWN_GRACE_S="1",
    )
    try:
        results: list = []
        thread = threading.Thread(target=_post, args=(served.url, make_wav(1.0), results))
        thread.start()
        time.sleep(0.7)
        started = time.monotonic()
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(30) == 0, served.output()
        assert time.monotonic() - started < 8
        thread.join(30)
        assert results and results[0] != 200  # cut off (connection closed or an error)
    finally:
        served.stop()
