from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from model_training.data.audio import load_audio, num_samples_at
from model_training.data.collate import collate_audio
from model_training.data.dataset import AudioDataset
from model_training.data.manifest import (
    ManifestEntry,
    read_km_labels,
    read_manifest,
    write_km_labels,
    write_manifest,
)
from model_training.data.readers import build_folder_manifest, build_librispeech_manifest


def _tone(n: int, sr: int = 16000, channels: int = 1) -> np.ndarray:
    t = np.arange(n) / sr
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def test_manifest_round_trip_with_relative_paths(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.flac", _tone(800), 16000)
    entries = [ManifestEntry("a.flac", 800, "HELLO WORLD", "spk1"), ManifestEntry("b.flac", 5)]
    write_manifest(tmp_path / "m.tsv", entries)
    assert (tmp_path / "m.tsv").read_text().splitlines()[0] == "path\tnum_samples\ttext\tspeaker"
    m = read_manifest(tmp_path / "m.tsv")
    assert m.entries == entries and m.lengths == [800, 5] and m.ids == ["a", "b"]
    assert m.audio_path(0) == tmp_path.resolve() / "a.flac"
    with pytest.raises(ValueError, match="tabs"):
        write_manifest(tmp_path / "bad.tsv", [ManifestEntry("x\ty.flac", 1)])
    write_km_labels(tmp_path / "m.km", [[1, 2, 3], [4]])
    assert read_km_labels(tmp_path / "m.km", expected_rows=2) == [[1, 2, 3], [4]]
    with pytest.raises(ValueError, match="expected 3"):
        read_km_labels(tmp_path / "m.km", expected_rows=3)


def test_load_audio_mono_resampled(tmp_path: Path) -> None:
    sf.write(tmp_path / "st.wav", _tone(8000, 8000, channels=2), 8000)
    wave = load_audio(tmp_path / "st.wav")
    assert wave.dtype == torch.float32 and wave.dim() == 1 and wave.numel() == 16000
    assert num_samples_at(tmp_path / "st.wav") == 16000


def test_librispeech_reader_on_fake_tree(tmp_path: Path) -> None:
    root = tmp_path / "LibriSpeech"
    for subset, spk, chap, n in [
        ("dev-clean", "84", "121", 2),
        ("train-clean-100", "19", "198", 3),
    ]:
        d = root / subset / spk / chap
        d.mkdir(parents=True)
        lines = []
        for u in range(n):
            uid = f"{spk}-{chap}-{u:04d}"
            sf.write(d / f"{uid}.flac", _tone(1600 * (u + 1)), 16000)
            lines.append(f"{uid} HELLO NUMBER {u} IT'S FINE")
        (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "manifests" / "ls.tsv"
    build_librispeech_manifest(tmp_path, ["train-clean-100", "dev-clean"], out)
    m = read_manifest(out)
    assert len(m) == 5
    assert {e.speaker for e in m} == {"84", "19"}
    for i, e in enumerate(m):
        assert e.num_samples == sf.info(m.audio_path(i)).frames
        assert e.text.startswith("HELLO NUMBER") and e.text.endswith("IT'S FINE")
        assert e.path.startswith("../LibriSpeech/")
    batch = collate_audio([AudioDataset(m)[i] for i in range(3)])
    assert batch.lengths.tolist() == [e.num_samples for e in m.entries[:3]]


def test_folder_reader_uses_sidecar_text(tmp_path: Path) -> None:
    (tmp_path / "spk").mkdir()
    sf.write(tmp_path / "spk" / "x.wav", _tone(22050, 22050), 22050)
    (tmp_path / "spk" / "x.txt").write_text("Hello, world!\n")
    sf.write(tmp_path / "y.flac", _tone(500), 16000)
    (tmp_path / "notes.md").write_text("not audio")
    out = build_folder_manifest(tmp_path, tmp_path / "m.tsv")
    m = read_manifest(out)
    by_path = {e.path: e for e in m}
    assert set(by_path) == {"spk/x.wav", "y.flac"}
    assert by_path["spk/x.wav"].text == "HELLO WORLD" and by_path["spk/x.wav"].num_samples == 16000
    assert by_path["spk/x.wav"].speaker == "spk" and by_path["y.flac"].text == ""
    assert len(read_manifest(build_folder_manifest(tmp_path, tmp_path / "t.tsv", True))) == 1


def test_dataset_crops_audio_and_labels_aligned(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.flac", _tone(320 * 50), 16000)
    write_manifest(tmp_path / "m.tsv", [ManifestEntry("a.flac", 320 * 50, "A")])
    ds = AudioDataset(
        tmp_path / "m.tsv",
        [list(range(50))],
        max_samples=320 * 10,
        generator=torch.Generator().manual_seed(0),
    )
    item = ds[0]
    assert item.waveform.numel() == 3200 and item.labels.numel() == 10
    full = load_audio(tmp_path / "a.flac")
    start = int(item.labels[0]) * 320
    assert torch.equal(item.waveform, full[start : start + 3200])
    assert ds.lengths == [3200]


def test_cli_librispeech_and_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from model_training.cli import app

    for subset in ("train-clean-100", "dev-clean"):
        d = tmp_path / "LibriSpeech" / subset / "1" / "2"
        d.mkdir(parents=True)
        sf.write(d / "1-2-0000.flac", _tone(400), 16000)
        (d / "1-2.trans.txt").write_text("1-2-0000 A SHORT ONE\n")
    runner = CliRunner()
    args = ["data", "librispeech", "--root", str(tmp_path), "--subsets", "train-clean-100"]
    res = runner.invoke(app, [*args, "dev-clean", "--out", str(tmp_path / "ls.tsv")])
    assert res.exit_code == 0, res.output
    assert len(read_manifest(tmp_path / "ls.tsv")) == 2
    res = runner.invoke(
        app, ["data", "folder", "--root", str(tmp_path), "--out", str(tmp_path / "f.tsv")]
    )
    assert res.exit_code == 0, res.output
    assert len(read_manifest(tmp_path / "f.tsv")) == 2


def test_subset_manifest_reads_several_sources_as_one(tmp_path: Path) -> None:
    """ft_all of a corpus that extends a train stream appends the earlier corpus's train split
    (demo.mk FT_EXTRA_TRAIN): every utterance, each path still pointing at its own audio."""
    import subprocess
    import sys

    old, new = tmp_path / "old", tmp_path / "new"
    write_manifest(old / "train.tsv", [ManifestEntry("train/a.flac", 16000, "A", "espeak:x")])
    write_manifest(new / "train.tsv", [ManifestEntry("train/b.flac", 8000, "B", "kokoro:y")])
    dst = tmp_path / "runs" / "ft_all.tsv"
    script = Path(__file__).resolve().parents[1] / "scripts" / "subset_manifest.py"
    subprocess.run(
        [sys.executable, str(script), str(new / "train.tsv"), str(old / "train.tsv"), str(dst)],
        check=True,
    )
    merged = read_manifest(dst)
    assert [e.text for e in merged] == ["B", "A"]
    assert merged.audio_path(0).resolve() == (new / "train" / "b.flac").resolve()
    assert merged.audio_path(1).resolve() == (old / "train" / "a.flac").resolve()
