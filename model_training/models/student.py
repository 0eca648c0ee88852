"""The LSTM student of de Oliveira & Gerkmann (arXiv 2309.09920).

A front-end -> LayerNorm + Linear projection
(hidden state 0) -> a stack of (bi)LSTM layers (hidden states 1..L) -> a linear head to the
teacher's C cluster logits, used only for distillation. The front-end is HuBERT's CNN
(initialisable from the teacher; the paper's) or, with `frontend="logmel"`, log-mel energies and
a small conv subsampler (`models/frontend.py`, 1/100 of the CNN's compute, same 50 Hz frames).
Padding never changes the outputs at valid frames (`models/rnn.py`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from model_training.models.cnn import (
    HUBERT_CONV_LAYERS,
    ConvFeatureExtractor,
    ConvSpec,
    NormMode,
    length_mask,
)
from model_training.models.frontend import LogMelFrontend, LogMelFrontendConfig
from model_training.models.outputs import UpstreamOutput
from model_training.models.rnn import run_lstm

FRONTENDS = ("cnn", "logmel")


@dataclass
class LSTMStudentConfig:
    """Architecture of an `LSTMStudent`; validated at construction, stored in checkpoints.

    Attributes:
        frontend: "cnn" (HuBERT's waveform CNN, the fields conv_*) or "logmel" (`LogMelFrontend`,
            configured by `logmel`).
        logmel: `LogMelFrontendConfig` fields for frontend "logmel" (empty = its defaults).
        conv_layers: (channels, kernel, stride) of the CNN; HuBERT's by default.
        conv_norm: "group" (HuBERT Base) or "layer" (HuBERT Large) normalisation in the CNN.
        conv_bias: bias in the convolutions (Base: False).
        proj_dim: width of the projection after the CNN (hidden state 0, the first LSTM's input).
        num_layers: number of LSTM layers.
        hidden_size: LSTM hidden size per direction.
        bidirectional: True for the paper's BiLSTM; False gives a causal (streamable) student.
        dropout: dropout on the projection and between LSTM layers (training only).
        num_classes: C, the teacher's cluster units; 0 means no head (a feature-only upstream).
        sample_rate: input sample rate in Hz.
    """

    conv_layers: list[ConvSpec] = field(default_factory=lambda: list(HUBERT_CONV_LAYERS))
    conv_norm: NormMode = "group"
    conv_bias: bool = False
    proj_dim: int = 512
    num_layers: int = 4
    hidden_size: int = 384
    bidirectional: bool = True
    dropout: float = 0.1
    num_classes: int = 500
    sample_rate: int = 16000
    frontend: str = "cnn"
    logmel: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.frontend not in FRONTENDS:
            raise ValueError(f"frontend must be one of {FRONTENDS}, found {self.frontend!r}")
        if self.frontend == "logmel":
            # validated and made explicit, so a saved config never depends on today's defaults
            self.logmel = LogMelFrontendConfig.from_dict(self.logmel).to_dict()
        elif self.logmel:
            raise ValueError(f"logmel options {sorted(self.logmel)} need frontend 'logmel'")
        self.conv_layers = [tuple(int(v) for v in spec) for spec in self.conv_layers]  # type: ignore[misc]
        for spec in self.conv_layers:
            if len(spec) != 3 or min(spec) < 1:
                raise ValueError(f"conv layer spec must be (channels, kernel, stride) >= 1: {spec}")
        if self.conv_norm not in ("group", "layer"):
            raise ValueError(f"conv_norm must be 'group' or 'layer', found {self.conv_norm!r}")
        for name in ("proj_dim", "num_layers", "hidden_size", "sample_rate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, found {self.num_classes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), found {self.dropout}")

    @property
    def output_dim(self) -> int:
        """Width of each LSTM layer's output."""
        return self.hidden_size * (2 if self.bidirectional else 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (inverse: `from_dict`)."""
        d = asdict(self)
        d["conv_layers"] = [list(s) for s in self.conv_layers]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LSTMStudentConfig:
        """Build from `to_dict` output; unknown keys are an error."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown LSTMStudentConfig fields: {sorted(unknown)}")
        return cls(**d)


class LSTMStudent(nn.Module):
    """CNN + (bi)LSTM student with per-layer hidden states.

    forward(waveforms (B, S), lengths (B,)) -> UpstreamOutput with
        hidden_states: [projection (B, T, proj_dim)] + L x (B, T, output_dim)
        lengths: (B,) frames
        logits: (B, T, C) when num_classes > 0
    """

    def __init__(self, config: LSTMStudentConfig) -> None:
        super().__init__()
        self.config = config
        self.feature_extractor: ConvFeatureExtractor | LogMelFrontend
        if config.frontend == "logmel":
            self.feature_extractor = LogMelFrontend(LogMelFrontendConfig.from_dict(config.logmel))
        else:
            self.feature_extractor = ConvFeatureExtractor(
                config.conv_layers, norm_mode=config.conv_norm, conv_bias=config.conv_bias
            )
        conv_dim = self.feature_extractor.out_channels
        self.feature_norm = nn.LayerNorm(conv_dim)
        self.projection = nn.Linear(conv_dim, config.proj_dim)
        self.dropout = nn.Dropout(config.dropout)
        in_dims = [config.proj_dim] + [config.output_dim] * (config.num_layers - 1)
        self.lstms = nn.ModuleList(
            nn.LSTM(d, config.hidden_size, batch_first=True, bidirectional=config.bidirectional)
            for d in in_dims
        )
        self.head = nn.Linear(config.output_dim, config.num_classes) if config.num_classes else None

    @property
    def sample_rate(self) -> int:
        """Input sample rate in Hz."""
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        """Frames per second (50 for HuBERT's CNN at 16 kHz)."""
        return self.config.sample_rate / self.feature_extractor.hop_length

    @property
    def hidden_dims(self) -> list[int]:
        """Width of each hidden state, index 0 = projection."""
        return [self.config.proj_dim] + [self.config.output_dim] * self.config.num_layers

    @property
    def layer_names(self) -> list[str]:
        """Names of the hidden states, in order."""
        return ["cnn_proj"] + [f"lstm{i + 1}" for i in range(self.config.num_layers)]

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        """(B,) samples -> (B,) frames, as produced by `forward`."""
        return self.feature_extractor.output_lengths(sample_lengths)

    @property
    def causal(self) -> bool:
        """True when no output frame depends on later audio (so the model can stream)."""
        return not self.config.bidirectional and bool(
            getattr(self.feature_extractor, "streamable", False)
        )

    def frames(
        self, waveforms: Tensor, lengths: Tensor | None = None, *, pad_left: bool = True
    ) -> tuple[Tensor, Tensor]:
        """The front-end: hidden state 0 (B, T, proj_dim), zeros at padding, and (B,) frames.

        pad_left=False: the input starts with the front-end's `left_context` samples of history
        (a stream's tail) instead of the zeros an utterance starts with."""
        feats, frame_lengths = self.feature_extractor(waveforms, lengths, pad_left=pad_left)
        mask = length_mask(frame_lengths, feats.shape[1]).unsqueeze(-1)
        return self.projection(self.feature_norm(feats)) * mask, frame_lengths

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> UpstreamOutput:
        """waveforms: (B, S) float32 at `sample_rate`; lengths: (B,) valid samples (None = S)."""
        x, frame_lengths = self.frames(waveforms, lengths)
        mask = length_mask(frame_lengths, x.shape[1]).unsqueeze(-1)
        hidden_states = [x]
        x = self.dropout(x)
        for i, lstm in enumerate(self.lstms):
            x = run_lstm(lstm, x, frame_lengths)
            hidden_states.append(x)
            if i + 1 < len(self.lstms):
                x = self.dropout(x)
        logits = self.head(x) * mask if self.head is not None else None
        return UpstreamOutput(hidden_states=hidden_states, lengths=frame_lengths, logits=logits)

    @torch.no_grad()
    def init_cnn_from(self, teacher: nn.Module) -> None:
        """Copy the teacher's CNN (and the projection's LayerNorm, and the projection when
        the widths match) into this student.

        Accepts a transformers `HubertModel`, anything with a `.hubert` attribute holding one
        (e.g. our `HubertTeacher`), or the feature encoder itself. A layer-norm (causal) student
        of a teacher without per-layer norms (HuBERT Base's group norm) takes the convolutions
        only and keeps its own fresh layer norms. ValueError for a log-mel front-end (nothing
        to copy: set `init_cnn_from_teacher: false`).
        """
        if not isinstance(self.feature_extractor, ConvFeatureExtractor):
            raise ValueError(
                f"the {self.config.frontend!r} front-end has no teacher CNN to copy; "
                "train it from scratch (distill: student.init_cnn_from_teacher: false)"
            )
        hubert = getattr(teacher, "hubert", teacher)
        encoder = getattr(hubert, "feature_extractor", hubert)
        source_has_layer_norms = any(
            k.endswith("1.layer_norm.weight") for k in encoder.state_dict()
        )
        conv_only = self.config.conv_norm == "layer" and not source_has_layer_norms
        self.feature_extractor.load_from_hf_feature_encoder(encoder, conv_only=conv_only)
        projection = getattr(hubert, "feature_projection", None)
        if projection is None:
            return
        norm = getattr(projection, "layer_norm", None)
        if isinstance(norm, nn.LayerNorm) and norm.weight.shape == self.feature_norm.weight.shape:
            self.feature_norm.load_state_dict(norm.state_dict())
        linear = getattr(projection, "projection", None)
        if isinstance(linear, nn.Linear) and linear.weight.shape == self.projection.weight.shape:
            self.projection.load_state_dict(linear.state_dict())


def lstm_student(**overrides: Any) -> LSTMStudent:
    """Generic builder: an `LSTMStudent` from config fields (defaults = the paper's)."""
    return LSTMStudent(LSTMStudentConfig(**overrides))


def lstm_student_paper(num_classes: int = 500, **overrides: Any) -> LSTMStudent:
    """The paper's student: HuBERT CNN (7 layers, 512 ch, 20 ms), 4 BiLSTM x 384, head to C.

    About 18M parameters with C = 500 (below DistilHuBERT's 23.49M).
    """
    return lstm_student(num_classes=num_classes, **overrides)


def lstm_student_paper_fast(num_classes: int = 500, **overrides: Any) -> LSTMStudent:
    """The paper's 4 BiLSTM x 384 on the light log-mel front-end (`models/frontend.py`).

    About 13.7M parameters and 0.70 GMAC per audio second with C = 500, against the paper
    student's 3.13 (`hubert-lstm model-info --config paper-fast`).
    """
    return lstm_student(num_classes=num_classes, **{"frontend": "logmel", **overrides})


# 128 channels: HuBERT's strides and kernels at a quarter of the CNN's 2.45 GMAC per audio
# second, so the demo teacher and students train on a 2-core CPU in minutes, not hours.
DEMO_CONV_LAYERS: list[ConvSpec] = [(128, 10, 5)] + [(128, 3, 2)] * 4 + [(128, 2, 2)] * 2


def lstm_student_small(num_classes: int = 100, **overrides: Any) -> LSTMStudent:
    """The demo student: HuBERT-shaped CNN at 128 channels, 3 BiLSTM x 256 (CPU-trainable)."""
    params: dict[str, Any] = dict(
        conv_layers=DEMO_CONV_LAYERS, proj_dim=256, num_layers=3, hidden_size=256
    )
    params.update(overrides)
    return lstm_student(num_classes=num_classes, **params)


def lstm_student_small_fast(num_classes: int = 100, **overrides: Any) -> LSTMStudent:
    """The demo student (3 BiLSTM x 256) on the light log-mel front-end at 128 channels."""
    params: dict[str, Any] = dict(
        frontend="logmel",
        logmel={"conv_layers": [(128, 3, 1), (128, 3, 2)]},
        proj_dim=256,
        num_layers=3,
        hidden_size=256,
    )
    params.update(overrides)
    return lstm_student(num_classes=num_classes, **params)


TINY_CONV_LAYERS: list[ConvSpec] = [(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2


def lstm_student_tiny(num_classes: int = 20, **overrides: Any) -> LSTMStudent:
    """A few-thousand-parameter student for tests (same strides, so same frame counts)."""
    params: dict[str, Any] = dict(
        conv_layers=TINY_CONV_LAYERS, proj_dim=16, num_layers=2, hidden_size=12, dropout=0.0
    )
    params.update(overrides)
    return lstm_student(num_classes=num_classes, **params)
