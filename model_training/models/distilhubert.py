"""DistilHuBERT-style baseline student (Chang et al., ICASSP 2022) in this project's framework.

HuBERT's CNN (the same padding-exact `ConvFeatureExtractor` as the LSTM student) -> Linear to
the model width -> HuBERT's convolutional positional embedding -> a few post-LN Transformer
layers -> one Linear that predicts K teacher layers at once (DistilHuBERT: 768 -> 3 x 768 for
teacher layers 4, 8, 12), trained with `losses.feature_distill_loss`. The prediction heads are
used in training only; the upstream (what `model-info` counts as 23.49M for the paper config)
is everything else.

Padded vs unpadded parity: padded frames are zeroed before the positional convolution (which
then sees the same zeros as an unpadded sequence's own zero padding), attention uses a key
padding mask, and everything else works per frame.

Module names below the Transformer mirror transformers' `HubertModel` so that
`init_from_teacher` can copy the teacher's CNN, projection, positional conv and first layers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_training.models.cnn import (
    HUBERT_CONV_LAYERS,
    ConvFeatureExtractor,
    ConvSpec,
    NormMode,
    length_mask,
)
from model_training.models.outputs import UpstreamOutput
from model_training.models.student import DEMO_CONV_LAYERS

__all__ = [
    "DistilHubert",
    "DistilHubertConfig",
    "distilhubert",
    "distilhubert_paper",
    "distilhubert_small",
    "distilhubert_tiny",
]


@dataclass
class DistilHubertConfig:
    """Architecture of a `DistilHubert`; validated at construction, stored in checkpoints.

    Attributes:
        conv_layers: (channels, kernel, stride) of the CNN; HuBERT's by default (20 ms frames).
        conv_norm: "group" (HuBERT Base) or "layer" (HuBERT Large) CNN normalisation.
        conv_bias: bias in the convolutions.
        feature_layer_norm: LayerNorm on CNN features before the projection (HuBERT has one,
            DistilHuBERT does not).
        hidden_size: Transformer width (768).
        num_layers: Transformer layers (2).
        num_heads: attention heads (12).
        ffn_dim: feed-forward width (3072).
        pos_conv_kernel: kernel of the positional convolution (128).
        pos_conv_groups: its groups (16).
        dropout: dropout on residual branches and the projection (training only).
        attention_dropout: dropout on attention probabilities.
        teacher_dim: width D of the predicted teacher layers.
        target_layers: teacher hidden-state indices predicted by the heads (4, 8, 12).
        sample_rate: input sample rate in Hz.
    """

    conv_layers: list[ConvSpec] = field(default_factory=lambda: list(HUBERT_CONV_LAYERS))
    conv_norm: NormMode = "group"
    conv_bias: bool = False
    feature_layer_norm: bool = False
    hidden_size: int = 768
    num_layers: int = 2
    num_heads: int = 12
    ffn_dim: int = 3072
    pos_conv_kernel: int = 128
    pos_conv_groups: int = 16
    dropout: float = 0.1
    attention_dropout: float = 0.1
    teacher_dim: int = 768
    target_layers: tuple[int, ...] = (4, 8, 12)
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        self.conv_layers = [tuple(int(v) for v in spec) for spec in self.conv_layers]  # type: ignore[misc]
        self.target_layers = tuple(int(v) for v in self.target_layers)
        for spec in self.conv_layers:
            if len(spec) != 3 or min(spec) < 1:
                raise ValueError(f"conv layer spec must be (channels, kernel, stride) >= 1: {spec}")
        if self.conv_norm not in ("group", "layer"):
            raise ValueError(f"conv_norm must be 'group' or 'layer', found {self.conv_norm!r}")
        for name in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "ffn_dim",
            "pos_conv_kernel",
            "pos_conv_groups",
            "teacher_dim",
            "sample_rate",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        if self.hidden_size % self.pos_conv_groups:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by pos_conv_groups "
                f"{self.pos_conv_groups}"
            )
        if not self.target_layers or min(self.target_layers) < 0:
            raise ValueError(
                f"target_layers must be non-empty and >= 0, found {self.target_layers}"
            )
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), found {getattr(self, name)}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["conv_layers"] = [list(s) for s in self.conv_layers]
        d["target_layers"] = list(self.target_layers)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistilHubertConfig:
        return cls(**d)


class _SelfAttention(nn.Module):
    """Multi-head self-attention with a key padding mask (names as transformers' Hubert)."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (B, T, D); mask: (B, T) bool, True = valid key. Returns (B, T, D)."""
        b, t, d = x.shape

        def split(y: Tensor) -> Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask[:, None, None, :],
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(y.transpose(1, 2).reshape(b, t, d))


class _FeedForward(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, ffn_dim)
        self.output_dense = nn.Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.output_dense(self.dropout(F.gelu(self.intermediate_dense(x)))))


