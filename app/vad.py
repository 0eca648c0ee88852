"""Turn detection (`server_vad`) from the model's own CTC blank posteriors plus energy.

A frame is voiced when its level is over an energy floor AND the CTC head is confident it is
not blank (1 - p(blank) >= threshold): energy alone fires on noise, and a CTC head puts
most frames of speech on blank too, so speech is "a voiced frame within the last
`silence_duration_ms`". Speech starts at the first voiced frame (reported `prefix_padding_ms`
earlier, as OpenAI's `audio_start_ms` includes the padding) and stops once
`silence_duration_ms` pass without one. Bundles without a CTC head use energy alone.

The energy floor follows the threshold as OpenAI describes it ("a higher threshold will
require louder audio"): floor = -70 dBFS + 50 dB x threshold, so -45 dBFS at the default 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from model_training.streaming import StreamStep


@dataclass
class VadSettings:
    """OpenAI's server_vad parameters (defaults as OpenAI documents them)."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], found {self.threshold}")
        if self.prefix_padding_ms < 0 or self.silence_duration_ms < 0:
            raise ValueError("prefix_padding_ms and silence_duration_ms must be >= 0")

    @property
    def energy_floor_db(self) -> float:
        """Frames quieter than this never count as speech."""
        return -70.0 + 50.0 * self.threshold


@dataclass
class VadEvent:
    """Speech started or stopped, at `ms` on the session's audio timeline, decided at the
    stream's frame `frame` (a stop ends the buffer after that frame)."""

    kind: Literal["started", "stopped"]
    ms: int
    frame: int


class CTCEnergyVAD:
    """Frame-by-frame speech detector over `StreamStep`s (see module docstring)."""

    def __init__(self, settings: VadSettings, frame_ms: float, blank_id: int = 0) -> None:
        self.settings = settings
        self.frame_ms = frame_ms
        self.blank_id = blank_id
        self.speaking = False
        self._last_voiced_ms = 0.0

    def reset(self) -> None:
        """A new buffer begins (after a commit or clear)."""
        self.speaking = False

    def update(self, step: StreamStep, origin_ms: float, floor_ms: float) -> list[VadEvent]:
        """Events for the step's frames. `origin_ms`: session time of the stream's frame 0;
        `floor_ms`: start of the current buffer (prefix padding never reaches before it)."""
        events: list[VadEvent] = []
        s = self.settings
        floor = s.energy_floor_db
        nonblank = None
        if step.log_probs is not None and step.num_frames:
            # numpy, not torch: this runs on the event loop (app/torch_worker.py)
            nonblank = 1.0 - np.exp(step.log_probs[:, self.blank_id].numpy())
        energy = step.energy_db.numpy()
        for i in range(step.num_frames):
            frame = step.start_frame + i
            start_ms = origin_ms + frame * self.frame_ms
            end_ms = start_ms + self.frame_ms
            voiced = float(energy[i]) >= floor and (
                nonblank is None or float(nonblank[i]) >= s.threshold
            )
            if voiced:
                if not self.speaking:
                    self.speaking = True
                    begin = max(floor_ms, start_ms - s.prefix_padding_ms)
                    events.append(VadEvent("started", math.floor(begin), frame))
                self._last_voiced_ms = end_ms
            elif self.speaking and end_ms - self._last_voiced_ms >= s.silence_duration_ms:
                self.speaking = False
                events.append(VadEvent("stopped", math.floor(end_ms), frame))
        return events
