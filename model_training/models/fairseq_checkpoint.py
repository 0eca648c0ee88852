"""Read fairseq checkpoints with `torch.load(weights_only=True)` and an explicit allow-list.

A fairseq `.pt` is a pickle. Besides tensors it holds the training config (an omegaconf
`DictConfig` since fairseq 0.10, an `argparse.Namespace` before) and objects of fairseq's own
classes (`fairseq.data.dictionary.Dictionary` in `task_state`, config dataclasses and
`ChoiceEnum` members inside the `DictConfig`). It is never unpickled in full, which would run
whatever code the file names. Instead:

1. The pickle's globals are listed statically (`torch.serialization.
   get_unsafe_globals_in_checkpoint`, nothing executed).
2. Allowed as themselves: `argparse.Namespace`, the omegaconf container and node classes and
   the builtins and typing names their pickles use (`OMEGACONF_TYPES`, `PLAIN_TYPES`).
3. Every `fairseq.*` name becomes an inert stand-in (`FairseqStub`): an empty object that keeps
   the state it is given, or, called like an enum with one plain value, that value itself (so
   `extractor_mode` reads "default"). No fairseq code is needed or run.
4. Anything else (`os.system`, `subprocess.Popen`, ...) refuses the file with the names found.

Then `torch.load(..., weights_only=True)` runs under `torch.serialization.safe_globals` of
exactly that list.
"""

from __future__ import annotations

import argparse
import collections
import logging
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

#: Builtins and typing names omegaconf's pickles reference (object types, key types).
PLAIN_TYPES: tuple[Any, ...] = (
    argparse.Namespace,
    collections.defaultdict,
    dict,
    list,
    int,
    float,
    str,
    bool,
    typing.Any,
)


def omegaconf_types() -> tuple[Any, ...]:
    """omegaconf's container, metadata and node classes ((), when omegaconf is absent)."""
    try:
        from omegaconf import DictConfig, ListConfig, nodes
        from omegaconf.base import ContainerMetadata, Metadata
    except ImportError:
        return ()
    node_types = tuple(
        getattr(nodes, name)
        for name in (
            "AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "EnumNode",
            "BytesNode", "PathNode", "ValueNode",
        )
        if hasattr(nodes, name)
    )  # fmt: skip
    return (DictConfig, ListConfig, ContainerMetadata, Metadata, *node_types)


class FairseqStub:
    """Stands in for any `fairseq.*` class in a checkpoint; runs no code of the file's.

    Built by pickle as an instance (its state kept in `state`) or, when called like an enum
    class with one plain value (`ChoiceEnum("default")`), it returns that value.
    """

    fairseq_name = "fairseq"

    def __new__(cls, *args: Any) -> Any:
        if len(args) == 1 and isinstance(args[0], str | int | float | bool):
            return args[0]  # an enum member: keep its value
        return super().__new__(cls)

    def __init__(self, *args: Any) -> None:
        self.args = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.fairseq_name}>"


def _stub(name: str) -> type[FairseqStub]:
    return type(name.rsplit(".", 1)[-1], (FairseqStub,), {"fairseq_name": name})


def load_fairseq_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict, loaded with `weights_only=True` and the allow-list above.

    Raises:
        ValueError: the file names a global outside the allow-list (nothing was unpickled),
            or it is not a dict.
    """
    path = Path(path)
    allowed = [*PLAIN_TYPES, *omegaconf_types()]
    with torch.serialization.safe_globals(allowed):
        unknown = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    stubs = [(_stub(name), name) for name in unknown if name.startswith("fairseq.")]
    refused = sorted(name for name in unknown if not name.startswith("fairseq."))
    if refused:
        hint = ""
        if any(name.startswith("omegaconf.") for name in refused):
            hint = " (omegaconf is needed for this checkpoint: pip install 'hubert-lstm[fairseq]')"
        raise ValueError(
            f"{path}: refusing to unpickle: it references {refused}, which are not on the "
            f"allow-list for fairseq checkpoints{hint}"
        )
    if stubs:
        logger.info("%s: fairseq classes read as inert stand-ins: %s", path, [n for _, n in stubs])
    with torch.serialization.safe_globals([*allowed, *stubs]):
        state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"{path}: expected a checkpoint dict; found {type(state)}")
    return dict(state)
