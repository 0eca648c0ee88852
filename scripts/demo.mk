# The demo model pipeline (`make demo-model`) as file targets: every stage writes
# $(OUT)/stamps/<stage> when it has finished (scripts/stage.sh), so `make` reruns only what has
# not, long stages resume from their own checkpoints, and `make -j2` runs independent stages side
# by side in the order the dependency graph allows (no hand-written lanes).
#
#   corpus -> teacher (HuBERT iteration 1: MFCC k-means) -> teacher2 (iteration 2: k-means on
#   teacher's middle layer) -> labels + top-k targets from teacher2
#   -> students (log-mel front-end: CE, KD, DKD b1/b4; DistilHuBERT-style features; causal DKD;
#      DKD b4 on the CNN front-end copied from the teacher, the front-end comparison)
#   -> frozen-upstream CTC heads (until dev CER stops improving) on every student, both
#      teachers and fbank
#   -> end-to-end CTC fine-tuning on FT_LOW_HOURS and on all training hours from random init,
#      the DKD student (FT_DKD, beta 4), the CE student and the feature student (same steps and data),
#      and the causal student with a causal head
#   -> WER/CER on dev and on test_unseen (neural and classic reserved voices apart)
#   -> $(OUT)/results.{json,md} and $(OUT)/bundles/{default,streaming}.
#
# Results stay under OUT; only `make -f scripts/demo.mk publish` copies them to docs/ and the
# bundles to models/. Every size and path is a variable: e.g. a tiny run into a temp folder:
#   make -f scripts/demo.mk -j2 HOURS=0.03 TEACHER_STEPS=6 ... OUT=$T/run DATA=$T/data
SHELL := /bin/bash
.DELETE_ON_ERROR:
.SUFFIXES:

HL ?= .venv/bin/hubert-lstm
PY ?= .venv/bin/python
OUT ?= runs/demo
DATA ?= data/synth
SEED ?= 0
HOURS ?= 4
# dev and test_unseen hours (empty: 5% of HOURS each); fixing them keeps the evaluation splits
# of a smaller corpus when HOURS grows (the splits are seeded streams: same hours, same files)
DEV_HOURS ?=
TEST_HOURS ?=
# TRAIN_START=N: the corpus is HOURS of new training audio after the first N utterances of the
# seed's train stream (extends a corpus of N utterances; `data synth --train-start`)
TRAIN_START ?= 0
# SYNTH_ENGINE_WEIGHTS: the train split's engine shares changed, e.g. espeak=0.28,piper=0.05
# (`data synth --engine-weights`; dev and test_unseen keep theirs)
SYNTH_ENGINE_WEIGHTS ?=
# SYNTH_VOICE_WEIGHTS: voice-id globs -> relative weight within their engine, train split only,
# e.g. espeak:en-us*=3 (`data synth --voice-weights`)
SYNTH_VOICE_WEIGHTS ?=
SYNTH_WORKERS ?= 2
# FT_EXTRA_TRAIN: train manifests of earlier corpora of the same stream (TRAIN_START), appended
# to ft_all so that a continuation on new audio keeps hearing the old
FT_EXTRA_TRAIN ?=
TEACHER_STEPS ?= 1000
TEACHER2_STEPS ?= $(TEACHER_STEPS)
DISTILL_HOURS ?= 2
DISTILL_STEPS ?= 1000
CTC_HOURS ?= 2
CTC_STEPS ?= 3000
CTC_PATIENCE ?= 2
CTC_EVAL_EVERY ?= 500
FT_LOW_HOURS ?= 1
FT_STEPS ?= 2000
FT_FREEZE_STEPS ?= $(shell echo $$(( $(FT_STEPS) / 10 )))
FT_EVAL_EVERY ?= 500
# ft_dkd_all_long: the DKD student's fine-tune on all hours, FT_LONG_STEPS long (the table's
# runs stop at FT_STEPS, their dev CER still falling): a candidate for the shipped default
FT_LONG_STEPS ?= $(shell echo $$(( $(FT_STEPS) * 4 )))
# ft_dkd_all_more: ft_dkd_all_long continued for FT_MORE_STEPS on a fresh schedule
FT_MORE_STEPS ?= $(shell echo $$(( $(FT_LONG_STEPS) * 2 )))
# ft_dkd_all_shipped (below): the shipped default continued, its steps and peak learning rates
FT_SHIPPED_STEPS ?= $(FT_LONG_STEPS)
FT_SHIPPED_LR ?= 1e-3
FT_SHIPPED_UPSTREAM_SCALE ?= 0.25
# speed perturbation of its training utterances, comma-separated factors (e.g. 0.9,1.0,1.1:
# each utterance at one of them, drawn per step); empty = off
FT_SHIPPED_SPEED ?=
# PR heads are one linear layer on cached features (~8 ms a step on one thread; the upstream
# pass dominates), and at SUPERB's lr their dev PER is noisy: twice the steps, fewer
# evaluations, more patience than the CTC heads
PR_STEPS ?= $(shell echo $$(( $(CTC_STEPS) * 2 )))
PR_EVAL_EVERY ?= $(shell echo $$(( ($(PR_STEPS) + 5) / 6 )))
PR_PATIENCE ?= 3
JOB_THREADS ?= 1
STUDENTS ?= dkd_b1 dkd_b4 ce kd feature causal_dkd dkd_cnn
FT_INITS ?= dkd random ce feature
PUBLISH_DOCS ?= docs
PUBLISH_MODELS ?= models

