"""`hubert-lstm model-info`: parameter counts and layer layout of the named model configs.

`paper` and `small` are the LSTM students from their factories, `paper-fast` and `small-fast`
the same LSTMs on the light log-mel front-end (`models/frontend.py`); `distilhubert` and
`hubert-base` are references built from transformers `HubertConfig`s with random weights.

Counting rule (`params`): every parameter the model uses in its role, excluding heads used in
training only. For students that means the upstream (their hidden states), without the
cluster-logit head (LSTM) or the layer-prediction heads (DistilHuBERT), as DistilHuBERT's
published 23.49M is counted. For the HuBERT teacher the pretraining head (`final_proj`, label
embeddings) is included, because the teacher computes its cluster logits with it (as fairseq's
published 94.7M counts it). Training-only heads are reported under `training_heads`.

Models are built on PyTorch's meta device: the same modules and parameter shapes as a random
initialisation, without allocating or initialising weights (hubert-base in ~0.2 s, not ~4 s).

Compute (`gmac_per_audio_second`, unless `--no-macs`): multiply-accumulates of the model as
served (students without their training head, the references without heads) counted by running
it once on one second of audio on the CPU (`model_training/macs.py`; a few seconds for
hubert-base, whose weights must then be allocated).
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import typer

CONFIGS = ("paper", "paper-fast", "small", "small-fast", "distilhubert", "hubert-base")
STUDENTS = {
    "paper": "lstm_student_paper",
    "paper-fast": "lstm_student_paper_fast",
    "small": "lstm_student_small",
    "small-fast": "lstm_student_small_fast",
}


class ModelConfigName(StrEnum):
    paper = "paper"
    paper_fast = "paper-fast"
    small = "small"
    small_fast = "small-fast"
    distilhubert = "distilhubert"
    hubert_base = "hubert-base"


def _count(module: Any) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


def _student_factory(name: str) -> Any:
    from model_training.models import student

    return getattr(student, STUDENTS[name])


def _student_info(name: str, num_classes: int) -> dict[str, Any]:
    model = _student_factory(name)(num_classes=num_classes)
    cfg = model.config
    head = _count(model.head)
    components = [
        {"name": "feature_extractor", "params": _count(model.feature_extractor)},
        {"name": "feature_norm", "params": _count(model.feature_norm)},
        {"name": "projection", "params": _count(model.projection)},
    ] + [
        {"name": f"lstm{i + 1}", "params": _count(lstm), "hidden_size": cfg.hidden_size}
        for i, lstm in enumerate(model.lstms)
    ]
    return {
        "params": _count(model) - head,
        "params_with_training_heads": _count(model),
        "training_heads": {"cluster_head": head},
        "architecture": {
            "type": "lstm_student",
            "frontend": cfg.frontend,
            "bidirectional": cfg.bidirectional,
            "num_classes": cfg.num_classes,
            **(
                {"logmel": cfg.logmel}
                if cfg.frontend == "logmel"
                else {"conv_layers": [list(s) for s in cfg.conv_layers]}
            ),
        },
        "components": components,
        "layers": _layers(model.layer_names, model.hidden_dims),
        "sample_rate": model.sample_rate,
        "frame_rate": model.frame_rate,
    }


def _hubert_components(hubert: Any) -> list[dict[str, Any]]:
    enc = hubert.encoder
    comps = [
        {"name": "feature_extractor", "params": _count(hubert.feature_extractor)},
        {"name": "feature_projection", "params": _count(hubert.feature_projection)},
        {"name": "pos_conv_embed", "params": _count(enc.pos_conv_embed)},
        {"name": "encoder_layer_norm", "params": _count(enc.layer_norm)},
    ]
    comps += [
        {"name": f"transformer{i + 1}", "params": _count(layer)}
        for i, layer in enumerate(enc.layers)
    ]
    if hasattr(hubert, "masked_spec_embed"):
        comps.append({"name": "mask_embedding", "params": hubert.masked_spec_embed.numel()})
    return comps


def _hubert_reference_info(name: str, num_classes: int) -> dict[str, Any]:
    from torch import nn
    from transformers import HubertModel

    from model_training.models.teacher import ProjectionHead, hubert_base_config

    if name == "hubert-base":
        config = hubert_base_config()
        hubert = HubertModel(config)
        head = ProjectionHead(config.hidden_size, 256, num_classes)
        comps = [*_hubert_components(hubert), {"name": "pretraining_head", "params": _count(head)}]
        params = _count(hubert) + _count(head)
        heads: dict[str, int] = {}
        arch = {"type": "hubert", "pretraining_head": head.info()}
    else:  # DistilHuBERT: HuBERT with 2 layers, no LayerNorm before the projection
        config = hubert_base_config(
            num_hidden_layers=2, feat_proj_layer_norm=False, mask_time_prob=0.0
        )
        hubert = HubertModel(config)
        targets = (4, 8, 12)
        pred = nn.Linear(config.hidden_size, len(targets) * config.hidden_size)
        comps = _hubert_components(hubert)
        params = _count(hubert)
        heads = {"layer_prediction_heads": _count(pred)}
        arch = {"type": "distilhubert", "target_layers": list(targets)}
    arch["conv_layers"] = [
        [int(d), int(k), int(s)]
        for d, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride, strict=True)
    ]
    arch.update(
        hidden_size=config.hidden_size,
        num_layers=config.num_hidden_layers,
        num_heads=config.num_attention_heads,
        ffn_dim=config.intermediate_size,
    )
    names = ["transformer_input"] + [f"transformer{i + 1}" for i in range(config.num_hidden_layers)]
    return {
        "params": params,
        "params_with_training_heads": params + sum(heads.values()),
        "training_heads": heads,
        "architecture": arch,
        "components": comps,
        "layers": _layers(names, [config.hidden_size] * len(names)),
        "sample_rate": 16000,
        "frame_rate": 50.0,
    }


def _layers(names: list[str], dims: list[int]) -> list[dict[str, Any]]:
    return [
        {"index": i, "name": n, "dim": int(d)}
        for i, (n, d) in enumerate(zip(names, dims, strict=True))
    ]


def _served_model(config: str) -> Any:
    """The model as served, with random weights on the CPU, for counting MACs."""
    if config in STUDENTS:
        return _student_factory(config)(num_classes=0)
    from transformers import HubertModel

    from model_training.models.teacher import hubert_base_config

    if config == "hubert-base":
        return HubertModel(hubert_base_config(mask_time_prob=0.0))
    return HubertModel(
        hubert_base_config(num_hidden_layers=2, feat_proj_layer_norm=False, mask_time_prob=0.0)
    )


def model_info(config: str, num_classes: int = 500, macs: bool = True) -> dict[str, Any]:
    """Parameter counts, hidden-state layout and (macs=True) GMAC per audio second of a named
    config (see module docstring)."""
    if config not in CONFIGS:
        raise ValueError(f"config must be one of {CONFIGS}; found {config!r}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1; found {num_classes}")
    import torch

    with torch.device("meta"):
        if config in STUDENTS:
            info = _student_info(config, num_classes)
        else:
            info = _hubert_reference_info(config, num_classes)
    if macs:
        from model_training.macs import gmac_per_audio_second

        info["gmac_per_audio_second"] = round(gmac_per_audio_second(_served_model(config)), 4)
        info["macs_counted"] = "as served (no training heads), 1 s input, CPU fp32"
    return {
        "config": config,
        "params": info["params"],
        "params_millions": round(info["params"] / 1e6, 3),
        "counted": (
            "teacher with its pretraining head"
            if config == "hubert-base"
            else "upstream without training-only heads"
        ),
        **{k: v for k, v in info.items() if k != "params"},
    }


def register(app: typer.Typer) -> None:
    """Attach `model-info` to the root app."""

    @app.command("model-info")
    def model_info_command(
        config: ModelConfigName = typer.Option(
            ModelConfigName.paper, "--config", help="Which model to describe."
        ),
        num_classes: int = typer.Option(
            500, "--num-classes", help="Cluster units C for the students' and teacher's heads."
        ),
        macs: bool = typer.Option(
            True, "--macs/--no-macs", help="Count GMAC per audio second (runs the model once)."
        ),
    ) -> None:
        """Print parameter counts, the layer layout and GMAC per audio second as JSON."""
        typer.echo(json.dumps(model_info(config.value, num_classes, macs), indent=2))
