"""Padded batches through `nn.LSTM`, exact at valid frames, without packed sequences on CPU.

Padding must never change an utterance's outputs. The textbook way is packing, but on CPU a
packed sequence misses oneDNN's fused LSTM kernel and takes PyTorch's generic per-step path.
`benchmarks/lstm_cpu.py` on the 2-core CI machine (torch 2.14.1, 2 threads; the CTC head's
2-layer BiLSTM x 256, batch 16 of 150-250 frames): inference 193 ms packed, 139 ms here, 133 ms
for the same batch unpadded; forward + backward 1.25 s packed against 0.45 s here.

The path below: a trailing pad cannot reach a valid frame going forward in time, so the
forward direction runs on the padded batch as is. The backward direction runs forward in
time over each utterance reversed within its own length (the padding stays at the end), and
its outputs are reversed back. Bidirectional stacks go layer by layer, since each layer reads
both directions of the one below. CUDA keeps packing (cuDNN handles it natively), and so do
modules this path does not cover (dynamically quantized LSTMs, `proj_size`).
"""

from __future__ import annotations

import threading

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from model_training.models.cnn import length_mask

_GATE_PARAMS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
# Weightless (meta) one-layer LSTMs that functional_call runs with a layer's real weights;
# per thread, because functional_call swaps parameters on the module while it runs.
_templates = threading.local()


def run_lstm(lstm: nn.Module, x: Tensor, lengths: Tensor) -> Tensor:
    """Run a batch_first LSTM over a padded batch.

    Args:
        lstm: an `nn.LSTM` with `batch_first=True` (or any module returning `(output, state)`
            that accepts packed sequences, such as a dynamically quantized LSTM).
        x: (B, T, D_in) inputs, valid frames first.
        lengths: (B,) valid frames per row, at most T.
    Returns:
        (B, T, D_out): at valid frames what the row alone would give; zeros at padding.
    """
    total = x.shape[1]
    if bool((lengths == total).all()):
        return lstm(x)[0]  # nothing padded
    if x.device.type != "cpu" or type(lstm) is not nn.LSTM or lstm.proj_size:
        return run_packed(lstm, x, lengths)
    valid = length_mask(lengths, total)  # (B, T)
    if not lstm.bidirectional:
        return lstm(x)[0] * valid.unsqueeze(-1)
    steps = torch.arange(total, device=x.device)[None, :]
    # Row b reversed within its length: frame t <- frame lengths[b] - 1 - t (padding in place).
    reverse_index = torch.where(valid, lengths[:, None] - 1 - steps, steps).unsqueeze(-1)
    for layer in range(lstm.num_layers):
        if layer > 0:
            x = F.dropout(x, lstm.dropout, lstm.training)
        forward = _one_direction(lstm, layer, "", x)
        flipped = x.gather(1, reverse_index.expand_as(x))
        backward = _one_direction(lstm, layer, "_reverse", flipped)
        x = torch.cat([forward, backward.gather(1, reverse_index.expand_as(backward))], dim=-1)
    return x * valid.unsqueeze(-1)


def _one_direction(lstm: nn.LSTM, layer: int, suffix: str, x: Tensor) -> Tensor:
    """Layer `layer`, direction `suffix` ("" or "_reverse") of `lstm`, run forward in time."""
    names = _GATE_PARAMS if lstm.bias else _GATE_PARAMS[:2]
    params = {f"{name}_l0": getattr(lstm, f"{name}_l{layer}{suffix}") for name in names}
    return functional_call(_template(x.shape[-1], lstm.hidden_size, lstm.bias), params, (x,))[0]


def _template(input_size: int, hidden_size: int, bias: bool) -> nn.LSTM:
    cache = _templates.__dict__.setdefault("modules", {})
    key = (input_size, hidden_size, bias)
    if key not in cache:
        cache[key] = nn.LSTM(input_size, hidden_size, bias=bias, batch_first=True, device="meta")
    return cache[key]


def run_packed(lstm: nn.Module, x: Tensor, lengths: Tensor) -> Tensor:
    """The textbook path, packed sequences (always, even unpadded); same contract as run_lstm."""
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out = lstm(packed)[0]
    return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


LSTMState = tuple[Tensor, Tensor]  # (h, c), each (num_layers, B, H)


def run_lstm_from(
    lstm: nn.Module, x: Tensor, lengths: Tensor | list[int], state: LSTMState
) -> tuple[Tensor, LSTMState]:
    """Continue a unidirectional LSTM from `state` over a padded batch (streaming).

    Rows may have different numbers of new frames. The final state of a row must be the one
    after its own last valid frame, which one call over the padded batch cannot give (the
    cell state of a shorter row runs on through its padding). So the batch runs in phases
    at the distinct lengths: frames [0, l1) for all rows, [l1, l2) for rows longer than l1,
    and so on; each phase is one fused call, and the most common case (all rows equal) is one.

    Args:
        lstm: a unidirectional `nn.LSTM` with `batch_first=True` (or a quantized one).
        x: (B, T, D_in) new frames, valid frames first.
        lengths: (B,) new valid frames per row, at most T (0 leaves the row's state as is).
        state: (h, c), each (num_layers, B, H): the states after each row's previous frames.
    Returns:
        (B, T, H) outputs (zeros at padding) and the new (h, c).
    """
    if getattr(lstm, "bidirectional", False):
        raise ValueError("a bidirectional LSTM cannot be continued frame by frame")
    counts = [int(n) for n in (lengths.tolist() if isinstance(lengths, Tensor) else lengths)]
    h, c = state
    if len(set(counts)) == 1 and counts[0] == x.shape[1]:
        out, (h, c) = lstm(x, (h, c))
        return out, (h, c)
    h, c = h.clone(), c.clone()
    out = x.new_zeros(x.shape[0], x.shape[1], lstm.hidden_size)
    done = 0
    for upto in sorted(set(counts) - {0}):
        rows = torch.tensor([b for b, n in enumerate(counts) if n >= upto], device=x.device)
        seg, (h_r, c_r) = lstm(x[rows, done:upto], (h[:, rows], c[:, rows]))
        out[rows, done:upto] = seg
        h[:, rows], c[:, rows] = h_r, c_r
        done = upto
    return out, (h, c)
