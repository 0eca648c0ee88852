#!/usr/bin/env bash
# `make demo-model`: the whole pipeline on a 2-core CPU machine (CUDA when present), resumable at
# every stage: each stage leaves runs/demo/stamps/<stage> when it has finished, and the
# long ones (synth, teacher pretraining, targets, distillation, fine-tuning) also resume from
# their own partial outputs when stopped half-way. Run it again to continue.
#
#   synthetic corpus -> mini HuBERT teacher -> target cache -> students (CE, KD, DKD b1, DKD b4,
#   DistilHuBERT-style features) -> the same CTC downstream on each, on the teacher and on fbank
#   -> WER/CER on the dev split -> results table -> best student exported to models/default.
#
# Sizes are environment variables so a GPU machine can run the real-size demo:
#   HOURS (10), DISTILL_STEPS (config's), CTC_HOURS (hours of train audio for the CTC heads),
#   CTC_STEPS, OUT (runs/demo), BUNDLE (models/default), SEED (0).
set -euo pipefail
cd "$(dirname "$0")/.."

HL=${HL:-.venv/bin/hubert-lstm}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/demo}
DATA=${DATA:-data/synth}
HOURS=${HOURS:-10}
SEED=${SEED:-0}
DISTILL_STEPS=${DISTILL_STEPS:-}
CTC_HOURS=${CTC_HOURS:-2}
CTC_STEPS=${CTC_STEPS:-1500}
BUNDLE=${BUNDLE:-models/default}
STUDENTS=${STUDENTS:-"ce kd dkd_b1 dkd_b4 feature"}
STAMPS=$OUT/stamps
mkdir -p "$STAMPS"

stage() {  # stage NAME COMMAND...: run once; a finished stage is skipped on the next run
  local name=$1; shift
  if [ -f "$STAMPS/$name" ]; then echo "== $name: done, skipping"; return; fi
  echo "== $name: $(date -u +%H:%M:%S) $*"
  "$@"
  date -u +%FT%TZ > "$STAMPS/$name"
}

stage synth "$HL" data synth --out "$DATA" --hours "$HOURS" --seed "$SEED" --no-progress

stage teacher "$HL" teacher pretrain --manifest "$DATA/train.tsv" --out "$OUT/teacher" \
  --config configs/teacher/demo.yaml
stage teacher_dev_labels "$HL" teacher labels --kmeans "$OUT/teacher/kmeans.safetensors" \
  --manifest "$DATA/dev.tsv" --out "$OUT/teacher/labels/dev.km"
stage targets_train "$HL" targets --teacher "$OUT/teacher" --manifest "$DATA/train.tsv" \
  --out "$OUT/targets/train" --top-k 100 --layers 2,4,6
stage targets_dev "$HL" targets --teacher "$OUT/teacher" --manifest "$DATA/dev.tsv" \
  --out "$OUT/targets/dev" --top-k 100 --layers 2,4,6

for s in $STUDENTS; do
  extra=()
  [ -n "$DISTILL_STEPS" ] && extra=(--set "optim.max_steps=$DISTILL_STEPS")
  stage "distill_$s" "$HL" distill --config "configs/distill/demo_$s.yaml" \
    --set "run_dir=$OUT/distill_$s" "${extra[@]}"
done

# The CTC heads train on the first CTC_HOURS of the (shuffled) training manifest.
stage ctc_manifest "$PY" scripts/subset_manifest.py "$DATA/train.tsv" "$OUT/ctc_train.tsv" \
  --hours "$CTC_HOURS"

finetune() {  # finetune NAME UPSTREAM
  stage "ctc_$1" "$HL" finetune-ctc --upstream "$2" --train "$OUT/ctc_train.tsv" \
    --dev "$DATA/dev.tsv" --out "$OUT/ctc_$1" --config configs/ctc/demo.yaml \
    --max-steps "$CTC_STEPS" --feature-cache memory
  stage "eval_$1" "$HL" evaluate --model "$OUT/ctc_$1" --manifest "$DATA/dev.tsv" \
    --output "$OUT/eval/$1.dev.json"
  stage "eval_unseen_$1" "$HL" evaluate --model "$OUT/ctc_$1" \
    --manifest "$DATA/test_unseen.tsv" --output "$OUT/eval/$1.test_unseen.json"
}
mkdir -p "$OUT/eval"
finetune fbank fbank
finetune teacher "$OUT/teacher"
for s in $STUDENTS; do finetune "$s" "$OUT/distill_$s"; done

stage results "$PY" scripts/demo_results.py --runs "$OUT" --students "$STUDENTS" \
  --out-json "$OUT/results.json" --out-md docs/results.md
stage export "$PY" scripts/demo_export.py --runs "$OUT" --results "$OUT/results.json" \
  --out "$BUNDLE" --test-manifest "$DATA/test_unseen.tsv"
echo "== demo model ready in $BUNDLE; table in docs/results.md"
