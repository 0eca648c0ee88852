"""`hubert-lstm targets` (teacher-target cache) and `hubert-lstm distill --config FILE.yaml`.

Both work under torchrun, e.g. `torchrun --nproc_per_node 4 $(which hubert-lstm) distill ...`.
"""

from __future__ import annotations

from pathlib import Path

import typer


def targets(
    teacher: Path | None = typer.Option(None, "--teacher", help="Teacher dir (from_hf_dir)."),
    fairseq: Path | None = typer.Option(None, "--fairseq", help="fairseq HuBERT .pt instead."),
    manifest: Path = typer.Option(..., "--manifest", help="Manifest TSV."),
    out: Path = typer.Option(..., "--out", help="Cache directory (resumes if present)."),
    top_k: int = typer.Option(100, "--top-k", help="Logits kept per frame (all when >= C)."),
    layers: str = typer.Option("", "--layers", help="Teacher layers to cache, e.g. 4,8,12."),
    shard_size: int = typer.Option(256, "--shard-size", help="Utterances per shard."),
    dtype: str = typer.Option("float16", "--dtype", help="float16 | float32 logit values."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
) -> None:
    """Run the teacher once per utterance and cache top-k logits (+ layers) in shards."""
    from model_training.training.distill import TeacherConfig, load_teacher
    from model_training.training.targets import build_target_cache_distributed

    if (teacher is None) == (fairseq is None):
        raise typer.BadParameter("give exactly one of --teacher and --fairseq")
    cfg = TeacherConfig(
        dir=str(teacher) if teacher else None, fairseq_checkpoint=str(fairseq) if fairseq else None
    )
    model = load_teacher(cfg)
    info = {"source": str(teacher or fairseq), "head": model.head_info()}
    wanted = [int(x) for x in layers.split(",") if x.strip()]
    path = build_target_cache_distributed(
        model,
        manifest,
        out,
        top_k=top_k,
        layers=wanted,
        shard_size=shard_size,
        value_dtype=dtype,
        device=device,
        teacher_info=info,
    )
    typer.echo(str(path))


def distill(
    config: Path = typer.Option(..., "--config", help="YAML (configs/distill/*.yaml)."),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config entry, e.g. --set optim.max_steps=100 (repeatable)."
    ),
) -> None:
    """Distil a student (CE / KD / DKD / feature loss); resumes from RUN_DIR/checkpoints."""
    from model_training.training.distill import DistillConfig, run

    typer.echo(str(run(DistillConfig.from_yaml(config, overrides))))


def register(app: typer.Typer) -> None:
    """Attach this area's commands to the root app."""
    app.command("targets")(targets)
    app.command("distill")(distill)
