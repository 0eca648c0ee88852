"""Export a fine-tuning run (upstream + CTC head + vocabulary) as a serving bundle; the upstream
of an end-to-end run is the one it fine-tuned (`best/upstream.safetensors`).

With `quantize="int8"` the bundle is marked for dynamic int8 quantization of its LSTM and
Linear layers (applied when it is loaded, see `model_training.bundle`), and the export
measures what that costs and buys on this machine's CPU: WER/CER of fp32 vs int8 on an
evaluation manifest (when given), and the speed of both on the same inputs, timed in
alternation so background load hits both alike. The numbers go into the model card and into
config.json's provenance.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from model_training.bundle import (
    bundle_lineage,
    interpolated_phrase,
    lineage_chain,
    load_bundle,
    quantize_dynamic_int8,
    save_bundle,
)
from model_training.data.collate import AudioBatch
from model_training.data.manifest import Manifest, read_manifest
from model_training.decoding import greedy_ctc_decode_batch
from model_training.models.ctc import ASRModel
from model_training.models.registry import upstream_type_name
from model_training.training.evaluate import (
    BEST_DIR,
    Recognizer,
    evaluate_recognizer,
    load_recognizer,
    manifest_batches,
)

logger = logging.getLogger(__name__)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def speed_inputs(
    manifest: Manifest | None, sample_rate: int, seconds: float = 30.0, seed: int = 0
) -> list[AudioBatch]:
    """Batches to time: the eval manifest's first `seconds` of audio (ascending-length buckets),
    else four 4-second noise clips (speed does not depend on what is said)."""
    if manifest is not None:
        batches: list[AudioBatch] = []
        total = 0.0
        for _, batch in manifest_batches(manifest, int(40 * sample_rate), 16):
            batches.append(batch)
            total += float(batch.lengths.sum()) / sample_rate
            if total >= seconds:
                break
        return batches
    g = torch.Generator().manual_seed(seed)
    n = 4 * sample_rate
    waves = 0.1 * torch.randn(4, n, generator=g)
    return [AudioBatch(waves, torch.full((4,), n, dtype=torch.long), [""] * 4, ["noise"] * 4)]


@torch.inference_mode()
def _run_all(model: nn.Module, batches: list[AudioBatch]) -> float:
    start = time.perf_counter()
    for b in batches:
        model(b.waveforms, b.lengths)
    return time.perf_counter() - start


def compare_speed(
    fp32: nn.Module, int8: nn.Module, batches: list[AudioBatch], repeats: int = 5
) -> dict[str, Any]:
    """Median seconds of fp32 and int8 over `repeats` alternating passes on the same batches."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, found {repeats}")
    _run_all(fp32, batches[:1])  # warm-up (allocator, packed weights)
    _run_all(int8, batches[:1])
    t32: list[float] = []
    t8: list[float] = []
    for _ in range(repeats):
        t32.append(_run_all(fp32, batches))
        t8.append(_run_all(int8, batches))
    audio = sum(float(b.lengths.sum()) for b in batches) / float(fp32.sample_rate)
    m32, m8 = statistics.median(t32), statistics.median(t8)
    return {
        "audio_seconds": round(audio, 3),
        "repeats": repeats,
        "fp32_seconds": round(m32, 6),
        "int8_seconds": round(m8, 6),
        "fp32_rtf": round(m32 / audio, 5),
        "int8_rtf": round(m8 / audio, 5),
        "speedup": round(m32 / m8, 3),
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "torch": torch.__version__,
    }


@torch.inference_mode()
def output_agreement(a: nn.Module, b: nn.Module, batches: list[AudioBatch], vocab: Any) -> dict:
    """Max |log-prob difference| and share of identical greedy transcripts between two models."""
    max_diff = 0.0
    same = total = 0
    for batch in batches:
        out_a, lp_a = a(batch.waveforms, batch.lengths)
        _, lp_b = b(batch.waveforms, batch.lengths)
        mask = torch.arange(lp_a.shape[1])[None, :] < out_a.lengths[:, None]
        max_diff = max(max_diff, float((lp_a - lp_b).abs()[mask].max()))
        fs = 1.0 / float(a.frame_rate)
        ta = greedy_ctc_decode_batch(lp_a, out_a.lengths, vocab, fs)
        tb = greedy_ctc_decode_batch(lp_b, out_a.lengths, vocab, fs)
        same += sum(x.text == y.text for x, y in zip(ta, tb, strict=True))
        total += len(ta)
    return {"max_abs_logprob_diff": max_diff, "same_transcripts": same, "utterances": total}


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}%" if pct else f"{x:.4f}"


