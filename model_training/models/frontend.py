"""A light front-end for the student: log-mel energies and a small convolutional subsampler.

HuBERT's 512-channel waveform CNN is about 2.45 GMAC per audio second, 78% of the paper
student's compute (docs/performance.md). This front-end computes 80 log-mel energies every
10 ms (25 ms Hann windows, an FFT), then a few 1-D convolutions over those frames, the last one
striding by 2 to HuBERT's 50 Hz: about 0.02 GMAC per audio second at 256 channels.

It gives HuBERT's frames exactly: frame t ends at sample 320 t + 400 and the frame count is
floor((S - 400) / 320) + 1, as `conv_output_lengths` gives for HuBERT's CNN, so teacher targets
line up frame by frame. It is causal in the sense that matters for streaming: frame t depends
only on samples before 320 t + 400 (the same latency as HuBERT's CNN), reaching back
`left_context` samples (zeros before the start of the input). There is no per-utterance
statistic (a LayerNorm over channels normalises each frame on its own), so

- padding is exact: a padded batch gives each row's unpadded result at every valid frame;
- it streams exactly: the whole front-end is a stack of unpadded strided windows over the input
  with `left_context` zeros in front, so keeping the last samples of a stream as state and
  running `forward(..., pad_left=False)` on the tail plus each new chunk gives the offline frames
  (`stream_frames` below shows how; tested).

    waveforms (B, S) -> [left_context zeros | samples] -> LogMel (B, N, n_mels) at 100 Hz
        -> per layer: Conv1d(kernel, stride) -> LayerNorm(channels) -> GELU
        -> features (B, T, channels) at 50 Hz, zeros at padded frames; frame lengths (B,)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model_training.models.cnn import ConvSpec, conv_output_lengths, length_mask, validate_waveforms
from model_training.models.fbank import FbankConfig, LogMel

# (channels, kernel, stride) over the 100 Hz log-mel frames; the product of strides times the
# mel hop must be 320 samples (50 Hz).
LOGMEL_CONV_LAYERS: tuple[ConvSpec, ...] = ((256, 3, 1), (256, 3, 2))
FRAME_HOP = 320  # HuBERT's hop at 16 kHz
FRAME_WINDOW = 400  # HuBERT's receptive field: frame t ends at sample 320 t + 400
_MEL_FIELDS = ("n_mels", "win_length", "hop_length", "n_fft", "f_min", "f_max", "sample_rate")


@dataclass
class LogMelFrontendConfig:
    """Architecture of a `LogMelFrontend`; validated at construction.

    Attributes:
        n_mels: mel bands per 10 ms frame.
        win_length: analysis window in samples (400 = 25 ms; must equal HuBERT's 400).
        hop_length: samples between mel frames (160 = 10 ms).
        n_fft: FFT size (>= win_length).
        f_min, f_max: mel range in Hz (f_max None = Nyquist).
        conv_layers: (channels, kernel, stride) per convolution over the mel frames; the
            strides multiply with hop_length to 320 samples (50 Hz).
        sample_rate: input sample rate in Hz.
    """

    n_mels: int = 80
    win_length: int = 400
    hop_length: int = 160
    n_fft: int = 512
    f_min: float = 20.0
    f_max: float | None = None
    conv_layers: list[ConvSpec] = field(default_factory=lambda: list(LOGMEL_CONV_LAYERS))
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        self.conv_layers = [tuple(int(v) for v in spec) for spec in self.conv_layers]  # type: ignore[misc]
        # the mel analysis has the fbank baseline's parameters and checks
        FbankConfig(**{k: getattr(self, k) for k in _MEL_FIELDS}, stack=1)
        if self.win_length != FRAME_WINDOW:
            raise ValueError(
                f"win_length must be {FRAME_WINDOW} (frame t ends at sample 320 t + 400, as in "
                f"HuBERT's CNN), found {self.win_length}"
            )
        if not self.conv_layers:
            raise ValueError("conv_layers must not be empty")
        for spec in self.conv_layers:
            if len(spec) != 3 or min(spec) < 1:
                raise ValueError(f"conv layer spec must be (channels, kernel, stride) >= 1: {spec}")
        if self.hop_length * self.stride != FRAME_HOP:
            raise ValueError(
                f"hop_length x conv strides must be {FRAME_HOP} samples (50 Hz), found "
                f"{self.hop_length} x {self.stride}"
            )

    @property
    def stride(self) -> int:
        """Mel frames per output frame (the product of the conv strides)."""
        out = 1
        for _, _, stride in self.conv_layers:
            out *= stride
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (inverse: `from_dict`)."""
        d = asdict(self)
        d["conv_layers"] = [list(s) for s in self.conv_layers]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogMelFrontendConfig:
        """Build from `to_dict` output (or a subset of it); unknown keys are an error."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown LogMelFrontendConfig fields: {sorted(unknown)}")
        return cls(**d)


class _ConvLayer(nn.Module):
    """Conv1d -> LayerNorm over channels (per frame) -> GELU."""

    def __init__(self, in_ch: int, spec: ConvSpec) -> None:
        super().__init__()
        out_ch, kernel, stride = spec
        self.conv = nn.Conv1d(in_ch, out_ch, kernel_size=kernel, stride=stride)
        self.norm = nn.LayerNorm(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T_in, C_in) -> (B, T_out, C_out)."""
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        return F.gelu(self.norm(x))


class LogMelFrontend(nn.Module):
    """Log-mel + conv subsampler with the interface of `ConvFeatureExtractor`.

    forward(waveforms (B, S), lengths (B,)) -> (features (B, T, C_last), frame_lengths (B,))
    """

    def __init__(self, config: LogMelFrontendConfig | None = None) -> None:
        super().__init__()
        self.config = config or LogMelFrontendConfig()
        c = self.config
        self.log_mel = LogMel(*(getattr(c, k) for k in _MEL_FIELDS))
        layers = []
        in_ch = c.n_mels
        for spec in c.conv_layers:
            layers.append(_ConvLayer(in_ch, spec))
            in_ch = spec[0]
        self.conv_layers = nn.ModuleList(layers)
        self.out_channels = in_ch
        # The whole front-end as unpadded strided windows over the (left-padded) samples:
        # the mel analysis first, then each convolution, in samples of its input.
        self.specs: tuple[ConvSpec, ...] = (
            (c.n_mels, c.win_length, c.hop_length),
            *c.conv_layers,
        )

    @property
    def hop_length(self) -> int:
        """Samples between output frames (320)."""
        return self.config.hop_length * self.config.stride

    @property
    def receptive_field(self) -> int:
        """Samples needed for the first output frame of an input (400, as HuBERT's CNN)."""
        return self.config.win_length

    @property
    def streamable(self) -> bool:
        """Always: no per-utterance statistic, frame t reads samples before 320 t + 400 only."""
        return True

    @property
    def left_context(self) -> int:
        """Samples before 320 t that frame t reads (zeros before the start of the input)."""
        field_ = 1
        for _, kernel, stride in reversed(self.specs):
            field_ = (field_ - 1) * stride + kernel
        return field_ - self.config.win_length

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """(B,) samples -> (B,) frames: floor((S - 400) / 320) + 1, 0 below 400 samples."""
        return conv_output_lengths(lengths + self.left_context, self.specs)

    def forward(
        self, waveforms: Tensor, lengths: Tensor | None = None, *, pad_left: bool = True
    ) -> tuple[Tensor, Tensor]:
        """waveforms: (B, S) float; lengths: (B,) long valid samples (None = all S).

        pad_left=False: the input already starts with its `left_context` samples of history
        (a stream's tail, see `stream_frames`); the output then has the frames whose windows
        end inside the input, and lengths count those.

        Returns:
            features: (B, T, C_last), zeros at padded frames.
            frame_lengths: (B,) long.
        """
        ctx = self.left_context
        lengths = validate_waveforms(
            waveforms, lengths, self.receptive_field + (0 if pad_left else ctx)
        )
        x = F.pad(waveforms, (ctx, 0)) if pad_left else waveforms
        padded_lengths = lengths + ctx if pad_left else lengths
        x = self.log_mel(x)  # (B, N, n_mels) float32
        for layer in self.conv_layers:
            x = layer(x)
        frames = conv_output_lengths(padded_lengths, self.specs)
        x = x * length_mask(frames, x.shape[1]).unsqueeze(-1).to(x.dtype)
        return x, frames


def stream_frames(frontend: LogMelFrontend, chunks: list[Tensor]) -> Tensor:
    """Run `frontend` over a stream of (S_i,) chunks, chunk by chunk; returns (T, C).

    The state between chunks is the samples not yet consumed: after emitting frames up to t,
    everything from sample 320 (t + 1) - left_context on is kept. Equals the offline
    `frontend(cat(chunks)[None])` frames (tested); shows the contract a streaming engine uses.
    """
    hop, ctx, win = frontend.hop_length, frontend.left_context, frontend.receptive_field
    buffer = torch.zeros(ctx)  # the zeros before the start of the stream
    outputs = []
    for chunk in chunks:
        buffer = torch.cat([buffer, chunk.float()])
        if buffer.numel() < ctx + win:
            continue
        feats, frames = frontend(buffer[None], pad_left=False)
        count = int(frames[0])
        outputs.append(feats[0, :count])
        buffer = buffer[count * hop :]
    if not outputs:
        return torch.zeros(0, frontend.out_channels)
    return torch.cat(outputs)
