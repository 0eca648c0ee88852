"""The shared training loop with a toy task: when it evaluates and checkpoints, gradient
accumulation (an epoch ending inside a window still steps), early stops, exact resume, and a
largest-batch check that leaves the run unchanged."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from model_training.data.sampler import LengthBucketSampler
from model_training.training.common import TrainState, linear_warmup_decay
from model_training.training.loop import LoopConfig, TrainLoop


@dataclass
class ToyTask:
    """Regress y = 2x with dropout (so RNG state matters); records what the loop asks for."""

    model: nn.Module
    data: Tensor
    stop_at_loss: float | None = None
    evaluated: list[int] = field(default_factory=list)
    checkpointed: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)

    def start_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def train_loss(self, batch: list[int], step: int) -> tuple[Tensor, dict[str, float]]:
        self.model.train()
        x = self.data[batch]
        loss = (self.model(x) - 2 * x).pow(2).mean()
        return loss, {"loss": float(loss.detach())}

    def batch_seconds(self, batch: list[int]) -> float:
        return float(len(batch))

    def evaluate(self, state: TrainState) -> dict[str, float] | None:
        self.evaluated.append(state.step)
        self.model.eval()
        with torch.no_grad():
            return {"loss": float((self.model(self.data) - 2 * self.data).pow(2).mean())}

    def after_evaluation(self, state: TrainState, metrics: dict[str, float]) -> bool:
        return self.stop_at_loss is not None and metrics["loss"] < self.stop_at_loss

    def before_checkpoint(self, state: TrainState) -> None:
        self.checkpointed.append(state.step)


def _loop(run_dir: Path, init: int = 0, stop_at_loss: float | None = None, **config) -> TrainLoop:
    torch.manual_seed(init)
    model = nn.Sequential(nn.Linear(1, 8), nn.Dropout(0.3), nn.Linear(8, 1))
    data = torch.linspace(-1, 1, 10)[:, None]
    sampler = LengthBucketSampler([1] * 10, 3, shuffle=True, seed=0)  # 4 batches / epoch
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    settings = {"max_steps": 9, "log_every": 2, "eval_every": 4, "checkpoint_every": 3, **config}
    return TrainLoop(
        task=ToyTask(model, data, stop_at_loss),
        config=LoopConfig(progress=False, **settings),
        model=model,
        optimizer=optimizer,
        scheduler=linear_warmup_decay(optimizer, 2, settings["max_steps"]),
        sampler=sampler,
        loader=DataLoader(
            range(10),
            batch_sampler=sampler,
            collate_fn=list,
            generator=torch.Generator().manual_seed(0),  # never draw from the global RNG
        ),
        device=torch.device("cpu"),
        run_dir=run_dir,
        tensorboard=False,
    )


def _weights(loop: TrainLoop) -> list[Tensor]:
    return [p.detach().clone() for p in loop.model.parameters()]


def test_schedule_of_evaluations_checkpoints_and_logs(tmp_path) -> None:
    loop = _loop(tmp_path)
    state = loop.run(loop.restore()[0])
    assert state.step == 9 and state.epoch == 2 and state.batches_in_epoch == 1
    assert loop.task.evaluated == [4, 8, 9]  # every 4 and at max_steps
    assert loop.task.checkpointed == [3, 6, 9]
    assert [p.name for p in loop.checkpointer.list()] == [
        "checkpoint-00000006.pt",
        "checkpoint-00000009.pt",
    ]
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in log] == [2, 4, 6, 8, 9]
    assert state.extra["last_dev"]["step"] == 9
    every = _loop(tmp_path / "every", max_steps=2, log_every=1)
    every.run(every.restore()[0])
    log = [json.loads(x) for x in (tmp_path / "every" / "train_log.jsonl").read_text().splitlines()]
    assert [x["lr"] for x in log] == [0.025, 0.05]  # the lr each step used (warm-up of 2)


def test_pause_and_resume_equal_one_run_and_skip_the_pause_evaluation(tmp_path) -> None:
    whole = _loop(tmp_path / "a")
    whole.run(whole.restore()[0])
    paused = _loop(tmp_path / "b", stop_at_step=5)
    state = paused.run(paused.restore()[0])
    assert state.step == 5 and paused.task.evaluated == [4]  # no evaluation at the pause
    resumed = _loop(tmp_path / "b", init=123)  # other init: everything comes from the checkpoint
    state, found = resumed.restore()
    assert found and state.step == 5
    resumed.run(state)
    assert resumed.task.evaluated == [8, 9]
    for a, b in zip(_weights(whole), _weights(resumed), strict=True):
        assert torch.equal(a, b)


def test_accumulation_steps_at_the_end_of_an_epoch(tmp_path) -> None:
    """4 batches per epoch, 3 per step: batches 1-3 make step 1, batch 4 (the epoch's end)
    makes step 2 on its own."""
    loop = _loop(tmp_path, accum_steps=3, max_steps=4, log_every=1)
    state = loop.run(loop.restore()[0])
    assert state.step == 4 and state.epoch == 2 and loop.task.epochs == [0, 1]


def test_task_can_stop_early_and_resume_stays_stopped(tmp_path) -> None:
    loop = _loop(tmp_path, stop_at_loss=1e9, max_steps=20)
    state = loop.run(loop.restore()[0])
    assert state.step == 4 and state.extra["stopped_early"]
    assert loop.task.checkpointed == [3, 4]
    again = _loop(tmp_path, stop_at_loss=1e9, max_steps=20)
    assert again.run(again.restore()[0]).step == 4


def test_largest_batch_check_changes_nothing(tmp_path) -> None:
    plain = _loop(tmp_path / "a")
    plain.run(plain.restore()[0])
    checked = _loop(tmp_path / "b")
    checked.check_largest_batch(list(range(10)))
    assert all(p.grad is None for p in checked.model.parameters())
    checked.run(checked.restore()[0])
    for a, b in zip(_weights(plain), _weights(checked), strict=True):
        assert torch.equal(a, b)
