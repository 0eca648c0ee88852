"""The bundle: the one artifact between training and serving.

A directory with
    config.json        format + version, upstream type and config, CTC head config, vocabulary,
                       sample rate, frame rate, layer names, quantization, provenance
    model.safetensors  fp32 weights ("upstream.*" and, with a recognizer, "head.*")
    README.md          the model card
    lm.arpa.gz         optional: a word n-gram LM; config.json's "decoder" then asks for
                       lexicon + LM beam search instead of greedy decoding (`attach_lm`)
No pickle is ever loaded: the model is rebuilt from config.json and the weights are safetensors.
`quantize: "int8"` is applied at load time with dynamic quantization of LSTM and Linear layers
(int8 weights are not a safetensors-portable format, and the fp32 weights keep the bundle
re-quantizable).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from model_training.decoding import LMDecoderConfig, UtteranceDecoder, make_decoder
from model_training.models.ctc import ASRModel, CTCHead, CTCHeadConfig
from model_training.models.registry import build_upstream, inference_config, upstream_type_name
from model_training.text import CharVocab

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "hubert-lstm-bundle"
BUNDLE_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
LM_FILE = "lm.arpa.gz"
QUANTIZE_CHOICES = (None, "int8")


@dataclass
class Bundle:
    """A loaded bundle: the model in eval mode on its device, plus what serving needs."""

    model: nn.Module  # ASRModel when has_ctc, else the bare upstream
    vocab: CharVocab | None
    config: dict[str, Any]
    path: Path
    # (T, V) log-probs -> Transcript: greedy, or the bundle's lexicon + LM beam search
    decode: UtteranceDecoder | None = field(default=None, repr=False)

    @property
    def decoder_name(self) -> str:
        """ "greedy" or "lexicon_lm" (what `decode` does), for the API and reports."""
        return str((self.config.get("decoder") or {}).get("type", "greedy"))

    @property
    def has_ctc(self) -> bool:
        """True when the bundle can transcribe."""
        return isinstance(self.model, ASRModel)

    @property
    def upstream(self) -> nn.Module:
        """The feature model (for embeddings)."""
        return self.model.upstream if isinstance(self.model, ASRModel) else self.model

    @property
    def name(self) -> str:
        """Model id shown by the API."""
        return str(self.config.get("name") or self.path.name)

    @property
    def sample_rate(self) -> int:
        """Expected input sample rate."""
        return int(self.config["sample_rate"])

    @property
    def frame_rate(self) -> float:
        """Frames per second of every hidden state and of the CTC output."""
        return float(self.config["frame_rate"])

    @property
    def layer_names(self) -> list[str]:
        """Names of the hidden states, index 0 first."""
        return list(self.config["layer_names"])


def strip_for_inference(upstream: nn.Module) -> tuple[str, dict[str, Any], nn.Module]:
    """Rebuild the upstream without training-only parts; returns (type, config, model)."""
    type_name = upstream_type_name(upstream)
    config = inference_config(type_name, upstream.config.to_dict())  # type: ignore[union-attr]
    slim = build_upstream(type_name, config)
    source = upstream.state_dict()
    missing = [k for k in slim.state_dict() if k not in source]
    if missing:
        raise ValueError(f"upstream weights missing for the inference model: {missing[:5]}")
    slim.load_state_dict({k: source[k] for k in slim.state_dict()})
    return type_name, config, slim


def _chmod_like_new_file(path: Path) -> None:
    """Give `path` the mode any new file gets (0644 under umask 022): safetensors' save_file
    creates files 0600 whatever the umask, and a bundle copied into an image or a volume must
    stay readable by the service's non-root user (the image runs as uid 10001)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def write_weights(bundle_dir: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write a bundle's model.safetensors (contiguous CPU tensors), readable like any new file."""
    save_file(tensors, str(bundle_dir / WEIGHTS_FILE), metadata={"format": BUNDLE_FORMAT})
    _chmod_like_new_file(bundle_dir / WEIGHTS_FILE)


def save_bundle(
    out_dir: str | Path,
    upstream: nn.Module,
    head: CTCHead | None = None,
    vocab: CharVocab | None = None,
    *,
    name: str | None = None,
    provenance: dict[str, Any] | None = None,
    card: str = "",
    quantize: str | None = None,
    weights_dtype: str = "float32",
) -> Path:
    """Write a bundle directory; returns its path.

    Args:
        upstream: a registered upstream (student, DistilHuBERT baseline, fbank).
        head, vocab: the CTC recognizer and its vocabulary (both or neither).
        provenance: free-form facts (data, recipe, scores, commands) stored in config.json.
        card: the model card (Markdown).
        quantize: None or "int8" (dynamic quantization applied when the bundle is loaded).
        weights_dtype: "float32", or "float16" to halve the file (cast back to float32 at load).
    """
    if (head is None) != (vocab is None):
        raise ValueError("a CTC head needs its vocabulary and vice versa")
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, found {quantize!r}")
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype must be one of {list(WEIGHTS_DTYPES)}: {weights_dtype!r}")
    if head is not None and vocab is not None and head.config.vocab_size != len(vocab):
        raise ValueError(
            f"head has {head.config.vocab_size} outputs, vocabulary has {len(vocab)} entries"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    type_name, up_config, slim = strip_for_inference(upstream)
    tensors = {f"upstream.{k}": v for k, v in slim.state_dict().items()}
    if head is not None:
        tensors.update({f"head.{k}": v for k, v in head.state_dict().items()})
    # safetensors refuses shared or non-contiguous storage; copies are cheap at this size
    store = WEIGHTS_DTYPES[weights_dtype]
    tensors = {
        k: v.detach().to("cpu", store if v.is_floating_point() else v.dtype).contiguous().clone()
        for k, v in tensors.items()
    }
    write_weights(out, tensors)
    config = {
        "format": BUNDLE_FORMAT,
        "format_version": BUNDLE_VERSION,
        "name": name or out.name,
        "upstream": {"type": type_name, "config": up_config},
        "head": head.config.to_dict() if head is not None else None,
        "vocab": vocab.to_config() if vocab is not None else None,
        "sample_rate": int(slim.sample_rate),
        "frame_rate": float(slim.frame_rate),
        "layer_names": list(slim.layer_names),
        "hidden_dims": list(slim.hidden_dims),
        "quantize": quantize,
        "weights_dtype": weights_dtype,
        "parameters": sum(p.numel() for p in slim.parameters())
        + (sum(p.numel() for p in head.parameters()) if head is not None else 0),
        "provenance": provenance or {},
    }
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    (out / CARD_FILE).write_text(card or f"# {config['name']}\n\nNo model card was provided.\n")
    return out


WEIGHTS_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def bundle_lineage(upstream_ref: dict[str, Any]) -> dict[str, Any] | None:
    """Where a run that continues a bundle comes from: that bundle's run, step, dev scores, the
    interpolation weight if its weights were w x that run's + (1 - w) x the bundle it continued
    (else None), and its own `continued_from`, so the chain of continuations survives in each
    new bundle's provenance. None unless `upstream_ref` (a fine-tuning run's upstream) is a
    bundle."""
    if upstream_ref.get("kind") != "bundle" or not upstream_ref.get("path"):
        return None
    source = read_bundle_config(upstream_ref["path"]).get("provenance", {})
    return {
        "bundle": upstream_ref["path"],
        "run": source.get("run"),
        "step": source.get("step"),
        "dev": source.get("dev"),
        "interpolation_weight": (source.get("interpolation") or {}).get("weight"),
        "continued_from": source.get("continued_from"),
    }


def interpolated_phrase(link: dict[str, Any]) -> str:
    """The suffix ", weights w x that run + (1 - w) x the bundle it continued" for a lineage
    link whose bundle was a weight interpolation (model_training.interpolation), else ""."""
    weight = link.get("interpolation_weight")
    if weight is None:
        return ""
    return f", weights {weight:.2f} x that run + {1 - weight:.2f} x the bundle it continued"


def lineage_chain(provenance: dict[str, Any]) -> list[dict[str, Any]]:
    """The bundles a provenance's run continued (`continued_from` links), newest first."""
    chain, link = [], provenance.get("continued_from")
    while link:
        chain.append(link)
        link = link.get("continued_from")
    return chain


