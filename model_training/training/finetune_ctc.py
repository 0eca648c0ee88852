"""CTC fine-tuning: a SUPERB-style CTC head on an upstream, frozen or trained end to end.

Frozen (the SUPERB ASR protocol, the default): the upstream (a distilled student, a bundle, a
HuBERT teacher, a random-init student or the log-mel baseline) runs in eval mode under
`torch.inference_mode()`; only the head trains: softmax-weighted sum of the hidden states ->
Linear -> 2-layer BiLSTM (SUPERB: 1024) -> 29 character outputs, CTC loss, SpecAugment-style
masks on the mixed features, Adam (SUPERB: lr 1e-4, constant).

End to end (`end_to_end: true`, `hubert-lstm finetune-ctc --end-to-end`): the upstream trains
with the head, in its own parameter group at `lr x upstream_lr_scale`, on the same schedule.
As in fairseq (`freeze_finetune_updates`) it can stay frozen for the first
`freeze_upstream_steps` steps (eval mode, no gradients: the head first learns on fixed
features), and, as transformers' `freeze_feature_encoder`, its CNN can stay frozen
throughout (`freeze_feature_extractor`). A distilled student's cluster head, which CTC does
not use, is dropped first. The feature cache cannot serve a changing upstream: it is turned
off with a warning. `speed_perturb` (data/augment.py) plays each training utterance at a
speed drawn per step. `best/` then also holds the fine-tuned upstream, and `export` bundles it.

Every `eval_every` steps the dev set is decoded greedily with the shared decoder; the head
(and, end to end, the upstream) with the lowest dev WER (ties: CER; `select_by`) is written
to `RUN/best/` with a reference to the upstream it started from.

`task: pr` (`--task pr`) trains the same path on phones instead of characters: the targets
are the transcripts' phones (`phones.py`; espeak-ng or a lexicon, cached per manifest), the
outputs blank + the phone inventory, the score the phone error rate `per` (training/tasks.py).
SUPERB's PR head is the weighted layer sum and one linear layer: `head: {lstm_layers: 0,
proj_dim: 0}` (configs/ctc/pr_demo.yaml).

Run directory:
    config.yaml          the resolved configuration
    checkpoints/         training state for exact resume (common.Checkpointer)
    best/                head.safetensors + head.json (head config, vocabulary, upstream ref)
                         [+ upstream.safetensors, end to end]
    metrics.json         best and last dev scores, every evaluation, training summary
    layer_weights.json   the best head's softmax layer weights (for the layer-weight plots)
    phones/              task pr: the per-manifest phone targets (unless phonemes.cache_dir)
    train_log.jsonl      training metrics every log_every steps
    tensorboard/         scalars
    feature_cache/       with feature_cache=disk: the frozen upstream's hidden states

The training loop (steps, schedule, logging, evaluations, checkpoints, exact resume) is
the one distillation uses (training/loop.py); the feature cache is training/features.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn
from torch.utils.data import DataLoader

from model_training.bundle import bundle_lineage, strip_for_inference
from model_training.data.audio import SAMPLE_RATE
from model_training.data.augment import speed_perturb, validate_speed_factors
from model_training.data.collate import AudioBatch
from model_training.data.manifest import Manifest, read_manifest
from model_training.data.sampler import LengthBucketSampler
from model_training.models.ctc import ASRModel, CTCHead, CTCHeadConfig
from model_training.text import CharVocab
from model_training.training.common import (
    TrainState,
    autocast,
    dataclass_from_dict,
    linear_warmup_decay,
    read_yaml_with_overrides,
    resolve_device,
    seed_everything,
    torch_threads,
    warmup_steps_for,
)
from model_training.training.ctc_data import (
    CTCDataset,
    collate_ctc,
    encode_targets,
    filter_manifest,
)
from model_training.training.evaluate import BEST_DIR, load_recognizer, load_upstream, save_head
from model_training.training.features import FEATURE_CACHE_MODES, FeatureSource
from model_training.training.loop import LoopConfig, TrainLoop, largest_batch
from model_training.training.tasks import TASKS, TextTask, build_task

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
LAYER_WEIGHTS_FILE = "layer_weights.json"
# CTCHeadConfig fields that come from the upstream and the vocabulary, not from the config.
_DERIVED_HEAD_FIELDS = ("layer_dims", "vocab_size", "blank_id")


@dataclass
class FinetuneConfig:
    """Everything a fine-tuning run needs; stored in `RUN/config.yaml` and in checkpoints.

    Attributes:
        upstream: "fbank", a student checkpoint, a bundle dir, a teacher (HF HuBERT) dir,
            or `random:FACTORY` / `random:DISTILL_CONFIG.yaml` (a student with random
            weights seeded by `seed`, the no-distillation baseline).
        end_to_end: train the upstream with the head (see the module docstring).
        upstream_lr_scale: end to end, the upstream's learning rate is lr x this.
        freeze_upstream_steps: end to end, the upstream stays frozen for these first steps.
        freeze_feature_extractor: end to end, the upstream's CNN never trains.
        fbank: FbankConfig overrides when upstream is "fbank".
        head: CTCHeadConfig fields (proj_dim, lstm_layers, lstm_hidden, dropout, masks,
            layer_indices); layer_dims and vocab_size come from the upstream and vocabulary.
        lr, betas, weight_decay: Adam (SUPERB: 1e-4, no decay).
        warmup_steps, warmup_ratio: linear warm-up of warmup_steps, but at most
            warmup_ratio x max_steps (`common.warmup_steps_for`), so any max_steps works.
        lr_final_ratio: after the warm-up, linear decay to lr * lr_final_ratio
            at max_steps (1.0 = constant, as SUPERB).
        max_steps: optimizer steps (one batch each); stop_at_step stops earlier.
        grad_clip: max gradient norm (SUPERB: 1).
        max_batch_seconds, max_batch_size: padded-audio budget and item cap per batch.
        max_utterance_seconds: drop longer training utterances (None keeps all).
        eval_every, log_every, checkpoint_every, keep_checkpoints: in optimizer steps.
        target_dev_cer: stop once the dev CER (task pr: PER) is at or below this (None: run
            to the end).
        patience: stop once this many evaluations in a row have not improved on the best
            (None: run to the end); with a large max_steps, heads train until dev stops
            improving.
        feature_cache: none | memory | disk (see the module docstring).
        speed_perturb: speed factors drawn per training utterance and step (e.g. [0.9, 1.0,
            1.1]; `data.augment.speed_perturb`); empty = off. A frozen upstream then needs
            feature_cache none (end to end turns the cache off anyway).
        precision: fp32 | bf16 | fp16 (autocast on CUDA only).
        task: asr (characters, WER/CER) or pr (phones, PER; `select_by` is then per).
        phonemes: task pr: `phones.PhonemizerConfig` fields (backend espeak|lexicon, voice,
            lexicon, keep_stress, cache_dir; default cache: RUN/phones).
        init_head: a bundle dir or a fine-tuning run whose CTC head weights start this head
            (None: random): continue a finished run or a shipped model with more steps or new
            data. Give its upstream as `upstream` (the bundle itself, or the run's
            `best/upstream.safetensors` after an end-to-end run); the head architecture
            (`head`), the task and the vocabulary must match the source's.
    """

    upstream: str = "fbank"
    end_to_end: bool = False
    upstream_lr_scale: float = 0.1
    freeze_upstream_steps: int = 0
    freeze_feature_extractor: bool = False
    train_manifest: str = ""
    dev_manifest: str | None = None
    run_dir: str = "runs/ctc"
    fbank: dict[str, Any] = field(default_factory=dict)
    head: dict[str, Any] = field(default_factory=dict)
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.0
    warmup_steps: int = 0
    warmup_ratio: float = 0.1
    lr_final_ratio: float = 1.0
    max_steps: int = 200_000
    stop_at_step: int | None = None
    grad_clip: float = 1.0
    max_batch_seconds: float = 320.0
    max_batch_size: int | None = 32
    max_utterance_seconds: float | None = None
    eval_every: int = 2000
    log_every: int = 50
    checkpoint_every: int = 2000
    keep_checkpoints: int = 2
    target_dev_cer: float | None = None
    patience: int | None = None
    # dev metric that picks best/ (ties: the other one). SUPERB: wer. Early in training an
    # empty transcript scores WER 1.0 and beats a useful one with insertions; cer then helps.
    select_by: str = "wer"
    feature_cache: str = "none"
    speed_perturb: list[float] = field(default_factory=list)
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    num_workers: int = 0
    num_threads: int | None = None
    oom_check: bool = True
    progress: bool = True
    tensorboard: bool = True
    task: str = "asr"
    phonemes: dict[str, Any] = field(default_factory=dict)
    init_head: str | None = None

    def __post_init__(self) -> None:
        if self.task == "pr":
            self.select_by = "per"  # the one phone metric
        self.validate()

    def validate(self) -> None:
        """Raise ValueError on inconsistent settings."""
        if not self.train_manifest:
            raise ValueError("train_manifest is required")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, found {self.task!r}")
        allowed = ("wer", "cer") if self.task == "asr" else ("per",)
        if self.select_by not in allowed:
            raise ValueError(f"select_by must be one of {allowed}, found {self.select_by!r}")
        if self.phonemes and self.task != "pr":
            raise ValueError("phonemes configures task pr; set task: pr or drop it")
        if self.patience is not None and self.patience < 1:
            raise ValueError(f"patience must be >= 1 (or null), found {self.patience}")
        if self.feature_cache not in FEATURE_CACHE_MODES:
            raise ValueError(
                f"feature_cache must be one of {FEATURE_CACHE_MODES}, found {self.feature_cache!r}"
            )
        if self.speed_perturb:
            validate_speed_factors(self.speed_perturb, SAMPLE_RATE)
            if self.feature_cache != "none" and not self.end_to_end:
                raise ValueError("speed_perturb changes the audio every step: feature_cache none")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32|bf16|fp16, found {self.precision!r}")
        bad = set(self.head) & set(_DERIVED_HEAD_FIELDS)
        unknown = set(self.head) - set(CTCHeadConfig.__dataclass_fields__)
        if bad or unknown:
            raise ValueError(
                f"head accepts CTCHeadConfig fields except {_DERIVED_HEAD_FIELDS}; "
                f"found {sorted(bad | unknown)}"
            )
        if self.lr <= 0 or self.max_steps < 1 or self.max_batch_seconds <= 0:
            raise ValueError("lr > 0, max_steps >= 1 and max_batch_seconds > 0 are required")
        if self.warmup_steps < 0 or not 0 <= self.warmup_ratio <= 1:
            raise ValueError(
                f"warmup_steps >= 0 and warmup_ratio in [0, 1] are required, found "
                f"{self.warmup_steps} and {self.warmup_ratio}"
            )
        for name in ("eval_every", "log_every", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, found {getattr(self, name)}")
        if self.upstream_lr_scale <= 0 or self.freeze_upstream_steps < 0:
            raise ValueError("upstream_lr_scale > 0 and freeze_upstream_steps >= 0 are required")
        if not self.end_to_end and (self.freeze_upstream_steps or self.freeze_feature_extractor):
            raise ValueError(
                "freeze_upstream_steps and freeze_feature_extractor need end_to_end: true "
                "(without it the whole upstream is frozen anyway)"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        return dataclass_from_dict(cls, d, "config")

    @classmethod
    def from_yaml(
        cls,
        path: str | os.PathLike | None,
        overrides: Sequence[str] = (),
        **values: Any,
    ) -> FinetuneConfig:
        """YAML file (optional), then `a.b=value` overrides (YAML values), then `values`."""
        d = read_yaml_with_overrides(path, overrides)
        d.update({k: v for k, v in values.items() if v is not None})
        return cls.from_dict(d)


# ----------------------------------------------------------------------------- the task


@dataclass
class CTCTask:
    """CTC fine-tuning as the shared loop sees it (see `loop.TrainingTask`).

    A batch is (indices, padded audio of the items that need it or None, their indices).
    """

    cfg: FinetuneConfig
    device: torch.device
    head: CTCHead
    vocab: CharVocab
    features: FeatureSource
    train: Manifest
    dataset: CTCDataset
    run_dir: Path
    upstream_ref: dict[str, Any]
    summary: dict[str, Any]
    dev: tuple[DataLoader, Manifest, CTCDataset] | None = None
    frame_seconds: float = 0.02
    trained_upstream: nn.Module | None = None  # end to end: the upstream being fine-tuned
    text_task: TextTask | None = None  # None: ASR on `vocab`
    layer_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.text_task is None:
            self.text_task = TextTask("asr", self.vocab)

    def start_epoch(self, epoch: int) -> None:
        if self.cfg.feature_cache != "none":  # skip decoding audio whose features are cached
            self.dataset.skip = self.features.cached_indices("train", len(self.train))

    def upstream_features(self, audio: AudioBatch, step: int) -> tuple[list[Tensor], Tensor]:
        """End to end: the upstream's hidden states (B, T, D_l) float32 and frames (B,), with
        gradients, or frozen (eval mode, no gradients) during the first freeze steps."""
        assert self.trained_upstream is not None
        frozen = step < self.cfg.freeze_upstream_steps
        self.trained_upstream.train(not frozen)
        audio = audio.to(self.device)
        with torch.no_grad() if frozen else contextlib.nullcontext():
            out = self.trained_upstream(audio.waveforms, audio.lengths)
        return [h.float() for h in out.hidden_states], out.lengths

    def train_loss(
        self, batch: tuple[list[int], AudioBatch | None, list[int]], step: int
    ) -> tuple[Tensor, dict[str, float]]:
        indices, audio, loaded = batch
        if self.cfg.speed_perturb and audio is not None:
            draw = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
            audio = speed_perturb(audio, self.cfg.speed_perturb, draw, SAMPLE_RATE)
        if self.trained_upstream is not None and audio is not None:
            hidden, lengths = self.upstream_features(audio, step)
        else:
            hidden, lengths = self.features("train", indices, audio, loaded)
        targets, target_lengths = encode_targets([self.train[i].text for i in indices], self.vocab)
        self.head.train()
        log_probs = self.head(hidden, lengths)
        loss = self.head.ctc_loss(
            log_probs, lengths, targets.to(self.device), target_lengths.to(self.device)
        )
        return loss, {"loss": float(loss.detach())}

    def batch_seconds(self, batch: tuple[list[int], AudioBatch | None, list[int]]) -> float:
        return sum(self.train[i].num_samples for i in batch[0]) / SAMPLE_RATE

    def evaluate(self, state: TrainState) -> dict[str, float] | None:
        if self.dev is None:
            return None
        loader, manifest, dataset = self.dev
        if self.cfg.feature_cache != "none":
            dataset.skip = self.features.cached_indices("dev", len(manifest))
        return evaluate_dev(self, loader, manifest)

    def after_evaluation(self, state: TrainState, metrics: dict[str, float]) -> bool:
        entry = state.extra["last_dev"]
        state.extra.setdefault("evaluations", []).append(entry)
        if _is_better(metrics, state.extra.get("best"), self.cfg.select_by):
            state.extra["best"] = entry
            self.save_best(state, metrics)
        assert self.text_task is not None
        stop = metrics[self.text_task.stop_metric]
        if self.cfg.target_dev_cer is not None and stop <= self.cfg.target_dev_cer:
            state.extra["target_reached"] = True
            return True
        if self.cfg.patience is not None:
            best_step = state.extra["best"]["step"]
            since = sum(e["step"] > best_step for e in state.extra["evaluations"])
            if since >= self.cfg.patience:
                state.extra["stopped_no_improvement"] = {"best_step": best_step, "evals": since}
                logger.info("dev has not improved for %d evaluations: stopping", since)
                return True
        return False

    def before_checkpoint(self, state: TrainState) -> None:
        if self.dev is None:  # no dev set: the latest head is the one to use
            state.extra["best"] = {"step": state.step}
            self.save_best(state, None)
        write_metrics(self.run_dir, state, self.summary)

    def save_best(self, state: TrainState, dev: dict[str, float] | None) -> None:
        """Write the current head to RUN/best with its upstream reference."""
        assert self.text_task is not None
        save_head(
            self.run_dir / BEST_DIR,
            self.head,
            self.vocab,
            self.upstream_ref,
            {"step": state.step, "dev": dev, **self.text_task.to_meta()},
            upstream=self.trained_upstream,
        )
        write_layer_weights(
            self.run_dir,
            self.text_task.name,
            self.head.featurizer,
            self.layer_names,
            self.upstream_ref,
            {"step": state.step, "dev": dev},
        )


@torch.inference_mode()
def evaluate_dev(task: CTCTask, loader: DataLoader, manifest: Manifest) -> dict[str, float]:
    """Greedy-decode the dev set -> {"wer", "cer", "loss"} (loss: mean CTC over batches)."""
    task.head.eval()
    task.features.upstream.eval()  # end to end it trains in between
    refs: list[str] = []
    hyps: list[str] = []
    losses: list[float] = []
    assert task.text_task is not None
    for indices, batch, loaded in loader:
        hidden, lengths = task.features("dev", indices, batch, loaded)
        texts = [manifest[i].text for i in indices]
        targets, target_lengths = encode_targets(texts, task.vocab)
        with autocast(task.device, task.cfg.precision):
            log_probs = task.head(hidden, lengths)
        loss = task.head.ctc_loss(
            log_probs, lengths, targets.to(task.device), target_lengths.to(task.device)
        )
        losses.append(float(loss))
        refs.extend(texts)
        hyps.extend(task.text_task.decode(log_probs.cpu(), lengths.cpu(), task.frame_seconds))
    metrics = task.text_task.score(refs, hyps)
    metrics["loss"] = sum(losses) / max(1, len(losses))
    return metrics


def _is_better(dev: dict[str, float], best: dict[str, Any] | None, select_by: str) -> bool:
    if best is None:
        return True
    other = {"wer": "cer", "cer": "wer"}.get(select_by)
    keys = [select_by] + ([other] if other in dev and other in best else [])
    return [dev[k] for k in keys] < [best[k] for k in keys]


def write_metrics(run_dir: Path, state: TrainState, extra: dict[str, Any]) -> None:
    """RUN/metrics.json: step, best and last dev scores, every evaluation, `extra` facts."""
    metrics = {
        "step": state.step,
        "best": state.extra.get("best"),
        "last_dev": state.extra.get("last_dev"),
        "evaluations": state.extra.get("evaluations", []),
        **extra,
    }
    tmp = run_dir / (METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, run_dir / METRICS_FILE)


# ----------------------------------------------------------------------------- run


def run(cfg: FinetuneConfig) -> Path:
    """Train (or resume) a CTC head; returns the run directory."""
    with torch_threads(cfg.num_threads):
        return _run(cfg)


def _loader(dataset: CTCDataset, sampler: LengthBucketSampler, cfg: FinetuneConfig) -> DataLoader:
    # Loaders draw their worker seeds from their own generators, not the global RNG that
    # dropout and SpecAugment use, so creating an iterator (resume, dev passes) changes nothing.
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_ctc,
        num_workers=cfg.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed),
    )


def _sampler(
    manifest: Manifest, cfg: FinetuneConfig, sample_rate: int, shuffle: bool
) -> LengthBucketSampler:
    """Length buckets within the padded-audio budget (shuffled per epoch for training)."""
    budget = int(cfg.max_batch_seconds * sample_rate)
    return LengthBucketSampler(
        manifest.lengths, budget, cfg.max_batch_size, shuffle=shuffle, seed=cfg.seed
    )


def _dev_data(
    cfg: FinetuneConfig, sample_rate: int, task: TextTask
) -> tuple[DataLoader, Manifest, CTCDataset] | None:
    if not cfg.dev_manifest:
        return None
    manifest = task.targets(read_manifest(cfg.dev_manifest), Path(cfg.dev_manifest).stem)
    dataset = CTCDataset(manifest)
    sampler = _sampler(manifest, cfg, sample_rate, shuffle=False)
    return _loader(dataset, sampler, cfg), manifest, dataset


def build_text_task(cfg: FinetuneConfig) -> TextTask:
    """The task: SUPERB's 28 characters + the CTC blank (asr) or blank + phones (pr). The one
    place the task plugs in; head size, targets, decoding, scores and the saved head all
    follow the object returned here."""
    phonemes = dict(cfg.phonemes)
    if cfg.task == "pr":
        phonemes.setdefault("cache_dir", str(Path(cfg.run_dir) / "phones"))
    return build_task(cfg.task, phonemes)


def build_vocab(cfg: FinetuneConfig) -> CharVocab:
    """The output vocabulary of an ASR run (see `build_text_task`)."""
    vocab = build_text_task(cfg).vocab
    assert isinstance(vocab, CharVocab)
    return vocab


def write_layer_weights(
    run_dir: Path,
    task: str,
    featurizer: nn.Module,
    layer_names: Sequence[str],
    upstream_ref: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """RUN/layer_weights.json: the head's softmax layer weights, one per mixed hidden state
    (`layer_indices` into the upstream's hidden states; `layer_names` of all of them)."""
    weights = torch.softmax(featurizer.weights.detach().float().cpu(), dim=0).tolist()
    record = {
        "task": task,
        "layer_indices": list(featurizer.layer_indices),
        "layer_names": list(layer_names),
        "weights": weights,
        "upstream": upstream_ref,
        **(extra or {}),
    }
    path = run_dir / LAYER_WEIGHTS_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def load_head_weights(head: CTCHead, task: TextTask, source: str | os.PathLike) -> None:
    """Copy the CTC head of `source` (bundle dir or fine-tuning run) into `head`, refusing a
    source whose task, vocabulary or head architecture differ (a clear error, not a silent
    partial load)."""
    rec = load_recognizer(source)
    if rec.info.get("quantize"):
        kind = rec.info["quantize"]
        raise ValueError(f"init_head {source} is a {kind} bundle; use its float one")
    theirs, ours = rec.text_task, task
    if theirs.name != ours.name or theirs.vocab.to_config() != ours.vocab.to_config():
        raise ValueError(
            f"init_head {source}: its head predicts {theirs.name} over "
            f"{len(theirs.vocab)} symbols, this run {ours.name} over {len(ours.vocab)}; "
            "the task and vocabulary must match"
        )
    src = rec.model.head.config.to_dict()
    dst = head.config.to_dict()
    training_only = {"dropout", "time_masks", "time_mask_width", "freq_masks", "freq_mask_width"}
    differ = sorted(k for k in dst if k not in training_only and src.get(k) != dst[k])
    if differ:
        raise ValueError(
            f"init_head {source}: head architecture differs in {differ} "
            f"(source {[src.get(k) for k in differ]}, this run {[dst[k] for k in differ]}); "
            "set `head` in the config to the source's"
        )
    head.load_state_dict(rec.model.head.state_dict())
    logger.info("head initialised from %s", source)


def trainable_upstream(upstream: nn.Module, ref: dict[str, Any], cfg: FinetuneConfig) -> nn.Module:
    """The upstream made ready for end-to-end training: training-only parts (a distilled
    student's cluster head) dropped, gradients on (the CNN's off with
    freeze_feature_extractor)."""
    kind = ref.get("kind")
    if kind == "fbank":
        raise ValueError("end_to_end: the fbank upstream has no weights to fine-tune")
    if kind == "teacher":
        raise ValueError(
            "end_to_end: a HuBERT teacher stays frozen here; fine-tune a student, a bundle or "
            "random:FACTORY end to end, or drop --end-to-end to train a head on the teacher"
        )
    _, _, slim = strip_for_inference(upstream)
    slim.requires_grad_(True)
    if cfg.freeze_feature_extractor:
        cnn = getattr(slim, "feature_extractor", None)
        if cnn is None:
            raise ValueError(f"freeze_feature_extractor: {type(slim).__name__} has no CNN")
        cnn.requires_grad_(False)
    return slim


def _run(cfg: FinetuneConfig) -> Path:
    if cfg.end_to_end and cfg.feature_cache != "none":
        logger.warning(
            "feature_cache=%s disabled: end to end the upstream changes every step, so its "
            "features cannot be cached",
            cfg.feature_cache,
        )
        cfg = dataclasses.replace(cfg, feature_cache="none")
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)

    spec: str | dict[str, Any] = cfg.upstream
    if cfg.upstream == "fbank":
        spec = {"kind": "fbank", "path": None, "config": dict(cfg.fbank)}
    upstream, upstream_ref = load_upstream(spec, device, seed=cfg.seed)
    lineage = bundle_lineage(upstream_ref)
    if lineage is not None:  # snapshot now: a publish may replace the bundle before export
        upstream_ref = {**upstream_ref, "continued_from": lineage}
    trained = None
    if cfg.end_to_end:
        trained = upstream = trainable_upstream(upstream, upstream_ref, cfg).to(device)
    text_task = build_text_task(cfg)
    vocab = text_task.vocab
    head_cfg = dataclass_from_dict(
        CTCHeadConfig,
        {"layer_dims": list(upstream.hidden_dims), "vocab_size": len(vocab), **cfg.head},
        "head",
    )
    head = CTCHead(head_cfg).to(device)
    if cfg.init_head:
        load_head_weights(head, text_task, cfg.init_head)
    n_head = sum(p.numel() for p in head.parameters())
    n_up = sum(p.numel() for p in upstream.parameters() if p.requires_grad) if trained else 0
    logger.info(
        "upstream %s (%s layers, %s); head %.2fM parameters on layers %s",
        upstream_ref["kind"],
        len(upstream.hidden_dims),
        f"{n_up / 1e6:.2f}M parameters trained end to end" if trained else "frozen",
        n_head / 1e6,
        head_cfg.layer_indices,
    )
    sr = int(upstream.sample_rate)
    if sr != SAMPLE_RATE:
        raise ValueError(f"expected a {SAMPLE_RATE} Hz upstream, found {sr}")

    max_samples = int(cfg.max_utterance_seconds * sr) if cfg.max_utterance_seconds else None
    targets = text_task.targets(read_manifest(cfg.train_manifest), Path(cfg.train_manifest).stem)
    train, dropped = filter_manifest(targets, upstream, vocab, max_samples)
    if len(train) == 0:
        raise ValueError(f"{cfg.train_manifest}: no usable training utterances ({dropped})")
    dataset = CTCDataset(train)
    sampler = _sampler(train, cfg, sr, shuffle=True)
    dev = _dev_data(cfg, sr, text_task)
    features = FeatureSource(
        upstream, device, cfg.precision, cfg.feature_cache, run_dir / "feature_cache", upstream_ref
    )
    groups = [{"params": list(head.parameters()), "lr": cfg.lr}]
    if trained is not None:  # one schedule, a lower rate for the upstream
        groups.append({"params": list(trained.parameters()), "lr": cfg.lr * cfg.upstream_lr_scale})
    optimizer = torch.optim.Adam(
        groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
    )
    warmup = warmup_steps_for(cfg.max_steps, cfg.warmup_ratio, cfg.warmup_steps)
    scheduler = linear_warmup_decay(optimizer, warmup, cfg.max_steps, cfg.lr_final_ratio)
    summary: dict[str, Any] = {
        "upstream": upstream_ref,
        "head_parameters": n_head,
        "end_to_end": cfg.end_to_end,
        "init_head": cfg.init_head,
        "upstream_parameters_trained": n_up,
        "feature_cache": cfg.feature_cache,
        "task": cfg.task,
        "train_utterances": len(train),
        "train_dropped": dropped,
        "dev_utterances": len(dev[1]) if dev is not None else 0,
    }
    task = CTCTask(
        cfg,
        device,
        head,
        vocab,
        features,
        train,
        dataset,
        run_dir,
        upstream_ref,
        summary,
        dev,
        1.0 / float(upstream.frame_rate),
        trained,
        text_task,
        list(getattr(upstream, "layer_names", [])),
    )
    loop = TrainLoop(
        task=task,
        config=LoopConfig.from_settings("finetune-ctc", cfg),
        model=head if trained is None else ASRModel(trained, head),
        optimizer=optimizer,
        scheduler=scheduler,
        sampler=sampler,
        loader=_loader(dataset, sampler, cfg),
        device=device,
        run_dir=run_dir,
        keep_checkpoints=cfg.keep_checkpoints,
        tensorboard=cfg.tensorboard,
        checkpoint_extra={
            "finetune_config": cfg.to_dict(),
            "head_config": head_cfg.to_dict(),
            "upstream": upstream_ref,
        },
    )
    state, resumed = loop.restore()
    if state.extra.get("target_reached"):
        state.extra["stopped_early"] = True
    if not resumed and cfg.oom_check:
        indices = largest_batch(sampler)
        batch = collate_ctc([(i, dataset[i][1]) for i in indices])
        loop.check_largest_batch(batch, step=cfg.freeze_upstream_steps if trained else 0)
        logger.info("largest batch (%d utterances) fits", len(indices))
    started = time.perf_counter()
    first_step = state.step
    state = loop.run(state)
    summary["train_seconds_this_session"] = round(time.perf_counter() - started, 2)
    summary["steps_this_session"] = state.step - first_step
    write_metrics(run_dir, state, summary)
    logger.info("finished at step %d; best %s", state.step, state.extra.get("best"))
    return run_dir
