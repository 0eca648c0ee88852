"""The light log-mel front-end: HuBERT's frames, padding-exact, streamable, learnable."""

from __future__ import annotations

import pytest
import torch

from model_training.models.cnn import HUBERT_CONV_LAYERS, conv_output_lengths
from model_training.models.frontend import (
    LogMelFrontend,
    LogMelFrontendConfig,
    stream_frames,
)
from model_training.models.student import (
    LSTMStudentConfig,
    lstm_student_paper_fast,
    lstm_student_small_fast,
    lstm_student_tiny,
)
from model_training.testing import TINY_LOGMEL, build_tiny_bundle


def _tiny_fast(**overrides):
    return lstm_student_tiny(frontend="logmel", logmel=dict(TINY_LOGMEL), **overrides).eval()


@pytest.mark.parametrize(
    "conv_layers", [[(256, 3, 1), (256, 3, 2)], [(64, 5, 2), (64, 3, 1), (64, 3, 1)]]
)
def test_frame_count_and_alignment_equal_hubert_cnn(conv_layers) -> None:
    frontend = LogMelFrontend(LogMelFrontendConfig(conv_layers=conv_layers))
    lengths = torch.cat([torch.arange(0, 3000), torch.tensor([16000, 160000, 160321])])
    expected = conv_output_lengths(lengths, HUBERT_CONV_LAYERS)
    assert torch.equal(frontend.output_lengths(lengths), expected)
    assert frontend.hop_length == 320 and frontend.receptive_field == 400
    # the frames forward actually produces, for lengths around frame boundaries
    for n in (400, 719, 720, 1039, 2999):
        feats, frames = frontend(torch.randn(1, n))
        assert feats.shape[1] == int(frames[0]) == int(expected[n])


def test_paper_fast_student_size_and_layout() -> None:
    model = lstm_student_paper_fast()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = sum(p.numel() for p in model.head.parameters())
    assert 13.0e6 <= params - head <= 14.5e6  # 4 BiLSTM x 384 dominate; the CNN's 4.2M are gone
    assert model.hidden_dims == [512, 768, 768, 768, 768]
    assert model.frame_rate == 50.0
    assert model.layer_names[0] == "cnn_proj"


@pytest.mark.parametrize("bidirectional", [True, False])
def test_padding_never_changes_valid_frames(rng: torch.Generator, bidirectional: bool) -> None:
    model = _tiny_fast(bidirectional=bidirectional)
    lengths = [12345, 4000, 400]
    waves = [torch.randn(n, generator=rng) for n in lengths]
    batch = torch.full((3, max(lengths)), 5.0)  # garbage in the padding must not leak
    for i, w in enumerate(waves):
        batch[i, : len(w)] = w
    with torch.no_grad():
        batched = model(batch, torch.tensor(lengths))
        for i, w in enumerate(waves):
            single = model(w[None])
            t = int(single.lengths[0])
            assert int(batched.lengths[i]) == t
            for hb, hs in zip(batched.hidden_states, single.hidden_states, strict=True):
                torch.testing.assert_close(hb[i, :t], hs[0], atol=1e-5, rtol=1e-5)
                assert hb[i, t:].abs().sum() == 0


def test_frame_t_reads_no_sample_after_320t_plus_400(rng: torch.Generator) -> None:
    frontend = LogMelFrontend(LogMelFrontendConfig(**TINY_LOGMEL)).eval()
    wave = torch.randn(1, 8000, generator=rng)
    changed = wave.clone()
    changed[0, 6000:] = torch.randn(2000, generator=rng)
    with torch.no_grad():
        a, b = frontend(wave)[0], frontend(changed)[0]
    safe = (6000 - 400) // 320 + 1  # frames whose window ends at or before sample 6000
    torch.testing.assert_close(a[0, :safe], b[0, :safe])
    assert not torch.allclose(a[0, safe], b[0, safe])


