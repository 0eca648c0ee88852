"""Output container shared by every upstream model (student, teacher, baselines)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class UpstreamOutput:
    """Per-layer hidden states with valid lengths, like torchaudio's `extract_features`.

    Attributes:
        hidden_states: L+1 tensors of shape (B, T, D_l); index 0 is the CNN projection output.
            Frames at index >= lengths[b] are padding and hold zeros.
        lengths: (B,) long, number of valid frames per item.
        logits: (B, T, C) cluster logits from the training head, or None.
    """

    hidden_states: list[Tensor]
    lengths: Tensor
    logits: Tensor | None = None

    @property
    def last_hidden_state(self) -> Tensor:
        """(B, T, D) output of the last layer."""
        return self.hidden_states[-1]

    def frame_mask(self) -> Tensor:
        """(B, T) bool, True at valid frames."""
        t = self.hidden_states[0].shape[1]
        steps = torch.arange(t, device=self.lengths.device)
        return steps.unsqueeze(0) < self.lengths.unsqueeze(1)
