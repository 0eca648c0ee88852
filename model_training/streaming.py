"""Exact incremental inference for causal bundles: any chunk size in, the offline frames out.

A causal bundle (unidirectional LSTM student with a streamable front-end, optionally a
unidirectional CTC head) never looks at later audio, so a stream can be advanced chunk by
chunk and give the very frames, log-probs and transcript of one offline pass:

- front-end: frame t reads samples [t * hop - left_context, t * hop + receptive_field) only
  (left_context = 0 for the layer-norm CNN, 640 for the log-mel front-end; zeros before the
  stream's start). A stream keeps the samples from its next frame's start minus left_context
  on and runs the front-end (`pad_left=False`) on exactly the window of the frames it can
  finish. Only (receptive field, hop, left context) and `streamable` are asked of the
  front-end, so another front-end with that contract plugs in.
- LSTMs: `(h, c)` per layer is carried from step to step (`models/rnn.run_lstm_from`).
- CTC: greedy decoding continues frame by frame (`decoding.GreedyCTCDecoder`): text is
  appended, never rewritten.

Many streams advance in one batched forward: `StreamingModel.step(states, chunks)` stacks
their states, runs each layer once (in phases where streams have different frame counts),
and splits the new states back. Offline-equality is tested in tests/test_streaming.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from model_training.bundle import Bundle
from model_training.decoding import (
    CharEmission,
    DecodeStep,
    GreedyCTCDecoder,
    WordTiming,
    best_path,
)
from model_training.models.ctc import ASRModel
from model_training.models.rnn import LSTMState, run_lstm_from

#: Most frames one stream advances per step (2 s at 50 Hz), so that a stream that sends
#: minutes at once (a streamed upload, a client far behind) holds the live streams sharing
#: its steps up by a bounded time; the rest waits for later steps.
DEFAULT_MAX_FRAMES_PER_STEP = 100


class StreamingNotSupportedError(ValueError):
    """The bundle cannot stream (a bidirectional LSTM, or a front-end with utterance statistics)."""


def streaming_problems(bundle: Bundle) -> list[str]:
    """Why `bundle` cannot stream; empty when it can."""
    upstream = bundle.upstream
    problems = []
    front = getattr(upstream, "feature_extractor", None)
    if not hasattr(upstream, "frames") or not hasattr(upstream, "lstms") or front is None:
        return [f"upstream {type(upstream).__name__} has no streamable front-end + LSTM stack"]
    config = getattr(upstream, "config", None)
    if getattr(config, "bidirectional", True):
        problems.append("the student's LSTMs are bidirectional (they read the future)")
    if not getattr(front, "streamable", False):
        problems.append(
            "the front-end normalises over the whole utterance (conv_norm='group'); "
            "a causal student uses conv_norm='layer'"
        )
    if bundle.has_ctc and bundle.model.head.config.bidirectional:
        problems.append("the CTC head's LSTM is bidirectional (head.bidirectional=false streams)")
    return problems


@dataclass
class StreamStep:
    """What one step produced for one stream.

    Attributes:
        start_frame: index (in the stream) of the first new frame.
        hidden_states: per layer (n, D_l) float32 for the n new frames (index 0 = front-end).
        log_probs: (n, V) CTC log-probs, None without a CTC head.
        energy_db: (n,) RMS level of each new frame's receptive field, dB full scale.
        text: transcript text appended by these frames (append-only).
        chars: characters emitted, with frame and time.
        words: words that became final.
    """

    start_frame: int
    hidden_states: list[Tensor]
    log_probs: Tensor | None
    energy_db: Tensor
    text: str = ""
    chars: list[CharEmission] = field(default_factory=list)
    words: list[WordTiming] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        """n, the new frames."""
        return int(self.energy_db.shape[0])


class StreamState:
    """One stream's carried state: pending samples, LSTM states, CTC decoder, counters.

    Build with `StreamingModel.new_state()`; advance with `StreamingModel.step`.
    """

    def __init__(
        self,
        lstm_states: list[LSTMState],
        head_state: LSTMState | None,
        decoder: GreedyCTCDecoder | None,
        device: torch.device,
    ) -> None:
        self.samples = torch.zeros(0, device=device)  # from the next frame's first sample on
        self.lstm_states = lstm_states  # per student LSTM: (h, c), each (1, 1, H)
        self.head_state = head_state  # (h, c), each (layers, 1, H)
        self.decoder = decoder
        self.frames = 0  # frames computed so far
        self.samples_in = 0  # samples received so far
        self.finished = False

    def append(self, chunk: Tensor) -> None:
        """Queue samples (S,) float32; the next step computes what they complete."""
        if self.finished:
            raise RuntimeError("stream already finished")
        if chunk.dim() != 1:
            raise ValueError(f"expected a mono chunk (S,), found shape {tuple(chunk.shape)}")
        if chunk.numel():
            self.samples = torch.cat([self.samples, chunk.to(self.samples.device, torch.float32)])
            self.samples_in += int(chunk.numel())


class StreamingModel:
    """Streams over one causal bundle (model in eval mode, on its device).

    Args:
        bundle: a causal bundle; `StreamingNotSupportedError` otherwise.
        max_frames_per_step: most frames a stream advances in one step.
    """

    def __init__(
        self, bundle: Bundle, max_frames_per_step: int = DEFAULT_MAX_FRAMES_PER_STEP
    ) -> None:
        problems = streaming_problems(bundle)
        if problems:
            raise StreamingNotSupportedError(
                f"bundle {bundle.name!r} cannot stream: " + "; ".join(problems)
            )
        if max_frames_per_step < 1:
            raise ValueError(f"max_frames_per_step must be >= 1, found {max_frames_per_step}")
        self.bundle = bundle
        self.upstream: nn.Module = bundle.upstream
        self.head = bundle.model.head if isinstance(bundle.model, ASRModel) else None
        front = self.upstream.feature_extractor
        self.receptive_field = int(front.receptive_field)
        self.hop = int(front.hop_length)
        self.left_context = int(getattr(front, "left_context", 0))
        self.max_frames_per_step = max_frames_per_step
        self.frame_seconds = 1.0 / bundle.frame_rate
        self.device = next(self.upstream.parameters()).device

    def new_state(self) -> StreamState:
        """A fresh stream (zero LSTM states, empty decoder)."""

        def zeros(layers: int, hidden: int) -> LSTMState:
            z = torch.zeros(layers, 1, hidden, device=self.device)
            return z, z.clone()

        lstm_states = [zeros(1, lstm.hidden_size) for lstm in self.upstream.lstms]
        head_state = decoder = None
        if self.head is not None:
            head_state = zeros(self.head.lstm.num_layers, self.head.lstm.hidden_size)
            assert self.bundle.vocab is not None
            decoder = GreedyCTCDecoder(self.bundle.vocab, self.frame_seconds)
        state = StreamState(lstm_states, head_state, decoder, self.device)
        state.samples = torch.zeros(self.left_context, device=self.device)  # before the start
        return state

    def ready_frames(self, state: StreamState) -> int:
        """Frames the stream's pending samples complete (before the per-step cap)."""
        n = state.samples.numel() - self.left_context
        return 0 if n < self.receptive_field else (n - self.receptive_field) // self.hop + 1

    def step(
        self, states: Sequence[StreamState], chunks: Sequence[Tensor] | None = None
    ) -> list[StreamStep]:
        """Append `chunks` (one (S,) tensor per stream, may be empty) and advance every stream
        by the frames its samples complete (at most `max_frames_per_step`), in one batch.

        Returns one `StreamStep` per stream (zero frames where a stream has too few samples).
        """
        if chunks is not None:
            if len(chunks) != len(states):
                raise ValueError(f"{len(chunks)} chunks for {len(states)} streams")
            for state, chunk in zip(states, chunks, strict=True):
                state.append(chunk)
        with torch.inference_mode():
            return self._advance(list(states))

    def finish(self, state: StreamState) -> DecodeStep:
        """End a stream: the last word becomes final. Samples short of a frame are dropped
        (as an offline pass drops them)."""
        state.finished = True
        return state.decoder.finish() if state.decoder is not None else DecodeStep()

    def feed(self, state: StreamState, chunk: Tensor) -> list[StreamStep]:
        """Append one chunk and step until its frames are done (one stream, no batching)."""
        steps = self.step([state], [chunk])
        while self.ready_frames(state):
            steps += self.step([state])
        return steps

    # ------------------------------------------------------------------ internals
    def _advance(self, states: list[StreamState]) -> list[StreamStep]:
        counts = [min(self.ready_frames(s), self.max_frames_per_step) for s in states]
        results = [self._empty(s) for s in states]
        active = [i for i, n in enumerate(counts) if n > 0]
        if not active:
            return results
        batch = [states[i] for i in active]
        n_new = [counts[i] for i in active]
        waves, energy = self._windows(batch, n_new)
        x, _ = self.upstream.frames(waves, pad_left=False)  # (A, T, P), T = max(n_new)
        hidden = [x]
        for layer, lstm in enumerate(self.upstream.lstms):
            stacked = _stack([s.lstm_states[layer] for s in batch])
            x, new_state = run_lstm_from(lstm, x, n_new, stacked)
            _unstack(new_state, [s.lstm_states for s in batch], layer)
            hidden.append(x)
        log_probs = None
        if self.head is not None:
            feats = self.head.features(hidden, torch.tensor(n_new))
            stacked = _stack([s.head_state for s in batch])
            out, new_state = run_lstm_from(self.head.lstm, feats, n_new, stacked)
            for row, s in enumerate(batch):
                s.head_state = (new_state[0][:, row : row + 1], new_state[1][:, row : row + 1])
            log_probs = self.head.classify(out)
        hidden_cpu = [h.float().cpu() for h in hidden]
        lp_cpu = log_probs.cpu() if log_probs is not None else None
        for row, (i, s, n) in enumerate(zip(active, batch, n_new, strict=True)):
            step = StreamStep(
                start_frame=s.frames,
                hidden_states=[h[row, :n] for h in hidden_cpu],
                log_probs=lp_cpu[row, :n] if lp_cpu is not None else None,
                energy_db=energy[row, :n],
            )
            if s.decoder is not None and step.log_probs is not None:
                decoded = s.decoder.push(*best_path(step.log_probs))
                step.text, step.chars, step.words = decoded.text, decoded.chars, decoded.words
            s.samples = s.samples[n * self.hop :]
            s.frames += n
            results[i] = step
        return results

    def _windows(self, batch: list[StreamState], n_new: list[int]) -> tuple[Tensor, Tensor]:
        """The samples the new frames read (left context included), zero-padded: (A, S), and
        the level of each frame's receptive field (A, T)."""
        ctx = self.left_context
        lengths = [ctx + self.receptive_field + (n - 1) * self.hop for n in n_new]
        waves = torch.zeros(len(batch), max(lengths), device=self.device)
        for row, (s, length) in enumerate(zip(batch, lengths, strict=True)):
            waves[row, :length] = s.samples[:length]
        frames = waves[:, ctx:].unfold(1, self.receptive_field, self.hop)  # (A, T, RF)
        energy = 10.0 * torch.log10(frames.pow(2).mean(dim=-1).clamp_min(1e-10))
        return waves, energy.cpu()

    def _empty(self, state: StreamState) -> StreamStep:
        dims = [int(d) for d in self.bundle.config.get("hidden_dims") or []]
        vocab = len(self.bundle.vocab) if self.bundle.vocab is not None else 0
        return StreamStep(
            start_frame=state.frames,
            hidden_states=[torch.zeros(0, d) for d in dims],
            log_probs=torch.zeros(0, vocab) if self.head is not None else None,
            energy_db=torch.zeros(0),
        )


def _stack(states: list[LSTMState]) -> LSTMState:
    """Per-stream (h, c), each (L, 1, H) -> batched (L, B, H)."""
    return torch.cat([h for h, _ in states], dim=1), torch.cat([c for _, c in states], dim=1)


def _unstack(state: LSTMState, targets: list[list[LSTMState]], layer: int) -> None:
    """Batched (L, B, H) -> each stream's `targets[row][layer]`."""
    h, c = state
    for row, per_stream in enumerate(targets):
        per_stream[layer] = (h[:, row : row + 1], c[:, row : row + 1])