def test_streaming_chunk_by_chunk_equals_offline(rng: torch.Generator) -> None:
    frontend = LogMelFrontend(LogMelFrontendConfig(**TINY_LOGMEL)).eval()
    wave = torch.randn(9137, generator=rng)
    with torch.no_grad():
        offline, frames = frontend(wave[None])
        sizes = [100, 333, 1, 2000, 57, 4000, 2646]  # odd sizes, some below one hop
        chunks = list(torch.split(wave, sizes))
        streamed = stream_frames(frontend, chunks)
    assert streamed.shape[0] == int(frames[0])
    torch.testing.assert_close(streamed, offline[0], atol=1e-5, rtol=1e-5)


def test_logmel_runs_in_float32_under_bf16_autocast(rng: torch.Generator) -> None:
    model = _tiny_fast()
    wave = torch.randn(1, 4000, generator=rng)
    mel = model.feature_extractor.log_mel
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert mel(wave).dtype == torch.float32
        out = model(wave)
    assert torch.isfinite(out.hidden_states[-1].float()).all()


def test_config_validation_and_round_trip() -> None:
    cfg = LSTMStudentConfig(frontend="logmel", logmel={"n_mels": 40})
    assert cfg.logmel["n_mels"] == 40 and cfg.logmel["conv_layers"] == [[256, 3, 1], [256, 3, 2]]
    assert LSTMStudentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="frontend must be"):
        LSTMStudentConfig(frontend="mfcc")
    with pytest.raises(ValueError, match="need frontend 'logmel'"):
        LSTMStudentConfig(logmel={"n_mels": 40})
    with pytest.raises(ValueError, match="320 samples"):
        LSTMStudentConfig(frontend="logmel", logmel={"conv_layers": [[8, 3, 1]]})
    with pytest.raises(ValueError, match="win_length"):
        LogMelFrontendConfig(win_length=512, n_fft=512)
    with pytest.raises(ValueError, match="unknown"):
        LogMelFrontendConfig.from_dict({"mels": 3})
    with pytest.raises(ValueError, match="at least 400 samples"):
        _tiny_fast()(torch.zeros(1, 399))
    with pytest.raises(ValueError, match="init_cnn_from_teacher"):
        _tiny_fast().init_cnn_from(torch.nn.Module())


def test_fast_student_learns_and_gradients_reach_the_frontend(rng: torch.Generator) -> None:
    """A few optimiser steps on a frame-classification task lower the loss; every front-end
    parameter gets a gradient (nothing is detached in the log-mel path)."""
    torch.manual_seed(0)
    model = lstm_student_small_fast(
        num_classes=4,
        logmel={"n_mels": 24, "conv_layers": [[16, 3, 1], [16, 3, 2]]},
        proj_dim=16,
        num_layers=1,
        hidden_size=16,
        dropout=0.0,
    )
    # frames of a tone at one of 4 pitches; the label is the pitch
    t = torch.arange(16000) / 16000
    pitches = torch.randint(0, 4, (4, 5), generator=rng)
    freqs = torch.tensor([200.0, 500.0, 1200.0, 3000.0])[pitches].repeat_interleave(3200, dim=1)
    wave = 0.3 * torch.sin(2 * torch.pi * freqs * t)
    labels = pitches.repeat_interleave(10, dim=1)[:, :49]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model(wave)
        loss = torch.nn.functional.cross_entropy(out.logits.transpose(1, 2), labels)
        opt.zero_grad()
        loss.backward()
        if not losses:
            for name, p in model.feature_extractor.named_parameters():
                assert p.grad is not None and p.grad.abs().sum() > 0, name
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]


# --- the light student through distillation, the bundle and the service --------------------


def test_bundle_round_trip_fp32_and_int8(tmp_path, rng: torch.Generator) -> None:
    from model_training.bundle import load_bundle

    wave = 0.1 * torch.randn(2, 9000, generator=rng)
    lengths = torch.tensor([9000, 5000])
    outputs = {}
    for quantize in (None, "int8"):
        path = build_tiny_bundle(tmp_path / str(quantize), frontend="logmel", quantize=quantize)
        bundle = load_bundle(path)
        assert bundle.config["upstream"]["config"]["frontend"] == "logmel"
        assert bundle.frame_rate == 50.0
        with torch.no_grad():
            up, log_probs = bundle.model(wave, lengths)
        assert up.lengths.tolist() == [27, 15]  # HuBERT's frame counts
        outputs[quantize] = log_probs
    torch.manual_seed(0)  # the same random init as build_tiny_bundle(seed=0)
    original = lstm_student_tiny(frontend="logmel", logmel=dict(TINY_LOGMEL), num_classes=0)
    loaded = load_bundle(tmp_path / "None").upstream
    for (k, a), b in zip(original.state_dict().items(), loaded.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, msg=k)
    # int8 quantizes the LSTMs/Linears only: close to fp32, not equal
    torch.testing.assert_close(outputs["int8"], outputs[None], atol=0.05, rtol=0.0)


