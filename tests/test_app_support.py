"""Fixtures and helpers shared by the tests/test_app_*.py modules (no tests here).

Audio is generated: sine sweeps plus noise of different lengths, encoded with soundfile.
The model is a tiny random-init bundle from `model_training.testing.build_tiny_bundle`.
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI

from app.main import BundleLoader, create_app
from app.settings import Settings
from model_training.testing import build_tiny_bundle


def make_wav(seconds: float, seed: int = 0, rate: int = 16_000, subtype: str = "PCM_16") -> bytes:
    """A sweep + noise clip, different for each seed (so models see distinct inputs)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    f0, f1 = 150 + 40 * (seed % 7), 900 + 120 * (seed % 5)
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * max(seconds, 1e-3)))
    x = 0.3 * np.sin(phase) + 0.05 * rng.standard_normal(t.size)
    buf = io.BytesIO()
    sf.write(buf, x.astype(np.float32), rate, format="WAV", subtype=subtype)
    return buf.getvalue()


def wav_file(name: str, data: bytes, content_type: str = "audio/wav") -> tuple:
    """An httpx `files` entry."""
    return (name, data, content_type)


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init student + CTC head bundle, shared by the session."""
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny-test", seed=0)


@pytest.fixture(scope="session")
def tiny_upstream_bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle without a CTC head (embeddings only)."""
    return build_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny-up", seed=1, with_ctc=False)


def test_settings(model_dir: Path, **overrides) -> Settings:
    """Settings for tests: CPU, no JSON log handler, short waits, no warm-up."""
    values = {
        "model_dir": model_dir,
        "device": "cpu",
        "json_logs": False,
        "max_wait_ms": 5.0,
        "warmup": False,
        # One intra-op thread: the CI machine is small and shared, and oversubscribed
        # OpenMP threads make even the tiny model many times slower.
        "torch_threads": 1,
    }
    values.update(overrides)
    return Settings(**values)


test_settings.__test__ = False  # not a test, despite the name


@asynccontextmanager
async def serve(
    settings: Settings, loader: BundleLoader | None = None
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """Run the app's lifespan and yield (app, client) talking to it in-process."""
    app = create_app(settings, loader=loader)
    async with LifespanManager(app, startup_timeout=120, shutdown_timeout=60) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield app, client


@pytest.fixture
def app_client(tiny_bundle_dir: Path) -> Callable:
    """`async with app_client(**settings_overrides) as (app, client): ...`"""

    def _make(loader: BundleLoader | None = None, **overrides):
        return serve(test_settings(tiny_bundle_dir, **overrides), loader)

    return _make


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of the samples of `name` whose labels include `labels` in a Prometheus text dump."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        if labels and not all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            continue
        total += float(value)
        found = True
    if not found:
        raise KeyError(f"no sample {name} {labels or ''} in /metrics")
    return total


@contextmanager
def uvicorn_server(app: FastAPI) -> Iterator[str]:
    """Run `app` with uvicorn in a thread on a free loopback port; yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
