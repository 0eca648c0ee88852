"""`run_lstm`: padded batches on CPU without packing, exact at valid frames, same gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from model_training.models import rnn
from model_training.models.rnn import run_lstm

LENGTHS = torch.tensor([9, 4, 7, 1, 9])


def packed_reference(lstm: nn.Module, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    return pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=x.shape[1])[0]


def make(bidirectional: bool, num_layers: int, bias: bool = True) -> tuple[nn.LSTM, torch.Tensor]:
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 5, num_layers=num_layers, bias=bias, batch_first=True,
                   bidirectional=bidirectional)  # fmt: skip
    x = torch.randn(len(LENGTHS), int(LENGTHS.max()), 6, requires_grad=True)
    return lstm, x


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_layers", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_packed_sequences_and_each_row_alone(bidirectional, num_layers, bias):
    lstm, x = make(bidirectional, num_layers, bias)
    out = run_lstm(lstm, x, LENGTHS)
    torch.testing.assert_close(out, packed_reference(lstm, x, LENGTHS), atol=1e-6, rtol=1e-5)
    for b, n in enumerate(LENGTHS.tolist()):
        alone = lstm(x[b : b + 1, :n])[0][0]
        torch.testing.assert_close(out[b, :n], alone, atol=1e-6, rtol=1e-5)
        assert not out[b, n:].any(), "padded frames must be zero"


def test_gradients_match_packed_sequences():
    lstm, x = make(bidirectional=True, num_layers=2)
    weights = [lstm.weight_hh_l0_reverse, lstm.weight_ih_l1, lstm.bias_hh_l1_reverse]
    ours = torch.autograd.grad(run_lstm(lstm, x, LENGTHS).square().sum(), [x, *weights])
    ref = torch.autograd.grad(packed_reference(lstm, x, LENGTHS).square().sum(), [x, *weights])
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_cpu_padded_batches_do_not_pack(monkeypatch):
    """The point of the module: on CPU the fused (oneDNN) LSTM runs, not the packed path."""

    def refuse(*args, **kwargs):
        raise AssertionError("packed sequences used on CPU")

    monkeypatch.setattr(rnn, "pack_padded_sequence", refuse)
    lstm, x = make(bidirectional=True, num_layers=2)
    run_lstm(lstm, x, LENGTHS)


def test_quantized_lstm_falls_back_to_packing():
    """Dynamic int8 LSTMs have no per-direction weights to split: they keep packing.

    (Their outputs are not batch-independent bit for bit anyway: dynamic quantization scales
    activations by each call's range.)
    """
    lstm, x = make(bidirectional=True, num_layers=2)
    quantized = torch.ao.quantization.quantize_dynamic(
        nn.Sequential(lstm), {nn.LSTM}, dtype=torch.qint8
    )[0]
    with torch.inference_mode():
        out = run_lstm(quantized, x.detach(), LENGTHS)
        torch.testing.assert_close(out, packed_reference(quantized, x.detach(), LENGTHS))
        for b, n in enumerate(LENGTHS.tolist()):
            alone = quantized(x[b : b + 1, :n].detach())[0][0]
            torch.testing.assert_close(out[b, :n], alone, atol=2e-2, rtol=0)


def test_unpadded_batch_is_the_plain_module_output():
    lstm, x = make(bidirectional=True, num_layers=2)
    full = torch.full((len(LENGTHS),), x.shape[1])
    torch.testing.assert_close(run_lstm(lstm, x, full), lstm(x)[0], atol=0, rtol=0)
