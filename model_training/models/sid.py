"""The SUPERB speaker-identification (SID) downstream: weighted layer sum -> mean pooling -> linear.

Mean pooling over valid frames commutes with the (linear) weighted sum, so the head can also
run on per-layer means computed once per utterance (`pool_layers` + `forward_pooled`): the
same function of the same numbers, and what makes SID on a frozen upstream cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_training.models.ctc import WeightedLayerSum, resolve_layer_indices


@dataclass
class SIDHeadConfig:
    """Architecture of a `SIDHead`.

    Attributes:
        layer_dims: width of every upstream hidden state, in order.
        num_classes: speakers.
        layer_indices: mixed hidden states; default: every layer as wide as the last.
        layer_norm: normalise each frame of each layer (no parameters) before mixing.
    """

    layer_dims: list[int]
    num_classes: int
    layer_indices: list[int] = field(default_factory=list)
    layer_norm: bool = True

    def __post_init__(self) -> None:
        self.layer_indices = resolve_layer_indices(self.layer_dims, self.layer_indices)
        if self.num_classes < 2:
            raise ValueError(f"SID needs >= 2 speakers, found {self.num_classes}")

    @property
    def input_dim(self) -> int:
        return self.layer_dims[self.layer_indices[0]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SIDHeadConfig:
        return cls(**d)


def pool_layers(
    hidden_states: Sequence[Tensor], lengths: Tensor, layer_indices: Sequence[int], norm: bool
) -> Tensor:
    """(B, T, D) per layer, (B,) frames -> (B, L, D) mean of each chosen layer over valid
    frames (each frame layer-normalised first when `norm`)."""
    t = hidden_states[0].shape[1]
    mask = (torch.arange(t, device=lengths.device)[None] < lengths[:, None]).float()
    denom = mask.sum(1).clamp(min=1.0)[:, None]
    pooled = []
    for i in layer_indices:
        h = hidden_states[i].float()
        if norm:
            h = F.layer_norm(h, h.shape[-1:])
        pooled.append((h * mask[..., None]).sum(1) / denom)
    return torch.stack(pooled, dim=1)


class SIDHead(nn.Module):
    """Weighted layer sum -> mean over valid frames -> Linear to speaker logits."""

    def __init__(self, config: SIDHeadConfig) -> None:
        super().__init__()
        self.config = config
        self.featurizer = WeightedLayerSum(config.layer_indices, layer_norm=False)
        self.classifier = nn.Linear(config.input_dim, config.num_classes)

    def forward(self, hidden_states: Sequence[Tensor], lengths: Tensor) -> Tensor:
        """hidden_states: (B, T, D_l) per layer; lengths: (B,) -> logits (B, C)."""
        pooled = pool_layers(
            hidden_states, lengths, self.config.layer_indices, self.config.layer_norm
        )
        return self.forward_pooled(pooled)

    def forward_pooled(self, pooled: Tensor) -> Tensor:
        """(B, L, D) per-layer means (`pool_layers`) -> logits (B, C)."""
        w = F.softmax(self.featurizer.weights, dim=0)
        return self.classifier((w[None, :, None] * pooled).sum(1))
