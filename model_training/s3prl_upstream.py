"""An s3prl-compatible upstream: any bundle or run, the way s3prl's upstream experts look.

s3prl's upstreams (`s3prl/upstream/*/expert.py`) take a list of variable-length 16 kHz
waveforms and return a dict whose `hidden_states` is a list of (B, T, D) tensors, one per layer,
all of one width (its featurizer stacks them for the weighted sum), with
`get_downsample_rates(key)` giving input samples per output frame. `S3PRLUpstream` wraps any
upstream this project loads (`evaluate.load_any_upstream`: a bundle, a distillation or
fine-tuning run, a teacher, fbank) that way, frozen, without s3prl installed; the `s3prl` extra
installs s3prl itself. See the README ("SUPERB tasks with s3prl").

The layers default to every hidden state as wide as the last one (a student's narrower CNN
projection is left out, as the project's own heads do); `layers` picks others of one width.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence


class S3PRLUpstream(nn.Module):
    """forward(list of (S_i,) float 16 kHz waveforms) -> {"hidden_states": [(B, T, D)] * L,
    "last_hidden_state": (B, T, D), "hidden_states_lengths": (B,) valid frames}.

    Padded frames (t >= the item's length) are zeros. `ckpt` takes any `load_any_upstream`
    spec (an s3prl hubconf passes `-k`'s value here), or an already built upstream module.
    """

    def __init__(
        self,
        ckpt: str | os.PathLike | nn.Module,
        model_config: str | None = None,
        layers: Sequence[int] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__()
        if isinstance(ckpt, nn.Module):
            upstream = ckpt.eval()
        else:
            from model_training.training.evaluate import load_any_upstream

            upstream, _ = load_any_upstream(ckpt, "cpu")
        self.upstream = upstream.requires_grad_(False)
        dims = list(upstream.hidden_dims)
        if layers is None:
            layers = [i for i, d in enumerate(dims) if d == dims[-1]]
        self.layers = [int(i) % len(dims) for i in layers]
        if len({dims[i] for i in self.layers}) != 1:
            raise ValueError(f"layers {self.layers} differ in width {dims}; pick one width")
        self.name = "[hubert-lstm]"

    @property
    def sample_rate(self) -> int:
        return int(self.upstream.sample_rate)

    def get_downsample_rates(self, key: str = "hidden_states") -> int:
        """Input samples per output frame (320 for a 50 Hz upstream at 16 kHz)."""
        return round(self.sample_rate / float(self.upstream.frame_rate))

    def forward(self, wavs: Sequence[Tensor]) -> dict[str, Tensor | list[Tensor]]:
        if not wavs:
            raise ValueError("expected at least one waveform")
        tensors = itertools.chain(self.upstream.parameters(), self.upstream.buffers())
        device = next(tensors, wavs[0]).device
        lengths = torch.tensor([w.numel() for w in wavs], dtype=torch.long, device=device)
        padded = pad_sequence([w.reshape(-1).float() for w in wavs], batch_first=True)
        out = self.upstream(padded.to(device), lengths)
        hidden = [out.hidden_states[i] for i in self.layers]
        return {
            "hidden_states": hidden,
            "last_hidden_state": hidden[-1],
            "hidden_states_lengths": out.lengths,
        }
