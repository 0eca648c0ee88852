"""Would ONNX Runtime serve the paper-fast student faster than PyTorch on this CPU?

The paper-fast student's compute is its LSTM stack (LayerNorm + projection + 4 BiLSTM x 384:
97% of its MACs; the log-mel front-end is the rest). This exports that stack to ONNX (the
TorchScript exporter, static shapes) and times ONNX Runtime's CPU provider against PyTorch fp32
and PyTorch bf16 autocast on the same features, interleaved, same thread count; the outputs are
compared too. ONNX Runtime is not a dependency of the service: install `onnxruntime onnx` to run
this (`pip install -e '.[onnx]'`).

    python benchmarks/onnx_runtime.py [--threads 1] [--batch-sizes 1,16] [--repeats 4]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import RESULTS_DIR, setup_logging, write_json
from torch import Tensor, nn

from model_training.models.student import LSTMStudent, lstm_student_paper_fast
from model_training.precision import inference_autocast


class LSTMStack(nn.Module):
    """The student after its front-end, for an unpadded batch: features (B, T, C) -> the
    projection and every LSTM layer's output (the student's hidden states)."""

    def __init__(self, student: LSTMStudent) -> None:
        super().__init__()
        self.student = student

    def forward(self, feats: Tensor) -> tuple[Tensor, ...]:
        s = self.student
        x = s.projection(s.feature_norm(feats))
        outs = [x]
        for lstm in s.lstms:
            x = lstm(x)[0]
            outs.append(x)
        return tuple(outs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-sizes", default="1,16")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--note", default="", help="free text for the JSON (machine load)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR / "onnx_runtime.json")
    args = p.parse_args(argv)
    try:
        import onnxruntime as ort
    except ImportError:
        print("onnxruntime is not installed: pip install onnxruntime onnx", file=sys.stderr)
        return 2
    setup_logging()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    stack = LSTMStack(lstm_student_paper_fast(num_classes=0).eval()).eval()
    channels = stack.student.feature_extractor.out_channels
    frames = int((args.seconds * 16000 - 400) // 320 + 1)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for batch in [int(b) for b in args.batch_sizes.split(",")]:
            feats = torch.randn(batch, frames, channels)
            path = Path(tmp) / f"stack{batch}.onnx"
            torch.onnx.export(stack, (feats,), str(path), dynamo=False, opset_version=17)
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            inputs = {session.get_inputs()[0].name: feats.numpy()}

            def run_torch(precision: str, x: Tensor = feats) -> Any:
                with torch.inference_mode(), inference_autocast("cpu", precision):
                    return stack(x)

            runners = {
                "onnxruntime_fp32": lambda s=session, i=inputs: s.run(None, i),
                "torch_fp32": lambda: run_torch("fp32"),
                "torch_bf16": lambda: run_torch("bf16"),
            }
            reference = run_torch("fp32")
            diff = max(
                float(np.abs(o - r.numpy()).max())
                for o, r in zip(session.run(None, inputs), reference, strict=True)
            )
            times: dict[str, list[float]] = {name: [] for name in runners}
            for fn in runners.values():
                fn()  # warm-up
            for r in range(args.repeats):
                names = list(runners)[r % 3 :] + list(runners)[: r % 3]
                for name in names:
                    start = time.perf_counter()
                    runners[name]()
                    times[name].append(time.perf_counter() - start)
            base = statistics.median(times["torch_fp32"])
            for name, samples in times.items():
                med = statistics.median(samples)
                results.append(
                    {
                        "runtime": name,
                        "batch": batch,
                        "seconds_per_call": med,
                        "samples_s": samples,
                        "audio_s_per_wall_s": batch * args.seconds / med,
                        "speedup_vs_torch_fp32": base / med,
                        "max_abs_diff_vs_torch_fp32": diff if name.startswith("onnx") else None,
                    }
                )
                print(f"b{batch} {name:18} {med:.3f} s  x{base / med:.2f} vs torch fp32")
    payload = {
        "settings": {
            "part": "LayerNorm + projection + 4 BiLSTM x 384 of lstm_student_paper_fast",
            "threads": args.threads,
            "seconds": args.seconds,
            "repeats": args.repeats,
            "onnxruntime": ort.__version__,
            "exporter": "torch.onnx.export(dynamo=False, opset 17), static shapes",
            "note": args.note,
        },
        "results": results,
    }
    write_json(args.out, "onnx_runtime", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
