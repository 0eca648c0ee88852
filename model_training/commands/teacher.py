"""`hubert-lstm teacher ...`: pretrain a mini HuBERT teacher (iteration 1 on MFCC units, or a
later iteration on units of an earlier teacher), label manifests with its units."""

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
    label_teacher: Path | None = typer.Option(
        None,
        "--label-teacher",
        help="Next HuBERT iteration: units from k-means on this (earlier) teacher's hidden "
        "layer instead of MFCCs; a fresh teacher learns them.",
    ),
    label_layer: int | None = typer.Option(
        None, "--label-layer", help="That teacher's layer (default: the middle one)."
    ),
    num_clusters: int | None = typer.Option(None, "--num-clusters", help="Override k."),
    dev: Path | None = typer.Option(
        None, "--dev", help="Dev manifest: labelled too; masked-unit accuracy is measured on it."
    ),
) -> None:
    """Units -> masked prediction; writes a `HubertTeacher.from_hf_dir` dir + metrics.json."""
    from model_training.training.teacher_pretrain import TeacherPretrainConfig, pretrain_teacher

    cfg = TeacherPretrainConfig.from_yaml(
        config,
        max_steps=max_steps,
        device=device,
        label_teacher=str(label_teacher) if label_teacher else None,
        label_layer=label_layer,
        num_clusters=num_clusters,
    )
    path = pretrain_teacher(manifest, out, cfg, dev_manifest=dev)
    typer.echo(f"teacher: {path}  labels: {path / 'labels' / (manifest.stem + '.km')}")


@teacher_app.command("labels")
def labels(
    kmeans: Path = typer.Option(..., "--kmeans", help="kmeans.safetensors from `pretrain`."),
    manifest: Path = typer.Option(..., "--manifest", help="Manifest TSV to label."),
    out: Path = typer.Option(..., "--out", help=".km file to write."),
) -> None:
    """Label another manifest (e.g. dev) with a teacher's units (MFCC or teacher-layer
    k-means, whichever `pretrain` fitted)."""
    from model_training.training.units import UnitKMeans, label_manifest

    typer.echo(str(label_manifest(UnitKMeans.load(kmeans), manifest, out)))


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the root app."""
    app.add_typer(teacher_app, name="teacher")
