"""A log-mel filterbank upstream: the parameter-free baseline of the SUPERB ASR protocol.

80 log-mel bands from 25 ms windows every 10 ms (100 Hz), two consecutive frames stacked into
one 20 ms frame (50 Hz, 160 values), with per-utterance mean/variance normalisation over the
valid frames. Frame t starts at sample 320 t, like HuBERT's CNN, and the frame count equals
the CNN's (`conv_output_lengths` with HuBERT's layers), so every upstream gives the same T and
a CTC head sees the same time axis. Samples past an item's length are zeroed first, so a padded
batch gives each item's unpadded result at every valid frame.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torchaudio.functional as AF
from torch import Tensor, nn

from model_training.models.cnn import conv_output_lengths, length_mask, validate_waveforms
from model_training.models.outputs import UpstreamOutput

_LOG_FLOOR = 1e-10


@dataclass
class FbankConfig:
    """Architecture of a `FbankUpstream` (no weights; everything follows from here).

    Attributes:
        n_mels: mel bands per 10 ms frame.
        stack: 10 ms frames stacked per output frame (2 -> 50 Hz at 16 kHz).
        win_length: analysis window in samples (400 = 25 ms).
        hop_length: samples between 10 ms frames (160).
        n_fft: FFT size (>= win_length).
        f_min, f_max: mel range in Hz (f_max None = Nyquist).
        cmvn: normalise each band to zero mean and unit variance per utterance.
        sample_rate: input sample rate in Hz.
    """

    n_mels: int = 80
    stack: int = 2
    win_length: int = 400
    hop_length: int = 160
    n_fft: int = 512
    f_min: float = 20.0
    f_max: float | None = None
    cmvn: bool = True
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        for name in ("n_mels", "stack", "win_length", "hop_length", "n_fft", "sample_rate"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")
        if self.n_fft < self.win_length:
            raise ValueError(f"n_fft must be >= win_length {self.win_length}, found {self.n_fft}")
        nyquist = self.sample_rate / 2
        f_max = self.f_max if self.f_max is not None else nyquist
        if not 0 <= self.f_min < f_max <= nyquist:
            raise ValueError(
                f"expected 0 <= f_min < f_max <= {nyquist}, found {self.f_min}, {self.f_max}"
            )

    @property
    def frame_hop(self) -> int:
        """Samples between output frames (320 by default)."""
        return self.hop_length * self.stack

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (inverse: `from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FbankConfig:
        """Build from `to_dict` output; unknown keys are an error."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown FbankConfig fields: {sorted(unknown)}")
        return cls(**d)


class LogMel(nn.Module):
    """Log-mel energies of Hann-windowed frames: (B, S) -> (B, N, n_mels), N = (S - win) // hop + 1.

    Frame n covers samples [n * hop, n * hop + win_length). Runs in float32 even under
    autocast: power spectra span too many octaves for bf16/fp16 matmuls, and this is a small
    share of any model's compute. No parameters (the window and filters follow from the
    arguments, so they are not saved).
    """

    def __init__(
        self,
        n_mels: int,
        win_length: int,
        hop_length: int,
        n_fft: int,
        f_min: float,
        f_max: float | None,
        sample_rate: int,
    ) -> None:
        super().__init__()
        self.win_length, self.hop_length, self.n_fft = win_length, hop_length, n_fft
        self.register_buffer("window", torch.hann_window(win_length), persistent=False)
        with torch.device("cpu"):  # torchaudio checks the filters' values (not on meta)
            mel = AF.melscale_fbanks(
                n_fft // 2 + 1,
                f_min,
                f_max if f_max is not None else sample_rate / 2,
                n_mels,
                sample_rate,
            )
        self.register_buffer("mel", mel, persistent=False)  # (n_fft // 2 + 1, n_mels)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, S) float samples (S >= win_length). Returns (B, N, n_mels) float32."""
        with torch.autocast(x.device.type, enabled=False):
            windows = x.float().unfold(-1, self.win_length, self.hop_length) * self.window
            power = torch.fft.rfft(windows, n=self.n_fft).abs().pow(2)  # (B, N, n_fft // 2 + 1)
            return torch.log(torch.matmul(power, self.mel).clamp(min=_LOG_FLOOR))


class FbankUpstream(nn.Module):
    """Log-mel features as a one-layer upstream.

    forward(waveforms (B, S), lengths (B,)) -> UpstreamOutput with
        hidden_states: [(B, T, n_mels * stack)], zeros at padded frames
        lengths: (B,) frames, equal to HuBERT's CNN output lengths at the default settings
    """

    def __init__(self, config: FbankConfig | None = None) -> None:
        super().__init__()
        self.config = config or FbankConfig()
        c = self.config
        self.log_mel = LogMel(
            c.n_mels, c.win_length, c.hop_length, c.n_fft, c.f_min, c.f_max, c.sample_rate
        )

    @property
    def sample_rate(self) -> int:
        """Input sample rate in Hz."""
        return self.config.sample_rate

    @property
    def frame_rate(self) -> float:
        """Output frames per second (50 by default)."""
        return self.config.sample_rate / self.config.frame_hop

    @property
    def hidden_dims(self) -> list[int]:
        """One hidden state of n_mels * stack values."""
        return [self.config.n_mels * self.config.stack]

    @property
    def layer_names(self) -> list[str]:
        """Names of the hidden states."""
        return ["fbank"]

    @property
    def receptive_field(self) -> int:
        """Samples one output frame needs (HuBERT's 400 at the default settings)."""
        return self.config.win_length

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        """(B,) samples -> (B,) frames: floor((S - win) / frame_hop) + 1, as HuBERT's CNN."""
        c = self.config
        return conv_output_lengths(sample_lengths, [(1, c.win_length, c.frame_hop)])

    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> UpstreamOutput:
        """waveforms: (B, S) float32 at `sample_rate`; lengths: (B,) valid samples (None = S)."""
        c = self.config
        lengths = validate_waveforms(waveforms, lengths, c.win_length)
        batch, samples = waveforms.shape
        frames = self.frame_lengths(lengths)
        t_max = int(frames.max())
        # Zero past each length (batch padding must look like silence), then pad so the
        # last output frame's second 10 ms window exists.
        x = waveforms.float() * length_mask(lengths, samples).to(waveforms.dtype)
        needed = (t_max * c.stack - 1) * c.hop_length + c.win_length
        x = nn.functional.pad(x, (0, max(0, needed - samples)))[:, :needed]
        logmel = self.log_mel(x)  # (B, N, n_mels)
        feats = logmel[:, : t_max * c.stack].reshape(batch, t_max, c.stack * c.n_mels)
        mask = length_mask(frames, t_max).unsqueeze(-1).to(feats.dtype)  # (B, T, 1)
        if c.cmvn:
            count = mask.sum(dim=1, keepdim=True).clamp(min=1.0)
            mean = (feats * mask).sum(dim=1, keepdim=True) / count
            centered = (feats - mean) * mask
            var = centered.pow(2).sum(dim=1, keepdim=True) / count
            feats = centered * torch.rsqrt(var + 1e-5)
        return UpstreamOutput(hidden_states=[feats * mask], lengths=frames)
