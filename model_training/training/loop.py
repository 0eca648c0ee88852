"""The one training loop that distillation and CTC fine-tuning share.

A `TrainingTask` says what one step computes and what happens at evaluations and checkpoints;
`TrainLoop` does everything else, the same way for every task:

- optimizer steps with gradient accumulation (DDP `no_sync` on the micro-steps), autocast
  (`precision`, CUDA only) and a GradScaler (fp16 only);
- gradient clipping over every parameter the optimizer updates, then the LR scheduler;
- a window of training metrics every `log_every` steps: TensorBoard scalars under `train/`,
  one JSON line in `train_log.jsonl`, the progress bar's postfix;
- `task.evaluate` every `eval_every` steps and at `max_steps` (main process only; dev scalars
  under `dev/`); the task may end the run early (e.g. a target dev CER);
- a checkpoint every `checkpoint_every` steps and at the last step of this session;
- exact resume: model, optimizer, scheduler, scaler, RNG states, and the sampler's position in
  the epoch come back from the latest checkpoint.

`stop_at_step` pauses a run: it checkpoints but does not evaluate (the evaluation schedule
belongs to `max_steps`), so a paused and resumed run equals one that never stopped.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from model_training.data.sampler import LengthBucketSampler
from model_training.training.common import (
    Checkpointer,
    TrainState,
    all_reduce_mean,
    autocast,
    barrier,
    get_rng_state,
    log_scalars,
    make_grad_scaler,
    maybe_no_sync,
    set_rng_state,
    summary_writer,
)

logger = logging.getLogger(__name__)

TRAIN_LOG = "train_log.jsonl"


class TrainingTask(Protocol):
    """What a kind of training (distillation, CTC fine-tuning) adds to the shared loop."""

    def start_epoch(self, epoch: int) -> None:
        """Called before the batches of `epoch` are drawn (crop seeds, cached-feature skips)."""

    def train_loss(self, batch: Any, step: int) -> tuple[Tensor, dict[str, float]]:
        """Forward one (micro-)batch in training mode -> (loss to minimise, float metrics).

        Runs under the loop's autocast; `step` is the number of optimizer steps taken so far.
        The metrics must include "loss".
        """
        ...

    def batch_seconds(self, batch: Any) -> float:
        """Seconds of audio in `batch` (for the audio-seconds-per-second throughput)."""
        ...

    def evaluate(self, state: TrainState) -> dict[str, float] | None:
        """Dev metrics at `state.step` (main process only), or None without a dev set."""
        ...

    def after_evaluation(self, state: TrainState, metrics: dict[str, float]) -> bool:
        """Record `metrics` (best model, ...); True ends the run after this step."""
        ...

    def before_checkpoint(self, state: TrainState) -> None:
        """Write the task's own files (metrics, latest head) before the state is saved."""