def read_bundle_config(path: str | Path) -> dict[str, Any]:
    """Read and validate a bundle's config.json (no weights loaded)."""
    config_path = Path(path) / CONFIG_FILE
    if not config_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in bundle directory {path}")
    config = json.loads(config_path.read_text())
    if config.get("format") != BUNDLE_FORMAT:
        raise ValueError(
            f"{config_path} is not a {BUNDLE_FORMAT} (format={config.get('format')!r})"
        )
    if config.get("format_version") != BUNDLE_VERSION:
        raise ValueError(
            f"bundle format version {config.get('format_version')} is not supported "
            f"(expected {BUNDLE_VERSION})"
        )
    if config.get("quantize") not in QUANTIZE_CHOICES:
        raise ValueError(f"unknown quantization {config.get('quantize')!r} in {config_path}")
    return config


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of every LSTM and Linear layer (CPU inference)."""
    return torch.ao.quantization.quantize_dynamic(model, {nn.LSTM, nn.Linear}, dtype=torch.qint8)


def load_bundle(
    path: str | Path, device: str | torch.device = "cpu", build_decoder: bool = True
) -> Bundle:
    """Load a bundle for inference: model in eval mode on `device`, never unpickling.

    An int8 bundle runs on the CPU only (PyTorch's dynamic quantization has no CUDA kernels).
    `build_decoder=False` leaves `decode` None (replacing a bundle's LM must not need the old
    one's file).
    """
    path = Path(path)
    config = read_bundle_config(path)
    upstream = build_upstream(config["upstream"]["type"], config["upstream"]["config"])
    head = CTCHead(CTCHeadConfig.from_dict(config["head"])) if config.get("head") else None
    model: nn.Module = ASRModel(upstream, head) if head is not None else upstream
    weights = load_file(str(path / WEIGHTS_FILE))
    if head is not None:
        state = weights
    else:
        state = {k.removeprefix("upstream."): v for k, v in weights.items()}
    model.load_state_dict(state, strict=True)  # copies into the float32 parameters (casts fp16)
    model.eval()
    if config.get("quantize") == "int8":
        if torch.device(device).type != "cpu":
            log.warning("int8 bundle %s runs on the CPU; ignoring device=%s", path, device)
        model = quantize_dynamic_int8(model)
    else:
        model.to(device)
    vocab = CharVocab.from_config(config["vocab"]) if config.get("vocab") else None
    decode = None
    if vocab is not None and build_decoder:
        decode = make_decoder(vocab, 1.0 / float(config["frame_rate"]), config.get("decoder"), path)
    return Bundle(model=model, vocab=vocab, config=config, path=path, decode=decode)


def attach_lm(
    bundle_dir: str | Path,
    lm_path: str | Path,
    decoder: LMDecoderConfig,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Ship a word n-gram LM (ARPA, gzip-compressed) in a recognizer bundle and make lexicon +
    LM beam search its decoder; returns the config's new "decoder" entry.

    `provenance` (text, order, pruning, tuning) is stored with it; the card gets a section.
    Checks first that the LM loads and decodes with the bundle's vocabulary."""
    bundle_dir, lm_path = Path(bundle_dir), Path(lm_path)
    config = read_bundle_config(bundle_dir)
    if not config.get("vocab"):
        raise ValueError(f"bundle {bundle_dir} has no CTC head: a language model needs one")
    if not str(lm_path).endswith(".gz"):
        raise ValueError(f"expected a gzip-compressed ARPA file (*.arpa.gz), found {lm_path}")
    spec = {**decoder.to_dict(), "lm": LM_FILE}
    vocab = CharVocab.from_config(config["vocab"])
    make_decoder(vocab, 1.0 / float(config["frame_rate"]), {**spec, "lm": str(lm_path)})
    if lm_path.resolve() != (bundle_dir / LM_FILE).resolve():
        shutil.copyfile(lm_path, bundle_dir / LM_FILE)
    _chmod_like_new_file(bundle_dir / LM_FILE)
    config["decoder"] = {**spec, "provenance": provenance or {}}
    (bundle_dir / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    card = bundle_dir / CARD_FILE
    section = _lm_card_section(config["decoder"])
    text = card.read_text() if card.is_file() else ""
    marker = "\n## Decoding\n"
    if marker in text:  # replace that section only: sections after it (e.g. interpolation) stay
        start = text.index(marker)
        end = text.find("\n## ", start + len(marker))
        text = text[:start] + (text[end:] if end != -1 else "")
    card.write_text(text.rstrip("\n") + "\n" + section)
    return config["decoder"]


def _lm_card_section(spec: dict[str, Any]) -> str:
    prov = spec.get("provenance") or {}
    facts = "".join(f"- {k}: {v}\n" for k, v in prov.items() if k != "grid")
    return (
        "\n## Decoding\n\n"
        f"Transcripts come from CTC beam search (beam {spec['beam_size']}) over a lexicon of the "
        f"language model's words, scored by a word n-gram LM (`{LM_FILE}`, LM weight "
        f"{spec['lm_weight']}, word score {spec['word_score']}). Words outside that vocabulary "
        "cannot be transcribed. Live streams (`/v1/realtime`) stay greedy: beam search may "
        "revise earlier words, and a stream's text is append-only. Scores given above as greedy "
        "or without a language model are the acoustic model alone; the service and "
        "`hubert-lstm evaluate` decode with this LM (`evaluate --decoder greedy` without it)."
        "\n\n" + facts
    )
