"""Frozen HuBERT teacher: transformers' `HubertModel` plus a cluster head giving logits (B,T,C).

Two heads:
- `ProjectionHead`, HuBERT's pretraining head: logit_c = cos(final_proj(h_last), e_c) / 0.1,
  with `final_proj` (D -> P) and label embeddings e (C, P). fairseq checkpoints carry it;
  Hugging Face checkpoints do not.
- `KMeansHead`, for teachers without a head: logit_c = -||h_l - c_c||^2 / temperature on a
  chosen hidden layer l, from a k-means codebook (C, D). `head_info()` says which head is used.

Loaders: `HubertTeacher.from_hf_dir(model_dir, head_file)` (HF directory + head safetensors,
the layout `save()` writes), `HubertTeacher.from_fairseq_checkpoint(path)` (fairseq HuBERT `.pt`
converted without fairseq), `with_kmeans_head(...)` / `load_head(path)`.

Padding: HuBERT Base normalises its first conv layer with a GroupNorm of one group per channel,
i.e. statistics over the whole time axis. transformers' batched forward takes them over the
zero padding too, so a padded batch differs from running each utterance alone. This teacher
computes those statistics over valid frames only (and uses a key padding mask in attention), so
its batched output equals the per-utterance output at every valid frame; no per-utterance loop
is needed. HuBERT Large (LayerNorm per frame) needs no such care.

The student copies the teacher's CNN from `teacher.hubert.feature_extractor` (transformers'
`HubertFeatureEncoder`: `conv_layers[i].conv.weight`, `conv_layers[0].layer_norm` = the GroupNorm)
and `teacher.hubert.feature_projection` (`layer_norm`, `projection`).
"""

from __future__ import annotations

import ast
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor, nn
from transformers import HubertConfig, HubertModel
from transformers.masking_utils import create_bidirectional_mask

from model_training.models.cnn import conv_output_lengths, length_mask, validate_waveforms
from model_training.models.fairseq_checkpoint import load_fairseq_checkpoint
from model_training.models.outputs import UpstreamOutput

logger = logging.getLogger(__name__)

HEAD_FORMAT = "hubert-lstm/teacher-head"
HEAD_FILE = "head.safetensors"
TEACHER_FILE = "teacher.json"
FAIRSEQ_SPECIAL_LABELS = 4  # fairseq Dictionary: <s>, <pad>, </s>, <unk> precede the units

_HUBERT_CONV = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"


# ----------------------------------------------------------------------------- configs


