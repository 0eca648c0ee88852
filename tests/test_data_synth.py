import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from model_training.data.manifest import read_manifest
from model_training.data.synth import (
    SynthConfig,
    plan_split,
    split_sentences,
    synthesize_corpus,
    utterance_index,
)
from model_training.data.text_sources import Sentence, clean_sentence
from model_training.data.voices import (
    KOKORO_DEV,
    KOKORO_RESERVED,
    KOKORO_TEST_UNSEEN,
    Voice,
    build_voices,
    engine_weights,
    parse_engine_weights,
    parse_voice_weights,
    reserved_voices,
    voice_weight,
)
from model_training.text import normalize_text

pytestmark = pytest.mark.skipif(
    not all(shutil.which(b) for b in ("espeak-ng", "sox", "flite", "festival")),
    reason="needs espeak-ng, sox, flite and festival (make setup-apt)",
)

RAW = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "It's a long-term plan, isn't it?",
    "A journey of many miles begins with one step.",
    "Rain fell softly on the quiet village all night.",
    "The old clock in the hall struck twelve times.",
    "Birds sang in the garden before the sun came up.",
    "He opened the window and looked at the river.",
    "Every morning they walked along the narrow path.",
    "Music filled the room as the guests arrived.",
    "The children laughed at the clever little puppy.",
    "Fresh bread smells wonderful on a cold winter day.",
    "We should plant more trees near the school.",
    "The train was late because of the heavy snow.",
    "Please close the door when you leave the kitchen.",
    "Stars shine brightly over the silent desert.",
]


def _sentences() -> dict[str, list[Sentence]]:
    out: dict[str, list[Sentence]] = {"fortunes": [], "wordnet": []}
    for i, raw in enumerate(RAW):
        spoken, text = clean_sentence(raw)
        out["fortunes" if i % 2 else "wordnet"].append(Sentence(spoken, text, "x"))
    return out


def _voices() -> dict[str, list[Voice]]:
    custom = (("gender", "female"), ("pitch", "180 240"), ("formant 1", "110 100 100"))
    return {
        "train": [
            Voice("espeak:en-us+m3", "espeak", "en-us+m3"),
            Voice("espeak:en+xtr000", "espeak", "en+xtr000", custom=custom),
            Voice("festival:kal_diphone@100", "festival", "kal_diphone", 100),
            Voice("flite:kal16@100", "flite", "kal16", 100),
        ],
        "dev": [
            Voice("espeak:en-gb-x-rp+f2", "espeak", "en-gb-x-rp+f2"),
            Voice("festival:ked_diphone@90", "festival", "ked_diphone", 90),
        ],
        "test_unseen": [v for v in reserved_voices() if v.id == "flite:slt"],
    }


def _make(
    out: Path, hours: float = 0.004, train_start: int = 0, weights: dict | None = None
) -> dict:
    config = SynthConfig(
        out, hours=hours, seed=5, dev_hours=0.002, test_hours=0.001, workers=2, aug_fraction=0.5,
        progress=False, train_start=train_start, train_engine_weights=weights,
    )  # fmt: skip
    return synthesize_corpus(config, sentences=_sentences(), voices=_voices())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "a"
    _make(out)
    return out


def test_tiny_corpus_is_16k_mono_flac_with_matching_manifests(corpus: Path) -> None:
    card = json.loads((corpus / "card.json").read_text())
    assert card["seed"] == 5 and set(card["splits"]) == {"train", "dev", "test_unseen"}
    for split in ("train", "dev", "test_unseen"):
        m = read_manifest(corpus / f"{split}.tsv")
        assert len(m) == card["splits"][split]["utterances"] >= 1
        for i, e in enumerate(m):
            info = sf.info(m.audio_path(i))
            assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1)
            assert e.num_samples == info.frames > 1600
            assert e.text and e.text == normalize_text(e.text)
    hours = sum(e.num_samples for e in read_manifest(corpus / "train.tsv")) / 16000 / 3600
    assert hours >= 0.004 and hours == pytest.approx(card["splits"]["train"]["hours"], abs=1e-4)