SIZES := HOURS=$(HOURS) $(if $(DEV_HOURS),DEV_HOURS=$(DEV_HOURS)) \
  $(if $(TEST_HOURS),TEST_HOURS=$(TEST_HOURS)) $(if $(filter-out 0,$(TRAIN_START)),TRAIN_START=$(TRAIN_START)) TEACHER_STEPS=$(TEACHER_STEPS) TEACHER2_STEPS=$(TEACHER2_STEPS) \
  DISTILL_HOURS=$(DISTILL_HOURS) DISTILL_STEPS=$(DISTILL_STEPS) CTC_HOURS=$(CTC_HOURS) \
  CTC_STEPS=$(CTC_STEPS) CTC_PATIENCE=$(CTC_PATIENCE) FT_LOW_HOURS=$(FT_LOW_HOURS) \
  FT_STEPS=$(FT_STEPS) FT_LONG_STEPS=$(FT_LONG_STEPS) FT_MORE_STEPS=$(FT_MORE_STEPS) \
  PR_STEPS=$(PR_STEPS) FT_SHIPPED_STEPS=$(FT_SHIPPED_STEPS) SEED=$(SEED)
S := $(OUT)/stamps
M := $(OUT)/manifests
STAGE := bash scripts/stage.sh
TORCH1 := env OMP_NUM_THREADS=$(JOB_THREADS)
HEADS := fbank teacher1 teacher2 $(STUDENTS)
FT_RUNS := $(foreach i,$(FT_INITS),ft_$(i)_low ft_$(i)_all) ft_causal_all \
  $(if $(filter dkd,$(FT_INITS)),ft_dkd_all_long)
FT_MORE := $(if $(filter dkd,$(FT_INITS)),ft_dkd_all_more)

.PHONY: all critical heads students finetuned results bundles publish
all: bundles results
# the chain the shipped default waits for (teacher1 -> teacher2 -> targets -> DKD student ->
# its fine-tune), and the causal student's: make -j2 gives a freed job slot to whichever stage
# its walk of the graph reached last, not to this chain, so `make demo-model` first runs it
# alone with JOB_THREADS=2 and only then the rest two jobs at a time
critical: $(S)/eval_ft_$(firstword $(FT_INITS))_all $(S)/eval_ft_causal_all
students: $(STUDENTS:%=$(S)/distill_%)
heads: $(HEADS:%=$(S)/eval_ctc_%)
finetuned: $(FT_RUNS:%=$(S)/eval_%) $(FT_MORE:%=$(S)/eval_%)
results: $(S)/results
bundles: $(S)/export_default $(S)/export_streaming