def shown_path(path: str | None) -> str | None:
    """`path` as the card shows it: relative to the working directory when it lies inside it
    (a bundle's card should not carry the exporting machine's absolute paths)."""
    if not path:
        return path
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


PATH_KEYS = ("run", "bundle", "path")


def portable_paths(provenance: dict[str, Any]) -> dict[str, Any]:
    """`provenance` with its run, bundle and weight paths (at any depth of the lineage) as
    `shown_path` gives them: relative to the working directory where they lie inside it, so a
    shipped config.json does not carry the exporting machine's absolute paths."""
    out: dict[str, Any] = {}
    for key, value in provenance.items():
        if isinstance(value, dict):
            value = portable_paths(value)
        elif key in PATH_KEYS and isinstance(value, str):
            value = shown_path(value)
        out[key] = value
    return out


def model_card(name: str, config_facts: dict[str, Any], provenance: dict[str, Any]) -> str:
    """The bundle's README.md: what the model is, how it was made, what was measured
    (`provenance` as `export_run` stores it: its paths already made portable)."""
    up = provenance["upstream"]
    lines = [
        f"# {name}",
        "",
        "A speech recognizer bundle of hubert-lstm: an upstream with a SUPERB-style CTC "
        f"head (weighted layer sum -> Linear -> {config_facts['head_lstm']} -> 28 characters "
        "+ blank).",
        "",
        "## Model",
        "",
        f"- upstream: `{config_facts['upstream_type']}` (from {up.get('kind')}"
        + (f" `{up['path']}`" if up.get("path") else "")
        + ")",
        f"- parameters: {config_facts['parameters']:,} "
        f"(upstream {config_facts['upstream_parameters']:,}, "
        f"head {config_facts['head_parameters']:,})",
        f"- head: {config_facts['head_summary']}",
        f"- input: mono float32 at {config_facts['sample_rate']} Hz; "
        f"output: {config_facts['frame_rate']:g} frames/s",
        f"- quantization: {provenance.get('quantize') or 'none (fp32)'}",
        "",
        "## Training",
        "",
        f"- fine-tuning run: `{provenance['run']}` (head from step {provenance.get('step')})",
    ]
    lines += lineage_lines(provenance)
    if provenance.get("end_to_end"):
        lines.append("- the upstream was fine-tuned end to end with the head (CTC loss)")
    if provenance.get("speed_perturb"):
        factors = ", ".join(f"x{f:g}" for f in provenance["speed_perturb"])
        lines.append(f"- speed perturbation: each training utterance played at {factors}, per step")
    dev = provenance.get("dev")
    if dev:
        lines.append(f"- dev at selection: WER {_fmt(dev.get('wer'))}, CER {_fmt(dev.get('cer'))}")
    ev = provenance.get("evaluation")
    if ev:
        lines += [
            "",
            "## Evaluation",
            "",
            f"Manifest `{ev['manifest']}`: {ev['fp32']['utterances']} utterances, "
            f"{ev['fp32']['audio_seconds']:.1f} s of audio; greedy decoding; CPU, "
            f"{ev['fp32']['threads']} thread{'s' if ev['fp32']['threads'] != 1 else ''}.",
            "",
            "| weights | WER | CER | real-time factor |",
            "|---|---|---|---|",
        ]
        for key in ("fp32", "int8"):
            if key in ev:
                r = ev[key]
                lines.append(
                    f"| {key} | {_fmt(r['wer'])} | {_fmt(r['cer'])} | {_fmt(r['rtf'], False)} |"
                )
    q = provenance.get("quantization")
    if q:
        s = q["speed"]
        lines += [
            "",
            "## int8 dynamic quantization",
            "",
            "LSTM and Linear layers run with int8 weights (PyTorch dynamic quantization, CPU "
            "only); convolutions stay fp32. Measured at export, fp32 and int8 timed in "
            f"alternation on the same {s['audio_seconds']:.1f} s of audio "
            f"({q['speed_inputs']}), median of {s['repeats']} passes, {s['threads']} threads, "
            f"{s['cpu']}:",
            "",
            f"- fp32: {s['fp32_seconds']:.3f} s (RTF {s['fp32_rtf']:.4f}); "
            f"int8: {s['int8_seconds']:.3f} s (RTF {s['int8_rtf']:.4f}); "
            f"speed-up x{s['speedup']:.2f}",
            f"- outputs: max |log-prob difference| {q['agreement']['max_abs_logprob_diff']:.4f}; "
            f"identical transcripts {q['agreement']['same_transcripts']}/"
            f"{q['agreement']['utterances']}",
        ]
        if q.get("wer_change") is not None:
            lines.append(
                f"- WER change int8 - fp32: {100 * q['wer_change']:+.2f} points "
                f"(CER {100 * q['cer_change']:+.2f} points)"
            )
        else:
            lines.append("- WER change: not measured (no evaluation manifest given)")
    lines += [
        "",
        "## Limits",
        "",
        "- English characters only (A-Z, apostrophe, space).",
        "- Scores hold for the data named above; other speakers, microphones and noise differ.",
        "",
        # last: `attach_lm` replaces this section with the language model's
        "## Decoding",
        "",
        "Greedy CTC decoding, no language model.",
        "",
    ]
    return "\n".join(lines)


