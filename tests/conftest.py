"""Shared pytest fixtures and settings: tests run on CPU with few threads (2-core machines)."""

from __future__ import annotations

import os

import pytest
import torch

from tests.podman_local import BuiltImage, Podman, build_service_image, missing_tools

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def rng() -> torch.Generator:
    """A seeded torch generator so random inputs are reproducible."""
    return torch.Generator().manual_seed(1234)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `cuda` skip, with the reason, where torch sees no GPU (scripts/gpu_check.sh
    runs them on one)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# ------------------------------------------------------------------ images (`make test-image`)


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Podman:
    """podman with this machine's settings and the local Debian 12 base in its store."""
    if missing := missing_tools():
        pytest.fail(f"not installed: {missing} (`make test-image` installs them)")
    pm = Podman(tmp_path_factory.mktemp("podman"))
    pm.ensure_base()
    return pm


@pytest.fixture(scope="session")
def service_image(podman: Podman) -> BuiltImage:
    """The CPU service image built from docker/Dockerfile on the local base, and its numbers."""
    built = build_service_image(podman)
    print(
        f"\nimage {built.tag}: {built.size_bytes / 1e9:.2f} GB, built in "
        f"{built.build_seconds:.0f} s (log and report in {podman.workdir})"
    )
    return built
