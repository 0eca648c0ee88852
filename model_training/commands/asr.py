"""`hubert-lstm finetune-ctc | evaluate | export`: the recognizer on an upstream (frozen, or
fine-tuned with it end to end)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import typer

logger = logging.getLogger(__name__)


def finetune_ctc(
    upstream: str = typer.Option(
        ...,
        "--upstream",
        help="'fbank', a student checkpoint (student.safetensors / distill run / checkpoint-*.pt), "
        "a bundle dir, a Hugging Face HuBERT dir (teacher), or a random-init student: "
        "random:FACTORY (e.g. random:lstm_small) or random:DISTILL_CONFIG.yaml.",
    ),
    train: Path = typer.Option(..., "--train", help="Training manifest TSV (with transcripts)."),
    dev: Path | None = typer.Option(None, "--dev", help="Dev manifest: selects the best head."),
    out: Path = typer.Option(..., "--out", help="Run directory (resumes if it has checkpoints)."),
    config: Path | None = typer.Option(None, "--config", help="YAML, e.g. configs/ctc/demo.yaml."),
    overrides: list[str] | None = typer.Option(
        None, "--set", help="Config override KEY=VALUE (YAML value); repeatable."
    ),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Override max_steps."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    feature_cache: str | None = typer.Option(
        None, "--feature-cache", help="none | memory | disk: reuse the frozen upstream's features."
    ),
    end_to_end: bool = typer.Option(
        False,
        "--end-to-end",
        help="Fine-tune the upstream with the head (its own lr: lr x upstream_lr_scale); "
        "the feature cache is then off.",
    ),
    upstream_lr_scale: float | None = typer.Option(
        None, "--upstream-lr-scale", help="End to end: upstream lr = lr x this (default 0.1)."
    ),
    freeze_upstream_steps: int | None = typer.Option(
        None, "--freeze-upstream-steps", help="End to end: keep the upstream frozen this long."
    ),
    init_head: Path | None = typer.Option(
        None,
        "--init-head",
        help="A bundle or fine-tuning run whose CTC head starts this one (continue training it: "
        "give its upstream as --upstream, e.g. the bundle or RUN/best/upstream.safetensors).",
    ),
    task: str | None = typer.Option(
        None,
        "--task",
        help="asr (characters, WER/CER) | pr (phones from espeak-ng or phonemes.lexicon, PER); "
        "default: the config's (asr).",
    ),
) -> None:
    """Train a SUPERB-style CTC head on a frozen upstream, or the whole model end to end;
    writes RUN/best and RUN/metrics.json."""
    from model_training.training.finetune_ctc import FinetuneConfig, run

    cfg = FinetuneConfig.from_yaml(
        config,
        overrides or [],
        upstream=upstream,
        train_manifest=str(train),
        dev_manifest=str(dev) if dev else None,
        run_dir=str(out),
        max_steps=max_steps,
        device=device,
        feature_cache=feature_cache,
        end_to_end=end_to_end or None,  # unset: the config decides
        upstream_lr_scale=upstream_lr_scale,
        freeze_upstream_steps=freeze_upstream_steps,
        task=task,
        init_head=str(init_head) if init_head else None,
    )
    run_dir = run(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    typer.echo(json.dumps({"run": str(run_dir), "step": metrics["step"], "best": metrics["best"]}))


def evaluate(
    model: Path = typer.Option(..., "--model", help="Bundle dir or fine-tuning run dir."),
    manifest: Path = typer.Option(..., "--manifest", help="Manifest TSV with transcripts."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda (int8 bundles: cpu only)."),
    max_batch_seconds: float = typer.Option(160.0, "--max-batch-seconds", help="Padded audio."),
    max_batch_size: int = typer.Option(32, "--max-batch-size", help="Utterances per batch."),
    details: Path | None = typer.Option(None, "--details", help="Write id/ref/hyp JSON lines."),
    output: Path | None = typer.Option(None, "--output", help="Also write the JSON here."),
    precision: str = typer.Option(
        "fp32", "--precision", help="fp32 | bf16 (CPU or CUDA autocast) | fp16 (CUDA)."
    ),
    task: str | None = typer.Option(
        None, "--task", help="asr | pr: check the model is that kind of head (default: any)."
    ),
    decoder: str = typer.Option(
        "auto",
        "--decoder",
        help="auto (the bundle's: lexicon + LM when it ships one, else greedy) | greedy | lm "
        "(lexicon + word n-gram LM beam search with --lm).",
    ),
    lm: Path | None = typer.Option(
        None, "--lm", help="ARPA LM (.arpa / .arpa.gz) for --decoder lm."
    ),
    lm_weight: float = typer.Option(2.0, "--lm-weight", help="--decoder lm: LM weight."),
    word_score: float = typer.Option(0.0, "--word-score", help="--decoder lm: score per word."),
    beam_size: int | None = typer.Option(
        None, "--beam-size", min=1, help="--decoder lm: beam size (default 500)."
    ),
    per_engine: bool = typer.Option(
        False,
        "--per-engine",
        help="Also score each TTS engine (by_engine): speaker ids grouped by the part before "
        "':', as a synthetic corpus writes them (engine:voice).",
    ),
) -> None:
    """Print JSON: wer, cer (a PR head: per), utterances, audio_seconds, rtf, parameters."""
    from model_training.decoding import DEFAULT_BEAM_SIZE, LMDecoderConfig
    from model_training.training.evaluate import evaluate as run_evaluate

    if decoder not in ("auto", "greedy", "lm"):
        raise typer.BadParameter(
            f"expected auto, greedy or lm: {decoder!r}", param_hint="--decoder"
        )
    if decoder == "lm" and lm is None:
        raise typer.BadParameter("--decoder lm needs --lm", param_hint="--lm")
    lm_config = (
        LMDecoderConfig(str(lm), lm_weight, word_score, beam_size or DEFAULT_BEAM_SIZE)
        if lm is not None
        else None
    )

    result = run_evaluate(
        model,
        manifest,
        device=device,
        max_batch_seconds=max_batch_seconds,
        max_batch_size=max_batch_size,
        details_path=details,
        precision=precision,
        task=task,
        decoder=decoder,
        lm=lm_config,
        per_engine=per_engine,
    )
    text = json.dumps(result, indent=2)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text + "\n")
    typer.echo(text)


def export(
    run: Path = typer.Option(..., "--run", help="Fine-tuning run directory (uses its best/)."),
    out: Path = typer.Option(..., "--out", help="Bundle directory to write."),
    quantize: str | None = typer.Option(None, "--quantize", help="int8: dynamic quantization."),
    eval_manifest: Path | None = typer.Option(
        None, "--eval-manifest", help="Score the bundle (fp32 and int8) on this manifest."
    ),
    name: str | None = typer.Option(None, "--name", help="Model id (default: the folder name)."),
    speed_seconds: float = typer.Option(30.0, "--speed-seconds", help="Audio for the timing."),
    repeats: int = typer.Option(5, "--repeats", help="Timed passes per precision (median)."),
    weights_dtype: str = typer.Option(
        "float32", "--weights-dtype", help="float32 | float16 (half the file, cast at load)."
    ),
) -> None:
    """Write a serving bundle (config.json, model.safetensors, README.md) from a run."""
    from model_training.training.export import export_run

    if quantize not in (None, "int8"):
        raise typer.BadParameter(f"expected int8, found {quantize!r}", param_hint="--quantize")
    if weights_dtype not in ("float32", "float16"):
        raise typer.BadParameter(
            f"expected float32 or float16: {weights_dtype!r}", param_hint="--weights-dtype"
        )
    provenance = export_run(
        run,
        out,
        quantize=quantize,
        eval_manifest=eval_manifest,
        name=name,
        speed_seconds=speed_seconds,
        repeats=repeats,
        weights_dtype=weights_dtype,
    )
    summary = {"bundle": str(out), "quantize": quantize, "weights_dtype": weights_dtype}
    ev = provenance.get("evaluation")
    if ev:
        summary["eval"] = {
            k: {m: ev[k][m] for m in ("wer", "cer", "rtf")}
            for k in ("fp32", "int8", "fp16_weights")
            if k in ev
        }
    q = provenance.get("quantization")
    if q:
        summary["speedup"] = q["speed"]["speedup"]
        summary["wer_change"] = q["wer_change"]
    typer.echo(json.dumps(summary))


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the root app."""
    app.command("finetune-ctc")(finetune_ctc)
    app.command("evaluate")(evaluate)
    app.command("export")(export)
