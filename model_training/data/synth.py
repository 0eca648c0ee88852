"""Synthetic English speech corpus from TTS engines (see `voices`, `neural_tts`, `text_sources`).

Layout of `out_dir`::

    train.tsv dev.tsv test_unseen.tsv   manifests (paths relative to out_dir)
    card.json                           voices, engines, hours, text sources + licences, seed
    <split>/<NNN>/<split>-<NNNNNN>.flac 16 kHz mono 16-bit FLAC
    .voices/espeak-ng-data/             espeak-ng data with the custom variants

Determinism: utterance k of a split is a pure function of (seed, split, k); every random draw
is seeded from those, sox runs without dither (-D), and noise is made with numpy. Splits are
filled in rounds until their hours are reached; durations are deterministic, so the number of
utterances is too. Resumable: finished FLAC files (written atomically) are kept.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from model_training.data.manifest import SAMPLE_RATE, ManifestEntry, write_manifest
from model_training.data.neural_tts import KokoroAssets, engine, prepare_kokoro
from model_training.data.text_sources import SOURCES, Sentence, load_sentences
from model_training.data.voices import (
    KOKORO_DEV,
    KOKORO_RESERVED,
    KOKORO_TEST_UNSEEN,
    RESERVED_VOICES,
    Voice,
    build_voices,
    engine_weights,
    prepare_espeak_data,
    voice_weight,
)

logger = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test_unseen")
_SPLIT_CODE = {s: i for i, s in enumerate(SPLITS)}
TEXT_FRACTIONS = {"test_unseen": 0.03, "dev": 0.05}  # share of each source's sentences
SOURCE_WEIGHTS = {"bible-kjv": 0.35, "fortunes": 0.35, "wordnet": 0.3}


@dataclass(frozen=True)
class UttSpec:
    """Everything needed to render one utterance (picklable, sent to worker processes).

    speed: tempo factor for the TTS engine (>1 faster); pitch: espeak -p (0-99) or a
    multiplier on festival/flite F0; effects: sox effect arguments; gain: output peak;
    snr_db: white/brown noise SNR (None = none).
    """

    split: str
    index: int
    path: str
    voice: Voice
    spoken: str
    text: str
    source: str
    speed: float
    pitch: float
    effects: tuple[str, ...]
    gain: float
    snr_db: float | None
    noise: str
    seed: int


def utterance_path(split: str, index: int) -> str:
    """Where utterance `index` of `split` lives, e.g. "train/003/train-003811.flac"."""
    return f"{split}/{index // 1000:03d}/{split}-{index:06d}.flac"


def utterance_index(path: str) -> int | None:
    """The stream index encoded in an `utterance_path` (None for a path not written by synth)."""
    match = re.search(r"-(\d{6,})\.flac$", path)
    return int(match.group(1)) if match else None


def split_sentences(
    sentences: dict[str, list[Sentence]], seed: int
) -> dict[str, dict[str, list[Sentence]]]:
    """Per split and source, disjoint shuffled sentence lists."""
    out: dict[str, dict[str, list[Sentence]]] = {s: {} for s in SPLITS}
    for source, items in sentences.items():
        items = list(items)
        random.Random(f"{seed}-text-{source}").shuffle(items)
        n_test = max(1, int(TEXT_FRACTIONS["test_unseen"] * len(items)))
        n_dev = max(1, int(TEXT_FRACTIONS["dev"] * len(items)))
        out["test_unseen"][source] = items[:n_test]
        out["dev"][source] = items[n_test : n_test + n_dev]
        out["train"][source] = items[n_test + n_dev :]
    return out


def _augmentation(rng: random.Random, fraction: float) -> tuple[tuple[str, ...], float | None, str]:
    """sox effects and noise for one utterance: on `fraction` of them, 1-2 of five kinds."""
    if rng.random() >= fraction:
        return (), None, "none"
    kinds = rng.sample(["tempo", "pitch", "reverb", "noise", "telephone"], rng.choice([1, 1, 2]))
    effects: list[str] = []
    snr, noise = None, "none"
    for kind in sorted(kinds):
        if kind == "tempo":
            effects += ["tempo", "-s", f"{rng.uniform(0.85, 1.15):.3f}"]
        elif kind == "pitch":
            effects += ["pitch", str(rng.choice([-1, 1]) * rng.randint(100, 400))]
        elif kind == "reverb":
            effects += ["reverb", str(rng.randint(20, 70)), "50", str(rng.randint(30, 100))]
        elif kind == "telephone":
            effects += ["sinc", "300-3400", "rate", "8000", "rate", str(SAMPLE_RATE)]
        else:
            snr, noise = round(rng.uniform(5.0, 25.0), 2), rng.choice(["white", "brown"])
    return tuple(effects), snr, noise


def plan_split(
    split: str,
    seed: int,
    voices: list[Voice],
    sentences: dict[str, list[Sentence]],
    aug_fraction: float,
    weights: dict[str, float] | None = None,
    voice_weights: dict[str, float] | None = None,
) -> Iterator[UttSpec]:
    """The split's utterances in order (endless; sentences are reused only when exhausted).

    `weights`: relative share of utterances per engine (default `engine_weights(split)`).
    `voice_weights`: voice-id globs -> relative weight within the engine (`parse_voice_weights`;
    default: voices of an engine are equally likely).
    """
    weights = engine_weights(split) if weights is None else weights
    by_engine = {e: [v for v in voices if v.engine == e] for e in weights}
    engines = [e for e in weights if by_engine[e] and weights[e] > 0]
    sources = [s for s in SOURCE_WEIGHTS if sentences.get(s)]
    if not engines or not sources:
        raise ValueError(f"{split}: need voices and sentences, found {engines} and {sources}")
    used = Counter[str]()
    k = 0
    while True:
        rng = random.Random(f"{seed}-{split}-{k}")
        engine = rng.choices(engines, [weights[e] for e in engines])[0]
        voice = rng.choice(by_engine[engine])
        if voice_weights:  # own generator: the stream's other draws stay as without weights
            pool = by_engine[engine]
            voice = random.Random(f"{seed}-{split}-{k}-voice").choices(
                pool, [voice_weight(v, voice_weights) for v in pool]
            )[0]
        source = rng.choices(sources, [SOURCE_WEIGHTS[s] for s in sources])[0]
        pool = sentences[source]
        if used[source] == len(pool):
            logger.warning("%s: %s sentences exhausted, reusing them", split, source)
        sentence = pool[used[source] % len(pool)]
        used[source] += 1
        if split == "test_unseen":  # reserved voices at their natural rate and pitch, clean
            speed, pitch, effects, snr, noise = (
                1.0,
                1.0 if engine != "espeak" else 50,
                (),
                None,
                "none",
            )
        else:
            speed = round(rng.uniform(0.8, 1.25), 3)
            pitch = rng.randint(25, 75) if engine == "espeak" else round(rng.uniform(0.9, 1.1), 3)
            effects, snr, noise = _augmentation(rng, aug_fraction)
        gain = round(rng.uniform(0.3, 0.95), 3)
        yield UttSpec(
            split, k, utterance_path(split, k), voice, sentence.spoken, sentence.text, source,
            speed, pitch, effects, gain, snr, noise, rng.randrange(2**32),
        )  # fmt: skip
        k += 1


# ---------------------------------------------------------------- rendering (worker side)


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, **kw)
    if proc.returncode != 0:
        err = (
            proc.stderr.decode(errors="replace") if isinstance(proc.stderr, bytes) else proc.stderr
        )
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {err.strip()[:500]}")
    return proc


def _festival_batch(specs: list[UttSpec], wavs: list[Path]) -> None:
    """All festival utterances of a chunk (one voice) in one festival process."""
    voice = specs[0].voice
    lines = [f"(voice_{voice.name})"]
    for spec, wav in zip(specs, wavs, strict=True):
        if spec.voice.name != voice.name:
            raise ValueError(f"one festival voice per batch: {voice.name} vs {spec.voice.name}")
        if spec.voice.f0 is not None:
            f0 = round(spec.voice.f0 * spec.pitch)
            lines.append(
                f"(set! int_lr_params '((target_f0_mean {f0}) (target_f0_std {round(f0 * 0.14)})"
                " (model_f0_mean 170) (model_f0_std 34)))"
            )
        lines.append(f"(Parameter.set 'Duration_Stretch {1.0 / spec.speed:.4f})")
        text = spec.spoken.replace("\\", " ").replace('"', " ")
        lines.append(f'(utt.save.wave (utt.synth (Utterance Text "{text}")) "{wav}" \'riff)')
    script = wavs[0].with_suffix(".scm")
    script.write_text("\n".join(lines) + "\n")
    _run(["festival", "-b", str(script)])


def _tts(spec: UttSpec, wav: Path, espeak_path: str, kokoro: KokoroAssets | None) -> None:
    v = spec.voice
    if v.engine == "kokoro":
        audio, sr = engine("kokoro", kokoro).synthesize(spec.spoken, v, spec.speed)
        sf.write(wav, audio, sr, subtype="FLOAT")
    elif v.engine == "piper":
        audio, sr = engine("piper").synthesize(spec.spoken, v, spec.speed, spec.seed)
        sf.write(wav, audio, sr, subtype="FLOAT")
    elif v.engine == "espeak":
        wpm = str(round(175 * spec.speed))
        cmd = ["espeak-ng", f"--path={espeak_path}", "-v", v.name, "-s", wpm]
        _run([*cmd, "-p", str(int(spec.pitch)), "-w", str(wav), spec.spoken])
    elif v.engine == "flite":
        cmd = ["flite", "-voice", v.name, "--setf", f"duration_stretch={1.0 / spec.speed:.4f}"]
        if v.f0 is not None:
            cmd += ["--setf", f"int_f0_target_mean={v.f0 * spec.pitch:.1f}"]
        _run([*cmd, "-t", spec.spoken, "-o", str(wav)])
    else:
        raise ValueError(f"unknown engine {v.engine!r}")


def _finish(spec: UttSpec, wav: Path, out_dir: Path) -> int:
    """sox (resample to 16 kHz mono + effects, no dither), gain, noise; write FLAC atomically."""
    cmd = ["sox", "-D", "-V1", str(wav), "-t", "raw", "-e", "floating-point", "-b", "32"]
    cmd += ["-c", "1", "-r", str(SAMPLE_RATE), "-", *spec.effects]
    raw = _run(cmd).stdout
    audio = np.frombuffer(raw, dtype=np.float32).astype(np.float64)
    if audio.size == 0:
        raise RuntimeError(f"{spec.path}: the TTS engine produced no audio for {spec.spoken!r}")
    audio *= spec.gain / max(float(np.abs(audio).max()), 1e-6)
    if spec.snr_db is not None:
        rng = np.random.default_rng(spec.seed)
        noise = rng.standard_normal(audio.size)
        if spec.noise == "brown":
            noise = np.cumsum(noise)
            noise -= np.convolve(noise, np.ones(801) / 801, mode="same")  # remove drift
        power = np.mean(audio**2) / (10 ** (spec.snr_db / 10))
        audio += noise * math.sqrt(power / max(float(np.mean(noise**2)), 1e-12))
        audio *= min(1.0, 0.99 / max(float(np.abs(audio).max()), 1e-6))
    target = out_dir / spec.path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".part")
    sf.write(tmp, audio.astype(np.float32), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    os.replace(tmp, target)
    return int(audio.size)


def render_chunk(
    specs: list[UttSpec], out_dir: str, espeak_path: str, kokoro: KokoroAssets | None = None
) -> list[tuple[int, int]]:
    """Render `specs` (festival ones share one voice); returns (index, num_samples) per spec."""
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="synth-") as tmp:
        wavs = [Path(tmp) / f"{i}.wav" for i in range(len(specs))]
        fest = [(s, w) for s, w in zip(specs, wavs, strict=True) if s.voice.engine == "festival"]
        if fest:
            _festival_batch([s for s, _ in fest], [w for _, w in fest])
        results = []
        for spec, wav in zip(specs, wavs, strict=True):
            if spec.voice.engine != "festival":
                _tts(spec, wav, espeak_path, kokoro)
            results.append((spec.index, _finish(spec, wav, out)))
    return results


# ---------------------------------------------------------------- orchestration


def _existing_samples(path: Path) -> int | None:
    """Samples of a finished FLAC (16 kHz mono, > 0 frames), else None (re-render it)."""
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return None
    ok = info.samplerate == SAMPLE_RATE and info.channels == 1 and info.frames > 0
    return int(info.frames) if ok else None


def _chunks(specs: list[UttSpec], size: int) -> list[list[UttSpec]]:
    """Chunks of `size`; festival utterances grouped by voice so each chunk starts one process."""
    groups: dict[str, list[UttSpec]] = {}
    for s in specs:
        key = s.voice.id if s.voice.engine == "festival" else "other"
        groups.setdefault(key, []).append(s)
    return [g[i : i + size] for _, g in sorted(groups.items()) for i in range(0, len(g), size)]


@dataclass
class SynthConfig:
    """Options of `synthesize_corpus` (hours per split; `aug_fraction` of train/dev augmented)."""

    out_dir: Path
    hours: float
    seed: int = 0
    dev_hours: float | None = None  # default: 5% of `hours`
    test_hours: float | None = None  # default: 5% of `hours`
    workers: int = 2
    aug_fraction: float = 0.3
    chunk_size: int = 12
    progress: bool = True
    neural: bool = True  # Kokoro and Piper voices (the `synth` extra)
    tts_cache: Path | None = None  # assembled Kokoro model + voices (default: ~/.cache)
    kokoro_voices_tgz: Path | None = None  # a kokoro-js@1.2.1 tarball instead of `npm pack`
    # skip the first `train_start` utterances of the train stream: `hours` of *new* training
    # audio that extends a corpus of `train_start` utterances (same seed; its card's
    # splits.train.utterances); train.tsv then lists only the new part, dev and test_unseen
    # are the same as the extended corpus's for the same dev/test hours
    train_start: int = 0
    # relative engine shares for the train split only (dev and test_unseen keep theirs, so
    # evaluations stay comparable across corpora); None: `engine_weights("train")`
    train_engine_weights: dict[str, float] | None = None
    # voice-id globs -> relative weight within the engine, train split only (`parse_voice_weights`)
    train_voice_weights: dict[str, float] | None = None

    def split_weights(self, split: str) -> dict[str, float]:
        if split == "train" and self.train_engine_weights is not None:
            return dict(self.train_engine_weights)
        return engine_weights(split)

    def split_hours(self) -> dict[str, float]:
        dev = 0.05 * self.hours if self.dev_hours is None else self.dev_hours
        test = 0.05 * self.hours if self.test_hours is None else self.test_hours
        return {"train": self.hours, "dev": dev, "test_unseen": test}


def synthesize_corpus(
    config: SynthConfig,
    sentences: dict[str, list[Sentence]] | None = None,
    voices: dict[str, list[Voice]] | None = None,
) -> dict:
    """Generate the corpus; returns the card (also written to `out_dir/card.json`).

    `sentences` / `voices` override the Debian text sources and voice sets (tests use small
    ones); by default they come from `load_sentences()` and `build_voices(seed)`.
    """
    from tqdm import tqdm

    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sentences = load_sentences() if sentences is None else sentences
    voices = build_voices(config.seed, neural=config.neural) if voices is None else voices
    texts = split_sentences(sentences, config.seed)
    all_voices = [v for vs in voices.values() for v in vs]
    espeak_path = str(prepare_espeak_data(out / ".voices", all_voices))
    kokoro = None
    if any(v.engine == "kokoro" for v in all_voices):
        kokoro = prepare_kokoro(config.tts_cache, config.kokoro_voices_tgz)
    targets = config.split_hours()
    done: dict[str, dict[int, tuple[UttSpec, int]]] = {s: {} for s in SPLITS}
    bar = tqdm(total=round(sum(targets.values()), 3), unit="h", disable=not config.progress)

    def advance(samples: int) -> None:  # splits overshoot a little: keep the bar within total
        bar.update(max(0.0, min(samples / SAMPLE_RATE / 3600, bar.total - bar.n)))

    with ProcessPoolExecutor(max_workers=config.workers) as pool:
        for split in SPLITS:
            target_s = targets[split] * 3600
            if target_s <= 0 or not voices.get(split):
                continue
            bar.set_description(split)
            plan = plan_split(
                split, config.seed, voices[split], texts[split], config.aug_fraction,
                config.split_weights(split),
                config.train_voice_weights if split == "train" else None,
            )  # fmt: skip
            if split == "train":  # the skipped specs still advance the sentence pools
                for _ in range(config.train_start):
                    next(plan)
            have, mean = 0.0, 4.0  # seconds so far; mean utterance length (estimate, then measured)
            while have < target_s:
                remaining = target_s - have
                factor = 0.85 if remaining > 4 * mean else 1.0  # approach the target from below
                n_new = max(1, math.ceil(factor * remaining / mean))
                specs = [next(plan) for _ in range(n_new)]
                todo = []
                for spec in specs:
                    n = _existing_samples(out / spec.path)
                    if n is None:
                        todo.append(spec)
                    else:
                        done[split][spec.index] = (spec, n)
                        advance(n)
                futures = [
                    pool.submit(render_chunk, c, str(out), espeak_path, kokoro)
                    for c in _chunks(todo, config.chunk_size)
                ]
                by_index = {s.index: s for s in todo}
                for fut in as_completed(futures):
                    for index, n in fut.result():
                        done[split][index] = (by_index[index], n)
                        advance(n)
                have = sum(n for _, n in done[split].values()) / SAMPLE_RATE
                mean = have / len(done[split])
            entries = [
                ManifestEntry(spec.path, n, spec.text, spec.voice.id)
                for _, (spec, n) in sorted(done[split].items())
            ]
            write_manifest(out / f"{split}.tsv", entries)
    bar.close()
    card = _card(config, done, voices, sentences, texts)
    (out / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


def _hours_per_engine(items) -> dict[str, float]:
    seconds = Counter[str]()
    for spec, n in items:
        seconds[spec.voice.engine] += n / SAMPLE_RATE
    return {e: round(s / 3600, 4) for e, s in sorted(seconds.items())}


def _card(config, done, voices, sentences, texts) -> dict:
    splits = {}
    for split, items in done.items():
        specs = [s for s, _ in items.values()]
        samples = [n for _, n in items.values()]
        splits[split] = {
            "utterances": len(items),
            "hours": round(sum(samples) / SAMPLE_RATE / 3600, 4),
            "mean_seconds": round(float(np.mean(samples)) / SAMPLE_RATE, 3) if samples else 0.0,
            "voices_used": len({s.voice.id for s in specs}),
            "unique_sentences": len({s.text for s in specs}),
            "utterances_per_engine": dict(sorted(Counter(s.voice.engine for s in specs).items())),
            "hours_per_engine": _hours_per_engine(items.values()),
            "utterances_per_source": dict(sorted(Counter(s.source for s in specs).items())),
            "augmented": sum(bool(s.effects) or s.snr_db is not None for s in specs),
            "sentence_pool": {k: len(v) for k, v in texts[split].items()},
        }
    return {
        "format": "hubert-lstm synthetic corpus v1",
        "seed": config.seed,
        "sample_rate": SAMPLE_RATE,
        "audio": "FLAC, mono, 16-bit",
        "requested_hours": config.split_hours(),
        "aug_fraction": config.aug_fraction,
        "train_start": config.train_start,
        "engine_weights": {s: config.split_weights(s) for s in SPLITS},
        "train_voice_weights": config.train_voice_weights or {},
        "splits": splits,
        "engines": {
            "espeak": "espeak-ng (GPL-3+), accents x variants + random custom variants",
            "festival": "festival (X11-style) with festvox-kallpc16k / festvox-kdlpc16k diphones",
            "flite": "flite (BSD-style), kal16 voice",
            "kokoro": "Kokoro-82M v1.0 int8 ONNX (Apache-2.0) via kokoro-onnx; voices from "
            "kokoro-js@1.2.1; named voices + convex mixes of 2-3 same-accent voices",
            "piper": "Piper en_US-joe-medium (VITS, one real speaker) at several noise scales",
        },
        "kokoro": {
            "reserved_never_used": list(KOKORO_RESERVED),
            "test_unseen_voices": list(KOKORO_TEST_UNSEEN),
            "dev_voices": list(KOKORO_DEV),
        },
        "voices": {split: [asdict(v) for v in vs] for split, vs in voices.items()},
        "reserved_voices": list(RESERVED_VOICES),
        "notes": [
            "train and dev share no sentence and no voice id; test_unseen has only reserved voices",
            "festival/flite dev voices are the kal/ked diphone databases at held-out target F0s",
            "pico (SVOX) is reserved but not in Debian main, so not installed or used",
            "test_unseen: natural rate and pitch, no augmentation",
            "Kokoro af_sarah, am_adam, bf_isabella, bm_lewis are reserved for external "
            "evaluation: never in train, dev, test_unseen or a mix",
            "Kokoro output is 24 kHz and Piper's 22.05 kHz; sox resamples both to 16 kHz",
        ],
        "text_sources": {
            name: {**asdict(SOURCES[name]), "sentences": len(items)}
            for name, items in sentences.items()
            if name in SOURCES
        },
    }
