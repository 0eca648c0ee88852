"""Students as training artefacts: factories by name, building, saving and loading.

A distillation run writes its student as `student.safetensors`: the weights, plus the registry
type, the factory name and the config in the safetensors metadata, so
`load_student_checkpoint(path)` rebuilds it without pickle. CTC fine-tuning reads students
the same way, and builds randomly initialised ones (`random:FACTORY` or
`random:DISTILL_CONFIG.yaml`, see `random_student_spec`) for the no-distillation baseline.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from model_training.training.common import Checkpointer, load_checkpoint_payload, unwrap_model

STUDENT_FORMAT = "hubert-lstm/student"
STUDENT_FILE = "student.safetensors"

# factory name -> (registry type, "module:function")
STUDENT_FACTORIES: dict[str, tuple[str, str]] = {
    "lstm": ("lstm_student", "model_training.models.student:lstm_student"),
    "lstm_paper": ("lstm_student", "model_training.models.student:lstm_student_paper"),
    "lstm_small": ("lstm_student", "model_training.models.student:lstm_student_small"),
    "lstm_tiny": ("lstm_student", "model_training.models.student:lstm_student_tiny"),
    "lstm_paper_fast": ("lstm_student", "model_training.models.student:lstm_student_paper_fast"),
    "lstm_small_fast": ("lstm_student", "model_training.models.student:lstm_student_small_fast"),
    "distilhubert_paper": ("distilhubert", "model_training.models.distilhubert:distilhubert_paper"),
    "distilhubert_small": ("distilhubert", "model_training.models.distilhubert:distilhubert_small"),
    "distilhubert_tiny": ("distilhubert", "model_training.models.distilhubert:distilhubert_tiny"),
}
# registry type -> the generic builder taking every config field
GENERIC_BUILDERS = {"lstm_student": "lstm", "distilhubert": "distilhubert"}
STUDENT_FACTORIES["distilhubert"] = (
    "distilhubert",
    "model_training.models.distilhubert:distilhubert",
)


def _factory(name: str) -> Any:
    """The builder function of factory `name`."""
    module_name, fn_name = STUDENT_FACTORIES[name][1].split(":")
    return getattr(importlib.import_module(module_name), fn_name)


def build_student(
    factory: str,
    overrides: dict[str, Any],
    *,
    num_classes: int | None,
    teacher_dim: int | None = None,
    feature_layers: Sequence[int] = (),
) -> nn.Module:
    """Instantiate a student from a factory name plus config overrides.

    LSTM students get `num_classes` = the teacher's C; DistilHuBERT students get
    `target_layers` = the teacher layers to predict and `teacher_dim` = their width (unless the
    overrides set them).
    """
    type_name = STUDENT_FACTORIES[factory][0]
    fn = _factory(factory)
    kwargs = dict(overrides)
    if type_name == "lstm_student" and num_classes is not None:
        kwargs.setdefault("num_classes", num_classes)
    if type_name == "distilhubert":
        if feature_layers:
            kwargs.setdefault("target_layers", list(feature_layers))
        if teacher_dim is not None:
            kwargs.setdefault("teacher_dim", teacher_dim)
    return fn(**kwargs)


def student_config_dict(model: nn.Module) -> dict[str, Any]:
    """The student's config as a JSON-ready dict (`config.to_dict()`)."""
    config = unwrap_model(model).config
    return config.to_dict() if hasattr(config, "to_dict") else asdict(config)


def save_student(
    path: str | os.PathLike, model: nn.Module, *, factory: str, provenance: dict[str, Any]
) -> Path:
    """Write the student as safetensors; type, factory and config live in the metadata."""
    model = unwrap_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": STUDENT_FORMAT,
        "format_version": "1",
        "type": STUDENT_FACTORIES[factory][0],
        "factory": factory,
        "config": json.dumps(student_config_dict(model)),
        "provenance": json.dumps(provenance),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_student_checkpoint(path: str | os.PathLike, device: str = "cpu") -> nn.Module:
    """Rebuild a distilled student (with its training head) from what `distill` wrote.

    Accepts `student.safetensors`, a run directory (its `student.safetensors`, else its latest
    training checkpoint) or a training checkpoint `checkpoint-*.pt` (read with
    weights_only=True). The model comes back in eval mode.
    """
    path = Path(path)
    if path.is_dir():
        if (path / STUDENT_FILE).exists():
            path = path / STUDENT_FILE
        else:
            latest = Checkpointer(path / "checkpoints").latest()
            if latest is None:
                raise FileNotFoundError(f"{path}: no {STUDENT_FILE} and no checkpoints/")
            path = latest
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open API
        if meta.get("format") != STUDENT_FORMAT:
            raise ValueError(
                f"{path}: expected format {STUDENT_FORMAT!r}, found {meta.get('format')!r}"
            )
        type_name, config = meta["type"], json.loads(meta["config"])
    else:
        payload = load_checkpoint_payload(path)
        type_name, config = payload["extra"]["student_type"], payload["extra"]["student_config"]
        state = payload["model"]
    if type_name not in GENERIC_BUILDERS:
        raise ValueError(f"{path}: unknown student type {type_name!r}")
    model = _factory(GENERIC_BUILDERS[type_name])(**config)
    model.load_state_dict(state)
    return model.to(device).eval()


RANDOM_PREFIX = "random:"


def random_student_spec(spec: str) -> dict[str, Any]:
    """`random:FACTORY` or `random:DISTILL_CONFIG.yaml` -> {"factory", "overrides", "source"}.

    A distillation config contributes its `student` section (factory and overrides), so the
    random-init baseline has exactly the architecture of the distilled students it is
    compared with; nothing else of that config is used (no teacher, no CNN copy).
    """
    if not spec.startswith(RANDOM_PREFIX):
        raise ValueError(f"expected {RANDOM_PREFIX}FACTORY or {RANDOM_PREFIX}CONFIG.yaml")
    source = spec[len(RANDOM_PREFIX) :]
    if source.endswith((".yaml", ".yml")):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{spec}: no such distillation config")
        student = (yaml.safe_load(path.read_text()) or {}).get("student") or {}
        factory = student.get("factory", "lstm_small")
        overrides = dict(student.get("overrides") or {})
        source = str(path.resolve())
    else:
        factory, overrides = source, {}
    if factory not in STUDENT_FACTORIES:
        raise ValueError(
            f"{spec}: unknown student factory {factory!r}; expected one of "
            f"{sorted(STUDENT_FACTORIES)} or a distillation config (.yaml)"
        )
    return {"factory": factory, "overrides": overrides, "source": source}


def build_random_student(factory: str, overrides: dict[str, Any], seed: int) -> nn.Module:
    """A student with seeded random weights and no cluster head (nothing to distil into);
    the same (factory, overrides, seed) always gives the same weights, and the global RNG
    is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_student(factory, overrides, num_classes=0)