def export_run(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    quantize: str | None = None,
    eval_manifest: str | os.PathLike | None = None,
    name: str | None = None,
    speed_seconds: float = 30.0,
    repeats: int = 5,
    weights_dtype: str = "float32",
) -> dict[str, Any]:
    """Write a bundle from a fine-tuning run (its `best/` head); returns the provenance dict.

    Args:
        run_dir: a `finetune-ctc` run directory (or its `best/`).
        quantize: None or "int8" (then speed and, with `eval_manifest`, WER are compared).
        eval_manifest: utterances to score fp32 (and int8) on; recorded in the card.
        speed_seconds: audio used for the speed comparison (eval manifest, else noise).
        weights_dtype: "float16" stores the weights at half size (cast back at load); with
            `eval_manifest` the WER/CER change of that rounding is measured and recorded.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize must be None or 'int8', found {quantize!r}")
    rec = load_recognizer(run_dir, "cpu")
    if rec.source != "run":
        raise ValueError(f"{run_dir} is a bundle already; export takes a fine-tuning run")
    if rec.text_task.name != "asr":
        raise ValueError(
            f"{run_dir} is a {rec.text_task.name} head (a probe); bundles serve ASR heads only"
        )
    model: ASRModel = rec.model
    upstream, head = model.upstream, model.head
    try:
        type_name = upstream_type_name(upstream)
    except ValueError as err:
        raise ValueError(
            f"cannot bundle this run's upstream ({rec.info['upstream'].get('kind')}): {err}"
        ) from err
    manifest = read_manifest(eval_manifest) if eval_manifest else None
    run_info = rec.info
    # taken when the run started (a publish may have replaced the bundle since); runs from
    # before that snapshot existed read the bundle now
    lineage = run_info["upstream"].get("continued_from") or bundle_lineage(run_info["upstream"])
    upstream_ref = {k: v for k, v in run_info["upstream"].items() if k != "continued_from"}
    provenance: dict[str, Any] = {
        "run": str(Path(run_dir).resolve()),
        "upstream": upstream_ref,  # its lineage once, as "continued_from" below
        "step": run_info.get("step"),
        "dev": run_info.get("dev"),
        "end_to_end": bool(run_info.get("end_to_end")),
        "quantize": quantize,
    }
    if lineage is not None:
        provenance["continued_from"] = lineage
    # the run's training config, as it saved it (next to `best/` when given that folder)
    run_root = Path(run_dir).parent if Path(run_dir).name == BEST_DIR else Path(run_dir)
    settings = run_root / "config.yaml"
    saved = yaml.safe_load(settings.read_text()) if settings.is_file() else {}
    if speed := saved.get("speed_perturb"):
        provenance["speed_perturb"] = speed
    provenance = portable_paths(provenance)
    fp32_eval = evaluate_recognizer(rec, manifest) if manifest is not None else None
    if fp32_eval is not None:
        provenance["evaluation"] = {"manifest": str(eval_manifest), "fp32": fp32_eval}
    if quantize == "int8":
        int8_model = quantize_dynamic_int8(copy.deepcopy(model)).eval()
        batches = speed_inputs(manifest, model.sample_rate, speed_seconds)
        q: dict[str, Any] = {
            "method": "torch.ao.quantization.quantize_dynamic {LSTM, Linear} qint8",
            "speed_inputs": "evaluation manifest" if manifest is not None else "noise clips",
            "speed": compare_speed(model, int8_model, batches, repeats),
            "agreement": output_agreement(model, int8_model, batches, rec.vocab),
            "wer_change": None,
            "cer_change": None,
        }
        if manifest is not None and fp32_eval is not None:
            int8_rec = Recognizer(int8_model, rec.vocab, "run", rec.path, rec.parameters)
            int8_eval = evaluate_recognizer(int8_rec, manifest)
            provenance["evaluation"]["int8"] = int8_eval
            if fp32_eval["wer"] is not None and int8_eval["wer"] is not None:
                q["wer_change"] = int8_eval["wer"] - fp32_eval["wer"]
                q["cer_change"] = int8_eval["cer"] - fp32_eval["cer"]
        provenance["quantization"] = q
    if weights_dtype == "float16" and fp32_eval is not None:
        half_rec = Recognizer(fp16_rounded(model), rec.vocab, "run", rec.path, rec.parameters)
        half_eval = evaluate_recognizer(half_rec, manifest)
        provenance["evaluation"]["fp16_weights"] = half_eval
        provenance["fp16_weights"] = {
            k: None if half_eval[k] is None else half_eval[k] - fp32_eval[k] for k in ("wer", "cer")
        }
    out = Path(out_dir)
    name = name or out.name
    up_params = sum(p.numel() for p in upstream.parameters())
    head_params = sum(p.numel() for p in head.parameters())
    c = head.config
    # a causal head (streaming bundles) is unidirectional
    head_lstm = "BiLSTM" if c.bidirectional else "unidirectional (causal) LSTM"
    facts = {
        "upstream_type": type_name,
        "parameters": up_params + head_params,
        "upstream_parameters": up_params,
        "head_parameters": head_params,
        "head_summary": f"layers {c.layer_indices}, Linear {c.input_dim}->{c.proj_dim}, "
        f"{c.lstm_layers}-layer {head_lstm} {c.lstm_hidden}, {c.vocab_size} outputs",
        "head_lstm": head_lstm,
        "sample_rate": model.sample_rate,
        "frame_rate": model.frame_rate,
    }
    save_bundle(
        out,
        upstream,
        head,
        rec.vocab,
        name=name,
        provenance=provenance,
        card=model_card(name, facts, provenance),
        quantize=quantize,
        weights_dtype=weights_dtype,
    )
    _verify(out, fp16_rounded(model) if weights_dtype == "float16" else model, quantize)
    logger.info("wrote bundle %s (quantize=%s)", out, quantize)
    return provenance


def lineage_lines(provenance: dict[str, Any]) -> list[str]:
    """The card's lines for a chain of continued bundles, newest first."""
    lines = []
    for link in lineage_chain(provenance):
        dev = link.get("dev") or {}
        cer = f", dev CER {_fmt(dev['cer'])}" if dev.get("cer") is not None else ""
        lines.append(
            f"- continued from bundle `{link['bundle']}`: "
            f"run `{link.get('run')}` "
            f"(step {link.get('step')}{interpolated_phrase(link)}{cer})"
        )
    return lines


