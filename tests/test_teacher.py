"""HuBERT teacher: agreement with transformers, padding parity, the three loaders (HF dir +
head, fairseq checkpoint, k-means head) on tiny random models, and frame counts."""

from __future__ import annotations

import argparse

import pytest
import torch
from transformers import HubertModel

from model_training.models.student import lstm_student_tiny
from model_training.models.teacher import (
    HubertTeacher,
    KMeansHead,
    ProjectionHead,
    load_head,
    tiny_hubert_config,
)

CONV_SPEC = "[(16,10,5)] + [(16,3,2)] * 4 + [(16,2,2)] * 2"


def _perturb(module: torch.nn.Module, seed: int) -> None:
    """Random offsets on every parameter, so a swapped or missed tensor changes the output
    (fresh LayerNorms are all ones and zeros and would hide mapping mistakes)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))


def _teacher(large: bool = False, num_classes: int = 8, seed: int = 0) -> HubertTeacher:
    torch.manual_seed(seed)
    cfg = (
        tiny_hubert_config(feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
        if large
        else tiny_hubert_config()
    )
    hubert = HubertModel(cfg)
    head = ProjectionHead(cfg.hidden_size, 8, num_classes)
    teacher = HubertTeacher(hubert, head)
    _perturb(teacher, seed + 1)
    return teacher


def _waves(lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    batch = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        batch[i, :n] = torch.randn(n, generator=g)
    return batch, torch.tensor(lengths)


def _assert_same_output(a, b, atol=1e-5) -> None:
    assert len(a.hidden_states) == len(b.hidden_states)
    torch.testing.assert_close(a.lengths, b.lengths)
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-4)
    if a.logits is None:
        assert b.logits is None
    else:
        torch.testing.assert_close(a.logits, b.logits, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("large", [False, True])
def test_matches_transformers_on_one_utterance(large):
    teacher = _teacher(large)
    wav, lengths = _waves([5000])
    out = teacher(wav, lengths)
    ref = teacher.hubert(wav, output_hidden_states=True)
    assert len(out.hidden_states) == teacher.config.num_hidden_layers + 1
    for i in range(len(out.hidden_states) - 1):
        torch.testing.assert_close(out.hidden_states[i], ref.hidden_states[i], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.hidden_states[-1], ref.last_hidden_state, atol=1e-5, rtol=1e-4)
    # the head: cosine(final_proj(h_last), e_c) / 0.1
    head = teacher.head
    proj = head.final_proj(ref.last_hidden_state)
    cos = torch.nn.functional.cosine_similarity(
        proj.unsqueeze(2), head.label_embeddings[None, None], dim=-1
    )
    torch.testing.assert_close(out.logits, cos / 0.1, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("large", [False, True])
def test_padded_batch_equals_each_utterance_alone(large):
    teacher = _teacher(large)
    lengths = [6400, 3000, 401]
    wav, lens = _waves(lengths)
    out = teacher(wav, lens)
    assert out.logits.shape == (3, int(out.lengths.max()), 8)
    assert out.lengths.tolist() == teacher.frame_lengths(lens).tolist()
    for i, n in enumerate(lengths):
        alone = teacher(wav[i : i + 1, :n])
        t = int(alone.lengths[0])
        assert t == int(out.lengths[i])
        for x, y in zip(out.hidden_states, alone.hidden_states, strict=True):
            torch.testing.assert_close(x[i, :t], y[0], atol=1e-5, rtol=1e-4)
            assert x[i, t:].abs().max() == 0 if x.shape[1] > t else True
        torch.testing.assert_close(out.logits[i, :t], alone.logits[0], atol=1e-4, rtol=1e-4)


def test_transformers_batched_forward_depends_on_padding():
    # why the masked GroupNorm exists: HF's own batched Base forward changes with padding
    teacher = _teacher(large=False)
    wav, _ = _waves([6400, 3000])
    hf_alone = teacher.hubert(wav[1:2, :3000]).last_hidden_state
    hf_padded = teacher.hubert(wav).last_hidden_state[1:2, : hf_alone.shape[1]]
    assert not torch.allclose(hf_alone, hf_padded, atol=1e-3)


def test_teacher_is_frozen():
    teacher = _teacher()
    teacher.train()
    assert not teacher.training and not teacher.hubert.training
    assert not any(p.requires_grad for p in teacher.parameters())
    wav, lens = _waves([2000])
    assert not teacher(wav, lens).logits.requires_grad


def test_rejects_too_short_input():
    with pytest.raises(ValueError, match="400"):
        _teacher()(torch.zeros(1, 399))


def test_hf_dir_round_trip(tmp_path):
    teacher = _teacher()
    wav, lens = _waves([4000, 2500])
    want = teacher(wav, lens)
    teacher.save(tmp_path / "t")
    assert (tmp_path / "t" / "config.json").exists()
    assert (tmp_path / "t" / "model.safetensors").exists()
    loaded = HubertTeacher.from_hf_dir(tmp_path / "t")
    _assert_same_output(loaded(wav, lens), want, atol=1e-6)
    assert loaded.head_info() == teacher.head_info()
    # the same directory with an explicit head file, and without any head
    explicit = HubertTeacher.from_hf_dir(tmp_path / "t", tmp_path / "t" / "head.safetensors")
    torch.testing.assert_close(explicit(wav, lens).logits, want.logits)
    (tmp_path / "t" / "head.safetensors").unlink()
    assert HubertTeacher.from_hf_dir(tmp_path / "t")(wav, lens).logits is None


def test_normalize_waveform_flag_from_preprocessor_config(tmp_path):
    teacher = _teacher()
    teacher.hubert.save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text('{"do_normalize": true}')
    loaded = HubertTeacher.from_hf_dir(tmp_path)
    assert loaded.normalize_waveform and loaded.head is None
    wav, lens = _waves([3000, 2000])
    scaled = wav * 7.0 + 0.0
    out_a, out_b = loaded(wav, lens), loaded(scaled, lens)
    torch.testing.assert_close(
        out_a.hidden_states[-1], out_b.hidden_states[-1], atol=1e-4, rtol=1e-4
    )


# -- fairseq ---------------------------------------------------------------------------

_HF_TO_FAIRSEQ = [
    ("feature_projection.projection.", "post_extract_proj."),
    ("feature_projection.layer_norm.", "layer_norm."),
    (
        "encoder.pos_conv_embed.conv.parametrizations.weight.original0",
        "encoder.pos_conv.0.weight_g",
    ),
    (
        "encoder.pos_conv_embed.conv.parametrizations.weight.original1",
        "encoder.pos_conv.0.weight_v",
    ),
    ("encoder.pos_conv_embed.conv.bias", "encoder.pos_conv.0.bias"),
    (".attention.", ".self_attn."),
    (".feed_forward.intermediate_dense.", ".fc1."),
    (".feed_forward.output_dense.", ".fc2."),
]


def _to_fairseq(teacher: HubertTeacher, specials: torch.Tensor, large: bool) -> dict:
    """Write the teacher as fairseq would have saved it (inverse key mapping, by hand)."""
    model = {}
    for key, value in teacher.hubert.state_dict().items():
        new = key
        if key == "masked_spec_embed":
            new = "mask_emb"
        elif key.startswith("feature_extractor.conv_layers."):
            idx = key.split(".")[2]
            kind, param = key.split(".")[3], key.split(".")[-1]
            if kind == "conv":
                new = f"feature_extractor.conv_layers.{idx}.0.{param}"
            else:  # group norm in block slot 2; layer norm wrapped as slot 2.1
                new = f"feature_extractor.conv_layers.{idx}.2.{'1.' if large else ''}{param}"
        elif key.startswith("encoder.layers.") and ".layer_norm." in key:
            new = key.replace(".layer_norm.", ".self_attn_layer_norm.")
        else:
            for a, b in _HF_TO_FAIRSEQ:
                new = new.replace(a, b)
        model[new] = value.clone()
    head = teacher.head
    model["final_proj.weight"] = head.final_proj.weight.clone()
    model["final_proj.bias"] = head.final_proj.bias.clone()
    model["label_embs_concat"] = torch.cat([specials, head.label_embeddings.detach()])
    cfg = teacher.config
    model_cfg = {
        "_name": "hubert",
        "extractor_mode": "layer_norm" if large else "default",
        "encoder_layers": cfg.num_hidden_layers,
        "encoder_embed_dim": cfg.hidden_size,
        "encoder_ffn_embed_dim": cfg.intermediate_size,
        "encoder_attention_heads": cfg.num_attention_heads,
        "activation_fn": "gelu",
        "conv_feature_layers": CONV_SPEC,
        "conv_bias": large,
        "layer_norm_first": large,
        "conv_pos": cfg.num_conv_pos_embeddings,
        "conv_pos_groups": cfg.num_conv_pos_embedding_groups,
        "final_dim": head.label_embeddings.shape[1],
        "logit_temp": 0.1,
    }
    return {"model": model, "cfg": {"model": model_cfg, "task": {"normalize": large}}}


@pytest.mark.parametrize("large", [False, True])
def test_fairseq_checkpoint_round_trip(tmp_path, large):
    teacher = _teacher(large)
    specials = torch.randn(4, 8)
    ckpt = _to_fairseq(teacher, specials, large)
    assert "encoder.layers.1.self_attn_layer_norm.weight" in ckpt["model"]
    torch.save(ckpt, tmp_path / "hubert.pt")
    loaded = HubertTeacher.from_fairseq_checkpoint(tmp_path / "hubert.pt")
    assert loaded.normalize_waveform == large
    assert loaded.num_classes == 8  # the 4 dictionary specials are dropped
    teacher.normalize_waveform = large
    wav, lens = _waves([4800, 3300])
    _assert_same_output(loaded(wav, lens), teacher(wav, lens), atol=1e-6)


def test_fairseq_checkpoint_with_args_namespace(tmp_path, caplog):
    """Old fairseq checkpoints keep their config in an argparse Namespace (allow-listed).
    Checkpoints naming other globals are refused: tests/test_fairseq_checkpoint.py."""
    teacher = _teacher()
    ckpt = _to_fairseq(teacher, torch.randn(4, 8), large=False)
    wav, lens = _waves([3000])
    want = teacher(wav, lens)

    old_style = {"model": ckpt["model"], "args": argparse.Namespace(**ckpt["cfg"]["model"])}
    torch.save(old_style, tmp_path / "old.pt")
    loaded = HubertTeacher.from_fairseq_checkpoint(tmp_path / "old.pt")
    _assert_same_output(loaded(wav, lens), want, atol=1e-6)


def test_fairseq_unknown_keys_are_reported(tmp_path):
    ckpt = _to_fairseq(_teacher(), torch.randn(4, 8), large=False)
    ckpt["model"]["encoder.layers.0.mystery.weight"] = torch.zeros(1)
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="mystery"):
        HubertTeacher.from_fairseq_checkpoint(tmp_path / "bad.pt")


# -- k-means head ----------------------------------------------------------------------


def test_kmeans_head_logits_and_round_trip(tmp_path):
    teacher = _teacher()
    codebook = torch.randn(5, teacher.config.hidden_size)
    teacher.with_kmeans_head(codebook, layer=1, temperature=2.0)
    assert teacher.head_info() == {
        "kind": "kmeans",
        "layer": 1,
        "num_classes": 5,
        "dim": 32,
        "temperature": 2.0,
    }
    wav, lens = _waves([4000, 2000])
    out = teacher(wav, lens)
    assert out.logits.shape == (2, int(out.lengths.max()), 5)
    want = -torch.cdist(out.hidden_states[1], codebook).pow(2) / 2.0
    mask = out.frame_mask()
    torch.testing.assert_close(out.logits[mask], want[mask], atol=1e-4, rtol=1e-4)

    teacher.head.save(tmp_path / "km.safetensors")
    head = load_head(tmp_path / "km.safetensors")
    assert isinstance(head, KMeansHead) and head.layer == 1 and head.temperature == 2.0
    teacher.save(tmp_path / "t")
    loaded = HubertTeacher.from_hf_dir(tmp_path / "t")
    _assert_same_output(loaded(wav, lens), out, atol=1e-6)
    with pytest.raises(ValueError, match="codebook dim"):
        teacher.with_kmeans_head(torch.randn(5, 7), layer=1)


# -- frame counts and the student -------------------------------------------------------


def test_teacher_and_student_frame_counts_agree_from_400_samples_to_20_s():
    teacher = _teacher()
    student = lstm_student_tiny().eval()
    every = torch.arange(400, 20 * 16000 + 1)
    t_frames = teacher.frame_lengths(every)
    torch.testing.assert_close(t_frames, student.frame_lengths(every))
    torch.testing.assert_close(t_frames, teacher.hubert._get_feat_extract_output_lengths(every))
    assert int(t_frames[0]) == 1 and int(t_frames[-1]) == 999  # 20 s -> 999 frames
    assert teacher.frame_rate == 50.0
    for n in (400, 719, 720, 16000, 16399, 20 * 16000):
        wav, lens = _waves([n])
        t_out, s_out = teacher(wav, lens), student(wav, lens)
        assert t_out.logits.shape[1] == s_out.logits.shape[1] == int(teacher.frame_lengths(lens))


def test_student_copies_the_teacher_cnn():
    teacher = _teacher()
    student = lstm_student_tiny().eval()
    student.init_cnn_from(teacher)
    wav, lens = _waves([5000, 3000])
    feats, frames = student.feature_extractor(wav, lens)
    want, want_frames = teacher._conv_features(wav, lens)
    torch.testing.assert_close(frames, want_frames)
    mask = torch.arange(feats.shape[1])[None] < frames[:, None]
    torch.testing.assert_close(feats[mask], want[mask], atol=1e-5, rtol=1e-4)