def test_splits_disjoint_in_sentences_and_voices(corpus: Path) -> None:
    m = {s: read_manifest(corpus / f"{s}.tsv") for s in ("train", "dev", "test_unseen")}
    texts = {s: {e.text for e in v} for s, v in m.items()}
    speakers = {s: {e.speaker for e in v} for s, v in m.items()}
    for a, b in [("train", "dev"), ("train", "test_unseen"), ("dev", "test_unseen")]:
        assert not texts[a] & texts[b]
        assert not speakers[a] & speakers[b]
    assert speakers["test_unseen"] == {"flite:slt"}


def test_same_seed_same_bytes_and_resume_keeps_files(corpus: Path, tmp_path: Path) -> None:
    _make(tmp_path / "b")
    files = sorted(p.relative_to(corpus) for p in corpus.rglob("*.flac"))
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.flac"))
    for rel in [*files, Path("train.tsv"), Path("dev.tsv"), Path("test_unseen.tsv")]:
        assert (corpus / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    before = {p: p.stat().st_mtime_ns for p in corpus.rglob("*.flac")}
    _make(corpus)  # resume: nothing left to render
    assert {p: p.stat().st_mtime_ns for p in corpus.rglob("*.flac")} == before


def test_train_start_extends_the_train_stream_and_keeps_dev_and_test(
    corpus: Path, tmp_path: Path
) -> None:
    n = len(read_manifest(corpus / "train.tsv"))
    card = _make(tmp_path / "ext", hours=0.002, train_start=n)
    ext = read_manifest(tmp_path / "ext" / "train.tsv")
    assert card["train_start"] == n and len(ext) == card["splits"]["train"]["utterances"] >= 1
    # the next utterances of the seed's stream: specs n, n+1, ... (sentence pools advanced)
    texts = split_sentences(_sentences(), 5)["train"]
    plan = plan_split("train", 5, _voices()["train"], texts, 0.5)
    specs = [next(plan) for _ in range(n + len(ext))][n:]
    assert [e.path for e in ext.entries] == [s.path for s in specs]
    assert [e.text for e in ext.entries] == [s.text for s in specs]
    assert [utterance_index(e.path) for e in ext.entries] == list(range(n, n + len(ext)))
    base_texts = {e.text for e in read_manifest(corpus / "train.tsv")}
    assert not {e.text for e in ext} & base_texts
    for split in ("dev", "test_unseen"):  # same hours, same evaluation splits
        same = (tmp_path / "ext" / f"{split}.tsv").read_bytes() == (
            corpus / f"{split}.tsv"
        ).read_bytes()
        assert same, split


def test_train_engine_weights_change_train_only(corpus: Path, tmp_path: Path) -> None:
    weights = parse_engine_weights("festival=0, flite=0")
    card = _make(tmp_path / "w", weights=weights)
    speakers = {e.speaker for e in read_manifest(tmp_path / "w" / "train.tsv")}
    assert speakers and all(s.startswith("espeak:") for s in speakers)
    default_train = {e.speaker for e in read_manifest(corpus / "train.tsv")}
    assert not all(s.startswith("espeak:") for s in default_train)
    assert card["engine_weights"]["train"] == weights
    assert card["engine_weights"]["dev"] == engine_weights("dev")
    for split in ("dev", "test_unseen"):  # evaluation splits stay byte for byte the same
        assert (tmp_path / "w" / f"{split}.tsv").read_bytes() == (
            corpus / f"{split}.tsv"
        ).read_bytes(), split


def test_parse_engine_weights_changes_named_engines_and_refuses_bad_specs() -> None:
    weights = parse_engine_weights("espeak=0.3,piper=0.05")
    assert weights == {**engine_weights("train"), "espeak": 0.3, "piper": 0.05}
    assert parse_engine_weights("") == engine_weights("train")
    for bad in ("espeak", "pico=0.1", "espeak=x", "espeak=-1", "espeak=nan",
                "kokoro=0,piper=0,espeak=0,festival=0,flite=0"):  # fmt: skip
        with pytest.raises(ValueError):
            parse_engine_weights(bad)


def test_voice_weights_shift_voices_within_an_engine_and_nothing_else() -> None:
    texts = split_sentences(_sentences(), 5)["train"]
    voices = _voices()["train"]

    def plan(spec: str | None) -> list:
        weights = parse_voice_weights(spec) if spec else None
        stream = plan_split("train", 5, voices, texts, 0.5, voice_weights=weights)
        return [next(stream) for _ in range(400)]

    plain, favoured, banned = plan(None), plan("espeak:en-us*=9"), plan("espeak:en-us*=0")

    def us_share(specs: list) -> float:
        espeak = [s.voice.id for s in specs if s.voice.engine == "espeak"]
        return sum(v.startswith("espeak:en-us") for v in espeak) / len(espeak)

    assert 0.3 < us_share(plain) < 0.7 and us_share(favoured) > 0.8 and us_share(banned) == 0
    for specs in (favoured, banned):  # engines, sentences and augmentation draws unchanged
        assert [s.voice.engine for s in specs] == [s.voice.engine for s in plain]
        assert [(s.text, s.speed, s.effects, s.seed) for s in specs] == [
            (s.text, s.speed, s.effects, s.seed) for s in plain
        ]


def test_parse_voice_weights_reads_globs_and_refuses_bad_specs() -> None:
    assert parse_voice_weights("espeak:en-us*=3, kokoro:af_*=0.5") == {
        "espeak:en-us*": 3.0,
        "kokoro:af_*": 0.5,
    }
    voice = Voice("espeak:en-us+m3", "espeak", "en-us+m3")
    assert voice_weight(voice, parse_voice_weights("espeak:*=2,espeak:en-us*=5,espeak:*=7")) == 7
    assert voice_weight(voice, parse_voice_weights("kokoro:*=2")) == 1
    for bad in ("espeak:en-us", "=2", "espeak:*=x", "espeak:*=-1", "espeak:*=inf"):
        with pytest.raises(ValueError):
            parse_voice_weights(bad)


def test_default_voice_sets_are_disjoint_and_keep_reserved_voices_out() -> None:
    voices = build_voices(0)
    ids = {s: {v.id for v in vs} for s, vs in voices.items()}
    assert not ids["train"] & ids["dev"]
    engines = {v.engine for v in voices["train"]}
    assert engines == {"espeak", "festival", "flite", "kokoro", "piper"}
    for split in ("train", "dev"):
        assert not {"flite:awb", "flite:rms", "flite:slt"} & ids[split]
        assert not any("slt" in i or "awb" in i or "rms" in i for i in ids[split])
    assert ids["test_unseen"] <= {
        "flite:awb",
        "flite:rms",
        "flite:slt",
        "festival:cmu_us_slt_arctic_hts",
        *(f"kokoro:{n}" for n in KOKORO_TEST_UNSEEN),
    }
    assert {f"kokoro:{n}" for n in KOKORO_TEST_UNSEEN} <= ids["test_unseen"]
    assert len(voices["train"]) > 100 and any(v.custom for v in voices["dev"])
    assert {v.engine for v in build_voices(0, neural=False)["train"]} == {
        "espeak",
        "festival",
        "flite",
    }


def test_kokoro_voices_keep_reserved_and_held_out_names_out_of_train_and_mixes() -> None:
    voices = build_voices(0)
    names = {
        split: {n for v in vs if v.engine == "kokoro" for n, _ in v.mix}
        for split, vs in voices.items()
    }
    assert not set(KOKORO_RESERVED) & (names["train"] | names["dev"] | names["test_unseen"])
    assert not names["train"] & (set(KOKORO_DEV) | set(KOKORO_TEST_UNSEEN))
    assert names["dev"] == set(KOKORO_DEV) and names["test_unseen"] == set(KOKORO_TEST_UNSEEN)
    mixes = [v for v in voices["train"] + voices["dev"] if len(v.mix) > 1]
    assert len(mixes) == 56
    for v in mixes:
        assert 2 <= len(v.mix) <= 3 and len({n[0] for n, _ in v.mix}) == 1  # one accent
        assert sum(w for _, w in v.mix) == pytest.approx(1.0) and all(w >= 0 for _, w in v.mix)
    assert build_voices(0) == voices and build_voices(1) != voices  # seeded


def test_clean_sentence_drops_text_whose_speech_would_differ() -> None:
    assert clean_sentence("It's a long-term plan, isn't it?") == (
        "It's a long-term plan, isn't it?",
        "IT'S A LONG TERM PLAN ISN'T IT",
    )
    assert clean_sentence("He paid 42 dollars for it.") is None  # digits
    assert clean_sentence("Mr. Smith went to town today.") is None  # abbreviation
    assert clean_sentence("The IBM machine was very fast.") is None  # acronym
    assert clean_sentence("Too short.") is None
    assert clean_sentence(" ".join(["word"] * 30)) is None