@dataclass
class LoopConfig:
    """Schedule and numerics of the loop; every count is in optimizer steps."""

    max_steps: int
    stop_at_step: int | None = None
    accum_steps: int = 1
    grad_clip: float = 1.0
    precision: str = "fp32"
    log_every: int = 10
    eval_every: int = 500
    checkpoint_every: int = 500
    progress: bool = True
    desc: str = "train"

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.accum_steps < 1:
            raise ValueError("max_steps and accum_steps must be >= 1")
        for name in ("log_every", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")

    @classmethod
    def from_settings(cls, desc: str, *sources: Any) -> LoopConfig:
        """Each field from the first of `sources` (a trainer's config objects) that has it;
        the defaults for the rest."""
        values: dict[str, Any] = {"desc": desc}
        for f in fields(cls):
            for source in sources:
                if f.name != "desc" and hasattr(source, f.name):
                    values[f.name] = getattr(source, f.name)
                    break
        return cls(**values)

    @property
    def last_step(self) -> int:
        """Where this session stops: max_steps, or stop_at_step when that comes first."""
        return min(self.max_steps, self.stop_at_step or self.max_steps)


@dataclass
class TrainLoop:
    """Runs a `TrainingTask` (see the module docstring).

    Attributes:
        task: the task's step, evaluation and checkpoint hooks.
        model: the module whose state is checkpointed (may be DDP-wrapped; the task's forward
            uses it). For CTC fine-tuning on a frozen upstream this is the head alone.
        sampler, loader: this rank's batches; the loader draws from `sampler` (batch_sampler).
            For exact resume the loader must not draw from the global RNG (give a DataLoader
            its own `generator`): a resumed run creates its iterator at another moment.
        run_dir: holds checkpoints/ (the last `keep_checkpoints`), tensorboard/ (when
            `tensorboard`, main process only) and train_log.jsonl.
        checkpoint_extra: JSON-like facts stored in every checkpoint (configs, references).
        is_main: rank 0 (logs, evaluates and checkpoints; the other ranks wait at barriers).
    """

    task: TrainingTask
    config: LoopConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: LengthBucketSampler
    loader: Iterable[Any]
    device: torch.device
    run_dir: Path
    keep_checkpoints: int = 2
    tensorboard: bool = True
    checkpoint_extra: dict[str, Any] = field(default_factory=dict)
    is_main: bool = True

    def __post_init__(self) -> None:
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self.scaler = make_grad_scaler(self.device, self.config.precision)
        self.checkpointer = Checkpointer(self.run_dir / "checkpoints", self.keep_checkpoints)
        self.writer = summary_writer(
            self.run_dir / "tensorboard", enabled=self.tensorboard and self.is_main
        )

    # -- resume ------------------------------------------------------------------------

    def restore(self) -> tuple[TrainState, bool]:
        """Load the latest checkpoint into the model, optimizer, scheduler, scaler and RNGs.

        Returns (state, resumed): a fresh `TrainState` and False when there is none.
        """
        latest = self.checkpointer.latest()
        if latest is None:
            return TrainState(), False
        state, _ = self.checkpointer.load(
            latest,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            map_location=self.device,
        )
        return state, True

    def save_checkpoint(self, state: TrainState) -> None:
        """The task's files, then the training state (main process), then a barrier."""
        if self.is_main:
            self.task.before_checkpoint(state)
            self.checkpointer.save(
                state,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                scaler=self.scaler,
                sampler_state=self.sampler.state_dict(state.batches_in_epoch),
                extra=self.checkpoint_extra,
            )
        barrier()

    # -- steps -------------------------------------------------------------------------

    def _parameters(self) -> list[nn.Parameter]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _optimizer_step(self) -> tuple[float, float]:
        """Unscale, clip, step, advance the schedule -> (grad norm before clipping, lr used)."""
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self._parameters(), self.config.grad_clip)
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return float(grad_norm), lr

    def check_largest_batch(self, batch: Any, step: int = 0) -> None:
        """Forward + backward on `batch` before step 1 so out-of-memory shows at once; the
        gradients and every RNG state are put back, so the run is the same with or without.
        `step`: the step whose work to check (a task's costliest phase may start later)."""
        rng = get_rng_state()
        with maybe_no_sync(self.model, True), autocast(self.device, self.config.precision):
            loss, _ = self.task.train_loss(batch, step)
        self.scaler.scale(loss).backward()
        self.optimizer.zero_grad(set_to_none=True)
        set_rng_state(rng)

    # -- the loop ----------------------------------------------------------------------

    def run(self, state: TrainState) -> TrainState:
        """Train from `state` until `last_step` (or the task stops the run); returns it."""
        from tqdm import tqdm

        cfg = self.config
        last_step = cfg.last_step
        bar = tqdm(
            total=last_step,
            initial=state.step,
            disable=not (cfg.progress and self.is_main),
            desc=cfg.desc,
            unit="step",
        )
        self._window_reset()
        resume_offset = state.batches_in_epoch
        done = state.step >= last_step or bool(state.extra.get("stopped_early"))
        while not done:
            self.sampler.set_epoch(state.epoch)
            self.task.start_epoch(state.epoch)
            if resume_offset:
                self.sampler.load_state_dict(
                    {
                        "epoch": state.epoch,
                        "seed": self.sampler.seed,
                        "batches_consumed": resume_offset,
                    }
                )
                resume_offset = 0
            micro = 0
            for batch in self.loader:
                state.batches_in_epoch += 1
                micro += 1
                sync = micro % cfg.accum_steps == 0
                with maybe_no_sync(self.model, not sync), autocast(self.device, cfg.precision):
                    loss, metrics = self.task.train_loss(batch, state.step)
                self.scaler.scale(loss / cfg.accum_steps).backward()
                self._window_add(metrics, self.task.batch_seconds(batch))
                if not sync:
                    continue
                micro = 0
                if self._after_step(state, bar, *self._optimizer_step()):
                    done = True
                    break
            else:
                if micro:  # the epoch ended inside an accumulation window: step with it
                    done = self._after_step(state, bar, *self._optimizer_step())
                state.epoch += 1
                state.batches_in_epoch = 0
        bar.close()
        self.writer.close()
        return state

    def _after_step(self, state: TrainState, bar: Any, grad_norm: float, lr: float) -> bool:
        """Count the step, then log / evaluate / checkpoint as scheduled; True = stop."""
        cfg = self.config
        state.step += 1
        bar.update(1)
        if not math.isfinite(self._last_loss):
            logger.warning("step %d: non-finite loss %s", state.step, self._last_loss)
        final = state.step >= cfg.last_step
        if state.step % cfg.log_every == 0 or final:
            self._log(state, bar, grad_norm, lr)
        if state.step % cfg.eval_every == 0 or state.step >= cfg.max_steps:
            stop = False
            if self.is_main:
                metrics = self.task.evaluate(state)
                if metrics is not None:
                    log_scalars(self.writer, metrics, state.step, "dev")
                    logger.info(
                        "step %d dev %s",
                        state.step,
                        json.dumps({k: round(v, 5) for k, v in metrics.items()}),
                    )
                    state.extra["last_dev"] = {"step": state.step, **metrics}
                    stop = self.task.after_evaluation(state, metrics)
            flag = all_reduce_mean(torch.tensor(float(stop), device=self.device))
            if float(flag) > 0:
                state.extra["stopped_early"] = True
                final = True
            barrier()
        if state.step % cfg.checkpoint_every == 0 or final:
            self.save_checkpoint(state)
        return final

    # -- logging -----------------------------------------------------------------------

    def _window_reset(self) -> None:
        self._sums: dict[str, float] = {}
        self._micro = 0
        self._seconds = 0.0
        self._start = time.perf_counter()
        self._steps_in_window = 0
        self._last_loss = 0.0

    def _window_add(self, metrics: dict[str, float], seconds: float) -> None:
        for k, v in metrics.items():
            self._sums[k] = self._sums.get(k, 0.0) + float(v)
        self._micro += 1
        self._seconds += seconds
        self._last_loss = float(metrics["loss"])

    def _log(self, state: TrainState, bar: Any, grad_norm: float, lr: float) -> None:
        """Mean metrics of the micro-batches since the last log line."""
        means = {k: v / max(1, self._micro) for k, v in self._sums.items()}
        means["loss"] = float(all_reduce_mean(torch.tensor(means["loss"], device=self.device)))
        elapsed = time.perf_counter() - self._start
        means.update(
            seconds_per_step=elapsed / max(1, self._micro // self.config.accum_steps),
            lr=lr,
            grad_norm=grad_norm,
            audio_seconds_per_s=self._seconds / max(elapsed, 1e-9),
        )
        log_scalars(self.writer, means, state.step, "train")
        bar.set_postfix(loss=f"{means['loss']:.4f}", lr=f"{lr:.2e}")
        logger.info(
            "step %d %s", state.step, json.dumps({k: round(v, 5) for k, v in means.items()})
        )
        state.extra["last_train"] = means
        if self.is_main:
            with open(self.run_dir / TRAIN_LOG, "a") as f:
                f.write(json.dumps({"step": state.step, **means}) + "\n")
        self._window_reset()


def largest_batch(sampler: LengthBucketSampler) -> list[int]:
    """This rank's batch with the most padded samples (run first: out-of-memory shows at once)."""
    lengths = sampler.lengths
    return max(sampler.rank_batches(), key=lambda b: int(lengths[b].max()) * len(b))
