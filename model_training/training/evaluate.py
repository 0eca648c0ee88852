"""ASR evaluation: load a recognizer, transcribe a manifest in length-bucketed batches, score.

Also home of the upstream resolver shared by fine-tuning and export, so every recognizer is
built the same way:

    load_upstream("fbank" | student checkpoint | bundle dir | teacher dir | random:...)
        -> (upstream, ref)
    load_recognizer(bundle dir | fine-tuning run dir | run/best) -> Recognizer

A phone-recognition (PR) run is evaluated the same way: its head.json names the task and the
phonemizer, the manifest's transcripts become phones, and the score is the phone error rate
`per` (training/tasks.py).

`ref` is a small JSON-ready dict naming where the upstream came from; a fine-tuning run stores
it next to the head weights, so the head can be put back on the same frozen upstream later.
An end-to-end run changes the upstream too: its `best/` then also holds the fine-tuned
upstream (`upstream.safetensors`, a student file) and `ref` records where it started from.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jiwer
import torch
from safetensors.torch import load_file
from torch import nn

from model_training.bundle import BUNDLE_FORMAT, CONFIG_FILE, load_bundle
from model_training.data.collate import AudioBatch, collate_audio
from model_training.data.dataset import AudioDataset
from model_training.data.manifest import Manifest, read_manifest
from model_training.data.sampler import LengthBucketSampler
from model_training.decoding import (
    LMDecoderConfig,
    Transcript,
    UtteranceDecoder,
    decode_batch,
    greedy_ctc_decode_batch,
    make_decoder,
)
from model_training.models.ctc import ASRModel, CTCHead, CTCHeadConfig
from model_training.models.registry import upstream_type_name
from model_training.phones import PhoneVocab
from model_training.precision import inference_autocast
from model_training.text import CharVocab, normalize_text
from model_training.training.students import (
    GENERIC_BUILDERS,
    RANDOM_PREFIX,
    build_random_student,
    load_student_checkpoint,
    random_student_spec,
    save_student,
)
from model_training.training.tasks import TextTask

log = logging.getLogger(__name__)

HEAD_WEIGHTS = "head.safetensors"
HEAD_META = "head.json"
HEAD_FORMAT = "hubert-lstm/ctc-head"
UPSTREAM_WEIGHTS = "upstream.safetensors"  # in best/ of an end-to-end run
BEST_DIR = "best"


# ----------------------------------------------------------------------------- upstreams


def _is_bundle(path: Path) -> bool:
    config = path / CONFIG_FILE
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("format") == BUNDLE_FORMAT
    except json.JSONDecodeError:
        return False


def _is_hf_teacher(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "hubert"
    except json.JSONDecodeError:
        return False


def load_upstream(
    spec: str | os.PathLike | dict[str, Any],
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """Build a frozen upstream (eval mode, no gradients) and a reference to rebuild it.

    Args:
        spec: "fbank" (log-mel baseline, default settings), a dict reference returned by an
            earlier call, a bundle directory, a Hugging Face HuBERT directory (teacher), a
            distilled student (`student.safetensors`, a distill run dir or `checkpoint-*.pt`),
            or a randomly initialised student: `random:FACTORY` (e.g. random:lstm_small) or
            `random:DISTILL_CONFIG.yaml` (that config's student architecture).
        seed: the random student's initialisation (stored in the ref, so it rebuilds alike).
    Returns:
        (upstream, ref) with ref = {"kind": "fbank" | "bundle" | "teacher" | "student" |
        "random", "path": absolute path or None, "config": fbank settings, the random
        student's factory / overrides / seed, or None}.
    """
    if isinstance(spec, dict):
        ref = dict(spec)
    elif str(spec) == "fbank":
        ref = {"kind": "fbank", "path": None, "config": {}}
    elif str(spec).startswith(RANDOM_PREFIX):
        ref = {"kind": "random", "path": None, "config": {**random_student_spec(str(spec))}}
        ref["config"]["seed"] = int(seed)
    else:
        path = Path(spec).resolve()
        if not path.exists():
            raise FileNotFoundError(
                f"upstream {spec!s} not found (expected 'fbank', a bundle dir, a teacher dir, "
                f"a student checkpoint or {RANDOM_PREFIX}FACTORY|CONFIG.yaml)"
            )
        if path.is_dir() and _is_bundle(path):
            kind = "bundle"
        elif path.is_dir() and _is_hf_teacher(path):
            kind = "teacher"
        else:
            kind = "student"
        ref = {"kind": kind, "path": str(path), "config": None}
    kind = ref.get("kind")
    if kind == "fbank":
        from model_training.models.fbank import FbankConfig, FbankUpstream

        upstream: nn.Module = FbankUpstream(FbankConfig.from_dict(ref.get("config") or {}))
        ref["config"] = upstream.config.to_dict()
    elif kind == "bundle":
        bundle = load_bundle(ref["path"], device="cpu")
        if bundle.config.get("quantize"):
            raise ValueError(
                f"{ref['path']} is a {bundle.config['quantize']} bundle; fine-tune on the fp32 "
                "bundle and quantize at export"
            )
        upstream = bundle.upstream
    elif kind == "teacher":
        from model_training.models.teacher import HubertTeacher

        upstream = HubertTeacher.from_hf_dir(ref["path"])
    elif kind == "student":
        upstream = load_student_checkpoint(ref["path"])
    elif kind == "random":
        c = ref["config"]
        upstream = build_random_student(c["factory"], c["overrides"], c["seed"])
    else:
        raise ValueError(
            f"unknown upstream kind {kind!r}; expected fbank|bundle|teacher|student|random"
        )
    upstream.requires_grad_(False)
    return upstream.to(device).eval(), ref


def load_any_upstream(
    spec: str | os.PathLike, device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """`load_upstream`, and also a fine-tuning run (its upstream: the one it was trained on,
    or the fine-tuned one of an end-to-end run). Frozen, eval mode."""
    path = Path(spec)
    is_run = (path / BEST_DIR / HEAD_META).is_file() or (path / HEAD_META).is_file()
    if str(spec) != "fbank" and path.is_dir() and not _is_bundle(path) and is_run:
        rec = load_recognizer(path, device)
        upstream = rec.model.upstream.requires_grad_(False).eval()
        return upstream, {"kind": "run", "path": str(path.resolve()), "config": None}
    return load_upstream(spec, device)


# ----------------------------------------------------------------------------- recognizers


@dataclass
class Recognizer:
    """An ASR model ready for inference, its vocabulary, and facts for reports."""

    model: ASRModel
    vocab: CharVocab | PhoneVocab
    source: str  # "bundle" or "run"
    path: Path
    parameters: int
    info: dict[str, Any] = field(default_factory=dict)
    task: TextTask | None = None  # None: ASR on `vocab`
    decoder: UtteranceDecoder | None = None  # None: greedy; a bundle's LM decoder, or one given
    decoder_spec: dict[str, Any] | None = None  # what `decoder` is, for reports (None: greedy)

    @property
    def text_task(self) -> TextTask:
        """What the head predicts (ASR unless the run's head.json says otherwise)."""
        return self.task or TextTask("asr", self.vocab)


def count_parameters(model: nn.Module) -> int:
    """Parameters of a float model (for a dynamically quantized one, count its float twin)."""
    return sum(p.numel() for p in model.parameters())


def save_head(
    out_dir: str | os.PathLike,
    head: CTCHead,
    vocab: CharVocab,
    upstream_ref: dict[str, Any],
    extra: dict[str, Any] | None = None,
    upstream: nn.Module | None = None,
) -> Path:
    """Write a fine-tuned head (safetensors + JSON: head config, vocabulary, upstream ref).

    `upstream`: the upstream an end-to-end run fine-tuned, written next to the head as a
    student file (`UPSTREAM_WEIGHTS`); the head is then loaded on it instead of on `ref`.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if upstream is not None:
        type_name = upstream_type_name(upstream)
        if type_name not in GENERIC_BUILDERS:
            raise ValueError(f"cannot store a fine-tuned {type_name} upstream")
        save_student(
            out / UPSTREAM_WEIGHTS,
            upstream,
            factory=GENERIC_BUILDERS[type_name],
            provenance={"fine_tuned_from": upstream_ref},
        )
    tensors = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in head.state_dict().items()
    }
    tmp = out / (HEAD_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": HEAD_FORMAT})
    os.replace(tmp, out / HEAD_WEIGHTS)
    meta = {
        "format": HEAD_FORMAT,
        "head": head.config.to_dict(),
        "vocab": vocab.to_config(),
        "upstream": upstream_ref,
        **({"upstream_weights": UPSTREAM_WEIGHTS} if upstream is not None else {}),
        **(extra or {}),
    }
    tmp = out / (HEAD_META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out / HEAD_META)
    return out


def load_head(path: str | os.PathLike) -> tuple[CTCHead, CharVocab | PhoneVocab, dict[str, Any]]:
    """Inverse of `save_head`: (head in eval mode, vocabulary, the metadata dict)."""
    path = Path(path)
    meta_path = path / HEAD_META
    if not meta_path.is_file():
        raise FileNotFoundError(f"no {HEAD_META} in {path}")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != HEAD_FORMAT:
        raise ValueError(
            f"{meta_path}: expected format {HEAD_FORMAT!r}, found {meta.get('format')!r}"
        )
    head = CTCHead(CTCHeadConfig.from_dict(meta["head"]))
    head.load_state_dict(load_file(str(path / HEAD_WEIGHTS)), strict=True)
    return head.eval(), TextTask.from_meta(meta).vocab, meta


def load_recognizer(
    path: str | os.PathLike, device: str | torch.device = "cpu", build_decoder: bool = True
) -> Recognizer:
    """A bundle directory, a fine-tuning run directory (uses its `best/`) or a `best/` dir.

    `build_decoder=False`: a bundle's own decoder (its LM) is not loaded; greedy decoding."""
    path = Path(path)
    if _is_bundle(path):
        bundle = load_bundle(path, device=device, build_decoder=build_decoder)
        if not bundle.has_ctc or bundle.vocab is None:
            raise ValueError(f"bundle {path} has no CTC head: it cannot transcribe")
        return Recognizer(
            model=bundle.model,  # type: ignore[arg-type]
            vocab=bundle.vocab,
            source="bundle",
            path=path,
            parameters=int(bundle.config.get("parameters") or count_parameters(bundle.model)),
            info={"quantize": bundle.config.get("quantize"), "name": bundle.name},
            # decode is None when build_decoder is False (load_bundle)
            decoder=bundle.decode if bundle.config.get("decoder") else None,
            decoder_spec=bundle.config.get("decoder") if build_decoder else None,
        )
    head_dir = path / BEST_DIR if (path / BEST_DIR / HEAD_META).is_file() else path
    if not (head_dir / HEAD_META).is_file():
        raise FileNotFoundError(
            f"{path} is neither a bundle (config.json) nor a fine-tuning run "
            f"({BEST_DIR}/{HEAD_META})"
        )
    head, vocab, meta = load_head(head_dir)
    if meta.get("upstream_weights"):  # an end-to-end run: the upstream it fine-tuned
        weights = {"kind": "student", "path": str(head_dir / meta["upstream_weights"])}
        upstream, _ = load_upstream({**weights, "config": None}, device)
    else:
        upstream, _ = load_upstream(meta["upstream"], device)
    model = ASRModel(upstream, head).to(device).eval()
    return Recognizer(
        model=model,
        vocab=vocab,
        source="run",
        path=head_dir,
        parameters=count_parameters(model),
        info={
            "upstream": meta["upstream"],
            "end_to_end": bool(meta.get("upstream_weights")),
            "step": meta.get("step"),
            "dev": meta.get("dev"),
        },
        task=TextTask.from_meta(meta),
    )


# ----------------------------------------------------------------------------- scoring


def score(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus WER and CER (jiwer) after `normalize_text` on both sides; {} when empty."""
    if len(references) != len(hypotheses):
        raise ValueError(
            f"expected as many hypotheses as references, "
            f"found {len(hypotheses)} vs {len(references)}"
        )
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    keep = [i for i, r in enumerate(refs) if r]
    if not keep:
        return {}
    refs = [refs[i] for i in keep]
    hyps = [hyps[i] for i in keep]
    return {"wer": float(jiwer.wer(refs, hyps)), "cer": float(jiwer.cer(refs, hyps))}


# ----------------------------------------------------------------------------- transcription


def manifest_batches(
    manifest: Manifest,
    max_batch_samples: int,
    max_batch_size: int | None = None,
    num_workers: int = 0,
) -> Iterator[tuple[list[int], AudioBatch]]:
    """(indices, padded batch) in ascending-length buckets, every utterance exactly once."""
    dataset = AudioDataset(manifest)
    sampler = LengthBucketSampler(
        manifest.lengths, max_batch_samples, max_batch_size, shuffle=False
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_audio, num_workers=num_workers
    )
    yield from zip(sampler.rank_batches(), loader, strict=True)


@torch.inference_mode()
def transcribe_batch(
    model: nn.Module,
    vocab: CharVocab | PhoneVocab,
    batch: AudioBatch,
    device: str | torch.device = "cpu",
    decoder: UtteranceDecoder | None = None,
) -> list[Transcript]:
    """Transcripts (with word timestamps) of one padded batch, greedy unless `decoder` is given
    (e.g. a lexicon + LM beam search); for a phone vocabulary the text is the space-separated
    phones (no timestamps)."""
    batch = batch.to(device)
    out, log_probs = model(batch.waveforms, batch.lengths)
    frame_seconds = 1.0 / float(model.frame_rate)
    if isinstance(vocab, PhoneVocab):
        texts = TextTask("pr", vocab).decode(log_probs.cpu(), out.lengths.cpu(), frame_seconds)
        return [Transcript(text=t) for t in texts]
    if decoder is not None:
        return decode_batch(decoder, log_probs.cpu(), out.lengths.cpu())
    return greedy_ctc_decode_batch(log_probs.cpu(), out.lengths.cpu(), vocab, frame_seconds)


def with_decoder(
    recognizer: Recognizer, decoder: str = "auto", lm: LMDecoderConfig | None = None
) -> Recognizer:
    """The recognizer decoding as asked: "auto" keeps its own (a bundle's LM, else greedy),
    "greedy" drops any LM, "lm" uses `lm` (an ARPA path and beam settings)."""
    if decoder == "auto":
        return recognizer
    if decoder == "greedy":
        return replace(recognizer, decoder=None, decoder_spec=None)
    if decoder != "lm":
        raise ValueError(f"decoder must be auto, greedy or lm, found {decoder!r}")
    if lm is None:
        raise ValueError("decoder=lm needs a language model (--lm)")
    if not isinstance(recognizer.vocab, CharVocab):
        raise ValueError("a word language model needs a character (ASR) head")
    frame_seconds = 1.0 / float(recognizer.model.frame_rate)
    spec = {**lm.to_dict(), "lm": str(Path(lm.lm).resolve())}
    return replace(
        recognizer,
        decoder=make_decoder(recognizer.vocab, frame_seconds, spec),
        decoder_spec=spec,
    )


def evaluate_recognizer(
    recognizer: Recognizer,
    manifest: Manifest | str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    max_batch_seconds: float = 160.0,
    max_batch_size: int | None = 32,
    num_workers: int = 0,
    details: list[dict[str, Any]] | None = None,
    precision: str = "fp32",
    per_engine: bool = False,
) -> dict[str, Any]:
    """WER, CER, utterances, audio seconds, real-time factor and parameters on a manifest
    (a PR head: `per` instead of WER and CER, against the manifest's phones).

    `per_engine`: also score each group of utterances whose speaker ids share the part before
    the first ':' (a synthetic corpus's "engine:voice" ids, e.g. "espeak:en-us+f3"), under
    `by_engine` = {engine: {metrics..., "utterances": n}}; an id without ':' is its own group.

    `precision`: fp32, or bf16 (CPU or CUDA) / fp16 (CUDA) autocast, to check what reduced
    precision costs in accuracy before serving with it.

    The real-time factor is model time (forward + decoding, audio decoding excluded) over
    audio time; the first batch is run once untimed to warm up. Per-utterance results are
    appended to `details` when a list is given.
    """
    name = "manifest" if isinstance(manifest, Manifest) else Path(manifest).stem
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    if len(manifest) == 0:
        raise ValueError("the evaluation manifest has no utterances")
    task = recognizer.text_task
    manifest = task.targets(manifest, name)
    model = recognizer.model
    sr = int(model.sample_rate)
    refs: list[str] = []
    hyps: list[str] = []
    engines: list[str] = []
    compute = 0.0
    audio_seconds = 0.0
    warm = False
    autocast = inference_autocast(device, precision)  # validates before any work
    for indices, batch in manifest_batches(
        manifest, int(max_batch_seconds * sr), max_batch_size, num_workers
    ):
        with torch.inference_mode(), autocast:
            if not warm:
                transcribe_batch(model, recognizer.vocab, batch, device, recognizer.decoder)
                warm = True
            if torch.device(device).type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            transcripts = transcribe_batch(
                model, recognizer.vocab, batch, device, recognizer.decoder
            )
            compute += time.perf_counter() - start
        audio_seconds += float(batch.lengths.sum()) / sr
        for i, tr in zip(indices, transcripts, strict=True):
            refs.append(manifest[i].text)
            hyps.append(tr.text)
            engines.append(manifest[i].speaker.split(":", 1)[0])
            if details is not None:
                ref = normalize_text(manifest[i].text) if task.name == "asr" else manifest[i].text
                details.append({"id": manifest[i].id, "ref": ref, "hyp": tr.text})
    metrics = task.score(refs, hyps)
    by_engine: dict[str, dict[str, Any]] = {}
    for engine in sorted(set(engines)) if per_engine else ():
        members = [k for k, e in enumerate(engines) if e == engine]
        scores = task.score([refs[k] for k in members], [hyps[k] for k in members])
        by_engine[engine] = {**{m: scores.get(m) for m in task.metrics}, "utterances": len(members)}
    return {
        **{m: metrics.get(m) for m in task.metrics},
        **({"by_engine": by_engine} if per_engine else {}),
        "task": task.name,
        "utterances": len(manifest),
        "audio_seconds": audio_seconds,
        "processing_seconds": compute,
        "rtf": compute / audio_seconds if audio_seconds else None,
        "parameters": recognizer.parameters,
        "device": str(device),
        "precision": precision,
        "threads": torch.get_num_threads(),
        "model": str(recognizer.path),
        "source": recognizer.source,
        "decoder": recognizer.decoder_spec or {"type": "greedy"},
    }


def evaluate(
    model_dir: str | os.PathLike,
    manifest: str | os.PathLike,
    *,
    device: str = "cpu",
    max_batch_seconds: float = 160.0,
    max_batch_size: int | None = 32,
    num_workers: int = 0,
    details_path: str | os.PathLike | None = None,
    precision: str = "fp32",
    task: str | None = None,
    decoder: str = "auto",
    lm: LMDecoderConfig | None = None,
    per_engine: bool = False,
) -> dict[str, Any]:
    """Load `model_dir` (bundle or run), evaluate on `manifest` (see `evaluate_recognizer`).

    `task`: asr | pr to check that the model is that kind of head (None: whatever it is).
    `decoder`, `lm`: see `with_decoder`.
    """
    recognizer = with_decoder(load_recognizer(model_dir, device), decoder, lm)
    if task is not None and task != recognizer.text_task.name:
        raise ValueError(
            f"{model_dir} is a {recognizer.text_task.name} head, not {task}: "
            "train it with `finetune-ctc --task " + task + "`"
        )
    details: list[dict[str, Any]] | None = [] if details_path else None
    result = evaluate_recognizer(
        recognizer,
        manifest,
        device=device,
        max_batch_seconds=max_batch_seconds,
        max_batch_size=max_batch_size,
        num_workers=num_workers,
        details=details,
        precision=precision,
        per_engine=per_engine,
    )
    result["manifest"] = str(manifest)
    if details_path and details is not None:
        Path(details_path).write_text("".join(json.dumps(d) + "\n" for d in details))
    return result
