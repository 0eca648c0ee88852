"""The SUPERB ASR downstream: weighted layer sum -> Linear -> 2-layer BiLSTM -> character CTC.

With `lstm_layers: 0` and `proj_dim: 0` the same head is SUPERB's PR downstream: the weighted
layer sum and one linear layer to the CTC outputs (a linear probe of the upstream).

The upstream stays frozen; only the head trains. CTC conventions live here (as in
transformers' `HubertForCTC`): float32 log-softmax, the blank id, `zero_infinity`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_training.models.outputs import UpstreamOutput
from model_training.models.rnn import run_lstm


def resolve_layer_indices(layer_dims: Sequence[int], layer_indices: Sequence[int]) -> list[int]:
    """Check the hidden states a weighted layer sum mixes; default: every layer as wide as the last.

    Args:
        layer_dims: width of every upstream hidden state, in order.
        layer_indices: the mixed states (empty: the default).
    Raises:
        ValueError: no layers, an index out of range, or mixed states of different widths.
    """
    if not layer_dims:
        raise ValueError("layer_dims must list the upstream's hidden-state widths")
    if not layer_indices:
        layer_indices = [i for i, d in enumerate(layer_dims) if d == layer_dims[-1]]
    n = len(layer_dims)
    bad = [i for i in layer_indices if not 0 <= i < n]
    if bad:
        raise ValueError(f"layer_indices {bad} outside 0..{n - 1}")
    widths = {layer_dims[i] for i in layer_indices}
    if len(widths) != 1:
        raise ValueError(f"weighted layers must share one width, found {sorted(widths)}")
    return list(layer_indices)


@dataclass
class CTCHeadConfig:
    """Architecture of a `CTCHead` (SUPERB ASR defaults), stored in bundles.

    Attributes:
        layer_dims: width of every upstream hidden state, in order.
        layer_indices: hidden states mixed by the weighted sum. Default (empty): every layer
            whose width equals the last layer's (a weighted sum needs one width; the student's
            narrower CNN projection is left out).
        vocab_size: CTC outputs including the blank (29 for the SUPERB characters).
        proj_dim: Linear projection before the BiLSTM (SUPERB: 1024); 0: none.
        lstm_layers: BiLSTM layers (SUPERB: 2); 0: none (with proj_dim 0, a linear head).
        lstm_hidden: hidden size per direction (SUPERB: 1024).
        dropout: dropout after the projection and between BiLSTM layers.
        time_masks, time_mask_width, freq_masks, freq_mask_width: SpecAugment-style masks on
            the mixed features, in training only (count, max width in frames / channels).
        blank_id: CTC blank index.
        bidirectional: a BiLSTM (SUPERB); False gives a causal head that can stream.
        layer_norm: normalise each hidden state (LayerNorm without parameters) before the
            weighted sum, as s3prl's featurizer does for upstreams that ask for it; it puts
            transformer and LSTM layers of very different scales on one footing and shortens
            CTC's blank-only plateau. SUPERB's default for HuBERT is off.
    """

    layer_dims: list[int]
    layer_indices: list[int] = field(default_factory=list)
    vocab_size: int = 29
    proj_dim: int = 1024
    lstm_layers: int = 2
    lstm_hidden: int = 1024
    dropout: float = 0.2
    time_masks: int = 2
    time_mask_width: int = 10
    freq_masks: int = 2
    freq_mask_width: int = 32
    blank_id: int = 0
    layer_norm: bool = False
    bidirectional: bool = True

    def __post_init__(self) -> None:
        self.layer_indices = resolve_layer_indices(self.layer_dims, self.layer_indices)
        for name in ("vocab_size", "lstm_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")
        for name in ("proj_dim", "lstm_layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, found {getattr(self, name)}")
        if not 0 <= self.blank_id < self.vocab_size:
            raise ValueError(f"blank_id {self.blank_id} outside vocabulary of {self.vocab_size}")

    @property
    def input_dim(self) -> int:
        """Width of the weighted sum."""
        return self.layer_dims[self.layer_indices[0]]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (inverse: `from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CTCHeadConfig:
        """Build from `to_dict` output; unknown keys are an error."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown CTCHeadConfig fields: {sorted(unknown)}")
        return cls(**d)


class WeightedLayerSum(nn.Module):
    """SUPERB featurizer: softmax-normalised learned weights over chosen hidden states."""

    def __init__(self, layer_indices: Sequence[int], layer_norm: bool = False) -> None:
        super().__init__()
        self.layer_indices = list(layer_indices)
        self.layer_norm = layer_norm
        self.weights = nn.Parameter(torch.zeros(len(self.layer_indices)))

    def forward(self, hidden_states: Sequence[Tensor]) -> Tensor:
        """hidden_states: L+1 tensors (B, T, D_l) -> (B, T, D) mix of the chosen layers."""
        chosen = [hidden_states[i] for i in self.layer_indices]
        if self.layer_norm:
            chosen = [F.layer_norm(h, h.shape[-1:]) for h in chosen]
        stacked = torch.stack(chosen, dim=0)
        w = F.softmax(self.weights, dim=0).to(stacked.dtype)
        return (w[:, None, None, None] * stacked).sum(dim=0)


