"""Multiply-accumulates (MACs) per audio second, counted by running a model once.

`torch.utils.flop_counter.FlopCounterMode` counts convolutions, matmuls and attention but not
the fused LSTM kernels on some builds (checked on a bare `nn.LSTM` by
`flop_counter_counts_lstm`, never assumed); where it misses them, the LSTM MACs are added from
the module shapes and the steps that actually ran (4 * H * (D_in + H) per step, direction and
layer). FFTs are not counted (the log-mel front-end's are under 1 MMAC per audio second).
Used by `hubert-lstm model-info` and `benchmarks/model_speed.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.flop_counter import FlopCounterMode


def lstm_macs(module: nn.Module, steps: int) -> int:
    """MACs of an (optionally bidirectional, multi-layer) LSTM over `steps` batch-time steps.

    Per step, direction and layer: the four gates' input and recurrent matmuls,
    4 * H * (D_in + H); D_in is the input size for layer 0 and H * directions above it.
    """
    hidden = int(module.hidden_size)
    dirs = 2 if module.bidirectional else 1
    total = 0
    for layer in range(int(module.num_layers)):
        d_in = int(module.input_size) if layer == 0 else hidden * dirs
        total += 4 * hidden * (d_in + hidden) * dirs
    return total * steps


def _is_lstm(module: nn.Module) -> bool:
    return isinstance(module, nn.LSTM) or type(module).__name__ == "LSTM"


def flop_counter_counts_lstm() -> bool:
    """Whether FlopCounterMode sees an LSTM's matmuls on this build (checked, not assumed)."""
    lstm = nn.LSTM(8, 8, batch_first=True).eval()
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        lstm(torch.randn(1, 4, 8))
    return counter.get_total_flops() > 0


def count_macs(
    model: nn.Module,
    x: Tensor,
    call: Callable[[nn.Module, Tensor], Any] | None = None,
    *,
    sample_rate: int = 16000,
    count_lstm: bool | None = None,
) -> dict[str, Any]:
    """Run `call(model, x)` (default `model(x)`) once on x (B, S) and count MACs per audio second.

    Returns `macs_per_audio_second`, a breakdown `by_module` (top-level submodules) and `by_op`,
    and `lstm_macs_analytic` (0 where FlopCounterMode counted the LSTMs itself).
    """
    if count_lstm is None:
        count_lstm = flop_counter_counts_lstm()
    call = call or (lambda m, inp: m(inp))
    lstm_steps: dict[str, int] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(_module: nn.Module, args: tuple[Any, ...], _out: Any) -> None:
            inp = args[0]
            if isinstance(inp, PackedSequence):
                steps = int(inp.data.shape[0])
            else:
                steps = int(inp.shape[0] * inp.shape[1]) if inp.dim() == 3 else int(inp.shape[0])
            lstm_steps[name] = lstm_steps.get(name, 0) + steps

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if _is_lstm(m)]
    counter = FlopCounterMode(display=False)
    try:
        with torch.inference_mode(), counter:
            call(model, x)
    finally:
        for h in handles:
            h.remove()
    audio_seconds = x.shape[0] * x.shape[1] / sample_rate
    by_module: dict[str, float] = {}
    by_op: dict[str, float] = {}
    root = type(model).__name__
    for key, ops in counter.get_flop_counts().items():
        parts = key.split(".")
        if key == "Global":
            for op, flops in ops.items():
                by_op[str(op)] = by_op.get(str(op), 0.0) + flops / 2 / audio_seconds
        elif len(parts) == 2 and parts[0] == root:
            by_module[parts[1]] = sum(ops.values()) / 2 / audio_seconds
    total = counter.get_total_flops() / 2 / audio_seconds
    lstm_total = 0.0
    if not count_lstm:
        modules = dict(model.named_modules())
        for name, steps in lstm_steps.items():
            macs = lstm_macs(modules[name], steps) / audio_seconds
            lstm_total += macs
            top = name.split(".")[0] + " (LSTM, analytic)"
            by_module[top] = by_module.get(top, 0.0) + macs
        if lstm_total:
            by_op["lstm (analytic)"] = lstm_total
        total += lstm_total
    return {
        "macs_per_audio_second": total,
        "by_module": by_module,
        "by_op": by_op,
        "lstm_macs_analytic": lstm_total,
        "counted_on": f"batch {x.shape[0]}, {x.shape[1] / sample_rate:g} s input, CPU fp32",
    }


def fold_parametrizations(model: nn.Module) -> nn.Module:
    """Bake every parametrization (e.g. HuBERT's weight-normed positional conv) into plain
    weights, as a deployed model would; FlopCounterMode cannot trace parametrizations."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def gmac_per_audio_second(
    model: nn.Module, call: Callable[[nn.Module, Tensor], Any] | None = None, seconds: float = 1.0
) -> float:
    """GMAC per audio second of `model` (on the CPU, eval mode) over one `seconds` input."""
    x = torch.randn(1, int(seconds * 16000)) * 0.1
    return count_macs(fold_parametrizations(model.eval()), x, call)["macs_per_audio_second"] / 1e9
