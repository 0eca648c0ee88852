import pytest
import torch
from torch import nn
from transformers import HubertConfig, HubertModel

from model_training.models.cnn import MaskedChannelNorm, conv_output_lengths
from model_training.models.student import (
    TINY_CONV_LAYERS,
    LSTMStudent,
    LSTMStudentConfig,
    lstm_student_paper,
    lstm_student_tiny,
)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_paper_student_size_and_layout() -> None:
    model = lstm_student_paper()
    assert 17.6e6 <= _params(model) <= 18.8e6
    assert model.hidden_dims == [512, 768, 768, 768, 768]
    assert model.frame_rate == 50.0
    assert model.feature_extractor.receptive_field == 400
    assert model.feature_extractor.hop_length == 320


def test_forward_shapes_and_lengths(rng: torch.Generator) -> None:
    model = lstm_student_tiny(num_classes=7).eval()
    lengths = torch.tensor([16000, 9000, 400])
    wave = torch.randn(3, 16000, generator=rng)
    out = model(wave, lengths)
    assert out.lengths.tolist() == [49, 27, 1]
    assert out.lengths.tolist() == model.frame_lengths(lengths).tolist()
    assert len(out.hidden_states) == 3
    for h, d in zip(out.hidden_states, model.hidden_dims, strict=True):
        assert h.shape == (3, 49, d)
    assert out.logits is not None and out.logits.shape == (3, 49, 7)
    # padded frames hold zeros
    assert out.hidden_states[-1][1, 27:].abs().sum() == 0


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("conv_norm", ["group", "layer"])
def test_padding_never_changes_valid_frames(
    rng: torch.Generator, bidirectional: bool, conv_norm: str
) -> None:
    model = lstm_student_tiny(bidirectional=bidirectional, conv_norm=conv_norm).eval()
    lengths = [12345, 4000, 800]
    waves = [torch.randn(n, generator=rng) for n in lengths]
    batch = torch.zeros(3, max(lengths))
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
        batch[i, len(w) :] = 5.0  # garbage in the padding must not leak into valid frames
    with torch.no_grad():
        batched = model(batch, torch.tensor(lengths))
        for i, w in enumerate(waves):
            single = model(w[None], None)
            t = int(single.lengths[0])
            assert int(batched.lengths[i]) == t
            for hb, hs in zip(batched.hidden_states, single.hidden_states, strict=True):
                torch.testing.assert_close(hb[i, :t], hs[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                batched.logits[i, :t], single.logits[0], atol=1e-5, rtol=1e-5
            )


def test_causal_student_does_not_look_ahead(rng: torch.Generator) -> None:
    model = lstm_student_tiny(bidirectional=False, conv_norm="layer").eval()
    wave = torch.randn(1, 8000, generator=rng)
    changed = wave.clone()
    changed[0, 6000:] = torch.randn(2000, generator=rng)
    with torch.no_grad():
        a, b = model(wave).hidden_states[-1], model(changed).hidden_states[-1]
    # frames whose receptive field ends before sample 6000 are unchanged
    safe = int(conv_output_lengths(torch.tensor([6000]), TINY_CONV_LAYERS)[0])
    torch.testing.assert_close(a[0, :safe], b[0, :safe])
    assert not torch.allclose(a[0, safe:], b[0, safe:])


@pytest.mark.parametrize("grad", [True, False])
def test_masked_channel_norm_equals_group_norm_on_valid_part(
    rng: torch.Generator, grad: bool
) -> None:
    x = torch.randn(2, 6, 50, generator=rng)
    ref = nn.GroupNorm(6, 6)
    nn.init.normal_(ref.weight)
    nn.init.normal_(ref.bias)
    ours = MaskedChannelNorm(6)
    ours.load_state_dict(ref.state_dict())
    padded = torch.cat([x, torch.full((2, 6, 7), 9.0)], dim=2)  # 7 padded steps of garbage
    padded[1, :, 31:] = 9.0  # row 1 holds 31 valid steps
    mask = torch.arange(57)[None, :] < torch.tensor([[50], [31]])
    with torch.set_grad_enabled(grad):
        out = ours(padded.clone(), mask)
        torch.testing.assert_close(out[:1, :, :50], ref(x[:1]))
        torch.testing.assert_close(out[1:, :, :31], ref(x[1:, :, :31]))
        assert out[0, :, 50:].abs().sum() == 0 and out[1, :, 31:].abs().sum() == 0
        torch.testing.assert_close(ours(x, torch.ones(2, 50, dtype=torch.bool)), ref(x))


def test_config_validation_and_round_trip() -> None:
    cfg = LSTMStudentConfig(num_layers=2, hidden_size=8, bidirectional=False)
    assert LSTMStudentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="hidden_size"):
        LSTMStudentConfig(hidden_size=0)
    with pytest.raises(ValueError, match="conv_norm"):
        LSTMStudentConfig(conv_norm="batch")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown"):
        LSTMStudentConfig.from_dict({"hiddn_size": 3})
    with pytest.raises(ValueError, match="at least 400 samples"):
        lstm_student_tiny()(torch.zeros(1, 399))


def _tiny_group_norm_hubert() -> HubertModel:
    """A transformers HuBERT with the tiny student's conv layout and a group-norm CNN."""
    return HubertModel(
        HubertConfig(
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            conv_dim=[c for c, _, _ in TINY_CONV_LAYERS],
            conv_kernel=[k for _, k, _ in TINY_CONV_LAYERS],
            conv_stride=[s for _, _, s in TINY_CONV_LAYERS],
            feat_extract_norm="group",
        )
    )


def test_init_cnn_from_hf_hubert_copies_front_end(rng: torch.Generator) -> None:
    hf = _tiny_group_norm_hubert().eval()
    student: LSTMStudent = lstm_student_tiny().eval()
    student.init_cnn_from(hf)
    wave = torch.randn(1, 5000, generator=rng)
    with torch.no_grad():
        ref = hf.feature_extractor(wave).transpose(1, 2)
        ours, _ = student.feature_extractor(wave)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
        # projection width matches (16 -> 16): the projection is copied too
        proj_ref = hf.feature_projection(ref)
        torch.testing.assert_close(student(wave).hidden_states[0], proj_ref, atol=1e-5, rtol=1e-5)


def test_layer_norm_student_takes_only_the_convolutions_of_a_group_norm_teacher() -> None:
    hf = _tiny_group_norm_hubert()
    causal = lstm_student_tiny(conv_norm="layer", bidirectional=False)
    norms_before = {k: v.clone() for k, v in causal.state_dict().items() if "layer_norm" in k}
    causal.init_cnn_from(hf)
    source = hf.feature_extractor.state_dict()
    for i in range(len(TINY_CONV_LAYERS)):
        key = f"conv_layers.{i}.conv.weight"
        torch.testing.assert_close(causal.feature_extractor.state_dict()[key], source[key])
    for k, v in norms_before.items():  # its own layer norms stay as they were
        torch.testing.assert_close(causal.state_dict()[k], v)
    with pytest.raises(ValueError, match="missing"):  # strict copy names what is missing
        causal.feature_extractor.load_from_hf_feature_encoder(hf.feature_extractor)
