"""fairseq checkpoints load with weights_only=True and an explicit allow-list, never by a full
unpickle (issue 17, item 8).

The fake checkpoint is shaped like fairseq's own: the config an omegaconf `DictConfig` built
from a config dataclass with a `ChoiceEnum` field, a `fairseq.data.dictionary.Dictionary` in
`task_state`, optimizer history. The fairseq classes live in a throwaway `fairseq` package
that is removed again before loading, as on a machine without fairseq.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from model_training.models.teacher import HubertTeacher
from tests.test_teacher import _assert_same_output, _teacher, _to_fairseq, _waves

omegaconf = pytest.importorskip("omegaconf")


def _fake_fairseq() -> dict[str, types.ModuleType]:
    """A minimal `fairseq` package whose classes pickle by reference like the real ones."""
    modules = {
        name: types.ModuleType(name)
        for name in (
            "fairseq", "fairseq.data", "fairseq.data.dictionary", "fairseq.dataclass",
            "fairseq.dataclass.constants", "fairseq.models", "fairseq.models.hubert",
            "fairseq.models.hubert.hubert",
        )
    }  # fmt: skip

    class Dictionary:
        def __init__(self) -> None:
            self.symbols = ["<s>", "<pad>", "</s>", "<unk>", *map(str, range(8))]
            self.count = [1] * len(self.symbols)
            self.indices = {s: i for i, s in enumerate(self.symbols)}

    class ChoiceEnum(enum.Enum):  # fairseq.dataclass.constants.ChoiceEnum's shape
        default = "default"
        layer_norm = "layer_norm"

    Dictionary.__module__ = "fairseq.data.dictionary"
    Dictionary.__qualname__ = "Dictionary"
    ChoiceEnum.__module__ = "fairseq.dataclass.constants"
    ChoiceEnum.__qualname__ = ChoiceEnum.__name__ = "EXTRACTOR_MODE_CHOICES"
    modules["fairseq.data.dictionary"].Dictionary = Dictionary
    modules["fairseq.dataclass.constants"].EXTRACTOR_MODE_CHOICES = ChoiceEnum
    return modules


def _structured_cfg(model_cfg: dict, choices: type[enum.Enum]) -> object:
    """fairseq's cfg: a DictConfig from a config dataclass (so it carries its object type)."""
    fields = [
        (key, type(value), dataclasses.field(default=value))
        for key, value in model_cfg.items()
        if key != "extractor_mode"
    ]
    mode = choices(model_cfg["extractor_mode"])  # an enum member in the pickle
    fields.append(("extractor_mode", choices, dataclasses.field(default=mode)))
    HubertConfig = dataclasses.make_dataclass("HubertConfig", fields)
    HubertConfig.__module__ = "fairseq.models.hubert.hubert"
    sys.modules["fairseq.models.hubert.hubert"].HubertConfig = HubertConfig
    model = omegaconf.OmegaConf.structured(HubertConfig())
    return omegaconf.OmegaConf.create(
        {"model": model, "task": {"_name": "hubert_pretraining", "normalize": False,
                                  "labels": ["km"], "label_rate": 50.0}}
    )  # fmt: skip


def _save_fairseq_style(tmp_path: Path, teacher: HubertTeacher, large: bool) -> Path:
    plain = _to_fairseq(teacher, torch.randn(4, 8), large=large)
    modules = _fake_fairseq()
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        choices = modules["fairseq.dataclass.constants"].EXTRACTOR_MODE_CHOICES
        checkpoint = {
            "args": None,
            "cfg": _structured_cfg(plain["cfg"]["model"], choices),
            "model": plain["model"],
            "optimizer_history": [{"criterion_name": "hubert", "num_updates": 400_000}],
            "task_state": {"dictionaries": [modules["fairseq.data.dictionary"].Dictionary()]},
            "extra_state": {"epoch": 3},
        }
        path = tmp_path / "hubert_base_fake.pt"
        torch.save(checkpoint, path)
    finally:  # as on a machine without fairseq
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return path


@pytest.mark.parametrize("large", [False, True])  # True: extractor_mode "layer_norm" (an enum)
def test_fairseq_style_checkpoint_with_omegaconf_loads_weights_only(tmp_path, monkeypatch, large):
    teacher = _teacher(large)
    path = _save_fairseq_style(tmp_path, teacher, large)
    assert "fairseq" not in sys.modules
    loads = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    loaded = HubertTeacher.from_fairseq_checkpoint(path)
    assert loads == [True]  # one load, weights_only, no fallback
    wav, lens = _waves([4000, 2600])
    teacher.normalize_waveform = loaded.normalize_waveform
    _assert_same_output(loaded(wav, lens), teacher(wav, lens), atol=1e-6)


class _Payload:
    """What a hostile checkpoint hides: unpickling it runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("hostile", ["os_system", "simple_namespace"])
def test_globals_off_the_allow_list_are_refused_and_never_run(tmp_path, hostile):
    marker = tmp_path / "code-ran"
    ckpt = _to_fairseq(_teacher(), torch.randn(4, 8), large=False)
    if hostile == "os_system":
        ckpt["extra_state"] = _Payload(marker)
    else:
        ckpt = {"model": ckpt["model"], "args": types.SimpleNamespace(**ckpt["cfg"]["model"])}
    torch.save(ckpt, tmp_path / "hostile.pt")
    with pytest.raises(ValueError, match="refusing to unpickle") as info:
        HubertTeacher.from_fairseq_checkpoint(tmp_path / "hostile.pt")
    assert ("posix.system" in str(info.value)) or ("SimpleNamespace" in str(info.value))
    assert not marker.exists()
