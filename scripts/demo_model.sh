#!/usr/bin/env bash
# `make demo-model`: the whole pipeline on a 2-core CPU machine (CUDA when present), resumable at
# every stage: each stage leaves $OUT/stamps/<stage> when it has finished, and the long ones
# (synth, teacher pretraining, targets, distillation, fine-tuning) also resume from their own
# partial outputs when stopped half-way. Run it again to continue.
#
#   synthetic corpus -> mini HuBERT teacher -> target cache -> students (CE, KD, DKD b1, DKD b4,
#   DistilHuBERT-style features) -> the same CTC downstream on each, on the teacher and on fbank
#   -> WER/CER on dev and on unseen voices -> results table -> the best student (dev CER) and
#   fbank get a longer CTC head -> that student with its longer head to models/default.
#
# Sizes are environment variables (defaults: what fits a 2-core CPU in about two hours):
#   HOURS (10)           synthetic training hours (dev and test_unseen add 5% each)
#   TEACHER_STEPS (600)  mini-teacher pretraining steps
#   DISTILL_HOURS (2)    training audio the students see (targets are cached for it)
#   DISTILL_STEPS (300)  steps per student
#   CTC_HOURS (1)        training audio for every CTC head;  CTC_STEPS (450)
#   CTC_LONG_HOURS (3)   the longer heads (best student, fbank); CTC_LONG_STEPS (3000)
#   LANES (2)            independent stages run as this many 1-thread lanes (2 cores: 2)
#   OUT (runs/demo), DATA (data/synth), BUNDLE (models/default), SEED (0)
set -euo pipefail
cd "$(dirname "$0")/.."

HL=${HL:-.venv/bin/hubert-lstm}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/demo}
DATA=${DATA:-data/synth}
HOURS=${HOURS:-10}
SEED=${SEED:-0}
TEACHER_STEPS=${TEACHER_STEPS:-600}
DISTILL_HOURS=${DISTILL_HOURS:-2}
DISTILL_STEPS=${DISTILL_STEPS:-300}
CTC_HOURS=${CTC_HOURS:-1}
CTC_STEPS=${CTC_STEPS:-450}
CTC_LONG_HOURS=${CTC_LONG_HOURS:-3}
CTC_LONG_STEPS=${CTC_LONG_STEPS:-3000}
LANES=${LANES:-2}
BUNDLE=${BUNDLE:-models/default}
STAMPS=$OUT/stamps
mkdir -p "$STAMPS" "$OUT/eval" "$OUT/logs"

stage() {  # stage NAME COMMAND...: run once; a finished stage is skipped on the next run
  local name=$1; shift
  if [ -f "$STAMPS/$name" ]; then echo "== $name: done, skipping"; return; fi
  echo "== $name: $(date -u +%H:%M:%S) $*"
  "$@" > "$OUT/logs/$name.log" 2>&1 || { echo "!! $name failed: see $OUT/logs/$name.log"; return 1; }
  date -u +%FT%TZ > "$STAMPS/$name"
}

# ---- corpus and teacher (use both cores) ----
stage synth "$HL" data synth --out "$DATA" --hours "$HOURS" --seed "$SEED" --no-progress
stage teacher "$HL" teacher pretrain --manifest "$DATA/train.tsv" --out "$OUT/teacher" \
  --config configs/teacher/demo.yaml --max-steps "$TEACHER_STEPS"

# ---- what the students see: the first DISTILL_HOURS of the (shuffled) train split ----
stage distill_manifest "$PY" scripts/subset_manifest.py "$DATA/train.tsv" \
  "$OUT/distill_train.tsv" --hours "$DISTILL_HOURS"
for split in distill_train dev; do
  manifest=$OUT/distill_train.tsv; [ "$split" = dev ] && manifest=$DATA/dev.tsv
  stage "labels_$split" "$HL" teacher labels --kmeans "$OUT/teacher/kmeans.safetensors" \
    --manifest "$manifest" --out "$OUT/labels/$split.km"
  stage "targets_$split" "$HL" targets --teacher "$OUT/teacher" --manifest "$manifest" \
    --out "$OUT/targets/$split" --top-k 100 --layers 2,4,6
done
stage ctc_manifest "$PY" scripts/subset_manifest.py "$DATA/train.tsv" "$OUT/ctc_train.tsv" \
  --hours "$CTC_HOURS"