def hubert_base_config(**overrides: Any) -> HubertConfig:
    """transformers config of HuBERT Base (fairseq `hubert_base_ls960`): 12 x 768, 12 heads."""
    params: dict[str, Any] = dict(
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        conv_dim=(512,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        conv_bias=False,
        feat_extract_norm="group",
        do_stable_layer_norm=False,
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
    )
    params.update(overrides)
    return HubertConfig(**params)


def hubert_large_config(**overrides: Any) -> HubertConfig:
    """transformers config of HuBERT Large: 24 x 1024, LayerNorm-first, LayerNorm CNN."""
    params: dict[str, Any] = dict(
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        conv_bias=True,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )
    params.update(overrides)
    return hubert_base_config(**params)


def tiny_hubert_config(**overrides: Any) -> HubertConfig:
    """A few-thousand-parameter HuBERT for tests: 2 layers of 32, 16 conv channels, but the
    same kernels and strides as HuBERT, so frame counts match the real model."""
    params: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        conv_dim=(16,) * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    params.update(overrides)
    return hubert_base_config(**params)


# ----------------------------------------------------------------------------- heads


class ProjectionHead(nn.Module):
    """HuBERT's pretraining head on the last hidden state.

    Args:
        hidden_dim: D of the teacher's last layer.
        proj_dim: P, width of `final_proj` and of the label embeddings (256 in Base).
        num_classes: C cluster units.
        temperature: logit temperature (HuBERT: 0.1).
    """

    kind = "projection"
    layer = -1

    def __init__(
        self, hidden_dim: int, proj_dim: int, num_classes: int, temperature: float = 0.1
    ) -> None:
        super().__init__()
        if min(hidden_dim, proj_dim, num_classes) < 1 or temperature <= 0:
            raise ValueError(
                "ProjectionHead needs positive dims and temperature; found "
                f"hidden_dim={hidden_dim} proj_dim={proj_dim} num_classes={num_classes} "
                f"temperature={temperature}"
            )
        self.final_proj = nn.Linear(hidden_dim, proj_dim)
        self.label_embeddings = nn.Parameter(torch.randn(num_classes, proj_dim))
        self.temperature = float(temperature)

    @property
    def num_classes(self) -> int:
        return self.label_embeddings.shape[0]

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden: (B, T, D) -> logits (B, T, C) = cosine / temperature."""
        proj = F.normalize(self.final_proj(hidden).float(), dim=-1, eps=1e-8)
        emb = F.normalize(self.label_embeddings.float(), dim=-1, eps=1e-8)
        return proj @ emb.T / self.temperature

    def info(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layer": self.layer,
            "num_classes": self.num_classes,
            "proj_dim": self.label_embeddings.shape[1],
            "temperature": self.temperature,
        }

    def save(self, path: str | Path) -> None:
        """Write the head as safetensors (`final_proj.weight/bias`, `label_embeddings`)."""
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(tensors, str(path), metadata=_head_metadata(self.info()))


class KMeansHead(nn.Module):
    """Cluster logits from a k-means codebook: -||h_l - c||^2 / temperature.

    Args:
        codebook: (C, D) centroids fitted on hidden layer `layer`.
        layer: index into the teacher's `hidden_states` (0 = transformer input, L = last).
        temperature: divides the negative squared distances (> 0).
    """

    kind = "kmeans"

    def __init__(self, codebook: Tensor, layer: int, temperature: float = 1.0) -> None:
        super().__init__()
        if codebook.dim() != 2 or codebook.shape[0] < 2:
            raise ValueError(f"codebook must be (C >= 2, D); found {tuple(codebook.shape)}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0; found {temperature}")
        self.register_buffer("codebook", codebook.detach().float().clone())
        self.layer = int(layer)
        self.temperature = float(temperature)

    @property
    def num_classes(self) -> int:
        return self.codebook.shape[0]

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden: (B, T, D) -> logits (B, T, C)."""
        if hidden.shape[-1] != self.codebook.shape[1]:
            raise ValueError(
                f"k-means codebook has D={self.codebook.shape[1]}; hidden state has "
                f"D={hidden.shape[-1]} (layer {self.layer})"
            )
        h = hidden.float()
        dist = (
            h.pow(2).sum(-1, keepdim=True) - 2 * h @ self.codebook.T + self.codebook.pow(2).sum(-1)
        )
        return -dist.clamp_min(0) / self.temperature

    def info(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layer": self.layer,
            "num_classes": self.num_classes,
            "dim": self.codebook.shape[1],
            "temperature": self.temperature,
        }

    def save(self, path: str | Path) -> None:
        """Write the codebook as safetensors (`codebook`) with layer/temperature metadata."""
        save_file(
            {"codebook": self.codebook.contiguous().cpu()},
            str(path),
            metadata=_head_metadata(self.info()),
        )


ClusterHead = ProjectionHead | KMeansHead


def _head_metadata(info: Mapping[str, Any]) -> dict[str, str]:
    return {"format": HEAD_FORMAT, "config": json.dumps(dict(info))}


def load_head(path: str | Path) -> ClusterHead:
    """Read a head written by `ProjectionHead.save` or `KMeansHead.save`."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    if metadata.get("format") != HEAD_FORMAT:
        raise ValueError(
            f"{path}: expected metadata format {HEAD_FORMAT!r}, found {metadata.get('format')!r}"
        )
    info = json.loads(metadata["config"])
    tensors = load_file(str(path))
    if info["kind"] == "kmeans":
        return KMeansHead(tensors["codebook"], info["layer"], info["temperature"])
    if info["kind"] == "projection":
        weight = tensors["final_proj.weight"]
        head = ProjectionHead(
            weight.shape[1],
            weight.shape[0],
            tensors["label_embeddings"].shape[0],
            info["temperature"],
        )
        head.load_state_dict(tensors)
        return head
    raise ValueError(f"{path}: unknown head kind {info['kind']!r}; expected projection or kmeans")


# ----------------------------------------------------------------------------- teacher


def _check_head(config: HubertConfig, head: ClusterHead | None) -> None:
    """Raise ValueError when a head does not fit the teacher's widths or layers."""
    hidden, layers = int(config.hidden_size), int(config.num_hidden_layers)
    if isinstance(head, ProjectionHead) and head.final_proj.in_features != hidden:
        raise ValueError(
            f"head expects hidden size {head.final_proj.in_features}; teacher has {hidden}"
        )
    if isinstance(head, KMeansHead):
        if head.codebook.shape[1] != hidden:
            raise ValueError(f"codebook dim {head.codebook.shape[1]} != hidden size {hidden}")
        if not -(layers + 1) <= head.layer <= layers:
            raise ValueError(f"k-means layer must lie in [0, {layers}]; found {head.layer}")


class HubertTeacher(nn.Module):
    """Frozen HuBERT (always in eval mode, no gradients) with an optional cluster head.

    Args:
        hubert: a transformers `HubertModel`.
        head: `ProjectionHead`, `KMeansHead` or None (then `logits` is None).
        normalize_waveform: zero-mean unit-variance per utterance over valid samples before the
            CNN (HuBERT Large was trained so; Base was not).

    Attributes:
        hubert: the `HubertModel`; `hubert.feature_extractor` is the CNN the student copies.
    """

    sample_rate = 16000

    def __init__(
        self,
        hubert: HubertModel,
        head: ClusterHead | None = None,
        *,
        normalize_waveform: bool = False,
    ) -> None:
        super().__init__()
        _check_head(hubert.config, head)
        self.hubert = hubert
        self.head = head
        self.normalize_waveform = bool(normalize_waveform)
        self.requires_grad_(False)
        self.train(False)

    # -- module contract ---------------------------------------------------------------

    def train(self, mode: bool = True) -> HubertTeacher:
        """The teacher stays in eval mode (no dropout, no SpecAugment) whatever is asked."""
        return super().train(False)

    @property
    def conv(self) -> nn.Module:
        """transformers' `HubertFeatureEncoder` (same object as `hubert.feature_extractor`)."""
        return self.hubert.feature_extractor

    @property
    def config(self) -> HubertConfig:
        return self.hubert.config

    @property
    def hop_length(self) -> int:
        hop = 1
        for stride in self.config.conv_stride:
            hop *= int(stride)
        return hop

    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def receptive_field(self) -> int:
        field = 1
        for kernel, stride in reversed(
            list(zip(self.config.conv_kernel, self.config.conv_stride, strict=True))
        ):
            field = (field - 1) * int(stride) + int(kernel)
        return field

    @property
    def hidden_dims(self) -> list[int]:
        return [int(self.config.hidden_size)] * (self.config.num_hidden_layers + 1)

    @property
    def num_classes(self) -> int | None:
        return None if self.head is None else self.head.num_classes

    def head_info(self) -> dict[str, Any] | None:
        """What produces the logits (kind, layer, temperature, C), for configs and provenance."""
        return None if self.head is None else self.head.info()

    def _conv_specs(self) -> list[tuple[int, int, int]]:
        c = self.config
        return [
            (int(d), int(k), int(s))
            for d, k, s in zip(c.conv_dim, c.conv_kernel, c.conv_stride, strict=True)
        ]

    def frame_lengths(self, sample_lengths: Tensor) -> Tensor:
        """(B,) samples -> (B,) frames, exactly as `forward` counts them."""
        return conv_output_lengths(sample_lengths, self._conv_specs())

    # -- forward -----------------------------------------------------------------------

    def _conv_features(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, S) -> (B, T, C_conv) and (B,) frames; per-channel norm over valid frames only."""
        x = waveforms.unsqueeze(1)
        cur = lengths
        for spec, layer in zip(self._conv_specs(), self.conv.conv_layers, strict=True):
            norm = getattr(layer, "layer_norm", None)
            cur = conv_output_lengths(cur, [spec])
            if isinstance(norm, nn.GroupNorm):
                if norm.num_groups != norm.num_channels:
                    raise ValueError("only one-group-per-channel GroupNorm (HuBERT) is supported")
                x = layer.conv(x)
                mask = length_mask(cur, x.shape[-1]).unsqueeze(1).to(x.dtype)
                count = mask.sum(-1, keepdim=True).clamp_min(1)
                mean = (x * mask).sum(-1, keepdim=True) / count
                var = ((x - mean) * mask).pow(2).sum(-1, keepdim=True) / count
                x = (x - mean) * torch.rsqrt(var + norm.eps)
                x = layer.activation(x * norm.weight[:, None] + norm.bias[:, None])
            else:
                # conv + per-frame LayerNorm or none: valid outputs see only valid inputs
                x = layer(x)
        return x.transpose(1, 2), cur

    def _normalize(self, waveforms: Tensor, lengths: Tensor) -> Tensor:
        mask = length_mask(lengths, waveforms.shape[1]).to(waveforms.dtype)
        count = mask.sum(-1, keepdim=True)
        mean = (waveforms * mask).sum(-1, keepdim=True) / count
        var = ((waveforms - mean) * mask).pow(2).sum(-1, keepdim=True) / count
        return (waveforms - mean) * torch.rsqrt(var + 1e-5) * mask

    @torch.no_grad()
    def forward(self, waveforms: Tensor, lengths: Tensor | None = None) -> UpstreamOutput:
        """Run the teacher.

        Args:
            waveforms: (B, S) float, 16 kHz, zero-padded.
            lengths: (B,) long valid samples; None = all S.

        Returns:
            UpstreamOutput with hidden_states = L+1 tensors (B, T, D) (0 = transformer input,
            i = output of layer i; for LayerNorm-first models the last one is after the final
            LayerNorm, as transformers' `last_hidden_state`), zeros at padded frames;
            lengths (B,); logits (B, T, C) float32 or None without a head.
        """
        lengths = validate_waveforms(waveforms, lengths, self.receptive_field)
        if self.normalize_waveform:
            waveforms = self._normalize(waveforms, lengths)
        features, frames = self._conv_features(waveforms, lengths)
        mask = length_mask(frames, features.shape[1])
        hidden = self.hubert.feature_projection(features)
        states = self._encode(hidden, mask)
        keep = mask.unsqueeze(-1).to(states[0].dtype)
        states = [s * keep for s in states]
        logits = None
        if self.head is not None:
            logits = self.head(states[self.head.layer]) * keep.float()
        return UpstreamOutput(hidden_states=states, lengths=frames, logits=logits)

    def _encode(self, hidden: Tensor, mask: Tensor) -> list[Tensor]:
        """Transformer encoder with a key padding mask; returns L+1 states (B, T, D)."""
        encoder = self.hubert.encoder
        hidden = hidden.masked_fill(~mask.unsqueeze(-1), 0.0)
        attention_mask = create_bidirectional_mask(
            config=self.config, inputs_embeds=hidden, attention_mask=mask
        )
        hidden = hidden + encoder.pos_conv_embed(hidden)
        stable = bool(self.config.do_stable_layer_norm)
        if not stable:
            hidden = encoder.layer_norm(hidden)
        states = [hidden]
        for layer in encoder.layers:
            hidden = layer(hidden, attention_mask=attention_mask)
            states.append(hidden)
        if stable:
            states[-1] = encoder.layer_norm(hidden)
        return states

    # -- heads and persistence ---------------------------------------------------------

    def with_kmeans_head(
        self, codebook: Tensor, layer: int, temperature: float = 1.0
    ) -> HubertTeacher:
        """Replace the head by a k-means codebook head on `layer`; returns self."""
        head = KMeansHead(codebook, layer, temperature)
        _check_head(self.config, head)
        self.head = head
        return self

    def save(self, out_dir: str | Path) -> Path:
        """Write `config.json` + `model.safetensors` (HF), `head.safetensors`, `teacher.json`."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self.hubert.save_pretrained(out, safe_serialization=True)
        if self.head is not None:
            self.head.save(out / HEAD_FILE)
        meta = {
            "format_version": 1,
            "normalize_waveform": self.normalize_waveform,
            "head_file": HEAD_FILE if self.head is not None else None,
            "head": self.head_info(),
        }
        (out / TEACHER_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        return out

    @classmethod
    def from_hf_dir(
        cls,
        model_dir: str | Path,
        head_file: str | Path | None = None,
        *,
        normalize_waveform: bool | None = None,
    ) -> HubertTeacher:
        """Load a Hugging Face HuBERT directory (config.json + model.safetensors) and a head.

        Args:
            model_dir: local directory; nothing is downloaded.
            head_file: head safetensors; default `model_dir/head.safetensors` when it exists,
                else no head (logits None; add one with `with_kmeans_head`).
            normalize_waveform: default from `teacher.json`, else `preprocessor_config.json`'s
                `do_normalize`, else False.
        """
        model_dir = Path(model_dir)
        hubert = HubertModel.from_pretrained(model_dir, local_files_only=True)
        meta: dict[str, Any] = {}
        if (model_dir / TEACHER_FILE).exists():
            meta = json.loads((model_dir / TEACHER_FILE).read_text())
        if head_file is None and (model_dir / HEAD_FILE).exists():
            head_file = model_dir / HEAD_FILE
        if normalize_waveform is None:
            if "normalize_waveform" in meta:
                normalize_waveform = bool(meta["normalize_waveform"])
            elif (model_dir / "preprocessor_config.json").exists():
                pre = json.loads((model_dir / "preprocessor_config.json").read_text())
                normalize_waveform = bool(pre.get("do_normalize", False))
            else:
                normalize_waveform = False
        head = load_head(head_file) if head_file is not None else None
        return cls(hubert, head, normalize_waveform=normalize_waveform)

    @classmethod
    def from_fairseq_checkpoint(
        cls, path: str | Path, *, num_special_labels: int = FAIRSEQ_SPECIAL_LABELS
    ) -> HubertTeacher:
        """Convert a fairseq HuBERT pretraining checkpoint (no fairseq needed).

        Args:
            path: a `.pt` holding `cfg` (or `args`) and `model` with fairseq's key names.
                Loaded with `weights_only=True` and an explicit allow-list (omegaconf and
                argparse configs; fairseq's own classes as inert stand-ins), never unpickled
                in full (`model_training/models/fairseq_checkpoint.py`).
            num_special_labels: leading rows of `label_embs_concat` that are fairseq dictionary
                specials (<s>, <pad>, </s>, <unk>) and are dropped, so that logit k is k-means
                unit k (this assumes the usual dict.km.txt listing units 0..C-1 in order).
        """
        state = load_fairseq_checkpoint(path)
        model_cfg, task_cfg = _fairseq_cfgs(state)
        weights = state.get("model")
        if not isinstance(weights, Mapping):
            raise ValueError(f"{path}: expected a 'model' state dict; found {type(weights)}")
        weights = dict(weights)
        config = hubert_config_from_fairseq(model_cfg, has_mask_emb="mask_emb" in weights)
        hubert = HubertModel(config)
        hf_state, head_state = fairseq_to_hf_state_dict(weights, set(hubert.state_dict()))
        hubert.load_state_dict(hf_state, strict=True)
        head = None
        if head_state:
            emb = head_state["label_embs_concat"][num_special_labels:]
            w = head_state["final_proj.weight"]
            if w.shape[0] != emb.shape[1]:
                raise ValueError(
                    f"final_proj gives {w.shape[0]} dims but label embeddings have {emb.shape[1]}"
                    " (untied multi-label heads are not supported)"
                )
            temperature = float(_cfg_get(model_cfg, "logit_temp", 0.1))
            head = ProjectionHead(w.shape[1], w.shape[0], emb.shape[0], temperature)
            head.load_state_dict(
                {
                    "final_proj.weight": w,
                    "final_proj.bias": head_state["final_proj.bias"],
                    "label_embeddings": emb,
                }
            )
        normalize = bool(_cfg_get(task_cfg, "normalize", False)) if task_cfg is not None else False
        logger.info(
            "converted fairseq HuBERT %s: %d layers x %d, head=%s, normalize=%s",
            path,
            config.num_hidden_layers,
            config.hidden_size,
            None if head is None else head.info(),
            normalize,
        )
        return cls(hubert, head, normalize_waveform=normalize)


def build_teacher(config: HubertConfig, head: ClusterHead | None = None) -> HubertTeacher:
    """A randomly initialised teacher from a transformers config (tests, references)."""
    return HubertTeacher(HubertModel(config), head)


# ----------------------------------------------------------------------------- fairseq


def _cfg_get(cfg: Any, key: str, default: Any) -> Any:
    """Read a key from a dict, an omegaconf DictConfig or an argparse Namespace."""
    if cfg is None:
        return default
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        try:
            value = cfg.get(key, default)
        except Exception:  # exotic config objects: fall back to attributes
            value = getattr(cfg, key, default)
    else:
        value = getattr(cfg, key, default)
    return default if value is None else value


def _fairseq_cfgs(state: Mapping[str, Any]) -> tuple[Any, Any]:
    """(model cfg, task cfg) from `cfg` (fairseq >= 0.10, hydra) or `args` (older)."""
    cfg = state.get("cfg")
    if cfg is not None:
        model_cfg = _cfg_get(cfg, "model", None)
        if model_cfg is None:
            raise ValueError("fairseq checkpoint 'cfg' has no 'model' section")
        return model_cfg, _cfg_get(cfg, "task", None)
    args = state.get("args")
    if args is not None:
        return args, args
    raise ValueError(f"fairseq checkpoint needs 'cfg' or 'args'; found keys {sorted(state)}")


def _parse_conv_layers(spec: str) -> list[tuple[int, int, int]]:
    """Parse fairseq's `conv_feature_layers`, e.g. "[(512,10,5)] + [(512,3,2)] * 4", safely:
    only list/tuple literals of ints joined by + and * are accepted (no eval)."""

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.List | ast.Tuple):
            items = [ev(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Mult):
            left, right = ev(node.left), ev(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(f"unsupported element in conv_feature_layers: {ast.dump(node)}")

    layers = ev(ast.parse(spec, mode="eval"))
    if not isinstance(layers, list) or not all(
        isinstance(x, tuple) and len(x) == 3 for x in layers
    ):
        raise ValueError(f"conv_feature_layers must be a list of (dim, kernel, stride): {spec!r}")
    return [tuple(int(v) for v in x) for x in layers]  # type: ignore[misc]


def hubert_config_from_fairseq(model_cfg: Any, *, has_mask_emb: bool = True) -> HubertConfig:
    """transformers `HubertConfig` equivalent to a fairseq HuBERT model config."""
    conv = _parse_conv_layers(str(_cfg_get(model_cfg, "conv_feature_layers", _HUBERT_CONV)))
    mode = _cfg_get(model_cfg, "extractor_mode", "default")
    if mode not in ("default", "layer_norm"):
        raise ValueError(f"extractor_mode must be 'default' or 'layer_norm'; found {mode!r}")
    return HubertConfig(
        hidden_size=int(_cfg_get(model_cfg, "encoder_embed_dim", 768)),
        num_hidden_layers=int(_cfg_get(model_cfg, "encoder_layers", 12)),
        num_attention_heads=int(_cfg_get(model_cfg, "encoder_attention_heads", 12)),
        intermediate_size=int(_cfg_get(model_cfg, "encoder_ffn_embed_dim", 3072)),
        hidden_act=str(_cfg_get(model_cfg, "activation_fn", "gelu")),
        conv_dim=tuple(c[0] for c in conv),
        conv_kernel=tuple(c[1] for c in conv),
        conv_stride=tuple(c[2] for c in conv),
        conv_bias=bool(_cfg_get(model_cfg, "conv_bias", False)),
        feat_extract_norm="group" if mode == "default" else "layer",
        do_stable_layer_norm=bool(_cfg_get(model_cfg, "layer_norm_first", False)),
        num_conv_pos_embeddings=int(_cfg_get(model_cfg, "conv_pos", 128)),
        num_conv_pos_embedding_groups=int(_cfg_get(model_cfg, "conv_pos_groups", 16)),
        feat_proj_layer_norm=True,
        layer_norm_eps=1e-5,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        activation_dropout=0.0,
        feat_proj_dropout=0.0,
        layerdrop=0.0,
        mask_time_prob=0.05 if has_mask_emb else 0.0,
    )


_LAYER = r"encoder\.layers\.(\d+)\."
_HF_LAYER = r"encoder.layers.\1."
_CONV = r"feature_extractor\.conv_layers\.(\d+)\."
_HF_CONV = r"feature_extractor.conv_layers.\1."
_WB = r"(weight|bias)"
_FAIRSEQ_RULES: list[tuple[str, str]] = [
    (_CONV + r"0\." + _WB, _HF_CONV + r"conv.\2"),
    (_CONV + r"2\." + _WB, _HF_CONV + r"layer_norm.\2"),  # GroupNorm (Base, layer 0)
    (_CONV + r"2\.1\." + _WB, _HF_CONV + r"layer_norm.\2"),  # LayerNorm (Large)
    (r"layer_norm\." + _WB, r"feature_projection.layer_norm.\1"),
    (r"post_extract_proj\." + _WB, r"feature_projection.projection.\1"),
    (r"mask_emb", "masked_spec_embed"),
    (r"encoder\.pos_conv\.0\.bias", "encoder.pos_conv_embed.conv.bias"),
    (_LAYER + r"self_attn\.(k|q|v|out)_proj\." + _WB, _HF_LAYER + r"attention.\2_proj.\3"),
    (_LAYER + r"self_attn_layer_norm\." + _WB, _HF_LAYER + r"layer_norm.\2"),
    (_LAYER + r"fc1\." + _WB, _HF_LAYER + r"feed_forward.intermediate_dense.\2"),
    (_LAYER + r"fc2\." + _WB, _HF_LAYER + r"feed_forward.output_dense.\2"),
    (_LAYER + r"final_layer_norm\." + _WB, _HF_LAYER + r"final_layer_norm.\2"),
    (r"encoder\.layer_norm\." + _WB, r"encoder.layer_norm.\1"),
]
_FAIRSEQ_HEAD_KEYS = ("final_proj.weight", "final_proj.bias", "label_embs_concat")


def fairseq_to_hf_state_dict(
    weights: Mapping[str, Tensor], hf_keys: set[str]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Rename a fairseq HuBERT state dict to transformers' `HubertModel` names.

    The positional conv's weight norm (fairseq `weight_g`/`weight_v`) maps to whichever form
    the installed transformers uses: `parametrizations.weight.original0/1` (weight-norm
    parametrization, transformers 5.x) or `weight_g`/`weight_v`.

    Returns:
        (hubert state dict, head tensors `final_proj.weight/bias`, `label_embs_concat`).
    Raises:
        ValueError naming the fairseq keys that have no counterpart.
    """
    pos = "encoder.pos_conv_embed.conv."
    if pos + "parametrizations.weight.original0" in hf_keys:
        g_key, v_key = (
            pos + "parametrizations.weight.original0",
            pos + "parametrizations.weight.original1",
        )
    else:
        g_key, v_key = pos + "weight_g", pos + "weight_v"
    rules = [
        *_FAIRSEQ_RULES,
        (r"encoder\.pos_conv\.0\.weight_g", g_key),
        (r"encoder\.pos_conv\.0\.weight_v", v_key),
    ]
    hf_state: dict[str, Tensor] = {}
    head: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, value in weights.items():
        if key in _FAIRSEQ_HEAD_KEYS:
            head[key] = value
            continue
        for pattern, repl in rules:
            if re.fullmatch(pattern, key):
                hf_state[re.sub(pattern, repl, key)] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise ValueError(f"fairseq keys with no HubertModel counterpart: {sorted(unmapped)}")
    if head and set(head) != set(_FAIRSEQ_HEAD_KEYS):
        raise ValueError(f"incomplete head: expected {_FAIRSEQ_HEAD_KEYS}, found {sorted(head)}")
    return hf_state, head