async def test_service_serves_a_logmel_bundle(tmp_path) -> None:
    from tests.test_app_support import make_wav, serve, test_settings, wav_file

    path = build_tiny_bundle(tmp_path / "fast", frontend="logmel")
    async with serve(test_settings(path)) as (_, client):
        r = await client.post(
            "/v1/audio/transcriptions",
            files={"file": wav_file("a.wav", make_wav(1.5))},
            data={"response_format": "verbose_json"},
        )
        assert r.status_code == 200, r.text
        r = await client.post(
            "/v1/audio/embeddings",
            files={"file": wav_file("a.wav", make_wav(1.0))},
            data={"layers": "all"},
        )
        assert r.status_code == 200, r.text
        layers = r.json()["data"][0]["layers"]
        assert len(layers) == 3 and all(layer["shape"][0] == 49 for layer in layers)


def test_distill_trains_and_reloads_a_logmel_student(tmp_path) -> None:
    from model_training.training.distill import DistillConfig, load_student_checkpoint, run
    from model_training.training.fixtures import write_tiny_teacher, write_tone_corpus

    manifest = write_tone_corpus(tmp_path / "corpus", 4, 0.6, 1.0)
    teacher = write_tiny_teacher(tmp_path / "teacher", num_classes=20)

    def config(init_cnn: bool) -> DistillConfig:
        return DistillConfig.from_dict(
            {
                "run_dir": str(tmp_path / f"run{init_cnn}"),
                "data": {
                    "train_manifest": str(manifest),
                    "crop_seconds": 0.5,
                    "max_batch_size": 2,
                },
                "teacher": {"dir": str(teacher)},
                "student": {
                    "factory": "lstm_tiny",
                    "overrides": {"frontend": "logmel", "logmel": dict(TINY_LOGMEL)},
                    "init_cnn_from_teacher": init_cnn,
                },
                "loss": {"ce": 1.0, "dkd": 1.0, "beta": 4.0},
                "optim": {"max_steps": 3},
                "eval_every": 1000,
                "checkpoint_every": 1000,
                "oom_check": False,
                "progress": False,
                "tensorboard": False,
                "num_threads": 1,
            }
        )

    with pytest.raises(ValueError, match="init_cnn_from_teacher"):
        run(config(True))
    student = load_student_checkpoint(run(config(False)))
    assert student.config.frontend == "logmel"
    assert student.config.logmel["n_mels"] == 16


def test_demo_cnn_config_differs_from_dkd_b4_only_in_the_front_end() -> None:
    from pathlib import Path

    import yaml

    from model_training.training.distill import DistillConfig, build_student

    root = Path(__file__).resolve().parents[1] / "configs" / "distill"
    cnn, b4 = (
        yaml.safe_load((root / f"{n}.yaml").read_text()) for n in ("demo_dkd_cnn", "demo_dkd_b4")
    )
    assert cnn.pop("student") != b4.pop("student")
    assert cnn.pop("run_dir") != b4.pop("run_dir")
    assert cnn == b4  # same data, teacher, loss and schedule: the comparison is the front-end
    fronts = {}
    for name in ("demo_dkd_cnn", "demo_dkd_b4"):
        cfg = DistillConfig.from_yaml(root / f"{name}.yaml")
        student = build_student(cfg.student.factory, cfg.student.overrides, num_classes=100)
        fronts[name] = (student.config.frontend, cfg.student.init_cnn_from_teacher)
    assert fronts == {"demo_dkd_cnn": ("cnn", True), "demo_dkd_b4": ("logmel", False)}
