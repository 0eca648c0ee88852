"""Podman on a machine without registry access, for the image tests (`make test-image`).

A Debian 12 base made with mmdebstrap from the machine's apt sources stands in for the public
base images; the build gets the machine's own pip configuration (indexes, find-links,
constraints, CA certificate) as read-only mounts plus the matching `PIP_*` build arguments,
so the repository names no package host. Podman runs with runc and cgroupfs (crun refuses
hybrid cgroup hierarchies) and without default ulimits, through a `containers.conf` of its own
(`CONTAINERS_CONF`), which podman-compose's podman calls inherit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
BASE_IMAGE = "localhost/debian:12"
# The CPU service image the tests build (HLSTM_TAG=test in docker/compose.yaml names it).
SERVICE_IMAGE = "localhost/hubert-lstm:test-cpu"
# Its dependency stage, tagged so that pruning keeps it as the layer cache.
SERVICE_DEPS_IMAGE = "localhost/hubert-lstm:test-cpu-deps"
CONTAINERS_CONF = """\
[containers]
default_ulimits = []

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
"""
# Build arguments that point docker/Dockerfile's outside sources at the local base.
LOCAL_BUILD_ARGS = {
    "VARIANT": "cpu",
    "BUILDER_BASE": BASE_IMAGE,
    "CPU_BASE": BASE_IMAGE,
    # Unused by a CPU build from the base's Python; local so that no stage reaches a registry.
    "CUDA_BASE": BASE_IMAGE,
    "UV_IMAGE": BASE_IMAGE,
    "PYTHON_SOURCE": "system",
    # torch as pinned in pyproject.toml, from the machine's indexes.
    "TORCH_INDEX_URL": "",
}
# pip settings passed into the build, and how each names local files.
PIP_KEYS = {
    "index-url": "url",
    "extra-index-url": "url",
    "find-links": "path",
    "constraint": "path",
    "cert": "path",
}


def missing_tools() -> list[str]:
    """The programs the image tests need that are not on PATH (iptables: netavark's firewall
    driver, without which every published port fails)."""
    return [t for t in ("podman", "runc", "iptables", "mmdebstrap") if shutil.which(t) is None]


def pip_settings() -> dict[str, str]:
    """The machine's effective pip settings for PIP_KEYS (config files, then PIP_* variables)."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60
    )
    settings: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        name = key.rpartition(".")[2]
        if name in PIP_KEYS and not key.startswith(":env:"):
            settings[name] = value.strip().strip("'\"")
    for name in PIP_KEYS:
        env = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if env:
            settings[name] = env
    return settings


def _local_path(item: str, kind: str) -> Path | None:
    """The local file or directory a pip setting's item refers to (None for remote URLs)."""
    if kind == "url" or item.startswith("file:"):
        parsed = urlparse(item)
        if parsed.scheme != "file":
            return None
        path = Path(parsed.path)
        # A simple index's pages link to files beside it (../../files/...): mount its parent.
        return path.parent if path.name == "simple" else path
    return Path(item)


def pip_build_options(settings: dict[str, str]) -> list[str]:
    """`podman build` options: each local pip source mounted read-only at its own path, and
    the settings as PIP_* build arguments (docker/Dockerfile declares them)."""
    opts: list[str] = []
    mounts: set[Path] = set()
    for name, value in settings.items():
        for item in value.split():
            path = _local_path(item, PIP_KEYS[name])
            if path is not None and path.exists():
                mounts.add(path.resolve())
        opts += ["--build-arg", f"PIP_{name.upper().replace('-', '_')}={value}"]
    for path in sorted(mounts):
        opts += ["-v", f"{path}:{path}:ro"]
    return opts


