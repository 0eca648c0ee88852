"""CTC fine-tuning: overfitting real (synthetic) speech, exact resume, the feature cache."""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from model_training.data.audio import load_audio
from model_training.data.manifest import ManifestEntry, read_manifest, write_manifest
from model_training.models.fbank import FbankUpstream
from model_training.text import CharVocab
from model_training.training.evaluate import evaluate, score
from model_training.training.finetune_ctc import FinetuneConfig, filter_manifest, run

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "ctc" / "tiny.yaml"
TEXTS = [
    "hello world",
    "the quick brown fox",
    "speech recognition works",
    "seven green apples",
    "call me tomorrow",
]


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    """Five espeak-ng utterances at 16 kHz and their manifest."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup-apt)")
    root = tmp_path_factory.mktemp("speech")
    entries = []
    for i, text in enumerate(TEXTS):
        raw = root / f"raw{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
        wave = load_audio(raw)  # espeak writes 22.05 kHz; resampled to 16 kHz here
        sf.write(root / f"u{i}.wav", wave.numpy(), 16000, subtype="FLOAT")
        entries.append(ManifestEntry(f"u{i}.wav", wave.numel(), text.upper(), "espeak"))
    return write_manifest(root / "m.tsv", entries)


def _config(speech: Path, run_dir: Path, **overrides) -> FinetuneConfig:
    sets = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    return FinetuneConfig.from_yaml(
        TINY,
        sets,
        train_manifest=str(speech),
        dev_manifest=str(speech),
        run_dir=str(run_dir),
    )


def test_tiny_head_overfits_five_utterances(speech: Path, tmp_path) -> None:
    start = time.perf_counter()
    run_dir = run(_config(speech, tmp_path / "run"))
    seconds = time.perf_counter() - start
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best = metrics["best"]
    assert best["cer"] < 0.05, metrics["evaluations"]
    assert metrics["step"] <= 400
    print(f"overfit: CER {best['cer']:.3f} at step {best['step']} in {seconds:.1f} s")
    # the saved best head, on its upstream, scores the same through `evaluate`
    result = evaluate(run_dir, speech)
    assert result["cer"] == pytest.approx(best["cer"])
    assert result["wer"] == pytest.approx(best["wer"])
    assert result["utterances"] == 5
    assert result["audio_seconds"] == pytest.approx(read_manifest(speech).total_samples / 16000)
    assert result["parameters"] == metrics["head_parameters"]  # fbank has no weights
    assert result["rtf"] > 0


def _head_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "best" / "head.safetensors"))


def test_resume_equals_uninterrupted(speech: Path, tmp_path) -> None:
    # dropout and SpecAugment on, 3 batches per epoch: the stop falls mid-epoch and every
    # random draw must come back from the checkpoint
    opts = dict(
        max_steps=10,
        eval_every=4,
        checkpoint_every=5,
        max_batch_size=2,
        feature_cache="none",
        target_dev_cer=None,
        head={"proj_dim": 16, "lstm_hidden": 8, "dropout": 0.2, "time_masks": 2},
    )
    whole = run(_config(speech, tmp_path / "whole", **opts))
    split_dir = tmp_path / "split"
    run(_config(speech, split_dir, stop_at_step=5, **opts))
    assert json.loads((split_dir / "metrics.json").read_text())["step"] == 5
    run(_config(speech, split_dir, **opts))
    a, b = _head_weights(whole), _head_weights(split_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma = json.loads((whole / "metrics.json").read_text())
    mb = json.loads((split_dir / "metrics.json").read_text())
    assert ma["evaluations"] == mb["evaluations"] and ma["best"] == mb["best"]


def test_patience_stops_when_dev_stops_improving_and_keeps_the_best(speech: Path, tmp_path) -> None:
    # a vanishing lr: the head barely moves, so no evaluation after the first improves on it
    opts = dict(max_steps=50, eval_every=2, checkpoint_every=50, max_batch_size=2)
    config = _config(speech, tmp_path / "run", target_dev_cer=None, patience=3, **opts)
    config.lr = 1e-12
    run_dir = run(config)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert [e["step"] for e in metrics["evaluations"]] == [2, 4, 6, 8]
    assert metrics["step"] == 8 and metrics["best"]["step"] == 2
    config = _config(speech, tmp_path / "all", target_dev_cer=None, **opts)
    config.lr = 1e-12
    unlimited = run(config)
    assert json.loads((unlimited / "metrics.json").read_text())["step"] == 50
    with pytest.raises(ValueError, match="patience"):
        FinetuneConfig(train_manifest="x", patience=0)


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_feature_cache_matches_on_the_fly(speech: Path, tmp_path, cache: str) -> None:
    opts = dict(max_steps=6, eval_every=3, checkpoint_every=6, max_batch_size=2)
    opts["target_dev_cer"] = None
    run(_config(speech, tmp_path / "plain", feature_cache="none", **opts))
    cached = run(_config(speech, tmp_path / "cached", feature_cache=cache, **opts))
    if cache == "disk":
        assert len(list((cached / "feature_cache" / "train").glob("*.safetensors"))) == 5
    a, b = _head_weights(tmp_path / "plain"), _head_weights(cached)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_config_validation(speech: Path, tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown keys in config"):
        FinetuneConfig.from_dict({"train_manifest": "x", "learning_rate": 1})
    with pytest.raises(ValueError, match="feature_cache"):
        FinetuneConfig(train_manifest="x", feature_cache="ram")
    with pytest.raises(ValueError, match="head accepts"):
        FinetuneConfig(train_manifest="x", head={"vocab_size": 10})
    with pytest.raises(ValueError, match="train_manifest"):
        FinetuneConfig()
    with pytest.raises(ValueError, match="speed_perturb"):
        FinetuneConfig(train_manifest="x", speed_perturb=[0.9], feature_cache="memory")
    with pytest.raises(ValueError, match="cheap"):
        FinetuneConfig(train_manifest="x", speed_perturb=[1.037])


def test_filter_manifest_drops_unusable_utterances(tmp_path) -> None:
    entries = [
        ManifestEntry("a.wav", 16000, "HELLO"),
        ManifestEntry("b.wav", 16000, ""),  # no transcript
        ManifestEntry("c.wav", 1000, "A VERY LONG SENTENCE"),  # 2 frames for 20 labels
        ManifestEntry("d.wav", 160000, "HI"),  # longer than the limit
    ]
    manifest = read_manifest(write_manifest(tmp_path / "m.tsv", entries))
    kept, dropped = filter_manifest(manifest, FbankUpstream(), CharVocab(), max_samples=80000)
    assert [e.path for e in kept] == ["a.wav"]
    assert dropped == {"no_text": 1, "too_short": 1, "too_long": 1}


def test_score_normalizes_and_skips_empty_references() -> None:
    result = score(["Hello, world!", "", "it's fine"], ["HELLO WORD", "ANYTHING", "ITS FINE"])
    assert result["wer"] == pytest.approx(2 / 4)
    assert result["cer"] == pytest.approx(2 / 20)
    assert score([""], ["X"]) == {}


def test_best_head_selection_by_wer_or_cer() -> None:
    from model_training.training.finetune_ctc import _is_better

    empty = {"wer": 1.0, "cer": 1.0}  # a head that only emits blanks
    useful = {"wer": 1.05, "cer": 0.67}  # insertions, but most characters right
    assert not _is_better(useful, empty, "wer")
    assert _is_better(useful, empty, "cer")
    assert _is_better(empty, None, "wer")


def test_init_head_continues_from_a_finished_run(speech: Path, tmp_path) -> None:
    """--init-head starts from the source's head: at a learning rate too small to move it, the
    new run scores what the source's best head scored; a random head does not."""
    source = run(_config(speech, tmp_path / "source", max_steps=100, target_dev_cer=None))
    best = json.loads((source / "metrics.json").read_text())["best"]
    frozen = {"max_steps": 1, "eval_every": 1, "lr": 1e-12, "target_dev_cer": None}
    cont = run(_config(speech, tmp_path / "cont", init_head=str(source), **frozen))
    fresh = run(_config(speech, tmp_path / "fresh", **frozen))
    cont_cer = json.loads((cont / "metrics.json").read_text())["best"]["cer"]
    fresh_cer = json.loads((fresh / "metrics.json").read_text())["best"]["cer"]
    assert best["cer"] < 0.8
    assert cont_cer == pytest.approx(best["cer"], abs=1e-6)
    assert fresh_cer > best["cer"] + 0.1
    # another head architecture is refused with the field that differs
    with pytest.raises(ValueError, match=r"differs in \['proj_dim'\]"):
        run(_config(speech, tmp_path / "bad", init_head=str(source), **{"head.proj_dim": 16}))
