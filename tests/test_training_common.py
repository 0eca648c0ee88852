"""Shared training utilities: LR schedule, RNG capture, atomic checkpoints with exact resume."""

from __future__ import annotations

import itertools
import random
import time

import numpy as np
import pytest
import torch
from torch import nn

from model_training.training.common import (
    Checkpointer,
    TrainState,
    autocast,
    get_rng_state,
    linear_warmup_decay,
    make_grad_scaler,
    resolve_device,
    seed_everything,
    set_rng_state,
)


def test_linear_warmup_decay_shape() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = linear_warmup_decay(opt, warmup_steps=4, total_steps=10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[-1] == pytest.approx(1 - 5 / 6)
    assert all(a >= b for a, b in itertools.pairwise(lrs[3:]))


def test_rng_state_roundtrip() -> None:
    seed_everything(3)
    state = get_rng_state()
    first = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(state)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == first


# One tiny deterministic training run, shared by the test and the process it kills.
_RUN = """
import torch
from torch import nn
from model_training.training.common import Checkpointer, TrainState, linear_warmup_decay

def make():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 64))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    return model, opt, linear_warmup_decay(opt, 2, 8)

def step(model, opt, sched):
    x = torch.randn(8, 64)  # consumes the global RNG: resume must restore it
    model(x).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
    sched.step()
"""


def _run_functions():
    """`make()` and `step(model, opt, sched)` from `_RUN`, for the tests in this process."""
    namespace: dict = {}
    exec(_RUN, namespace)
    return namespace["make"], namespace["step"]


def test_checkpointer_resume_is_exact_and_prunes(tmp_path) -> None:
    make, step = _run_functions()
    model, opt, sched = make()
    ckpt = Checkpointer(tmp_path, keep_last=2)
    for s in range(1, 7):
        step(model, opt, sched)
        if s % 2 == 0:
            ckpt.save(TrainState(step=s), model=model, optimizer=opt, scheduler=sched)
    assert [p.name for p in ckpt.list()] == ["checkpoint-00000004.pt", "checkpoint-00000006.pt"]
    for _ in range(2):
        step(model, opt, sched)
    reference = [p.detach().clone() for p in model.parameters()]

    model2, opt2, sched2 = make()
    state, _ = ckpt.load(model=model2, optimizer=opt2, scheduler=sched2)
    assert state.step == 6
    for _ in range(2):
        step(model2, opt2, sched2)
    for a, b in zip(reference, model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_device_and_amp_helpers_on_cpu() -> None:
    dev = resolve_device("auto") if not torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("cpu").type == "cpu"
    with autocast(dev, "bf16"):  # a no-op on CPU
        assert torch.ones(2).dtype == torch.float32
    assert not make_grad_scaler(torch.device("cpu"), "fp16").is_enabled()
    with pytest.raises(ValueError, match="precision"):
        autocast(dev, "int8")


_KILLED_WRITER = """
import io, os, sys, time
sys.path.insert(0, {root!r})
exec({run!r})
model, opt, sched = make()
ckpt = Checkpointer({directory!r}, keep_last=3)
for s in (1, 2):
    step(model, opt, sched)
ckpt.save(TrainState(step=2), model=model, optimizer=opt, scheduler=sched)
for s in (3, 4):
    step(model, opt, sched)
real_save = torch.save

def slow_save(obj, f, *args, **kwargs):  # the real bytes, written slowly enough to be killed
    buf = io.BytesIO()
    real_save(obj, buf, *args, **kwargs)
    out = open(f, "wb") if isinstance(f, (str, os.PathLike)) else f
    print("WRITING", len(buf.getvalue()), flush=True)
    for i in range(0, buf.tell(), 8192):
        out.write(buf.getvalue()[i : i + 8192])
        out.flush()
        time.sleep(0.05)

torch.save = slow_save
ckpt.save(TrainState(step=4), model=model, optimizer=opt, scheduler=sched)
print("FINISHED", flush=True)
"""


def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one_and_resume_exact(tmp_path):
    import signal
    import subprocess
    import sys
    from pathlib import Path

    make, step = _run_functions()
    root = str(Path(__file__).resolve().parents[1])
    script = _KILLED_WRITER.format(root=root, run=_RUN, directory=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("WRITING"), line + proc.stderr.read()
        full_size = int(line.split()[1])
        time.sleep(0.3)  # a few chunks in
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    written = [p.stat().st_size for p in tmp_path.iterdir() if p.name != "checkpoint-00000002.pt"]
    assert any(0 < size < full_size for size in written)  # killed mid-write

    ckpt = Checkpointer(tmp_path)
    assert [p.name for p in ckpt.list()] == ["checkpoint-00000002.pt"]
    model, opt, sched = make()
    state, _ = ckpt.load(model=model, optimizer=opt, scheduler=sched)
    assert state.step == 2
    for _ in range(2):
        step(model, opt, sched)

    reference, ref_opt, ref_sched = make()  # the same run, never interrupted
    for _ in range(4):
        step(reference, ref_opt, ref_sched)
    for a, b in zip(reference.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    # The next save cleans up what the killed writer left.
    ckpt.save(TrainState(step=4), model=model, optimizer=opt, scheduler=sched)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
