# The demo model pipeline (`make demo-model`) as file targets: every stage writes
# $(OUT)/stamps/<stage> when it has finished (scripts/stage.sh), so `make` reruns only what has
# not, long stages resume from their own checkpoints, and `make -j2` runs independent stages side
# by side in the order the dependency graph allows (no hand-written lanes).
#
#   corpus -> teacher (HuBERT iteration 1: MFCC k-means) -> labels + top-k targets
#   -> students (CE, KD, DKD b1/b4, DistilHuBERT-style features, causal DKD)
#   -> frozen-upstream CTC heads on every student, the teacher and fbank -> WER/CER on dev and
#   on test_unseen (neural and classic reserved voices apart) -> $(OUT)/results.{json,md}.
#
# Results stay under OUT; only `make -f scripts/demo.mk publish` copies them to docs/ and the
# bundles to models/. Every size and path is a variable: e.g. a tiny run into a temp folder:
#   make -f scripts/demo.mk -j2 HOURS=0.05 TEACHER_STEPS=6 ... OUT=$T/run DATA=$T/data
SHELL := /bin/bash
.DELETE_ON_ERROR:
.SUFFIXES:

HL ?= .venv/bin/hubert-lstm
PY ?= .venv/bin/python
OUT ?= runs/demo
DATA ?= data/synth
SEED ?= 0
HOURS ?= 12
SYNTH_WORKERS ?= 2
TEACHER_STEPS ?= 4000
DISTILL_HOURS ?= 4
DISTILL_STEPS ?= 1500
CTC_HOURS ?= 2
CTC_STEPS ?= 3000
JOB_THREADS ?= 1
SOLO_THREADS ?= 2
STUDENTS ?= ce kd dkd_b1 dkd_b4 feature causal_dkd
PUBLISH_DOCS ?= docs
PUBLISH_MODELS ?= models

SIZES := HOURS=$(HOURS) TEACHER_STEPS=$(TEACHER_STEPS) DISTILL_HOURS=$(DISTILL_HOURS) \
  DISTILL_STEPS=$(DISTILL_STEPS) CTC_HOURS=$(CTC_HOURS) CTC_STEPS=$(CTC_STEPS) SEED=$(SEED)
S := $(OUT)/stamps
M := $(OUT)/manifests
STAGE := bash scripts/stage.sh
TORCH1 := env OMP_NUM_THREADS=$(JOB_THREADS)
HEADS := fbank teacher $(STUDENTS)

.PHONY: all heads students results bundles publish
all: results bundles
bundles: $(S)/export_default $(S)/export_streaming
students: $(STUDENTS:%=$(S)/distill_%)
heads: $(HEADS:%=$(S)/eval_ctc_%)
results: $(S)/results

# ---- corpus and manifests
$(S)/synth:
	$(STAGE) $@ $(HL) data synth --out $(DATA) --hours $(HOURS) --seed $(SEED) \
	  --workers $(SYNTH_WORKERS) --no-progress

$(S)/manifests: $(S)/synth
	$(STAGE) $@ bash -c '\
	  $(PY) scripts/subset_manifest.py $(DATA)/train.tsv $(M)/distill_train.tsv --hours $(DISTILL_HOURS) && \
	  $(PY) scripts/subset_manifest.py $(DATA)/train.tsv $(M)/ctc_train.tsv --hours $(CTC_HOURS) && \
	  $(PY) scripts/subset_manifest.py $(DATA)/test_unseen.tsv $(M)/test_neural.tsv --engine kokoro && \
	  $(PY) scripts/subset_manifest.py $(DATA)/test_unseen.tsv $(M)/test_classic.tsv --engine flite festival'

# ---- teacher, its labels and targets
$(S)/teacher: $(S)/synth
	$(STAGE) $@ env OMP_NUM_THREADS=$(SOLO_THREADS) $(HL) teacher pretrain \
	  --manifest $(DATA)/train.tsv --out $(OUT)/teacher --config configs/teacher/demo.yaml \
	  --max-steps $(TEACHER_STEPS)

$(S)/labels_distill_train $(S)/targets_distill_train: MANIFEST = $(M)/distill_train.tsv
$(S)/labels_dev $(S)/targets_dev: MANIFEST = $(DATA)/dev.tsv
$(S)/labels_%: $(S)/teacher $(S)/manifests
	$(STAGE) $@ $(TORCH1) $(HL) teacher labels --kmeans $(OUT)/teacher/kmeans.safetensors \
	  --manifest $(MANIFEST) --out $(OUT)/labels/$*.km
$(S)/targets_%: $(S)/teacher $(S)/manifests
	$(STAGE) $@ $(TORCH1) $(HL) targets --teacher $(OUT)/teacher --manifest $(MANIFEST) \
	  --out $(OUT)/targets/$* --top-k 100 --layers 2,4,6

