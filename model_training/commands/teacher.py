"""`hubert-lstm teacher ...`: pretrain a mini HuBERT teacher (iteration 1), label manifests."""

from __future__ import annotations

from pathlib import Path

import typer

teacher_app = typer.Typer(help="Train a mini HuBERT teacher and write its cluster labels.")


@teacher_app.command("pretrain")
def pretrain(
    manifest: Path = typer.Option(..., "--manifest", help="Training manifest TSV."),
    out: Path = typer.Option(..., "--out", help="Teacher directory to write (resumes if present)."),
    config: Path | None = typer.Option(None, "--config", help="YAML (configs/teacher/demo.yaml)."),
    max_steps: int | None = typer.Option(None, "--max-steps", help="Override max_steps."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda."),
) -> None:
    """MFCC -> k-means units -> masked prediction; writes a `HubertTeacher.from_hf_dir` dir."""
    from model_training.training.teacher_pretrain import TeacherPretrainConfig, pretrain_teacher

    cfg = TeacherPretrainConfig.from_yaml(config, max_steps=max_steps, device=device)
    path = pretrain_teacher(manifest, out, cfg)
    typer.echo(f"teacher: {path}  labels: {path / 'labels' / (manifest.stem + '.km')}")


@teacher_app.command("labels")
def labels(
    kmeans: Path = typer.Option(..., "--kmeans", help="kmeans.safetensors from `pretrain`."),
    manifest: Path = typer.Option(..., "--manifest", help="Manifest TSV to label."),
    out: Path = typer.Option(..., "--out", help=".km file to write."),
) -> None:
    """Label another manifest (e.g. dev) with the teacher's MFCC k-means units."""
    from model_training.training.teacher_pretrain import MfccKMeans, label_manifest

    typer.echo(str(label_manifest(MfccKMeans.load(kmeans), manifest, out)))


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the root app."""
    app.add_typer(teacher_app, name="teacher")
