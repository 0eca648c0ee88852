"""Reduced-precision inference contexts, shared by evaluation and the service.

Measured on the 2-core AVX-512-BF16 CI machine (`benchmarks/profile_student.py`, and
`hubert-lstm evaluate --precision bf16` on the demo bundle's dev split): bf16 autocast on CPU
runs the students 1.4-2.1x faster; the demo bundle's dev CER moves from 55.2% to 55.3%. CPUs
without native bf16 can be slower in bf16, so it is never on by default.
"""

from __future__ import annotations

import contextlib

import torch

INFERENCE_PRECISIONS = ("fp32", "bf16", "fp16")


def inference_autocast(
    device: str | torch.device, precision: str = "fp32"
) -> contextlib.AbstractContextManager:
    """Autocast for inference: bf16 on CPU or CUDA, fp16 on CUDA only, nothing for fp32."""
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(f"precision must be one of {INFERENCE_PRECISIONS}, found {precision!r}")
    device_type = torch.device(device).type
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device_type != "cuda":
        raise ValueError("fp16 inference needs CUDA; use bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type, dtype=dtype)
