"""The TTS voices of the synthetic corpus and how they are split (train / dev / test_unseen).

Neural engines (the `synth` extra, see `neural_tts`): Kokoro-82M's English voices, each split
with its own named voices plus new speakers made by convex mixes of 2-3 same-accent voices of
that split; Piper's joe (a VITS voice trained on one real speaker) at several noise scales.
Kokoro af_sarah, am_adam, bf_isabella and bm_lewis are reserved for the project's external
evaluation and appear nowhere; KOKORO_TEST_UNSEEN are this corpus's own unseen neural voices.

Classic engines from Debian main: espeak-ng (accents x variants, plus random custom variants
with their own pitch and formants), festival (kal and ked diphone voices; HTS slt is reserved),
flite (kal16; awb, rms and slt are reserved). Reserved voices stand for unseen speakers: they
are never used for training or model selection, only in the `test_unseen` split. SVOX pico is
reserved too but is not in Debian main, so it is not installed or used here.
"""

from __future__ import annotations

import fnmatch
import os
import random
import shutil
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ESPEAK_ACCENTS = (
    "en",
    "en-us",
    "en-gb-scotland",
    "en-gb-x-gbclan",
    "en-gb-x-rp",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
RESERVED_VOICES = ("flite:awb", "flite:rms", "flite:slt", "festival:cmu_us_slt_arctic_hts", "pico")
# Kokoro's English voices in kokoro-js@1.2.1 (a = US, b = UK English; f/m).
_KOKORO_NAMES = {
    "af": (
        "alloy",
        "aoede",
        "bella",
        "heart",
        "jessica",
        "kore",
        "nicole",
        "nova",
        "river",
        "sarah",
        "sky",
    ),
    "am": ("adam", "echo", "eric", "fenrir", "liam", "michael", "onyx", "puck", "santa"),
    "bf": ("alice", "emma", "isabella", "lily"),
    "bm": ("daniel", "fable", "george", "lewis"),
}
KOKORO_ENGLISH = tuple(f"{p}_{n}" for p, names in _KOKORO_NAMES.items() for n in names)
KOKORO_RESERVED = ("af_sarah", "am_adam", "bf_isabella", "bm_lewis")  # external evaluation only
KOKORO_TEST_UNSEEN = ("af_nicole", "am_michael", "bf_emma", "bm_george")
KOKORO_DEV = ("af_kore", "am_eric", "bf_lily", "bm_daniel")
KOKORO_MIXES = {"train": 48, "dev": 8}
# Piper joe: (noise_scale, noise_w_scale) per "speaker"; dev holds out its own settings.
PIPER_NOISE = {
    "train": ((0.333, 0.6), (0.5, 0.8), (0.667, 0.8), (0.667, 1.0), (0.8, 0.6), (0.9, 0.9)),
    "dev": ((0.4, 0.7), (0.75, 0.95)),
}
FESTIVAL_F0 = {"train": (80, 95, 105, 120, 135), "dev": (88, 128)}  # target F0 means, Hz
FLITE_F0 = {"train": (75, 90, 100, 115, 130), "dev": (85, 122)}


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker.

    engine: "espeak" | "festival" | "flite" | "kokoro" | "piper"; name: the engine's voice
    ("en-us+m3", "kal_diphone", "kal16", "af_bella", "joe"); f0: target mean F0 in Hz for
    festival/flite (None = voice default); custom: espeak variant parameters written to a
    variant file (custom voices only); mix: Kokoro (voice, weight) pairs, weights summing to 1;
    noise: Piper (noise_scale, noise_w_scale).
    """

    id: str
    engine: str
    name: str
    f0: int | None = None
    custom: tuple[tuple[str, str], ...] = field(default=())
    mix: tuple[tuple[str, float], ...] = field(default=())
    noise: tuple[float, float] | None = None


def kokoro_voice(mix: tuple[tuple[str, float], ...]) -> Voice:
    """A Kokoro speaker: one named voice, or a convex mix (id lists the weights)."""
    if len(mix) == 1:
        return Voice(f"kokoro:{mix[0][0]}", "kokoro", mix[0][0], mix=((mix[0][0], 1.0),))
    name = "+".join(f"{v}*{w:.3f}" for v, w in mix)
    return Voice(f"kokoro:mix({name})", "kokoro", name, mix=mix)


def _kokoro_mix(rng: random.Random, names: list[str]) -> tuple[tuple[str, float], ...]:
    """A convex mix of 2-3 same-accent voices (Dirichlet(1) weights, rounded, summing to 1)."""
    sizes = Counter(n[0] for n in names)
    accents = sorted(a for a, k in sizes.items() if k >= 2)
    accent = rng.choices(accents, [sizes[a] for a in accents])[0]  # mixes as voices are spread
    pool = sorted(n for n in names if n[0] == accent)
    chosen = sorted(rng.sample(pool, min(len(pool), rng.choice([2, 2, 3]))))
    raw = [rng.expovariate(1.0) for _ in chosen]
    weights = [round(w / sum(raw), 3) for w in raw]
    weights[-1] = round(1.0 - sum(weights[:-1]), 3)
    return tuple(zip(chosen, weights, strict=True))


def neural_voices(seed: int) -> dict[str, list[Voice]]:
    """Kokoro (named + mixes) and Piper voices per split; reserved Kokoro voices never appear."""
    rng = random.Random(f"{seed}-neural-voices")
    held = {*KOKORO_RESERVED, *KOKORO_TEST_UNSEEN, *KOKORO_DEV}
    named = {"train": [n for n in KOKORO_ENGLISH if n not in held], "dev": list(KOKORO_DEV)}
    out: dict[str, list[Voice]] = {}
    for split in ("train", "dev"):
        vs = [kokoro_voice(((n, 1.0),)) for n in named[split]]
        vs += [kokoro_voice(_kokoro_mix(rng, named[split])) for _ in range(KOKORO_MIXES[split])]
        vs += [
            Voice(f"piper:joe@{ns}/{nw}", "piper", "joe", noise=(ns, nw))
            for ns, nw in PIPER_NOISE[split]
        ]
        out[split] = vs
    out["test_unseen"] = [kokoro_voice(((n, 1.0),)) for n in KOKORO_TEST_UNSEEN]
    return out


def espeak_data_dir() -> Path:
    """The installed espeak-ng-data folder (asks espeak-ng, falls back to the Debian path)."""
    for cand in ("/usr/lib/x86_64-linux-gnu/espeak-ng-data", "/usr/share/espeak-ng-data"):
        if Path(cand, "voices", "!v").is_dir():
            return Path(cand)
    out = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    path = Path(out.split("Data at:")[-1].strip())
    if not (path / "voices" / "!v").is_dir():
        raise ValueError(f"espeak-ng data folder with voices/!v not found (tried {path})")
    return path


def espeak_variants() -> list[str]:
    """Installed espeak-ng voice variants (m1.., f1.., klatt.., ...), sorted."""
    return sorted(p.name for p in (espeak_data_dir() / "voices" / "!v").iterdir() if p.is_file())


def _custom_variant(rng: random.Random) -> tuple[tuple[str, str], ...]:
    """Random espeak variant: its own pitch range, formant shifts, roughness, maybe Klatt."""
    female = rng.random() < 0.5
    base = rng.randint(150, 230) if female else rng.randint(65, 130)
    lines = [
        ("gender", "female" if female else "male"),
        ("pitch", f"{base} {base + rng.randint(30, 90)}"),
    ]
    scale = 1.12 if female else 0.95
    for k in range(6):
        freq = int(100 * scale * rng.uniform(0.9, 1.1))
        lines.append((f"formant {k}", f"{freq} {rng.randint(80, 120)} {rng.randint(80, 120)}"))
    lines += [("flutter", str(rng.randint(0, 20))), ("roughness", str(rng.randint(0, 3)))]
    if rng.random() < 0.3:
        lines.append(("klatt", str(rng.randint(1, 4))))
    if rng.random() < 0.15:
        lines.append(("breath", " ".join(str(rng.randint(0, 4)) for _ in range(8))))
    return tuple(lines)


def build_voices(
    seed: int, n_custom: dict[str, int] | None = None, neural: bool = True
) -> dict[str, list[Voice]]:
    """Disjoint voice sets for "train", "dev" and "test_unseen" (reserved voices).

    `neural` adds the Kokoro and Piper voices of `neural_voices` (the `synth` extra).

    Named espeak variants are split ~85/15 by a seeded shuffle; each split gets its own random
    custom variants. Festival kal/ked and flite kal16 appear in both splits as different
    "speakers" by target F0 (the same diphone recordings underneath: Debian main has only two
    such voices); the card says so.
    """
    n_custom = n_custom or {"train": 48, "dev": 8}
    rng = random.Random(f"{seed}-voices")
    variants = espeak_variants()
    rng.shuffle(variants)
    n_dev = max(1, round(0.15 * len(variants)))
    named = {"dev": sorted(variants[:n_dev]), "train": sorted(variants[n_dev:])}
    voices: dict[str, list[Voice]] = {}
    for split in ("train", "dev"):
        vs: list[Voice] = []
        for accent in ESPEAK_ACCENTS:
            if split == "train":  # the plain accent voices count as training speakers
                vs.append(Voice(f"espeak:{accent}", "espeak", accent))
            for var in named[split]:
                vs.append(Voice(f"espeak:{accent}+{var}", "espeak", f"{accent}+{var}"))
        for i in range(n_custom[split]):
            name = f"x{split[:2]}{i:03d}"
            accent = rng.choice(ESPEAK_ACCENTS)
            vs.append(
                Voice(
                    f"espeak:{accent}+{name}",
                    "espeak",
                    f"{accent}+{name}",
                    custom=_custom_variant(rng),
                )
            )
        for fv in ("kal_diphone", "ked_diphone"):
            vs += [Voice(f"festival:{fv}@{f0}", "festival", fv, f0) for f0 in FESTIVAL_F0[split]]
        vs += [Voice(f"flite:kal16@{f0}", "flite", "kal16", f0) for f0 in FLITE_F0[split]]
        voices[split] = vs
    voices["test_unseen"] = [v for v in reserved_voices() if v.engine != "pico"]
    if neural:
        for split, vs in neural_voices(seed).items():
            voices[split] += vs
    return voices


def reserved_voices() -> list[Voice]:
    """Installed reserved voices (flite awb/rms/slt built-ins, festival HTS slt)."""
    out: list[Voice] = []
    if shutil.which("flite"):
        listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()
        out += [Voice(f"flite:{n}", "flite", n) for n in ("awb", "rms", "slt") if n in listed]
    hts = Path("/usr/share/festival/voices/us/cmu_us_slt_arctic_hts")
    if shutil.which("festival") and hts.is_dir():
        out.append(Voice("festival:cmu_us_slt_arctic_hts", "festival", "cmu_us_slt_arctic_hts"))
    return out


def engine_weights(split: str) -> dict[str, float]:
    """Share of utterances per engine (engines without voices in a split drop out).

    Neural voices get 55% of the utterances (about half of the hours: Kokoro speaks a little
    slower than the classic engines), so they are well above a third of the training hours.
    """
    if split == "test_unseen":
        return {"kokoro": 0.5, "flite": 0.375, "festival": 0.125}
    return {"kokoro": 0.42, "piper": 0.13, "espeak": 0.22, "festival": 0.14, "flite": 0.09}


def _named_numbers(spec: str, form: str) -> list[tuple[str, float]]:
    """`spec`'s comma-separated "NAME=NUMBER" items in order (NUMBER finite and >= 0)."""
    out = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = (x.strip() for x in item.rpartition("="))
        if not sep or not name:
            raise ValueError(f"expected {form}, got {item!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{name}: {value!r} is not a number") from None
        if not 0.0 <= number < float("inf"):
            raise ValueError(f"{name}: expected a finite number >= 0, got {number}")
        out.append((name, number))
    return out


def parse_engine_weights(spec: str) -> dict[str, float]:
    """The train split's engine shares with `spec`'s changes, e.g. "espeak=0.28,piper=0.05".

    Engines not named keep their default share; shares are relative (they need not sum to 1).
    """
    weights = engine_weights("train")
    for name, share in _named_numbers(spec, "ENGINE=SHARE"):
        if name not in weights:
            raise ValueError(f"{name}: not an engine, expected one of {sorted(weights)}")
        weights[name] = share
    if not any(weights.values()):
        raise ValueError("at least one engine needs a share > 0")
    return weights


def parse_voice_weights(spec: str) -> dict[str, float]:
    """Voice-id glob -> relative weight within its engine, e.g. "espeak:en-us*=3".

    A voice matching no glob weighs 1; one matching several takes the glob named last.
    """
    weights: dict[str, float] = {}
    for pattern, weight in _named_numbers(spec, "VOICE_GLOB=WEIGHT"):
        weights.pop(pattern, None)  # keeps the dict in the order globs were last named
        weights[pattern] = weight
    return weights


def voice_weight(voice: Voice, weights: dict[str, float]) -> float:
    """`voice`'s relative weight under `parse_voice_weights` globs (1 when none matches)."""
    matched = [w for pattern, w in weights.items() if fnmatch.fnmatchcase(voice.id, pattern)]
    return matched[-1] if matched else 1.0


def prepare_espeak_data(out_dir: Path, voices: list[Voice]) -> Path:
    """An espeak-ng `--path` folder: links to the system data plus the custom variant files."""
    root = out_dir / "espeak-ng-data"
    system = espeak_data_dir()
    (root / "voices" / "!v").mkdir(parents=True, exist_ok=True)
    for item in system.iterdir():
        if item.name != "voices" and not (root / item.name).exists():
            os.symlink(item, root / item.name)
    for item in (system / "voices").iterdir():
        if item.name != "!v" and not (root / "voices" / item.name).exists():
            os.symlink(item, root / "voices" / item.name)
    for item in (system / "voices" / "!v").iterdir():
        if not (root / "voices" / "!v" / item.name).exists():
            os.symlink(item, root / "voices" / "!v" / item.name)
    for v in voices:
        if v.custom:
            name = v.name.split("+", 1)[1]
            body = "language variant\nname " + name + "\n"
            body += "".join(f"{k} {val}\n" for k, val in v.custom)
            (root / "voices" / "!v" / name).write_text(body)
    return out_dir