class Podman:
    """podman with this machine's settings; `workdir` keeps its containers.conf and logs."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        conf = workdir / "containers.conf"
        conf.write_text(CONTAINERS_CONF)
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}

    def run(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `podman ARGS`; with `check`, fail with its output on a non-zero exit."""
        proc = subprocess.run(
            ["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited {proc.returncode}:\n"
                f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
            )
        return proc

    def image_exists(self, name: str) -> bool:
        return self.run("image", "exists", name, check=False).returncode == 0

    def ensure_base(self) -> None:
        """Make BASE_IMAGE (Debian 12 minbase with CA certificates) unless it exists."""
        if self.image_exists(BASE_IMAGE):
            return
        tar = self.workdir / "debian-12.tar"
        subprocess.run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--include=ca-certificates",
                "bookworm",
                str(tar),
            ],
            check=True,
            capture_output=True,
            timeout=900,
        )
        self.run("import", str(tar), BASE_IMAGE, timeout=300)
        tar.unlink()

    def build(
        self,
        tag: str,
        dockerfile: Path,
        build_args: dict[str, str],
        extra: list[str] | None = None,
        context: Path = REPO,
        timeout: float = 3600,
        target: str | None = None,
    ) -> tuple[subprocess.CompletedProcess[str], float]:
        """`podman build` (of the stage `target` when given) in the docker format (OCI images
        drop HEALTHCHECK) with host networking for apt; returns the process (not checked) and
        its wall time."""
        args = [
            "build",
            "--format",
            "docker",
            "--network",
            "host",
            "--ulimit",
            "nofile=20000:20000",
            "-f",
            str(dockerfile),
            "-t",
            tag,
        ]
        if target:
            args += ["--target", target]
        for key, value in build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        start = time.monotonic()
        proc = self.run(*args, *(extra or []), str(context), timeout=timeout, check=False)
        seconds = time.monotonic() - start
        (self.workdir / f"build-{tag.replace('/', '_').replace(':', '_')}.log").write_text(
            proc.stdout + proc.stderr
        )
        return proc, seconds

    def inspect(self, name: str, kind: str = "container") -> dict:
        """`podman KIND inspect NAME` as a dict."""
        out = self.run(kind, "inspect", name).stdout
        return json.loads(out)[0]

    def health(self, container: str) -> str:
        """Run the container's HEALTHCHECK once (podman schedules it with systemd timers, absent
        here) and return the resulting status: starting, healthy or unhealthy."""
        self.run("healthcheck", "run", container, check=False, timeout=60)
        state = self.inspect(container)["State"]
        health = state.get("Health") or state.get("Healthcheck") or {}
        return str(health.get("Status", ""))


def disk_free_summary() -> str:
    """Free space where podman writes during a build: a cold build of the CPU image needs
    about 35 GB at its peak between its layers and the copy buffer (docs/deployment.md)."""
    places = {"layers": Path("/var/lib/containers"), "copy buffer": Path("/var/tmp")}
    parts = []
    for name, path in places.items():
        if path.exists():
            parts.append(f"{name} {path}: {shutil.disk_usage(path).free / 1e9:.1f} GB free")
    return "; ".join(parts)


@dataclass
class BuiltImage:
    tag: str
    size_bytes: int
    build_seconds: float


def build_service_image(podman: Podman) -> BuiltImage:
    """Build SERVICE_IMAGE from docker/Dockerfile with LOCAL_BUILD_ARGS and the machine's pip
    settings (layers cached by podman between runs), fail with the log's tail, and measure it;
    the numbers also go to `image-report.json` in podman's workdir."""
    extra = pip_build_options(pip_settings())
    # The dependency stage first, under a tag of its own: untagged stages are what `image
    # prune` removes, and this one (the multi-GB venv) is the cache worth keeping.
    seconds = 0.0
    for tag, target in ((SERVICE_DEPS_IMAGE, "deps"), (SERVICE_IMAGE, None)):
        proc, took = podman.build(tag, DOCKERFILE, LOCAL_BUILD_ARGS, extra=extra, target=target)
        seconds += took
        if proc.returncode != 0:
            break
    # Images these builds replaced, and a failed build's layers, are left untagged: drop them
    # so repeated builds (code edits, CI on a reused machine) do not pile up on the disk.
    podman.run("image", "prune", "--force", check=False, timeout=600)
    assert proc.returncode == 0, (
        f"image build failed ({disk_free_summary()}):\n{(proc.stdout + proc.stderr)[-6000:]}"
    )
    size = int(podman.inspect(SERVICE_IMAGE, kind="image")["Size"])
    report = {"image": SERVICE_IMAGE, "size_bytes": size, "build_seconds": round(seconds, 1)}
    (podman.workdir / "image-report.json").write_text(json.dumps(report))
    return BuiltImage(SERVICE_IMAGE, size, seconds)