def fp16_rounded(model: nn.Module) -> nn.Module:
    """A copy of `model` whose stored floating-point weights went through float16 and back.

    Only the state dict is rounded: non-persistent buffers (the log-mel front-end's window and
    filterbank) are rebuilt in float32 at load, so they stay exact here too.
    """
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for t in rounded.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    return rounded.eval()


@torch.inference_mode()
def _verify(out: Path, model: ASRModel, quantize: str | None) -> None:
    """The written bundle must reproduce the run's model (exactly for fp32)."""
    loaded = load_bundle(out).model
    g = torch.Generator().manual_seed(0)
    waves = 0.1 * torch.randn(2, 16000, generator=g)
    lengths = torch.tensor([16000, 12000])
    reference = model if quantize is None else quantize_dynamic_int8(copy.deepcopy(model))
    _, expected = reference.eval()(waves, lengths)
    _, found = loaded(waves, lengths)
    if not torch.equal(_valid(expected, model, lengths), _valid(found, model, lengths)):
        raise RuntimeError(f"bundle {out} does not reproduce the exported model's outputs")


def _valid(log_probs: Tensor, model: ASRModel, lengths: Tensor) -> Tensor:
    frames = model.frame_lengths(lengths)
    mask = torch.arange(log_probs.shape[1])[None, :] < frames[:, None]
    return log_probs[mask]
