"""Shared training utilities: seeding, LR schedule, checkpoints with exact resume, device and
AMP helpers, TensorBoard, and torchrun/DDP set-up.

Checkpoints are training state, not bundles: they are written with `torch.save` atomically
(`atomic_write`: a temporary file in the same directory, fsync, rename over the target, fsync
of the directory), so a process killed mid-write, even by SIGKILL, leaves the previous
checkpoint whole and the newest one absent, never half written; they are read back with
`torch.load(weights_only=True)`. Every
value stored is a tensor, a number, a string or a container of them (numpy's RNG state is
converted to a tensor), so no pickle of arbitrary objects is ever needed to resume.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar, get_type_hints

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

logger = logging.getLogger(__name__)

T = TypeVar("T")

__all__ = [
    "Checkpointer",
    "DistInfo",
    "NullWriter",
    "TrainState",
    "all_reduce_mean",
    "autocast",
    "barrier",
    "cleanup_distributed",
    "dataclass_from_dict",
    "get_rng_state",
    "init_distributed",
    "is_main_process",
    "linear_warmup_decay",
    "load_checkpoint_payload",
    "log_scalars",
    "make_grad_scaler",
    "maybe_no_sync",
    "read_yaml_with_overrides",
    "resolve_device",
    "seed_everything",
    "set_rng_state",
    "summary_writer",
    "unwrap_model",
    "warmup_steps_for",
]

PRECISIONS = ("fp32", "bf16", "fp16")


# ----------------------------------------------------------------------------- seeding / RNG


def read_yaml_with_overrides(
    path: str | os.PathLike | None, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """A YAML mapping (empty without `path`) with `a.b=value` overrides applied (YAML values)."""
    d: dict[str, Any] = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override must look like a.b=value, found {item!r}")
        node = d
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return d


def dataclass_from_dict(cls: type[T], d: dict[str, Any], where: str = "config") -> T:
    """`cls(**d)`, refusing keys that are not fields of `cls` (typos fail loudly)."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown keys in {where}: {sorted(unknown)}; expected {sorted(known)}")
    hints = get_type_hints(cls)
    return cls(**{k: _coerce_float(v, hints.get(k), f"{where}.{k}") for k, v in d.items()})