# ---- corpus and manifests
$(S)/synth:
	$(STAGE) $@ $(HL) data synth --out $(DATA) --hours $(HOURS) --seed $(SEED) \
	  --workers $(SYNTH_WORKERS) --no-progress $(if $(DEV_HOURS),--dev-hours $(DEV_HOURS)) \
	  $(if $(TEST_HOURS),--test-hours $(TEST_HOURS)) --train-start $(TRAIN_START) \
	  $(if $(SYNTH_ENGINE_WEIGHTS),--engine-weights $(SYNTH_ENGINE_WEIGHTS)) \
	  $(if $(SYNTH_VOICE_WEIGHTS),--voice-weights '$(SYNTH_VOICE_WEIGHTS)')

$(S)/manifests: $(S)/synth
	$(STAGE) $@ bash -c '\
	  $(PY) scripts/subset_manifest.py $(DATA)/train.tsv $(M)/distill_train.tsv --hours $(DISTILL_HOURS) && \
	  $(PY) scripts/subset_manifest.py $(DATA)/train.tsv $(M)/ctc_train.tsv --hours $(CTC_HOURS) && \
	  $(PY) scripts/subset_manifest.py $(DATA)/train.tsv $(M)/ft_low.tsv --hours $(FT_LOW_HOURS) && \
	  $(PY) scripts/subset_manifest.py $(DATA)/train.tsv $(FT_EXTRA_TRAIN) $(M)/ft_all.tsv && \
	  $(PY) scripts/subset_manifest.py $(DATA)/test_unseen.tsv $(M)/test_neural.tsv --engine kokoro && \
	  $(PY) scripts/subset_manifest.py $(DATA)/test_unseen.tsv $(M)/test_classic.tsv --engine flite festival'

# ---- teachers (masked-unit accuracy on dev in teacher*/metrics.json), labels and targets
$(S)/teacher1: $(S)/synth
	$(STAGE) $@ $(TORCH1) $(HL) teacher pretrain --manifest $(DATA)/train.tsv \
	  --out $(OUT)/teacher1 --config configs/teacher/demo.yaml --dev $(DATA)/dev.tsv \
	  --max-steps $(TEACHER_STEPS)
$(S)/teacher2: $(S)/teacher1
	$(STAGE) $@ $(TORCH1) $(HL) teacher pretrain --manifest $(DATA)/train.tsv \
	  --out $(OUT)/teacher2 --config configs/teacher/demo.yaml --dev $(DATA)/dev.tsv \
	  --label-teacher $(OUT)/teacher1 --max-steps $(TEACHER2_STEPS)

$(S)/labels_distill_train $(S)/targets_distill_train: MANIFEST = $(M)/distill_train.tsv
$(S)/labels_dev $(S)/targets_dev: MANIFEST = $(DATA)/dev.tsv
$(S)/labels_%: $(S)/teacher2 $(S)/manifests
	$(STAGE) $@ $(TORCH1) $(HL) teacher labels --kmeans $(OUT)/teacher2/kmeans.safetensors \
	  --manifest $(MANIFEST) --out $(OUT)/labels/$*.km
$(S)/targets_%: $(S)/teacher2 $(S)/manifests
	$(STAGE) $@ $(TORCH1) $(HL) targets --teacher $(OUT)/teacher2 --manifest $(MANIFEST) \
	  --out $(OUT)/targets/$* --top-k 100 --layers 2,4,6

# ---- students
DISTILL_INPUTS := $(S)/labels_distill_train $(S)/labels_dev $(S)/targets_distill_train $(S)/targets_dev
$(S)/distill_%: $(DISTILL_INPUTS)
	$(STAGE) $@ $(TORCH1) $(HL) distill --config configs/distill/demo_$*.yaml \
	  --set run_dir=$(OUT)/distill_$* --set optim.max_steps=$(DISTILL_STEPS) \
	  --set data.train_manifest=$(M)/distill_train.tsv --set data.dev_manifest=$(DATA)/dev.tsv \
	  --set data.train_labels=$(OUT)/labels/distill_train.km --set data.dev_labels=$(OUT)/labels/dev.km \
	  --set data.train_targets=$(OUT)/targets/distill_train --set data.dev_targets=$(OUT)/targets/dev \
	  --set teacher.dir=$(OUT)/teacher2 --set num_threads=$(JOB_THREADS)

