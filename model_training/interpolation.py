"""Weight interpolation between two bundles of one architecture (WiSE-FT / model-soup style).

A continuation fine-tuned from a bundle stays in the same loss basin as its starting point, so
the straight line between the two weight vectors often holds a point better than either end
(Wortsman et al., "Robust fine-tuning of zero-shot models", 2022). `interpolate_bundles` writes
that point as a new bundle; choosing the weight is the caller's job (on dev only).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from model_training.bundle import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    read_bundle_config,
    write_weights,
)
from model_training.training.export import shown_path

# config.json entries that must match for the weights to mean the same thing
ARCHITECTURE_KEYS = ("upstream", "head", "vocab", "sample_rate", "frame_rate")


def interpolate_state(
    base: dict[str, torch.Tensor], other: dict[str, torch.Tensor], weight: float
) -> dict[str, torch.Tensor]:
    """(1 - weight) * base + weight * other, tensor by tensor, computed in float32 and stored in
    `other`'s dtype. Integer tensors (counters, indices) must be equal in both."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"interpolation weight must be in [0, 1], found {weight}")
    if set(base) != set(other):
        diff = sorted(set(base) ^ set(other))
        raise ValueError(f"the two state dicts hold different tensors: {diff[:5]}")
    out = {}
    for key, b in base.items():
        o = other[key]
        if b.shape != o.shape:
            raise ValueError(f"{key}: shape {tuple(b.shape)} against {tuple(o.shape)}")
        if not o.is_floating_point():
            if not torch.equal(b, o):
                raise ValueError(f"{key}: non-float tensors differ, cannot interpolate them")
            out[key] = o.clone()
            continue
        mixed = torch.lerp(b.float(), o.float(), weight)
        out[key] = mixed.to(o.dtype).contiguous()
    return out


def interpolate_bundles(
    base_dir: str | Path, other_dir: str | Path, weight: float, out_dir: str | Path
) -> Path:
    """Write `out_dir`: a copy of bundle `other_dir` (config, card, LM) whose weights are
    (1 - weight) x `base_dir`'s + weight x `other_dir`'s. Both must share one architecture.

    config.json's provenance gets an "interpolation" entry (both bundles, the weight, their
    recorded dev scores) and the card a section saying so; the caller records the new dev
    score under provenance "dev" once it has measured it.
    """
    base_dir, other_dir, out_dir = Path(base_dir), Path(other_dir), Path(out_dir)
    base_cfg, other_cfg = read_bundle_config(base_dir), read_bundle_config(other_dir)
    for key in ARCHITECTURE_KEYS:
        if base_cfg.get(key) != other_cfg.get(key):
            raise ValueError(f"{base_dir} and {other_dir} differ in {key!r}: not one architecture")
    state = interpolate_state(
        load_file(str(base_dir / WEIGHTS_FILE)), load_file(str(other_dir / WEIGHTS_FILE)), weight
    )
    if out_dir.resolve() != other_dir.resolve():
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.copytree(other_dir, out_dir)
    write_weights(out_dir, state)
    provenance = dict(other_cfg.get("provenance") or {})
    provenance["interpolation"] = {
        "base": shown_path(str(base_dir)),
        "base_dev": (base_cfg.get("provenance") or {}).get("dev"),
        # in place (out_dir is other_dir): `other` is this bundle as it was
        "other": None if out_dir.resolve() == other_dir.resolve() else shown_path(str(other_dir)),
        "other_dev": provenance.get("dev"),
        "weight": weight,
    }
    (out_dir / CONFIG_FILE).write_text(
        json.dumps({**other_cfg, "provenance": provenance}, indent=2) + "\n"
    )
    card = out_dir / CARD_FILE
    card.write_text(card.read_text().rstrip("\n") + "\n" + _card_section(provenance))
    return out_dir


def _card_section(provenance: dict[str, Any]) -> str:
    spec = provenance["interpolation"]
    return (
        "\n## Weight interpolation\n\n"
        f"The weights are {1 - spec['weight']:.2f} x those of the bundle this run continued "
        f"(`{spec['base']}`) + {spec['weight']:.2f} x the run's own (WiSE-FT-style: a point on "
        "the line between a model and its fine-tuned continuation; the weight was chosen on "
        "dev). The Training and Evaluation sections describe the run before interpolation (its "
        "dev score at selection, its float16 check); the scores at the top are this model's.\n"
    )
