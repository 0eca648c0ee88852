#!/usr/bin/env bash
# The GPU path, proven on one GPU in one run (< 8 minutes): the CUDA tests, then model speed and
# the service under load on CUDA. Every result goes to benchmarks/results/gpu/ as JSON (+ PNG,
# the pytest report and nvidia-smi's view of the card), to be committed with the card's name.
#
#   bash scripts/gpu_check.sh            # uses .venv/bin/python (make setup); PY=... to change
#
# 1. pytest -m cuda (tests/test_cuda.py and every other test marked `cuda`): the batcher in fp16
#    (batched == one at a time == CPU), a real CUDA out-of-memory split, AMP distillation and CTC
#    steps (fp16 and bf16), the light front-end under fp16 autocast.          ~2 min
# 2. benchmarks/model_speed.py on CUDA: the paper-fast and paper students, DistilHuBERT and
#    HuBERT Base, fp32 / fp16 / bf16, batch 1, 16 and 64 x 10 s.                 ~3 min
# 3. benchmarks/service_load.py on CUDA (HLSTM_FP16=true, a random-init paper-fast-sized bundle):
#    batching up to 16 against no batching, 1 to 64 clients.                     ~2 min
# Without a GPU it says so and exits 2, running nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-benchmarks/results/gpu}

if [ ! -x "$PY" ]; then
    echo "gpu_check: $PY not found (run make setup, or set PY=path/to/python)" >&2
    exit 2
fi
if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: torch sees no CUDA GPU here; nothing was run (no GPU numbers)." >&2
    exit 2
fi
mkdir -p "$OUT"
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")' | tee "$OUT/device.txt"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
start=$SECONDS

echo "== 1/3 pytest -m cuda"
timeout 300 "$PY" -m pytest -m cuda -q -rs -p no:cacheprovider --junitxml "$OUT/cuda_tests.xml" tests

echo "== 2/3 model_speed on CUDA"
models=student_paper_fast,student_paper_fast_fp16,student_paper_fast_bf16
models+=,student_paper,student_paper_fp16,student_paper_bf16
models+=,distilhubert,distilhubert_fp16,distilhubert_bf16,hubert_base,hubert_base_fp16,hubert_base_bf16
timeout 300 "$PY" benchmarks/model_speed.py --devices cuda --models "$models" \
    --batch-sizes 1,16,64 --budget-s 150 --out "$OUT/model_speed.json"

echo "== 3/3 service_load on CUDA"
HLSTM_FP16=true timeout 240 "$PY" benchmarks/service_load.py --device cuda \
    --random-bundle paper_fast --max-batch-sizes 16 --levels 1,16,64 --window-s 8 \
    --out "$OUT/service_load.json"

echo "gpu_check: done in $((SECONDS - start)) s; results in $OUT/"