# ---- frozen-upstream CTC heads (SUPERB protocol), trained until dev CER stops improving
$(S)/ctc_fbank: UPSTREAM = fbank
$(S)/ctc_fbank: $(S)/manifests
$(S)/ctc_teacher1: UPSTREAM = $(OUT)/teacher1
$(S)/ctc_teacher1: $(S)/teacher1 $(S)/manifests
$(S)/ctc_teacher2: UPSTREAM = $(OUT)/teacher2
$(S)/ctc_teacher2: $(S)/teacher2 $(S)/manifests
$(STUDENTS:%=$(S)/ctc_%): UPSTREAM = $(OUT)/distill_$(@F:ctc_%=%)
$(STUDENTS:%=$(S)/ctc_%): $(S)/ctc_%: $(S)/distill_% $(S)/manifests
$(HEADS:%=$(S)/ctc_%):
	$(STAGE) $@ $(TORCH1) $(HL) finetune-ctc --upstream $(UPSTREAM) --train $(M)/ctc_train.tsv \
	  --dev $(DATA)/dev.tsv --out $(OUT)/$(@F) --config configs/ctc/demo.yaml \
	  --max-steps $(CTC_STEPS) --feature-cache memory --set num_threads=$(JOB_THREADS) \
	  --set patience=$(CTC_PATIENCE) --set eval_every=$(CTC_EVAL_EVERY) \
	  --set checkpoint_every=$(CTC_EVAL_EVERY)

# ---- end-to-end fine-tuning: the low-resource experiment and the shipped models
# the DKD student to fine-tune, fixed before the run (the paper's best beta) rather than picked
# on dev: the fine-tuning chain then waits for one distillation, not for two frozen heads
FT_DKD ?= dkd_b4
$(S)/pick_dkd: $(S)/distill_$(FT_DKD)
	$(STAGE) $@ bash -c 'ln -sfn distill_$(FT_DKD) $(OUT)/distill_dkd && echo "DKD student: $(FT_DKD)"'