class _EncoderLayer(nn.Module):
    """HuBERT Base's post-LN Transformer layer."""

    def __init__(self, cfg: DistilHubertConfig) -> None:
        super().__init__()
        self.attention = _SelfAttention(cfg.hidden_size, cfg.num_heads, cfg.attention_dropout)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layer_norm = nn.LayerNorm(cfg.hidden_size)
        self.feed_forward = _FeedForward(cfg.hidden_size, cfg.ffn_dim, cfg.dropout)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (B, T, D); mask: (B, T) bool. Returns (B, T, D)."""
        x = self.layer_norm(x + self.dropout(self.attention(x, mask)))
        return self.final_layer_norm(x + self.feed_forward(x))


class DistilHubert(nn.Module):
    """CNN -> projection -> positional conv -> Transformer layers (+ layer-prediction heads).

    `forward` returns hidden_states = [transformer input (projection + positional conv +
    LayerNorm), layer 1, ..., layer N] with lengths and no logits; `predict_teacher_layers`
    maps the last hidden state to the K predicted teacher layers.
    """

    def __init__(self, config: DistilHubertConfig) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor = ConvFeatureExtractor(
            config.conv_layers, norm_mode=config.conv_norm, conv_bias=config.conv_bias
        )
        conv_dim = self.feature_extractor.out_channels
        self.feature_norm = nn.LayerNorm(conv_dim) if config.feature_layer_norm else None
        self.projection = nn.Linear(conv_dim, config.hidden_size)
        conv = nn.Conv1d(
            config.hidden_size,
            config.hidden_size,
            kernel_size=config.pos_conv_kernel,
            padding=config.pos_conv_kernel // 2,
            groups=config.pos_conv_groups,
        )
        self.pos_conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.encoder_norm = nn.LayerNorm(config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(_EncoderLayer(config) for _ in range(config.num_layers))
        self.heads = nn.Linear(config.hidden_size, len(config.target_layers) * config.teacher_dim)

    # -- upstream contract -------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.config.sample_rate / self.feature_extractor.hop_length

    @property
    def hidden_dims(self) -> list[int]:
        return [self.config.hidden_size] * (self.config.num_layers + 1)

    @property
    def layer_names(self) -> list[str]:
        return ["input"] + [f"transformer{i + 1}" for i in range(self.config.num_layers)]

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        """(B,) samples -> (B,) frames."""
        return self.feature_extractor.output_lengths(sample_lengths)

    def num_parameters(self, include_heads: bool = False) -> int:
        """Parameter count of the upstream; the training-only prediction heads on request."""
        total = sum(p.numel() for p in self.parameters())
        return total if include_heads else total - sum(p.numel() for p in self.heads.parameters())

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> UpstreamOutput:
        """waveforms: (B, S) float 16 kHz; lengths: (B,) long valid samples (None = all).

        Returns:
            UpstreamOutput: hidden_states N+1 tensors (B, T, hidden_size), zeros at padding;
            lengths (B,) frames; logits None.
        """
        features, frames = self.feature_extractor(waveforms, lengths)
        mask = length_mask(frames, features.shape[1])
        keep = mask.unsqueeze(-1).to(features.dtype)
        if self.feature_norm is not None:
            features = self.feature_norm(features)
        x = self.dropout(self.projection(features)) * keep
        pos = self.pos_conv(x.transpose(1, 2))
        if self.config.pos_conv_kernel % 2 == 0:
            pos = pos[..., :-1]  # an even kernel yields one extra frame ("same" padding)
        x = self.dropout(self.encoder_norm(x + F.gelu(pos).transpose(1, 2)))
        states = [x]
        for layer in self.layers:
            x = layer(x, mask)
            states.append(x)
        return UpstreamOutput(hidden_states=[s * keep for s in states], lengths=frames)

    def predict_teacher_layers(self, output: UpstreamOutput) -> Tensor:
        """(B, T, K, teacher_dim): predicted teacher layers `config.target_layers`, zeros at
        padded frames."""
        last = output.last_hidden_state
        b, t, _ = last.shape
        pred = self.heads(last).view(b, t, len(self.config.target_layers), self.config.teacher_dim)
        return pred * output.frame_mask()[:, :, None, None].to(pred.dtype)

    # -- initialisation from the teacher -----------------------------------------------

    @torch.no_grad()
    def init_from_teacher(self, teacher: nn.Module, copy_layers: bool = True) -> None:
        """Copy the teacher's CNN, projection, positional conv, encoder LayerNorm and (when
        `copy_layers`) its first `num_layers` Transformer layers, as DistilHuBERT does.

        Accepts our `HubertTeacher` (uses `.hubert`) or a transformers `HubertModel`.
        Raises ValueError naming the tensors whose shapes differ.
        """
        hubert = getattr(teacher, "hubert", teacher)
        self.feature_extractor.load_from_hf_feature_encoder(hubert.feature_extractor)
        pairs: list[tuple[nn.Module, nn.Module]] = [
            (self.projection, hubert.feature_projection.projection),
            (self.pos_conv, hubert.encoder.pos_conv_embed.conv),
            (self.encoder_norm, hubert.encoder.layer_norm),
        ]
        if self.feature_norm is not None:
            pairs.append((self.feature_norm, hubert.feature_projection.layer_norm))
        if copy_layers:
            if len(hubert.encoder.layers) < len(self.layers):
                raise ValueError(
                    f"teacher has {len(hubert.encoder.layers)} layers; need {len(self.layers)}"
                )
            pairs += list(zip(self.layers, hubert.encoder.layers, strict=False))
        for mine, theirs in pairs:
            source, target = theirs.state_dict(), mine.state_dict()
            bad = [
                f"{k}: expected {tuple(v.shape)}, found "
                f"{tuple(source[k].shape) if k in source else 'missing'}"
                for k, v in target.items()
                if k not in source or source[k].shape != v.shape
            ]
            if bad:
                raise ValueError(f"teacher weights do not fit {type(mine).__name__}: {bad}")
            mine.load_state_dict({k: source[k] for k in target})


def distilhubert(**overrides: Any) -> DistilHubert:
    """Generic builder: a `DistilHubert` from config fields (defaults = DistilHuBERT's)."""
    return DistilHubert(DistilHubertConfig(**overrides))


def distilhubert_paper(
    teacher_dim: int = 768, target_layers: tuple[int, ...] = (4, 8, 12), **overrides: Any
) -> DistilHubert:
    """DistilHuBERT as published: HuBERT CNN, 2 x 768 Transformer layers (12 heads, FFN
    3072), heads predicting teacher layers 4/8/12. 23.49M upstream parameters."""
    return distilhubert(teacher_dim=teacher_dim, target_layers=target_layers, **overrides)


def distilhubert_small(
    teacher_dim: int = 768, target_layers: tuple[int, ...] = (4, 8, 12), **overrides: Any
) -> DistilHubert:
    """A CPU-trainable baseline: the demo student's CNN, 2 x 256 Transformer layers."""
    params: dict[str, Any] = dict(
        conv_layers=list(DEMO_CONV_LAYERS),
        hidden_size=256,
        num_heads=4,
        ffn_dim=1024,
        pos_conv_kernel=64,
        pos_conv_groups=16,
    )
    params.update(overrides)
    return distilhubert(teacher_dim=teacher_dim, target_layers=target_layers, **params)


def distilhubert_tiny(
    teacher_dim: int = 32, target_layers: tuple[int, ...] = (1, 2), **overrides: Any
) -> DistilHubert:
    """A tiny model for tests (same CNN strides, so frame counts match HuBERT's)."""
    params: dict[str, Any] = dict(
        conv_layers=[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2,
        hidden_size=32,
        num_heads=4,
        ffn_dim=64,
        pos_conv_kernel=16,
        pos_conv_groups=4,
        dropout=0.0,
        attention_dropout=0.0,
    )
    params.update(overrides)
    return distilhubert(teacher_dim=teacher_dim, target_layers=target_layers, **params)
