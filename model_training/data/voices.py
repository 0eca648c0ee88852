"""The TTS voices of the synthetic corpus and how they are split (train / dev / test_unseen).

Engines from Debian main: espeak-ng (accents x variants, plus random custom variants with their
own pitch and formants), festival (kal and ked diphone voices; HTS slt is reserved), flite
(kal16; awb, rms and slt are reserved). Reserved voices stand for unseen speakers: they are
never used for training or model selection, only in the `test_unseen` split. SVOX pico is
reserved too but is not in Debian main, so it is not installed or used here.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
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
FESTIVAL_F0 = {"train": (80, 95, 105, 120, 135), "dev": (88, 128)}  # target F0 means, Hz
FLITE_F0 = {"train": (75, 90, 100, 115, 130), "dev": (85, 122)}


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker.

    engine: "espeak" | "festival" | "flite"; name: the engine's voice ("en-us+m3",
    "kal_diphone", "kal16"); f0: target mean F0 in Hz for festival/flite (None = voice default);
    custom: espeak variant parameters written to a variant file (custom voices only).
    """

    id: str
    engine: str
    name: str
    f0: int | None = None
    custom: tuple[tuple[str, str], ...] = field(default=())


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


def build_voices(seed: int, n_custom: dict[str, int] | None = None) -> dict[str, list[Voice]]:
    """Disjoint voice sets for "train", "dev" and "test_unseen" (reserved voices).

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
    """Share of utterances per engine (espeak has most voices; diphone engines add realism)."""
    if split == "test_unseen":
        return {"flite": 0.75, "festival": 0.25}
    return {"espeak": 0.5, "festival": 0.3, "flite": 0.2}


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