$(S)/ft_random_low $(S)/ft_random_all: UPSTREAM = random:configs/distill/demo_dkd_b1.yaml
$(S)/ft_random_low $(S)/ft_random_all: $(S)/manifests
$(S)/ft_dkd_low $(S)/ft_dkd_all: $(S)/pick_dkd
$(S)/ft_ce_low $(S)/ft_ce_all: $(S)/distill_ce
$(S)/ft_feature_low $(S)/ft_feature_all: $(S)/distill_feature
$(S)/ft_causal_all: $(S)/distill_causal_dkd
$(S)/ft_causal_all: UPSTREAM = $(OUT)/distill_causal_dkd
$(S)/ft_causal_all: FT_CONFIG = configs/ctc/demo_causal.yaml
$(S)/ft_dkd_all_long: $(S)/pick_dkd
$(S)/ft_dkd_all_long: RUN_DATA = all
$(S)/ft_dkd_all_long: RUN_STEPS = $(FT_LONG_STEPS)
$(S)/ft_dkd_all_long: RUN_FREEZE = $(shell echo $$(( $(FT_LONG_STEPS) / 10 )))
# ft_dkd_all_more: ft_dkd_all_long continued (its fine-tuned upstream and CTC head, a fresh
# schedule of FT_MORE_STEPS) -- its dev CER was still falling at FT_LONG_STEPS
$(S)/ft_dkd_all_more: $(S)/ft_dkd_all_long
$(S)/ft_dkd_all_more: UPSTREAM = $(OUT)/ft_dkd_all_long/best/upstream.safetensors
$(S)/ft_dkd_all_more: INIT_HEAD = $(OUT)/ft_dkd_all_long
$(S)/ft_dkd_all_more: RUN_DATA = all
$(S)/ft_dkd_all_more: RUN_STEPS = $(FT_MORE_STEPS)
$(S)/ft_dkd_all_more: RUN_FREEZE = 0
# ft_dkd_all_shipped / ft_causal_all_shipped: the shipped bundles ($(PUBLISH_MODELS)/default
# and /streaming, float16 weights) continued on all hours for FT_SHIPPED_STEPS, at a peak lr of
# FT_SHIPPED_LR (upstream: x FT_SHIPPED_UPSTREAM_SCALE) decaying linearly after a short
# warm-up. A bundle is the one checkpoint that survives a new machine (runs/ is never
# committed), so each session can carry the shipped models further; the export keeps a bundle
# whose recorded dev scores its continuation does not beat. Not part of `all`, since they start
# from what was published:
#   make -f scripts/demo.mk runs/demo/stamps/eval_ft_dkd_all_shipped
SHIPPED_RUNS := ft_dkd_all_shipped ft_causal_all_shipped
$(S)/ft_dkd_all_shipped: SHIPPED = default
$(S)/ft_causal_all_shipped: SHIPPED = streaming
$(S)/ft_causal_all_shipped: FT_CONFIG = configs/ctc/demo_causal.yaml
$(SHIPPED_RUNS:%=$(S)/%): UPSTREAM = $(PUBLISH_MODELS)/$(SHIPPED)
$(SHIPPED_RUNS:%=$(S)/%): INIT_HEAD = $(PUBLISH_MODELS)/$(SHIPPED)
$(SHIPPED_RUNS:%=$(S)/%): RUN_DATA = all
$(SHIPPED_RUNS:%=$(S)/%): RUN_STEPS = $(FT_SHIPPED_STEPS)
$(SHIPPED_RUNS:%=$(S)/%): RUN_FREEZE = 0
$(SHIPPED_RUNS:%=$(S)/%): RUN_SETS = --set lr=$(FT_SHIPPED_LR) \
  --upstream-lr-scale $(FT_SHIPPED_UPSTREAM_SCALE) \
  $(if $(FT_SHIPPED_SPEED),--set 'speed_perturb=[$(FT_SHIPPED_SPEED)]')
FT_ALL := $(FT_RUNS) $(FT_MORE) $(SHIPPED_RUNS)
$(FT_ALL:%=$(S)/%): UPSTREAM ?= $(OUT)/distill_$(word 2,$(subst _, ,$(@F)))
$(FT_ALL:%=$(S)/%): FT_CONFIG ?= configs/ctc/demo.yaml
$(FT_ALL:%=$(S)/%): RUN_DATA ?= $(lastword $(subst _, ,$(@F)))
$(FT_ALL:%=$(S)/%): RUN_STEPS ?= $(FT_STEPS)
$(FT_ALL:%=$(S)/%): RUN_FREEZE ?= $(FT_FREEZE_STEPS)
$(FT_ALL:%=$(S)/%): $(S)/manifests
	$(STAGE) $@ $(TORCH1) $(HL) finetune-ctc --end-to-end --upstream $(UPSTREAM) \
	  $(if $(INIT_HEAD),--init-head $(INIT_HEAD)) \
	  --train $(M)/ft_$(RUN_DATA).tsv --dev $(DATA)/dev.tsv \
	  --out $(OUT)/$(@F) --config $(FT_CONFIG) --max-steps $(RUN_STEPS) \
	  --freeze-upstream-steps $(RUN_FREEZE) --set num_threads=$(JOB_THREADS) \
	  --set eval_every=$(FT_EVAL_EVERY) --set checkpoint_every=$(FT_EVAL_EVERY) $(RUN_SETS)

# eval_RUN: the run's WER/CER on dev and both halves of test_unseen -> eval/RUN.SPLIT.json
$(S)/eval_%: $(S)/%
	$(STAGE) $@ bash -c 'for split in dev test_neural test_classic; do \
	  manifest=$(M)/$$split.tsv; [ $$split = dev ] && manifest=$(DATA)/dev.tsv; \
	  $(TORCH1) $(HL) evaluate --model $(OUT)/$* --manifest $$manifest \
	    --output $(OUT)/eval/$*.$$split.json || exit 1; done'

