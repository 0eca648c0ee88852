"""`hubert-lstm sid | embed`: the speaker-identification probe and offline feature extraction."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def sid(
    upstream: str = typer.Option(
        ..., "--upstream", help="As finetune-ctc: 'fbank', a bundle, a student, a teacher, ..."
    ),
    manifest: Path = typer.Option(
        ..., "--manifest", help="Manifest with a speaker column; splits are drawn from it."
    ),
    out: Path = typer.Option(..., "--out", help="Run directory."),
    config: Path | None = typer.Option(None, "--config", help="YAML, e.g. configs/sid/demo.yaml."),
    overrides: list[str] | None = typer.Option(
        None, "--set", help="Config override KEY=VALUE (YAML value); repeatable."
    ),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda."),
) -> None:
    """SUPERB-style speaker identification on a frozen upstream: weighted layer sum, mean
    pooling, linear classifier; utterance-level splits of the same speakers. Prints accuracy."""
    from model_training.training.sid import SIDConfig, run

    cfg = SIDConfig.from_yaml(
        config,
        overrides or [],
        upstream=upstream,
        manifest=str(manifest),
        run_dir=str(out),
        device=device,
    )
    run_dir = run(cfg)
    m = json.loads((run_dir / "metrics.json").read_text())
    keys = ("speakers", "chance", "train_acc", "dev_acc", "test_acc", "best_step")
    typer.echo(json.dumps({"run": str(run_dir), **{k: m[k] for k in keys}}))


def embed(
    source: Path = typer.Option(..., "--input", help="Manifest TSV or a folder of audio files."),
    model: str = typer.Option(
        ..., "--model", help="Bundle, distillation or fine-tuning run, teacher dir, or 'fbank'."
    ),
    out: Path = typer.Option(..., "--out", help="Output folder (shards + index.json)."),
    layers: str = typer.Option("all", "--layers", help="all | last | 0,2,-1"),
    pooling: str = typer.Option("none", "--pooling", help="none | mean (over valid frames)."),
    shard_size: int = typer.Option(256, "--shard-size", help="Utterances per shard."),
    max_batch_seconds: float = typer.Option(60.0, "--max-batch-seconds", help="Padded audio."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | float16."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda | cuda:N."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
) -> None:
    """Extract features to sharded safetensors + index.json; resumable (finished shards are
    skipped); under torchrun each process takes shards rank, rank + world, ..."""
    import os

    from model_training.training.embed import EmbedSettings
    from model_training.training.embed import embed as run_embed

    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{os.environ['LOCAL_RANK']}"
    settings = EmbedSettings(
        layers, pooling, shard_size, max_batch_seconds, dtype, device, progress
    )
    typer.echo(json.dumps(run_embed(source, model, out, settings)))


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the root app."""
    app.command("sid")(sid)
    app.command("embed")(embed)
