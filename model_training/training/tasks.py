"""What a CTC head predicts: characters (ASR) or phones (PR). The one switch of the CTC path.

`finetune-ctc --task asr|pr` and `evaluate` share every step (upstream, features, head, loss,
loop, greedy decoding); the task only decides

- the vocabulary (`text.CharVocab`, 29 outputs; `phones.PhoneVocab`, blank + the inventory),
- the targets: the manifest's transcript, or its phones (`phones.py`, cached per manifest),
- how a best path becomes text (words with timestamps; phones joined by spaces),
- the scores: WER and CER, or the phone error rate `per` (edit distance over phones).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jiwer
from torch import Tensor

from model_training.data.manifest import Manifest
from model_training.decoding import best_path, greedy_ctc_decode_batch
from model_training.phones import (
    PhonemizerConfig,
    PhoneVocab,
    build_phonemizer,
    phonemize_texts,
)
from model_training.text import CharVocab

TASKS = ("asr", "pr")


def collapse(ids: Sequence[int], blank_id: int) -> list[int]:
    """CTC best-path collapse: merge repeats, then drop blanks."""
    out: list[int] = []
    prev = None
    for i in ids:
        if i != prev and i != blank_id:
            out.append(i)
        prev = i
    return out


def score_phones(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """Corpus phone error rate (edits / reference phones) over space-separated phone strings;
    utterances without reference phones are skipped; {} when none is left."""
    if len(references) != len(hypotheses):
        raise ValueError(
            f"expected as many hypotheses as references, "
            f"found {len(hypotheses)} vs {len(references)}"
        )
    keep = [i for i, r in enumerate(references) if r.split()]
    if not keep:
        return {}
    refs = [" ".join(references[i].split()) for i in keep]
    hyps = [" ".join(hypotheses[i].split()) for i in keep]
    return {"per": float(jiwer.wer(refs, hyps))}


@dataclass
class TextTask:
    """A CTC task: its name, vocabulary, and (PR) the phonemizer that makes its targets."""

    name: str
    vocab: CharVocab | PhoneVocab
    phonemizer: PhonemizerConfig | None = None

    @property
    def metrics(self) -> tuple[str, ...]:
        """Score names, the selection metric's default first."""
        return ("wer", "cer") if self.name == "asr" else ("per",)

    @property
    def stop_metric(self) -> str:
        """The metric `target_dev_cer` applies to (CER, or PER for phones)."""
        return "cer" if self.name == "asr" else "per"

    def targets(self, manifest: Manifest, name: str = "manifest") -> Manifest:
        """The manifest with each transcript replaced by the task's target string (ASR: as
        it is; PR: its phones, "" where the phonemizer has none)."""
        if self.name == "asr":
            return manifest
        assert self.phonemizer is not None
        phonemizer = build_phonemizer(self.phonemizer)
        phones = phonemize_texts(
            [e.text for e in manifest], phonemizer, self.phonemizer.cache_dir, name
        )
        entries = [replace(e, text=p) for e, p in zip(manifest.entries, phones, strict=True)]
        return Manifest(root=manifest.root, entries=entries)

    def decode(self, log_probs: Tensor, lengths: Tensor, frame_seconds: float) -> list[str]:
        """(B, T, V) log-probs, (B,) frames -> one greedy hypothesis string per item."""
        if isinstance(self.vocab, CharVocab):
            return [
                t.text
                for t in greedy_ctc_decode_batch(log_probs, lengths, self.vocab, frame_seconds)
            ]
        out = []
        for b, n in enumerate(lengths.tolist()):
            ids, _ = best_path(log_probs[b, : int(n)])
            out.append(self.vocab.decode(collapse(ids, self.vocab.blank_id)))
        return out

    def score(self, references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
        """ASR: WER and CER (`evaluate.score`); PR: `per`."""
        if self.name == "asr":
            from model_training.training.evaluate import score

            return score(references, hypotheses)
        return score_phones(references, hypotheses)

    def to_meta(self) -> dict[str, Any]:
        """Stored in head.json next to the vocabulary (absent = ASR, for older heads)."""
        meta: dict[str, Any] = {"task": self.name}
        if self.phonemizer is not None:
            meta["phonemizer"] = self.phonemizer.to_dict()
        return meta

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> TextTask:
        """Inverse of `to_meta` on a head's metadata (which also holds the vocabulary)."""
        name = meta.get("task", "asr")
        if name == "asr":
            return cls("asr", CharVocab.from_config(meta["vocab"]))
        if name == "pr":
            phonemizer = PhonemizerConfig.from_dict(meta["phonemizer"])
            return cls("pr", PhoneVocab.from_config(meta["vocab"]), phonemizer)
        raise ValueError(f"unknown task {name!r} in head metadata; expected one of {TASKS}")


def build_task(name: str, phonemizer: dict[str, Any] | None = None) -> TextTask:
    """The task a fine-tuning config names; PR's vocabulary is its phonemizer's inventory."""
    if name == "asr":
        return TextTask("asr", CharVocab())
    if name == "pr":
        config = PhonemizerConfig.from_dict(dict(phonemizer or {}))
        if config.cache_dir:
            config.cache_dir = str(Path(config.cache_dir).resolve())
        if config.lexicon:
            config.lexicon = str(Path(config.lexicon).resolve())
        inventory = build_phonemizer(config).inventory
        return TextTask("pr", PhoneVocab(inventory), config)
    raise ValueError(f"task must be one of {TASKS}, found {name!r}")