# ---- the bundles (under OUT): the best bidirectional run and the causal one, float16 weights
DEFAULT_CANDIDATES ?= $(foreach i,$(FT_INITS),ft_$(i)_all) $(if $(filter dkd,$(FT_INITS)),ft_dkd_all_long) $(FT_MORE)
STREAMING_CANDIDATES ?= ft_causal_all
EXPORT := $(PY) scripts/demo_export.py --runs $(OUT) --fp16-manifest $(M)/test_neural.tsv \
  --corpus-card $(DATA)/card.json
# weights of a continuation (ft_dkd_all_shipped) against the bundle it continued, tried on dev
INTERPOLATE_GRID ?= 0.1 0.2 0.3 0.4 0.5 0.6 0.7
$(S)/export_default: $(DEFAULT_CANDIDATES:%=$(S)/eval_%) $(S)/lm
	$(STAGE) $@ bash -c '$(TORCH1) $(EXPORT) --candidates "$(DEFAULT_CANDIDATES)" \
	  --interpolate-grid "$(INTERPOLATE_GRID)" --out $(OUT)/bundles/default --name hubert-lstm-demo && \
	  $(TORCH1) $(HL) lm attach --bundle $(OUT)/bundles/default --lm $(OUT)/lm/lm.arpa.gz \
	    --tune-manifest $(DATA)/dev.tsv --beam-size $(LM_BEAM)'
$(S)/export_streaming: $(STREAMING_CANDIDATES:%=$(S)/eval_%)
	$(STAGE) $@ $(TORCH1) $(EXPORT) --candidates "$(STREAMING_CANDIDATES)" \
	  --out $(OUT)/bundles/streaming --name hubert-lstm-demo-streaming

# ---- the word LM the default bundle decodes with: the corpus's training sentence pool (no dev
# or test sentence), interpolated Kneser-Ney; its weights are tuned on dev when it is attached
LM_ORDER ?= 3
LM_PRUNE ?= 1
# hypotheses kept per frame: wider beams buy WER for decoding time, decoding is serialised per
# bundle in the service (benchmarks/lm_beam.py measures the curve; 500: ~0.06 RTF on one core)
LM_BEAM ?= 500
$(S)/lm: $(S)/manifests
	$(STAGE) $@ $(HL) lm build --corpus-card $(DATA)/card.json --out $(OUT)/lm/lm.arpa.gz \
	  --order $(LM_ORDER) --prune $(LM_PRUNE)

# eval_bundle_default: the exported default, greedy and with its LM, on dev and test_unseen
$(S)/eval_bundle_default: $(S)/export_default
	$(STAGE) $@ bash -c 'for split in dev test_neural test_classic; do \
	  manifest=$(M)/$$split.tsv; [ $$split = dev ] && manifest=$(DATA)/dev.tsv; \
	  for dec in greedy lm; do d=$$dec; [ $$dec = lm ] && d=auto; \
	    $(TORCH1) $(HL) evaluate --model $(OUT)/bundles/default --manifest $$manifest \
	      --decoder $$d --per-engine --output $(OUT)/eval/bundle_default.$$dec.$$split.json \
	      || exit 1; \
	  done; done'