# ---- students
DISTILL_INPUTS := $(S)/labels_distill_train $(S)/labels_dev $(S)/targets_distill_train $(S)/targets_dev
$(S)/distill_%: $(DISTILL_INPUTS)
	$(STAGE) $@ $(TORCH1) $(HL) distill --config configs/distill/demo_$*.yaml \
	  --set run_dir=$(OUT)/distill_$* --set optim.max_steps=$(DISTILL_STEPS) \
	  --set data.train_manifest=$(M)/distill_train.tsv --set data.dev_manifest=$(DATA)/dev.tsv \
	  --set data.train_labels=$(OUT)/labels/distill_train.km --set data.dev_labels=$(OUT)/labels/dev.km \
	  --set data.train_targets=$(OUT)/targets/distill_train --set data.dev_targets=$(OUT)/targets/dev \
	  --set teacher.dir=$(OUT)/teacher --set num_threads=$(JOB_THREADS)

# ---- frozen-upstream CTC heads (SUPERB protocol) and their scores
$(S)/ctc_fbank: UPSTREAM = fbank
$(S)/ctc_fbank: $(S)/manifests
$(S)/ctc_teacher: UPSTREAM = $(OUT)/teacher
$(S)/ctc_teacher: $(S)/teacher $(S)/manifests
$(STUDENTS:%=$(S)/ctc_%): UPSTREAM = $(OUT)/distill_$(@F:ctc_%=%)
$(STUDENTS:%=$(S)/ctc_%): $(S)/ctc_%: $(S)/distill_% $(S)/manifests
$(HEADS:%=$(S)/ctc_%):
	$(STAGE) $@ $(TORCH1) $(HL) finetune-ctc --upstream $(UPSTREAM) --train $(M)/ctc_train.tsv \
	  --dev $(DATA)/dev.tsv --out $(OUT)/$(@F) --config configs/ctc/demo.yaml \
	  --max-steps $(CTC_STEPS) --feature-cache memory --set num_threads=$(JOB_THREADS)

# eval_RUN: the run's WER/CER on dev and both halves of test_unseen -> eval/RUN.SPLIT.json
$(S)/eval_%: $(S)/%
	$(STAGE) $@ bash -c 'for split in dev test_neural test_classic; do \
	  manifest=$(M)/$$split.tsv; [ $$split = dev ] && manifest=$(DATA)/dev.tsv; \
	  $(TORCH1) $(HL) evaluate --model $(OUT)/$* --manifest $$manifest \
	    --output $(OUT)/eval/$*.$$split.json || exit 1; done'

# ---- the bundles (under OUT): the best bidirectional run and the causal one, float16 weights
DEFAULT_CANDIDATES ?= $(filter-out causal_dkd,$(STUDENTS:%=ctc_%))
STREAMING_CANDIDATES ?= ctc_causal_dkd
EXPORT := $(PY) scripts/demo_export.py --runs $(OUT) --fp16-manifest $(M)/test_neural.tsv \
  --corpus-card $(DATA)/card.json
$(S)/export_default: $(DEFAULT_CANDIDATES:%=$(S)/eval_%)
	$(STAGE) $@ $(TORCH1) $(EXPORT) --candidates "$(DEFAULT_CANDIDATES)" \
	  --out $(OUT)/bundles/default --name hubert-lstm-demo \
	  --description "A bidirectional LSTM student (HuBERT-shaped 128-channel CNN, 3 BiLSTM x 256) with a CTC head"
$(S)/export_streaming: $(STREAMING_CANDIDATES:%=$(S)/eval_%)
	$(STAGE) $@ $(TORCH1) $(EXPORT) --candidates "$(STREAMING_CANDIDATES)" \
	  --out $(OUT)/bundles/streaming --name hubert-lstm-demo-streaming \
	  --description "A causal LSTM student (layer-norm 128-channel CNN, 3 unidirectional LSTM x 256) with a CTC head, for streaming"

# ---- the table (under OUT) and publishing it
$(S)/results: $(HEADS:%=$(S)/eval_ctc_%)
	$(STAGE) $@ $(PY) scripts/demo_results.py --runs $(OUT) --students "$(STUDENTS)" \
	  --out-json $(OUT)/results.json --out-md $(OUT)/results.md --threads $(SOLO_THREADS) \
	  --sizes "$(strip $(SIZES))"

publish: $(S)/results $(S)/export_default $(S)/export_streaming
	cp $(OUT)/results.md $(PUBLISH_DOCS)/results.md
	for b in default streaming; do rm -rf $(PUBLISH_MODELS)/$$b && cp -r $(OUT)/bundles/$$b $(PUBLISH_MODELS)/$$b; done
	@echo "published $(OUT)/results.md to $(PUBLISH_DOCS)/ and the bundles to $(PUBLISH_MODELS)/"
