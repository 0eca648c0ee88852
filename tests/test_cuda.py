"""The CUDA paths, on a real GPU: the batcher in fp16, a real out-of-memory split, AMP
distillation and CTC fine-tuning steps, the light front-end under autocast.

Marked `cuda`: skipped (with the reason) where torch sees no GPU (tests/conftest.py), run by
`scripts/gpu_check.sh` (`pytest -m cuda`). Every test here compares against the CPU or an
unbatched run, so a wrong kernel or a dtype slip fails, not only a crash.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from app.batcher import DynamicBatcher
from app.inference import make_run_batch
from model_training.bundle import load_bundle
from model_training.testing import build_tiny_bundle

pytestmark = pytest.mark.cuda

DEVICE = "cuda"


def _waves(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [0.1 * torch.randn(4000 + 1700 * i, generator=g) for i in range(n)]


@pytest.mark.parametrize("frontend", ["cnn", "logmel"])
async def test_batcher_fp16_batched_equals_one_at_a_time_and_cpu(tmp_path, frontend) -> None:
    bundle_dir = build_tiny_bundle(tmp_path / "b", frontend=frontend)
    gpu = load_bundle(bundle_dir, DEVICE)
    cpu = load_bundle(bundle_dir, "cpu")
    waves = _waves(6)

    async def through(max_batch: int) -> list:
        b = DynamicBatcher(make_run_batch(gpu), max_batch_size=max_batch, device=DEVICE, fp16=True)
        b.start()
        try:
            return await asyncio.gather(*(b.submit(w) for w in waves))
        finally:
            await b.stop()

    batched, single = await through(8), await through(1)
    assert gpu.model.training is False
    for w, rb, rs in zip(waves, batched, single, strict=True):
        with torch.inference_mode():
            ref_up, ref_lp = cpu.model(w[None], None)
        assert rb.log_probs.dtype == torch.float32 and rb.log_probs.device.type == "cpu"
        torch.testing.assert_close(rb.log_probs, rs.log_probs, atol=2e-2, rtol=0)
        torch.testing.assert_close(rb.log_probs, ref_lp[0], atol=5e-2, rtol=0)
        for hb, href in zip(rb.hidden_states, ref_up.hidden_states, strict=True):
            torch.testing.assert_close(hb, href[0], atol=5e-2, rtol=5e-2)


async def test_real_cuda_oom_splits_the_batch_and_answers_all() -> None:
    """Each item allocates a third of the free GPU memory: a batch of 4 cannot fit, 2 can."""
    torch.cuda.empty_cache()
    free, _ = torch.cuda.mem_get_info()
    per_item = int(free * 0.3) // 4  # float32 elements
    sizes: list[int] = []

    def run_batch(waveforms: torch.Tensor, lengths: torch.Tensor) -> list[float]:
        block = torch.empty(waveforms.shape[0] * per_item, device=DEVICE)  # OOMs for real
        block.fill_(1.0)
        sizes.append(waveforms.shape[0])
        out = [
            float(w[:n].sum() + block[0]) for w, n in zip(waveforms, lengths.tolist(), strict=True)
        ]
        del block
        return out

    b = DynamicBatcher(run_batch, max_batch_size=8, max_wait_ms=50, device=DEVICE)
    b.start()
    try:
        waves = _waves(8, seed=1)
        results = await asyncio.gather(*(b.submit(w) for w in waves))
    finally:
        await b.stop()
    for w, r in zip(waves, results, strict=True):
        assert r == pytest.approx(float(w.sum()) + 1.0, rel=1e-4)
    assert b.stats.oom_splits >= 1
    assert max(sizes) <= 3


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_amp_distillation_steps_lower_the_loss(tmp_path, precision) -> None:
    from model_training.training.distill import DistillConfig, run
    from model_training.training.fixtures import write_tiny_teacher, write_tone_corpus

    manifest = write_tone_corpus(tmp_path / "corpus", 6, 0.6, 1.0)
    teacher = write_tiny_teacher(tmp_path / "teacher", num_classes=20)
    cfg = DistillConfig.from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "device": DEVICE,
            "data": {"train_manifest": str(manifest), "crop_seconds": 0.5, "max_batch_size": 3},
            "teacher": {"dir": str(teacher)},
            "student": {"factory": "lstm_tiny", "overrides": {"dropout": 0.0}},
            "loss": {"ce": 1.0, "dkd": 1.0, "beta": 4.0},
            "optim": {"lr": 0.01, "max_steps": 40, "warmup_ratio": 0.1, "precision": precision},
            "log_every": 1,
            "eval_every": 1000,
            "checkpoint_every": 1000,
            "oom_check": True,
            "progress": False,
            "tensorboard": False,
        }
    )
    run(cfg)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "train_log.jsonl").open()]
    assert len(losses) == 40 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_amp_ctc_head_overfits_on_gpu(tmp_path, precision) -> None:
    from model_training.data.audio import load_audio
    from model_training.data.manifest import ManifestEntry, write_manifest
    from model_training.training.finetune_ctc import FinetuneConfig, run

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (make setup-apt)")
    import soundfile as sf

    entries = []
    for i, text in enumerate(["hello world", "seven green apples", "call me tomorrow"]):
        raw = tmp_path / f"raw{i}.wav"
        subprocess.run(["espeak-ng", "-w", str(raw), text], check=True, capture_output=True)
        wave = load_audio(raw)
        sf.write(tmp_path / f"u{i}.wav", wave.numpy(), 16000, subtype="FLOAT")
        entries.append(ManifestEntry(f"u{i}.wav", wave.numel(), text.upper(), "espeak"))
    manifest = write_manifest(tmp_path / "m.tsv", entries)
    tiny = Path(__file__).resolve().parents[1] / "configs" / "ctc" / "tiny.yaml"
    cfg = FinetuneConfig.from_yaml(
        tiny,
        [f"device={json.dumps(DEVICE)}", f"precision={json.dumps(precision)}"],
        train_manifest=str(manifest),
        dev_manifest=str(manifest),
        run_dir=str(tmp_path / "run"),
    )
    metrics = json.loads((run(cfg) / "metrics.json").read_text())
    assert metrics["best"]["cer"] < 0.1, metrics["evaluations"]


def test_logmel_student_on_gpu_under_fp16_matches_cpu() -> None:
    from model_training.models.student import lstm_student_paper_fast

    torch.manual_seed(0)
    model = lstm_student_paper_fast(num_classes=0).eval()
    waves = torch.zeros(2, 48000)
    lengths = torch.tensor([48000, 30000])
    waves[0] = 0.1 * torch.randn(48000)
    waves[1, :30000] = 0.1 * torch.randn(30000)
    with torch.inference_mode():
        ref = model(waves, lengths)
        gpu = model.to(DEVICE)
        with torch.autocast(DEVICE, dtype=torch.float16):
            out = gpu(waves.to(DEVICE), lengths.to(DEVICE))
            single = gpu(waves[1:, :30000].to(DEVICE))
    assert out.lengths.tolist() == ref.lengths.tolist()
    t1 = int(ref.lengths[1])
    for h_gpu, h_ref, h_single in zip(
        out.hidden_states, ref.hidden_states, single.hidden_states, strict=True
    ):
        torch.testing.assert_close(h_gpu.float().cpu(), h_ref, atol=5e-2, rtol=5e-2)
        torch.testing.assert_close(
            h_gpu[1, :t1].float().cpu(), h_single[0].float().cpu(), atol=2e-2, rtol=2e-2
        )
