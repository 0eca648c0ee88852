"""Probes (issue 16): PR targets and the linear PR head, the SID head, layer weights."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
import torch

from model_training.data.audio import load_audio
from model_training.data.manifest import ManifestEntry, read_manifest, write_manifest
from model_training.models.ctc import CTCHead, CTCHeadConfig
from model_training.models.sid import SIDHead, SIDHeadConfig, pool_layers
from model_training.phones import (
    ESPEAK_EN_US_PHONES,
    EspeakPhonemizer,
    LexiconPhonemizer,
    PhoneVocab,
    normalize_espeak_ipa,
    phonemize_texts,
    read_lexicon,
)
from model_training.training.tasks import collapse, score_phones

ROOT = Path(__file__).resolve().parents[1]
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng")
TEXTS = ["HELLO WORLD", "THE QUICK BROWN FOX", "IT'S A LITTLE BUTTON", "ZERO", ""]


def test_normalize_espeak_ipa_drops_stress_keeps_length() -> None:
    assert normalize_espeak_ipa("h_ə_l_ˈoʊ w_ˈɜː_l_d") == ["h", "ə", "l", "oʊ", "w", "ɜː", "l", "d"]
    assert normalize_espeak_ipa("l_ˈɪ_ɾ_əl b_ˈʌ_ʔ_n̩") == [
        *["l", "ɪ", "ɾ", "ə", "l"],
        *["b", "ʌ", "ʔ", "ə", "n"],
    ]  # syllabic consonants as schwa + consonant
    assert normalize_espeak_ipa("ð_ɪ_ ˌɛ_n_d") == ["ð", "ɪ", "ɛ", "n", "d"]


@needs_espeak
def test_pr_targets_round_trip_text_phones_ids_phones(tmp_path) -> None:
    phonemizer = EspeakPhonemizer()
    phones = phonemizer.phonemize(TEXTS)
    assert phones[0] == "h ə l oʊ w ɜː l d"
    assert phones[-1] == ""  # no text, no phones
    vocab = PhoneVocab(ESPEAK_EN_US_PHONES)
    for p in phones:
        assert all(ph in vocab for ph in p.split()), p  # the inventory covers them
        ids = vocab.encode(p)
        assert 0 not in ids and vocab.decode(ids) == p
        # CTC-style: repeats and blanks around the ids collapse back to the same phones
        path = [0] + [i for x in ids for i in (x, x, 0)]
        assert vocab.decode(collapse(path, 0)) == p
    # batched (one espeak-ng process, marker-separated) equals one text at a time
    assert [phonemizer.phonemize([t])[0] for t in TEXTS] == phones
    # cached per manifest: the second call reads the file (no espeak-ng)
    first = phonemize_texts(TEXTS, phonemizer, tmp_path, "m")
    (cache,) = tmp_path.glob("m-*.json")
    phonemizer.phonemize = None  # type: ignore[assignment]  # would fail if called
    assert phonemize_texts(TEXTS, phonemizer, tmp_path, "m") == first == phones
    assert json.loads(cache.read_text())["phones"]["HELLO WORLD"] == phones[0]


def test_lexicon_reader_on_a_tiny_fake(tmp_path) -> None:
    lexicon = tmp_path / "lexicon.txt"
    lexicon.write_text(
        ";;; comment\nHELLO\tHH AH0 L OW1\nHELLO  HH EH0 L OW1\nWORLD W ER1 L D\n"
        "IT'S IH1 T S\nREAD(2) R EH1 D\n"
    )
    assert read_lexicon(lexicon)["HELLO"] == ["HH", "AH", "L", "OW"]  # first wins, no stress
    assert read_lexicon(lexicon, keep_stress=True)["HELLO"] == ["HH", "AH0", "L", "OW1"]
    p = LexiconPhonemizer(lexicon)
    assert p.phonemize(["hello, world!", "it's", "hello there"]) == [
        "HH AH L OW W ER L D",
        "IH T S",
        "",
    ]
    assert p.oov == {"THERE"}
    assert set(p.inventory) == {"HH", "AH", "L", "OW", "W", "ER", "D", "IH", "T", "S", "R", "EH"}
    vocab = PhoneVocab(p.inventory)
    assert vocab.decode(vocab.encode("HH AH L OW")) == "HH AH L OW"


def test_phone_error_rate() -> None:
    assert score_phones(["a b c d", ""], ["a x c", "z"]) == {"per": pytest.approx(2 / 4)}
    assert score_phones([""], ["a"]) == {}


def test_linear_ctc_head_is_one_linear_layer() -> None:
    head = CTCHead(CTCHeadConfig(layer_dims=[8, 8, 8], vocab_size=5, proj_dim=0, lstm_layers=0))
    names = {n for n, _ in head.named_parameters()}
    assert names == {"featurizer.weights", "classifier.weight", "classifier.bias"}
    hs = [torch.randn(2, 7, 8) for _ in range(3)]
    lp = head.eval()(hs, torch.tensor([7, 4]))
    assert lp.shape == (2, 7, 5)
    mixed = sum(hs) / 3
    expected = torch.log_softmax(head.classifier(mixed), -1)
    torch.testing.assert_close(lp, expected)


def test_sid_pooled_path_equals_frame_path_and_ignores_padding() -> None:
    g = torch.Generator().manual_seed(0)
    cfg = SIDHeadConfig(layer_dims=[4, 6, 6, 6], num_classes=3)
    assert cfg.layer_indices == [1, 2, 3]
    head = SIDHead(cfg)
    with torch.no_grad():
        head.featurizer.weights.copy_(torch.tensor([0.3, -1.0, 2.0]))
    hs = [torch.randn(2, 9, d, generator=g) for d in cfg.layer_dims]
    lengths = torch.tensor([9, 5])
    logits = head(hs, lengths)
    pooled = pool_layers(hs, lengths, cfg.layer_indices, cfg.layer_norm)
    torch.testing.assert_close(head.forward_pooled(pooled), logits)
    short = head([h[1:, :5] for h in hs], lengths[1:])  # the padded item alone, unpadded
    torch.testing.assert_close(short, logits[1:])


@pytest.fixture(scope="module")
def voices(tmp_path_factory) -> Path:
    """3 espeak-ng voices x 6 short utterances each, with speaker ids."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    root = tmp_path_factory.mktemp("voices")
    words = ["one two", "red car", "blue sky", "good day", "cold tea", "big dog"]
    entries = []
    for voice in ("en-us+m3", "en-us+f2", "en-gb-scotland+m7"):
        for i, text in enumerate(words):
            raw = root / "raw.wav"
            cmd = ["espeak-ng", "-v", voice, "-w", str(raw), text]
            subprocess.run(cmd, check=True, capture_output=True)
            name = f"{voice.replace('+', '_')}-{i}.wav"
            wave = load_audio(raw)
            sf.write(root / name, wave.numpy(), 16000, subtype="FLOAT")
            entries.append(ManifestEntry(name, wave.numel(), text.upper(), f"espeak:{voice}"))
    return write_manifest(root / "voices.tsv", entries)