def _coerce_float(value: Any, hint: Any, where: str) -> Any:
    """`value` as a float where the field is a float and YAML left a number as text.

    YAML 1.1 (PyYAML) reads `1e-3` (no dot) as a string, so `--set lr=1e-3` or `lr: 1e-3`
    would otherwise reach the config as "1e-3" and fail far from the cause.
    """
    if not isinstance(value, str) or hint not in (float, float | None):
        return value
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{where} must be a number, found {value!r}") from None


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with `num_threads` intra-op threads (None/0: unchanged), then restore."""
    before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    """Seed python's `random`, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def get_rng_state() -> dict[str, Any]:
    """RNG states of python, numpy, torch CPU and CUDA, as weights_only-loadable values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": _to_plain(random.getstate()),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of `get_rng_state`."""
    random.setstate(_to_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(
        (
            n["kind"],
            n["keys"].numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_plain(x: Any) -> Any:
    """Tuples -> lists, recursively (python's RNG state is a nested tuple)."""
    if isinstance(x, tuple | list):
        return [_to_plain(v) for v in x]
    return x


def _to_tuple(x: Any) -> Any:
    if isinstance(x, list):
        return tuple(_to_tuple(v) for v in x)
    return x


# ----------------------------------------------------------------------------- LR schedule


def linear_warmup_decay(
    optimizer: Optimizer, warmup_steps: int, total_steps: int, final_ratio: float = 0.0
) -> LambdaLR:
    """LR factor rising linearly 0 -> 1 over `warmup_steps`, then falling linearly to
    `final_ratio` at `total_steps` (DistilHuBERT / the paper: 7% warm-up, linear decay).

    The factor at step s (the number of optimizer steps taken) is (s + 1) / warmup_steps
    during warm-up, so the very first update already uses a non-zero learning rate.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, found {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, {total_steps}], found {warmup_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 1.0 - (1.0 - final_ratio) * progress

    return LambdaLR(optimizer, factor)


def warmup_steps_for(max_steps: int, ratio: float, steps: int | None = None) -> int:
    """The linear warm-up length of a run of `max_steps` optimizer steps; fits any length.

    One rule for every trainer: the warm-up is `round(ratio * max_steps)`; when an absolute
    `steps` is configured it is used instead, but never beyond that fraction, so a config
    written for a long run (e.g. 50 warm-up steps of 450) also runs at 6 steps (1 warm-up
    step with ratio 0.12) instead of being refused.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, found {max_steps}")
    if not 0 <= ratio <= 1:
        raise ValueError(f"warm-up ratio must be in [0, 1], found {ratio}")
    if steps is not None and steps < 0:
        raise ValueError(f"warm-up steps must be >= 0, found {steps}")
    cap = round(ratio * max_steps)
    if steps is None:
        return cap
    if steps > cap:
        logger.info(
            "warm-up of %d steps capped at %d (%.3g of %d steps)", steps, cap, ratio, max_steps
        )
    return min(steps, cap)


# ----------------------------------------------------------------------------- checkpoints


@dataclass
class TrainState:
    """Where a run is: optimizer steps taken, epoch, and batches consumed in that epoch.

    `extra` holds small JSON-like values a loop wants back on resume (e.g. best dev metric).
    """

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**d)


class _Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Write a file so that readers see the old content or the new, never a part.

    `write(f)` fills a temporary file in the same directory; it is flushed and fsynced, renamed
    over `path` (atomic on POSIX), and the directory entry is fsynced too (so the rename
    survives a power cut). On any error the temporary file is removed and `path` untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


class Checkpointer:
    """Atomic training checkpoints `checkpoint-{step:08d}.pt` in one directory, last N kept.

    A checkpoint dict holds: `model` (state dict of the unwrapped model), `optimizer`,
    `scheduler`, `scaler`, `sampler`, `train_state` (TrainState as a dict), `rng`
    (`get_rng_state()`), and `extra` (caller's dict, e.g. the model config). Only the main
    process should call `save` under DDP; every rank may `load`.
    """

    PATTERN = re.compile(r"^checkpoint-(\d+)\.pt$")

    def __init__(self, directory: str | os.PathLike, keep_last: int = 3) -> None:
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, found {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def path_for(self, step: int) -> Path:
        return self.directory / f"checkpoint-{step:08d}.pt"

    def list(self) -> list[Path]:
        """Existing checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [
            (int(m.group(1)), p)
            for p in self.directory.iterdir()
            if (m := self.PATTERN.match(p.name))
        ]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The newest checkpoint, or None."""
        existing = self.list()
        return existing[-1] if existing else None

    def save(
        self,
        state: TrainState,
        *,
        model: nn.Module,
        optimizer: Optimizer | None = None,
        scheduler: Any = None,
        scaler: _Stateful | None = None,
        sampler_state: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write checkpoint for `state.step` (`atomic_write`), then prune old ones."""
        self.directory.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {
            "train_state": state.to_dict(),
            "model": unwrap_model(model).state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "sampler": sampler_state,
            "rng": get_rng_state(),
            "extra": extra or {},
        }
        path = atomic_write(self.path_for(state.step), lambda f: torch.save(payload, f))
        # Temporary files of writers killed mid-write (never loaded: the pattern excludes them).
        for stale in self.directory.glob(".checkpoint-*.tmp"):
            if not stale.name.endswith(f".{os.getpid()}.tmp"):
                stale.unlink(missing_ok=True)
        for old in self.list()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        logger.info("saved checkpoint %s", path)
        return path

    def load(
        self,
        path: str | os.PathLike | None = None,
        *,
        model: nn.Module | None = None,
        optimizer: Optimizer | None = None,
        scheduler: Any = None,
        scaler: _Stateful | None = None,
        restore_rng: bool = True,
        map_location: str | torch.device = "cpu",
    ) -> tuple[TrainState, dict[str, Any]]:
        """Restore the given (default: latest) checkpoint into the objects passed.

        Returns (TrainState, the raw payload) so callers can restore the sampler and read
        `extra`. Raises FileNotFoundError when there is no checkpoint.
        """
        path = Path(path) if path is not None else self.latest()
        if path is None or not path.is_file():
            raise FileNotFoundError(f"no checkpoint found in {self.directory}")
        payload = load_checkpoint_payload(path, map_location)
        if model is not None:
            unwrap_model(model).load_state_dict(payload["model"])
        if optimizer is not None and payload.get("optimizer") is not None:
            optimizer.load_state_dict(payload["optimizer"])
        if scheduler is not None and payload.get("scheduler") is not None:
            scheduler.load_state_dict(payload["scheduler"])
        if scaler is not None and payload.get("scaler") is not None:
            scaler.load_state_dict(payload["scaler"])
        if restore_rng:
            set_rng_state(payload["rng"])
        logger.info("resumed from %s (step %d)", path, payload["train_state"]["step"])
        return TrainState.from_dict(payload["train_state"]), payload


def load_checkpoint_payload(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read a checkpoint dict with `weights_only=True` (tensors, numbers, strings, containers)."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


# ----------------------------------------------------------------------------- device / AMP


def resolve_device(
    spec: str | torch.device = "auto", local_rank: int | None = None
) -> torch.device:
    """ "auto" -> cuda (this process's local rank under torchrun) if available, else cpu."""
    if isinstance(spec, torch.device):
        return spec
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but CUDA is not available")
        index = local_rank if local_rank is not None else int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", index)
    return torch.device(spec)


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, found {precision!r}")


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """Mixed-precision context: bf16/fp16 autocast on CUDA only; a no-op elsewhere / for fp32."""
    _check_precision(precision)
    if device.type != "cuda" or precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def make_grad_scaler(device: torch.device, precision: str = "fp32") -> torch.amp.GradScaler:
    """A GradScaler that is enabled only for fp16 on CUDA (a transparent no-op otherwise)."""
    _check_precision(precision)
    enabled = device.type == "cuda" and precision == "fp16"
    return torch.amp.GradScaler("cuda" if device.type == "cuda" else "cpu", enabled=enabled)


# ----------------------------------------------------------------------------- TensorBoard


class NullWriter:
    """Stands in for a SummaryWriter on non-main ranks or when logging is off."""

    def add_scalar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_scalars(self, *args: Any, **kwargs: Any) -> None:
        pass

    def add_text(self, *args: Any, **kwargs: Any) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def summary_writer(log_dir: str | os.PathLike | None, enabled: bool = True) -> Any:
    """A TensorBoard SummaryWriter on `log_dir`, or a `NullWriter` when disabled / no dir."""
    if not enabled or log_dir is None:
        return NullWriter()
    from torch.utils.tensorboard import SummaryWriter  # heavy import, only when logging

    return SummaryWriter(log_dir=str(log_dir))


def log_scalars(writer: Any, metrics: dict[str, float], step: int, prefix: str = "") -> None:
    """Write each finite metric as its own scalar `prefix/name`."""
    for name, value in metrics.items():
        value = float(value)
        if math.isfinite(value):
            writer.add_scalar(f"{prefix}/{name}" if prefix else name, value, step)


# ----------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | torch.device = "auto") -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun set up (WORLD_SIZE > 1), else run single-process.

    Backend: nccl on CUDA, gloo on CPU. Returns (DistInfo, this process's device).
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not (dist.is_available() and dist.is_initialized()):
        backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
        logger.info("rank %d/%d joined the %s process group", rank, world_size, backend)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank), dev


def cleanup_distributed() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_main_process() -> bool:
    """True on rank 0 (or when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", 0)) == 0


def barrier() -> None:
    """Synchronise ranks (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of `value` over ranks (returned unchanged when not distributed)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.detach().clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel / torch.compile wrappers."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while True:
        if isinstance(model, wrappers):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


@contextlib.contextmanager
def maybe_no_sync(model: nn.Module, skip_sync: bool) -> Iterator[None]:
    """DDP's `no_sync()` during gradient accumulation micro-steps; a no-op otherwise."""
    if skip_sync and hasattr(model, "no_sync"):
        with model.no_sync():
            yield
    else:
        yield
