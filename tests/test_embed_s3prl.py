"""`hubert-lstm embed` (shards, resume, torchrun split) and the s3prl upstream adapter."""

import json
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from model_training.bundle import load_bundle
from model_training.data.manifest import ManifestEntry, write_manifest
from model_training.s3prl_upstream import S3PRLUpstream
from model_training.testing import build_tiny_bundle, test_signal
from model_training.training import embed as embed_module
from model_training.training.embed import EmbedSettings, embed

SECONDS = (1.3, 0.4, 2.0, 0.9, 1.6)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("embed")
    bundle = build_tiny_bundle(root / "bundle", with_ctc=False, varied=False)
    entries, waves = [], []
    for i, s in enumerate(SECONDS):
        wave = test_signal(s, seed=i)
        sf.write(root / f"u{i}.wav", wave.numpy(), 16000, subtype="FLOAT")
        entries.append(ManifestEntry(f"u{i}.wav", wave.numel(), "", "spk"))
        waves.append(wave)
    manifest = write_manifest(root / "m.tsv", entries)
    return {"bundle": bundle, "manifest": manifest, "waves": waves}


def _alone(upstream: torch.nn.Module, wave: torch.Tensor) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [h[0] for h in upstream(wave[None]).hidden_states]


def _read_all(out: Path) -> dict[str, torch.Tensor]:
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(out.glob("shard-*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors


def test_shards_hold_the_bundles_unpadded_output_and_resume_after_a_kill(
    data: dict, tmp_path, monkeypatch
) -> None:
    upstream = load_bundle(data["bundle"]).upstream
    settings = EmbedSettings(layers="0,-1", shard_size=2, progress=False)
    out = tmp_path / "emb"
    summary = embed(data["manifest"], data["bundle"], out, settings)
    assert summary["shards"] == 3 and summary["written"] == 3 and summary["complete"]
    tensors = _read_all(out)
    last = len(upstream.hidden_dims) - 1
    for i, wave in enumerate(data["waves"]):  # batched + padded in the run, alone here
        alone = _alone(upstream, wave)
        for layer in (0, last):
            torch.testing.assert_close(tensors[f"u{i}/layer{layer}"], alone[layer])
    index = json.loads((out / "index.json").read_text())
    assert index["layers"] == [0, last] and index["utterances"] == 5
    assert [u["id"] for s in index["shards"] for u in s["utterances"]] == [
        f"u{i}" for i in range(5)
    ]

    # a kill in the middle of shard 1: its file never appeared, a half-written .tmp did
    (out / "shard-00001.safetensors").unlink()
    (out / "index.json").unlink()
    (out / "shard-00001.safetensors.0.tmp").write_bytes(b"half")
    calls: list[int] = []
    real = embed_module.embed_shard

    def counting(upstream, manifest, *args, **kwargs):
        calls.append(len(manifest))
        return real(upstream, manifest, *args, **kwargs)

    monkeypatch.setattr(embed_module, "embed_shard", counting)
    summary = embed(data["manifest"], data["bundle"], out, settings)
    assert calls == [2] and summary["skipped"] == 2 and summary["complete"]
    again = _read_all(out)
    assert again.keys() == tensors.keys()
    assert all(torch.equal(again[k], tensors[k]) for k in tensors)
    with pytest.raises(ValueError, match="holds shards made with"):
        embed(data["manifest"], data["bundle"], out, EmbedSettings(layers="all", shard_size=2))


def test_torchrun_ranks_split_the_shards_and_mean_pooling(data: dict, tmp_path) -> None:
    upstream = load_bundle(data["bundle"]).upstream
    out = tmp_path / "emb"
    settings = EmbedSettings(layers="last", pooling="mean", shard_size=2, progress=False)
    first = embed(data["manifest"], data["bundle"], out, settings, rank=0, world_size=2)
    assert first["written"] == 2 and not first["complete"] and not (out / "index.json").exists()
    second = embed(data["manifest"], data["bundle"], out, settings, rank=1, world_size=2)
    assert second["written"] == 1 and second["complete"] and (out / "index.json").is_file()
    tensors = _read_all(out)
    for i, wave in enumerate(data["waves"]):
        expected = _alone(upstream, wave)[-1].mean(0)
        key = f"u{i}/layer{len(upstream.hidden_dims) - 1}"
        torch.testing.assert_close(tensors[key], expected)


def test_s3prl_adapter_returns_the_bundles_hidden_states(data: dict) -> None:
    bundle = load_bundle(data["bundle"])
    adapter = S3PRLUpstream(str(data["bundle"]))
    dims = bundle.upstream.hidden_dims
    assert adapter.layers == [i for i, d in enumerate(dims) if d == dims[-1]]
    assert adapter.get_downsample_rates("hidden_states") == 320
    waves = data["waves"][:3]
    with torch.inference_mode():
        out = adapter(waves)
    assert len(out["hidden_states"]) == len(adapter.layers)
    for b, wave in enumerate(waves):
        alone = _alone(bundle.upstream, wave)
        n = alone[0].shape[0]
        assert int(out["hidden_states_lengths"][b]) == n
        for h, layer in zip(out["hidden_states"], adapter.layers, strict=True):
            torch.testing.assert_close(h[b, :n], alone[layer])
            assert not h[b, n:].any()  # padding frames are zeros


def test_s3prl_featurizer_runs_on_the_adapter(data: dict) -> None:
    interfaces = pytest.importorskip(
        "s3prl.upstream.interfaces",
        reason="s3prl is not installed (pip install -e '.[s3prl]')",
    )
    from model_training.models.ctc import WeightedLayerSum

    adapter = S3PRLUpstream(str(data["bundle"]))
    featurizer = interfaces.Featurizer(adapter, upstream_device="cpu")
    assert featurizer.downsample_rate == 320
    waves = data["waves"][:3]
    with torch.inference_mode():
        outputs = adapter(waves)
        features = featurizer(waves, outputs)
        ours = WeightedLayerSum(range(len(adapter.layers)))(outputs["hidden_states"])
    for b, lengths in enumerate(outputs["hidden_states_lengths"].tolist()):
        torch.testing.assert_close(features[b][:lengths], ours[b, :lengths])
