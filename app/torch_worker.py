"""The one thread that runs the service's torch compute: model load, warm-up, batches and CTC
decoding.

Why one thread: PyTorch's CPU wheels parallelise with GNU OpenMP, which keeps a team of worker
threads per thread that ever opened a parallel region. Once the process holds more OpenMP
threads than CPUs, libgomp stops spinning between regions and parks its threads on futexes,
and an LSTM, which opens a few small parallel regions per time step, slows down several times.
`benchmarks/lstm_cpu.py` on the 2-core CI machine (torch 2.14.1, 2 intra-op threads, 3-layer
BiLSTM x 256 over 250 frames on a worker thread): 26.5 ms when that thread is the only one
running torch; 70 ms once the main thread had run the LSTM too; 69 ms once two decode threads
had run `torchaudio.functional.resample`. In the service (decode pool + loader + batcher) that
made a request's inference 3x slower than the bare model. Parallel torch operators therefore
run here only; the decode pool does numpy/libsndfile/PyAV/libsoxr work (resampling moved to
libsoxr, `app/resample.py`, and with it off the torch thread).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

THREAD_NAME_PREFIX = "hlstm-torch"


class TorchWorker:
    """A single-thread executor for every parallel torch operator in the service."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME_PREFIX)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the torch thread without blocking the event loop (in a copy of the
        caller's context, so log lines carry its request id)."""
        context = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self.executor, context.run, fn, *args
        )

    def shutdown(self) -> None:
        """Stop accepting work; queued work is cancelled."""
        self.executor.shutdown(wait=False, cancel_futures=True)
