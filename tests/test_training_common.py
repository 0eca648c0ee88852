"""Shared training utilities: LR schedule, RNG capture, atomic checkpoints with exact resume."""

from __future__ import annotations

import itertools
import random

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


def test_checkpointer_resume_is_exact_and_prunes(tmp_path) -> None:
    def make():
        torch.manual_seed(0)
        model = nn.Linear(4, 2)
        opt = torch.optim.AdamW(model.parameters(), lr=0.1)
        return model, opt, linear_warmup_decay(opt, 2, 8)

    def step(model, opt, sched):
        x = torch.randn(3, 4)  # consumes the global RNG: resume must restore it
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()

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