distill() {  # distill STUDENT
  stage "distill_$1" "$HL" distill --config "configs/distill/demo_$1.yaml" \
    --set "run_dir=$OUT/distill_$1" --set "optim.max_steps=$DISTILL_STEPS" \
    --set "data.train_manifest=$OUT/distill_train.tsv" \
    --set "data.train_labels=$OUT/labels/distill_train.km" \
    --set "data.train_targets=$OUT/targets/distill_train" \
    --set "data.dev_labels=$OUT/labels/dev.km" --set "data.dev_targets=$OUT/targets/dev" \
    --set "teacher.dir=$OUT/teacher" --set "num_threads=$THREADS"
}
finetune() {  # finetune NAME UPSTREAM [TRAIN STEPS [ARGS...]]: CTC head, scores on dev and unseen
  local name=$1 upstream=$2 train=${3:-$OUT/ctc_train.tsv} steps=${4:-$CTC_STEPS}
  shift $(( $# < 4 ? $# : 4 ))
  stage "ctc_$name" "$HL" finetune-ctc --upstream "$upstream" --train "$train" \
    --dev "$DATA/dev.tsv" --out "$OUT/ctc_$name" --config configs/ctc/demo.yaml \
    --max-steps "$steps" --feature-cache memory --set "num_threads=$THREADS" "$@"
  stage "eval_$name" "$HL" evaluate --model "$OUT/ctc_$name" --manifest "$DATA/dev.tsv" \
    --output "$OUT/eval/$name.dev.json"
  stage "eval_unseen_$name" "$HL" evaluate --model "$OUT/ctc_$name" \
    --manifest "$DATA/test_unseen.tsv" --output "$OUT/eval/$name.test_unseen.json"
}
lane_a() { finetune fbank fbank; distill ce; distill kd; distill dkd_b1
           finetune ce "$OUT/distill_ce"; finetune kd "$OUT/distill_kd"
           finetune teacher "$OUT/teacher"; }
lane_b() { distill dkd_b4; distill feature; finetune dkd_b1 "$OUT/distill_dkd_b1"
           finetune dkd_b4 "$OUT/distill_dkd_b4"; finetune feature "$OUT/distill_feature"; }

# ---- students and CTC heads: two independent 1-thread lanes use 2 cores better than one
# 2-thread job (small LSTM ops do not scale across threads) ----
if [ "$LANES" -ge 2 ]; then
  export THREADS=1 OMP_NUM_THREADS=1
  lane_a & pid_a=$!
  lane_b & pid_b=$!
  status=0
  wait "$pid_a" || status=1
  wait "$pid_b" || status=1
  [ "$status" = 0 ] || { echo "!! a lane failed; fix it and run again (finished stages are kept)"; exit 1; }
else
  export THREADS=${THREADS:-$(nproc)}
  lane_a; lane_b
fi

stage results "$PY" scripts/demo_results.py --runs "$OUT" \
  --out-json "$OUT/results.json" --out-md docs/results.md

# ---- the best student (by dev CER) and fbank again, with a longer CTC head: the bundled model
stage ctc_long_manifest "$PY" scripts/subset_manifest.py "$DATA/train.tsv" \
  "$OUT/ctc_long_train.tsv" --hours "$CTC_LONG_HOURS"
BEST=$("$PY" scripts/demo_export.py --results "$OUT/results.json" --print-best)
long_head() {  # long_head NAME UPSTREAM
  finetune "long_$1" "$2" "$OUT/ctc_long_train.tsv" "$CTC_LONG_STEPS" \
    --set eval_every=500 --set checkpoint_every=250
}
export THREADS=1 OMP_NUM_THREADS=1
long_head "$BEST" "$OUT/distill_$BEST" & pid_a=$!
long_head fbank fbank & pid_b=$!
wait "$pid_a" && wait "$pid_b" || { echo "!! a long CTC head failed; run again"; exit 1; }
stage results_long "$PY" scripts/demo_results.py --runs "$OUT" --out-json "$OUT/results.json" \
  --out-md docs/results.md --long "$BEST fbank" --long-steps "$CTC_LONG_STEPS" \
  --long-hours "$CTC_LONG_HOURS"
stage export_long "$PY" scripts/demo_export.py --runs "$OUT" --results "$OUT/results.json" \
  --out "$BUNDLE" --test-manifest "$DATA/test_unseen.tsv" --head long \
  --ctc-hours "$CTC_LONG_HOURS" --ctc-steps "$CTC_LONG_STEPS"
echo "== demo model ready in $BUNDLE; table in docs/results.md"