def test_sid_head_overfits_a_few_voices(voices: Path, tmp_path) -> None:
    from model_training.training.sid import SIDConfig, run, split_by_speaker

    cfg = SIDConfig(
        upstream="fbank",
        manifest=str(voices),
        run_dir=str(tmp_path / "sid"),
        min_utterances=6,
        dev_fraction=0.2,
        test_fraction=0.2,
        lr=0.05,
        max_steps=150,
        eval_every=25,
        patience=None,
        batch_size=8,
        device="cpu",
        progress=False,
    )
    splits, speakers = split_by_speaker(read_manifest(voices), cfg)
    assert len(speakers) == 3
    for name, m in splits.items():  # closed set: every voice in every split
        assert {e.speaker for e in m} == set(speakers), name
    assert not set(splits["train"].ids) & (set(splits["dev"].ids) | set(splits["test"].ids))
    run_dir = run(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train_acc"] == 1.0, metrics["evaluations"]
    assert metrics["chance"] == pytest.approx(1 / 3)
    weights = json.loads((run_dir / "layer_weights.json").read_text())
    assert weights["task"] == "sid" and sum(weights["weights"]) == pytest.approx(1.0)
    # the same splits on a second run (another upstream would get them too)
    again, _ = split_by_speaker(read_manifest(voices), cfg)
    assert {k: m.ids for k, m in again.items()} == {k: m.ids for k, m in splits.items()}
    # the pooled features are reused
    stamp = (run_dir / "pooled.safetensors").stat().st_mtime_ns
    run(cfg)
    assert (run_dir / "pooled.safetensors").stat().st_mtime_ns == stamp


@needs_espeak
def test_finetune_ctc_task_pr_trains_scores_per_and_evaluates(voices: Path, tmp_path) -> None:
    from model_training.training.evaluate import evaluate
    from model_training.training.finetune_ctc import FinetuneConfig, run

    sets = [
        "task=pr",
        "head={proj_dim: 0, lstm_layers: 0, dropout: 0.0, time_masks: 0, freq_masks: 0}",
        "max_steps=6",
        "eval_every=3",
        "checkpoint_every=6",
        "target_dev_cer=null",
        f"phonemes={{cache_dir: {tmp_path / 'phones'}}}",
    ]
    cfg = FinetuneConfig.from_yaml(
        ROOT / "configs" / "ctc" / "tiny.yaml",
        sets,
        train_manifest=str(voices),
        dev_manifest=str(voices),
        run_dir=str(tmp_path / "pr"),
        upstream="fbank",
    )
    assert cfg.select_by == "per"
    run_dir = run(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["best"]) >= {"per", "step"} and "wer" not in metrics["best"]
    head = json.loads((run_dir / "best" / "head.json").read_text())
    assert head["task"] == "pr" and head["vocab"] == list(ESPEAK_EN_US_PHONES)
    assert len(list((tmp_path / "phones").glob("voices-*.json"))) == 1
    result = evaluate(run_dir, voices, task="pr")
    assert result["per"] == pytest.approx(metrics["best"]["per"])
    assert "wer" not in result
    with pytest.raises(ValueError, match="pr head, not asr"):
        evaluate(run_dir, voices, task="asr")
    weights = json.loads((run_dir / "layer_weights.json").read_text())
    assert weights["task"] == "pr" and len(weights["weights"]) == len(weights["layer_indices"])