def spec_augment(
    x: Tensor, lengths: Tensor, cfg: CTCHeadConfig, generator: torch.Generator | None = None
) -> Tensor:
    """Zero random time spans and channel bands. x: (B, T, D) -> (B, T, D), new tensor."""
    x = x.clone()
    batch, _, dim = x.shape
    for b in range(batch):
        t_len = int(lengths[b])
        for _ in range(cfg.time_masks):
            width = int(torch.randint(0, cfg.time_mask_width + 1, (1,), generator=generator))
            if 0 < width < t_len:
                start = int(torch.randint(0, t_len - width, (1,), generator=generator))
                x[b, start : start + width] = 0
        for _ in range(cfg.freq_masks):
            width = int(torch.randint(0, cfg.freq_mask_width + 1, (1,), generator=generator))
            if 0 < width < dim:
                start = int(torch.randint(0, dim - width, (1,), generator=generator))
                x[b, :, start : start + width] = 0
    return x


class CTCHead(nn.Module):
    """Weighted layer sum -> Linear -> (Bi)LSTM -> Linear to characters -> log-probs.

    `features` and `classify` are the per-frame parts around the LSTM, so that streaming
    (`model_training/streaming.py`) can carry the LSTM's state between chunks.
    """

    def __init__(self, config: CTCHeadConfig) -> None:
        super().__init__()
        self.config = config
        self.featurizer = WeightedLayerSum(config.layer_indices, config.layer_norm)
        width = config.proj_dim or config.input_dim
        self.projection: nn.Module = (
            nn.Linear(config.input_dim, config.proj_dim) if config.proj_dim else nn.Identity()
        )
        self.lstm: nn.LSTM | None = None
        if config.lstm_layers:
            self.lstm = nn.LSTM(
                width,
                config.lstm_hidden,
                num_layers=config.lstm_layers,
                batch_first=True,
                bidirectional=config.bidirectional,
                dropout=config.dropout if config.lstm_layers > 1 else 0.0,
            )
            width = (2 if config.bidirectional else 1) * config.lstm_hidden
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(width, config.vocab_size)

    def forward(self, hidden_states: Sequence[Tensor], lengths: Tensor) -> Tensor:
        """hidden_states: (B, T, D_l) per layer; lengths: (B,) -> log-probs (B, T, V) float32."""
        if len(hidden_states) != len(self.config.layer_dims):
            raise ValueError(
                f"expected {len(self.config.layer_dims)} hidden states, found {len(hidden_states)}"
            )
        x = self.features(hidden_states, lengths)
        return self.classify(x if self.lstm is None else run_lstm(self.lstm, x, lengths))

    def features(self, hidden_states: Sequence[Tensor], lengths: Tensor) -> Tensor:
        """The LSTM's input: weighted sum -> (SpecAugment, training) -> Linear (B, T, proj_dim)."""
        x = self.featurizer(hidden_states)
        if self.training and (self.config.time_masks or self.config.freq_masks):
            x = spec_augment(x, lengths, self.config)
        return self.dropout(self.projection(x))

    def classify(self, x: Tensor) -> Tensor:
        """LSTM outputs (B, T, H) -> log-probs (B, T, V) float32."""
        logits = self.classifier(self.dropout(x))
        return F.log_softmax(logits.float(), dim=-1)

    def ctc_loss(
        self, log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor
    ) -> Tensor:
        """CTC loss, each utterance's divided by its target length, averaged over the batch.

        log_probs: (B, T, V) float32; lengths: (B,) frames; targets: (B, U) padded label ids;
        target_lengths: (B,). Infinite losses (targets longer than the input) become zero.
        """
        return F.ctc_loss(
            log_probs.transpose(0, 1),
            targets,
            lengths,
            target_lengths,
            blank=self.config.blank_id,
            reduction="mean",
            zero_infinity=True,
        )


class ASRModel(nn.Module):
    """A frozen-or-not upstream with a CTC head.

    forward(waveforms (B, S), lengths (B,)) -> (UpstreamOutput, log-probs (B, T, V) float32)
    """

    def __init__(self, upstream: nn.Module, head: CTCHead) -> None:
        super().__init__()
        self.upstream = upstream
        self.head = head

    @property
    def sample_rate(self) -> int:
        """Input sample rate of the upstream."""
        return int(self.upstream.sample_rate)

    @property
    def frame_rate(self) -> float:
        """Output frames per second."""
        return float(self.upstream.frame_rate)

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        """(B,) samples -> (B,) frames."""
        return self.upstream.frame_lengths(sample_lengths)

    def forward(
        self, waveforms: Tensor, lengths: Tensor | None = None
    ) -> tuple[UpstreamOutput, Tensor]:
        """See class docstring."""
        out: UpstreamOutput = self.upstream(waveforms, lengths)
        return out, self.head(out.hidden_states, out.lengths)
