"""Upstream model types by name, so a bundle's config.json can rebuild its model without pickle."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class UpstreamType:
    """Where an upstream's model and config classes live, and its training-only config keys.

    `inference_overrides` are applied to the config when exporting for serving, e.g. dropping
    the cluster head that only distillation uses.
    """

    module: str
    model_class: str
    config_class: str
    inference_overrides: tuple[tuple[str, Any], ...] = ()

    def classes(self) -> tuple[type[nn.Module], Any]:
        """Import and return (model class, config class)."""
        mod = importlib.import_module(self.module)
        return getattr(mod, self.model_class), getattr(mod, self.config_class)


UPSTREAMS: dict[str, UpstreamType] = {
    "lstm_student": UpstreamType(
        "model_training.models.student",
        "LSTMStudent",
        "LSTMStudentConfig",
        inference_overrides=(("num_classes", 0),),
    ),
    "distilhubert": UpstreamType(
        "model_training.models.distilhubert",
        "DistilHubert",
        "DistilHubertConfig",  # its layer-prediction heads stay in the bundle (1.8M params)
    ),
    "fbank": UpstreamType("model_training.models.fbank", "FbankUpstream", "FbankConfig"),
}


def upstream_type_name(model: nn.Module) -> str:
    """The registry name of an upstream instance; ValueError for unknown classes."""
    for name, entry in UPSTREAMS.items():
        if type(model).__name__ == entry.model_class and type(model).__module__ == entry.module:
            return name
    raise ValueError(
        f"{type(model).__module__}.{type(model).__name__} is not a registered upstream; "
        f"known: {sorted(UPSTREAMS)}"
    )


def build_upstream(type_name: str, config: dict[str, Any]) -> nn.Module:
    """Instantiate a registered upstream from its config dict."""
    if type_name not in UPSTREAMS:
        raise ValueError(f"unknown upstream type {type_name!r}; known: {sorted(UPSTREAMS)}")
    model_cls, config_cls = UPSTREAMS[type_name].classes()
    return model_cls(config_cls.from_dict(config))


def inference_config(type_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """The config with training-only parts (e.g. the cluster head) removed."""
    return {**config, **dict(UPSTREAMS[type_name].inference_overrides)}