# ---- probes (issue 16): a phone-recognition (PR) head and a speaker-identification (SID)
# head on every upstream of HEADS, and their layer weights next to the CTC heads'. Not part of
# `all`: `make -f scripts/demo.mk probes`; `PROBES=1` makes the results table wait for them
# and adds their columns (dev PER, SID test accuracy).
SID_MANIFEST ?= $(DATA)/train.tsv
PROBE_HEADS := $(HEADS:%=$(S)/pr_%) $(HEADS:%=$(S)/sid_%)
.PHONY: probes
probes: $(HEADS:%=$(S)/eval_pr_%) $(HEADS:%=$(S)/sid_%) $(S)/layer_weights
$(S)/pr_fbank $(S)/sid_fbank: UPSTREAM = fbank
$(S)/pr_fbank $(S)/sid_fbank: $(S)/manifests
$(S)/pr_teacher1 $(S)/sid_teacher1: UPSTREAM = $(OUT)/teacher1
$(S)/pr_teacher1 $(S)/sid_teacher1: $(S)/teacher1 $(S)/manifests
$(S)/pr_teacher2 $(S)/sid_teacher2: UPSTREAM = $(OUT)/teacher2
$(S)/pr_teacher2 $(S)/sid_teacher2: $(S)/teacher2 $(S)/manifests
$(STUDENTS:%=$(S)/pr_%) $(STUDENTS:%=$(S)/sid_%): UPSTREAM = $(OUT)/distill_$(patsubst sid_%,%,$(patsubst pr_%,%,$(@F)))
$(STUDENTS:%=$(S)/pr_%): $(S)/pr_%: $(S)/distill_% $(S)/manifests
$(STUDENTS:%=$(S)/sid_%): $(S)/sid_%: $(S)/distill_% $(S)/synth
$(HEADS:%=$(S)/pr_%):
	$(STAGE) $@ $(TORCH1) $(HL) finetune-ctc --task pr --upstream $(UPSTREAM) \
	  --train $(M)/ctc_train.tsv --dev $(DATA)/dev.tsv --out $(OUT)/$(@F) \
	  --config configs/ctc/pr_demo.yaml --max-steps $(PR_STEPS) --feature-cache memory \
	  --set num_threads=$(JOB_THREADS) --set patience=$(PR_PATIENCE) \
	  --set eval_every=$(PR_EVAL_EVERY) --set checkpoint_every=$(PR_EVAL_EVERY) \
	  --set phonemes.cache_dir=$(abspath $(OUT))/phones
$(HEADS:%=$(S)/sid_%):
	$(STAGE) $@ $(TORCH1) $(HL) sid --upstream $(UPSTREAM) --manifest $(SID_MANIFEST) \
	  --out $(OUT)/$(@F) --config configs/sid/demo.yaml --set num_threads=$(JOB_THREADS) \
	  --set progress=false
$(S)/layer_weights: $(HEADS:%=$(S)/ctc_%) $(PROBE_HEADS)
	$(STAGE) $@ $(PY) scripts/plot_layer_weights.py --runs $(OUT) --heads "$(HEADS)" \
	  --out $(OUT)/img/layer_weights.png
$(S)/results: $(if $(PROBES),$(HEADS:%=$(S)/eval_pr_%) $(HEADS:%=$(S)/sid_%))

# ---- the table (under OUT) and publishing it
$(S)/results: $(HEADS:%=$(S)/eval_ctc_%) $(FT_RUNS:%=$(S)/eval_%) $(FT_MORE:%=$(S)/eval_%) \
  $(S)/eval_bundle_default
	$(STAGE) $@ $(PY) scripts/demo_results.py --runs $(OUT) --students "$(STUDENTS)" \
	  --finetuned "$(FT_RUNS) $(FT_MORE)" --out-json $(OUT)/results.json --out-md $(OUT)/results.md \
	  --threads $(JOB_THREADS) --sizes "$(strip $(SIZES))"

publish: $(S)/results $(S)/export_default $(S)/export_streaming
	mkdir -p $(PUBLISH_DOCS) $(PUBLISH_MODELS)
	cp $(OUT)/results.md $(PUBLISH_DOCS)/results.md
	cp $(OUT)/results.json $(PUBLISH_DOCS)/results.json
	if [ -d $(OUT)/img ]; then mkdir -p $(PUBLISH_DOCS)/img && cp $(OUT)/img/* $(PUBLISH_DOCS)/img/; fi
	for b in default streaming; do rm -rf $(PUBLISH_MODELS)/$$b && cp -r $(OUT)/bundles/$$b $(PUBLISH_MODELS)/$$b; done
	@echo "published $(OUT)/results.md to $(PUBLISH_DOCS)/ and the bundles to $(PUBLISH_MODELS)/"
