"""The model side of the service: a loaded bundle wrapped as the batcher's `run_batch`.

`run_batch` turns one padded batch into per-item results cut to each item's valid frames,
moved to the CPU as float32, so a response never depends on the batch it was computed in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from model_training.bundle import Bundle
from model_training.models.outputs import UpstreamOutput
from model_training.precision import inference_autocast
from model_training.streaming import StreamingModel

logger = logging.getLogger(__name__)


@dataclass
class ItemResult:
    """Model outputs for one item.

    Attributes:
        hidden_states: one (T, D_l) float32 CPU tensor per layer (index 0 = CNN projection).
        log_probs: (T, V) float32 CTC log-probabilities, or None without a CTC head.
    """

    hidden_states: list[Tensor]
    log_probs: Tensor | None

    @property
    def num_frames(self) -> int:
        """T, the valid frames of this item."""
        return int(self.hidden_states[0].shape[0])


def make_run_batch(bundle: Bundle) -> Callable[[Tensor, Tensor], list[ItemResult]]:
    """Build `run_batch(waveforms (B, S), lengths (B,)) -> list[ItemResult]` for the batcher.

    The batcher calls it in its worker thread under `torch.inference_mode()` (and autocast
    when fp16 is on), with tensors already on the model's device.
    """
    model = bundle.model
    has_ctc = bundle.has_ctc

    def run_batch(waveforms: Tensor, lengths: Tensor) -> list[ItemResult]:
        if has_ctc:
            upstream_out, log_probs = model(waveforms, lengths)
        else:
            upstream_out, log_probs = model(waveforms, lengths), None
        return split_batch(upstream_out, log_probs)

    return run_batch


def split_batch(out: UpstreamOutput, log_probs: Tensor | None) -> list[ItemResult]:
    """Cut a batch's outputs into per-item results at each item's valid length.

    One device->host copy per tensor for the whole batch, then views per item.
    """
    frames = out.lengths.tolist()
    hidden = [h.float().cpu() for h in out.hidden_states]
    lp = log_probs.float().cpu() if log_probs is not None else None
    results = []
    for b, n in enumerate(frames):
        n = int(n)
        results.append(
            ItemResult(
                hidden_states=[h[b, :n] for h in hidden],
                log_probs=lp[b, :n] if lp is not None else None,
            )
        )
    return results


def warm_up(
    run_batch: Callable[[Tensor, Tensor], list[ItemResult]], device: str, precision: str = "fp32"
) -> None:
    """Run two small batches (different lengths) so kernels and allocators are ready."""
    with torch.inference_mode(), inference_autocast(device, precision):
        for seconds in (1.0, 2.5):
            n = int(16_000 * seconds)
            waveforms = 0.01 * torch.randn(2, n, device=device)
            lengths = torch.tensor([n, n // 2], device=device)
            run_batch(waveforms, lengths)
    if device == "cuda":
        torch.cuda.synchronize()


def warm_up_streams(model: StreamingModel) -> None:
    """Step two fresh streams with different chunk sizes (kernels for stacked states)."""
    states = [model.new_state(), model.new_state()]
    chunks = [0.01 * torch.randn(4000), 0.01 * torch.randn(8000)]
    for _ in range(2):
        model.step(states, chunks)
