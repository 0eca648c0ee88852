"""The benchmark scripts: their counting helpers, and a --quick smoke run of each script.

The smoke runs check the JSON each script writes (schema, consistency), never a timing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

BENCH_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import model_speed  # noqa: E402
import service_load  # noqa: E402

from model_training.macs import lstm_macs  # noqa: E402


def run_script(
    name: str, *args: str, timeout: int = 240, check: bool = True
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(BENCH_DIR / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert not check or proc.returncode == 0, proc.stderr[-3000:]
    return proc


def check_header(doc: dict, benchmark: str) -> None:
    assert doc["benchmark"] == benchmark
    assert doc["schema_version"] == 1
    machine = doc["machine"]
    for key in ("cpu_model", "logical_cores", "torch", "torch_threads"):
        assert machine[key] is not None, key


# --- counting helpers ----------------------------------------------------------------------


def test_lstm_macs_match_the_gate_matmuls() -> None:
    lstm = nn.LSTM(8, 4, num_layers=2, bidirectional=True)
    # layer 0: 4 gates x H x (D_in + H) x 2 directions; layer 1 reads 2H
    per_step = 4 * 4 * (8 + 4) * 2 + 4 * 4 * (8 + 4) * 2
    assert lstm_macs(lstm, steps=10) == per_step * 10


def test_count_macs_counts_conv_and_lstm_of_a_student() -> None:
    from model_training.models.student import lstm_student_tiny

    student = lstm_student_tiny(num_classes=0).eval()
    spec = model_speed.ModelSpec("tiny", "tiny", lambda: student, model_speed._call_student)
    x = torch.randn(1, 16000)
    counted_lstm = model_speed.flop_counter_counts_lstm()
    macs = model_speed.count_macs(spec, student, x, counted_lstm)
    # the first conv: 16 channels x kernel 10 x 3199 outputs, alone a lower bound
    assert macs["by_op"]["aten.convolution"] >= 16 * 10 * 3199
    frames = int(student.frame_lengths(torch.tensor([16000]))[0])
    h, p = student.config.hidden_size, student.config.proj_dim
    lstm_expected = frames * 2 * 4 * h * ((p + h) + (2 * h + h))
    if counted_lstm:
        assert macs["lstm_macs_analytic"] == 0
    else:
        assert macs["lstm_macs_analytic"] == pytest.approx(lstm_expected)
    assert macs["macs_per_audio_second"] >= macs["by_op"]["aten.convolution"] + lstm_expected


def test_ratios_pair_models_on_the_same_device_and_batch() -> None:
    def row(model: str, batch: int, samples: list[float]) -> dict:
        return {"model": model, "device": "cpu", "batch": batch, "samples_s": samples,
                "audio_s_per_wall_s": batch * 10 / sorted(samples)[len(samples) // 2]}  # fmt: skip

    results = [
        row("distilhubert", 1, [2.0, 2.0, 2.0]),
        row("hubert_base", 1, [6.0, 6.0, 6.0]),
        row("student_paper", 1, [1.0, 1.0, 4.0]),
        row("student_paper", 16, [8.0, 8.0, 8.0]),
    ]
    ratios = {(r["model"], r["batch"]): r for r in model_speed.compute_ratios(results)}
    paper = ratios[("student_paper", 1)]
    assert paper["vs_distilhubert"] == pytest.approx(2.0)
    assert paper["vs_hubert_base"] == pytest.approx(6.0)
    assert paper["vs_distilhubert_paired_range"] == pytest.approx([0.5, 2.0])
    assert "vs_distilhubert" not in ratios[("student_paper", 16)]  # no reference at batch 16


def test_ratios_against_the_reference_at_its_best_precision() -> None:
    def row(model: str, base: str, precision: str, seconds: float) -> dict:
        return {"model": model, "base": base, "precision": precision, "device": "cpu",
                "batch": 16, "samples_s": [seconds],
                "audio_s_per_wall_s": 160 / seconds}  # fmt: skip

    results = [
        row("distilhubert", "distilhubert", "fp32", 8.0),
        row("distilhubert_bf16", "distilhubert", "bf16", 4.0),
        row("distilhubert_int8", "distilhubert", "int8", 6.0),
        row("student_paper_fast", "student_paper_fast", "fp32", 2.0),
        row("student_paper_fast_bf16", "student_paper_fast", "bf16", 1.0),
    ]
    ratios = {r["model"]: r for r in model_speed.compute_ratios(results)}
    fast = ratios["student_paper_fast"]
    assert fast["vs_distilhubert"] == pytest.approx(4.0)  # fp32 vs fp32
    assert fast["vs_distilhubert_best"] == pytest.approx(2.0)  # vs bf16, the fastest
    assert fast["vs_distilhubert_best_precision"] == "bf16"
    assert ratios["student_paper_fast_bf16"]["vs_distilhubert_best"] == pytest.approx(4.0)
    assert ratios["student_paper_fast_bf16"]["precision"] == "bf16"


def test_precision_rows_share_the_base_model_and_its_macs() -> None:
    specs = model_speed.MODELS
    for base in model_speed.BASE_MODELS:
        assert specs[f"{base}_bf16"].build is specs[base].build
        assert specs[f"{base}_int8"].macs_from == base and specs[f"{base}_int8"].cpu_only
        assert specs[f"{base}_fp16"].cuda_only
    assert set(model_speed.DEFAULT_MODELS) <= set(specs)
    # the autocast call really runs the model under bf16 autocast
    seen = []
    spec = specs["student_demo_bf16"]

    class Probe(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(torch.is_autocast_enabled("cpu"))
            return x

    spec.call(Probe(), torch.zeros(1, 4))
    assert seen == [True]


def test_synth_audio_lengths_span_the_range() -> None:
    import io

    import soundfile as sf

    files = service_load.synth_audio(5, 2.0, 8.0)
    assert sorted(round(f.seconds, 3) for f in files) == [2.0, 3.5, 5.0, 6.5, 8.0]
    wave, rate = sf.read(io.BytesIO(files[0].data))
    assert rate == 16000 and wave.ndim == 1 and len(wave) == round(files[0].seconds * 16000)


def test_batch_stats_from_two_scrapes() -> None:
    before = {
        "hlstm_batch_size_sum": 10.0, "hlstm_batch_size_count": 10.0,
        "hlstm_batch_padding_ratio_sum": 0.0, "hlstm_batch_padding_ratio_count": 10.0,
        "hlstm_batch_padded_frames_sum": 1000.0, "hlstm_audio_seconds_total": 20.0,
    }  # fmt: skip
    after = {
        "hlstm_batch_size_sum": 22.0, "hlstm_batch_size_count": 13.0,
        "hlstm_batch_padding_ratio_sum": 0.6, "hlstm_batch_padding_ratio_count": 13.0,
        "hlstm_batch_padded_frames_sum": 3000.0, "hlstm_audio_seconds_total": 50.0,
    }  # fmt: skip
    stats = service_load.batch_stats(before, after, frame_rate=50.0)
    assert stats["mean_batch_size"] == pytest.approx(4.0)
    assert stats["mean_padding_ratio"] == pytest.approx(0.2)
    assert stats["padded_frame_share"] == pytest.approx(1 - 1500 / 2000)


# --- smoke runs of the scripts ---------------------------------------------------------------


def test_model_speed_quick(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    run_script(
        "model_speed.py", "--quick", "--models", "student_demo,student_paper_int8",
        "--batch-sizes", "1", "--devices", "cpu", "--memory", "off", "--out", str(out),
    )  # fmt: skip
    doc = json.loads(out.read_text())
    check_header(doc, "model_speed")
    assert doc["matmul_peak"]["cpu"]["gflops_best"] > 0
    assert doc["mac_counting"]["flop_counter_counts_lstm"] in (True, False)
    assert {r["model"] for r in doc["results"]} == {"student_demo", "student_paper_int8"}
    for r in doc["results"]:
        assert r["audio_s_per_wall_s"] > 0 and r["repeats"] >= 1
        assert r["fraction_of_matmul_peak"] > 0
        assert r["memory"] is None  # --memory off; both methods are tested below
    demo = doc["models"]["student_demo"]["macs"]
    assert demo["macs_per_audio_second"] > demo["by_op"]["aten.convolution"] > 0
    # the int8 model's MACs are counted on its fp32 original (quantized kernels are invisible)
    int8 = doc["models"]["student_paper_int8"]
    assert int8["macs"]["counted_model"] == "student_paper"
    assert int8["macs"]["macs_per_audio_second"] > demo["macs_per_audio_second"]
    assert (tmp_path / "speed.png").stat().st_size > 0


def test_cpu_memory_probe_sees_torch_allocations() -> None:
    # in a fresh process, as the benchmark runs it: in this one, memory freed by earlier
    # tests is reused without growing the RSS, so the probe could see almost nothing
    probe = model_speed.run_memory_probe("student_demo", batch=2, seconds=2.0, threads=1)
    if probe["peak_memory_mb"] is None:
        pytest.skip(probe["method"])
    # the CNN's first activation alone: 2 x 128 channels x 6399 steps x 4 bytes ~ 6.25 MiB
    assert probe["peak_memory_mb"] > 5
    assert probe["process_peak_rss_mb"] >= probe["rss_before_mb"]
    student = model_speed.MODELS["student_demo"].build()
    x = torch.randn(2, 32000)
    inline = model_speed.inline_cpu_memory(lambda: model_speed._call_student(student, x))
    assert inline["peak_memory_mb"] > 5


@pytest.mark.slow
@pytest.mark.timeout(1500)  # every model at every CPU precision, a memory probe process each
def test_model_speed_quick_all_models_with_memory(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    run_script(
        "model_speed.py", "--quick", "--devices", "cpu", "--memory", "subprocess",
        "--models", "all", "--out", str(out), timeout=1500,
    )  # fmt: skip
    doc = json.loads(out.read_text())
    cpu_models = {n for n, spec in model_speed.MODELS.items() if not spec.cuda_only}
    assert {r["model"] for r in doc["results"]} == cpu_models
    for r in doc["results"]:
        assert r["memory"]["peak_memory_mb"] > 0, r
    macs = {name: m["macs"]["macs_per_audio_second"] for name, m in doc["models"].items()}
    # same CNN; HuBERT Base has 10 more Transformer layers than DistilHuBERT
    assert macs["hubert_base"] > macs["distilhubert"] > macs["student_demo"]
    assert macs["student_paper_fast"] < 0.25 * macs["student_paper"]
    assert macs["student_paper_int8"] == macs["student_paper"]
    pairs = {(r["model"], r["batch"]): r for r in doc["ratios"]}
    assert pairs[("hubert_base", 1)]["vs_hubert_base"] == pytest.approx(1.0)


def test_profile_student_quick(tmp_path: Path) -> None:
    out = tmp_path / "profile.json"
    run_script(
        "profile_student.py", "--quick", "--models", "student_demo", "--batch-sizes", "1",
        "--variants", "inference_mode,always_pack,int8_dynamic", "--out", str(out),
    )  # fmt: skip
    doc = json.loads(out.read_text())
    check_header(doc, "profile_student")
    entry = doc["results"]["student_demo"]["batch_1"]
    shares = entry["stages"]["share"]
    assert {"cnn", "norm+projection", "lstm1", "head"} <= set(shares)
    assert sum(shares.values()) == pytest.approx(1.0, abs=0.05)
    variants = entry["variants"]
    assert set(variants) == {"baseline", "inference_mode", "always_pack", "int8_dynamic"}
    assert variants["baseline"]["outputs"]["bitwise_identical"]
    assert variants["inference_mode"]["outputs"]["bitwise_identical"]
    assert variants["always_pack"]["outputs"]["bitwise_identical"]
    # an approximation must not pass as identical
    assert not variants["int8_dynamic"]["outputs"]["bitwise_identical"]
    assert entry["top_ops"] and entry["top_ops"][0]["self_cpu_ms"] >= 0


@pytest.mark.slow
def test_service_load_quick(tmp_path: Path) -> None:
    from model_training.testing import build_tiny_bundle

    bundle = build_tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "load.json"
    run_script(
        "service_load.py", "--quick", "--model-dir", str(bundle), "--out", str(out),
        "--max-batch-sizes", "8,4",
    )  # fmt: skip
    doc = json.loads(out.read_text())
    check_header(doc, "service_load")
    assert doc["bundle"]["source"] == "given"
    levels = {(r["mode"], r["concurrency"]): r for r in doc["levels"]}
    modes = ("batch8", "batch4", "no_batching")
    assert set(levels) == {(m, c) for m in modes for c in (1, 4)}
    for r in levels.values():
        assert r["completed"] > 0 and not r["errors"]
        assert r["latency_s"]["p50"] <= r["latency_s"]["p99"]
    # the no-batching server never batches; the batching ones report batch sizes from /metrics
    assert levels[("no_batching", 4)]["mean_batch_size"] == pytest.approx(1.0)
    assert levels[("batch8", 4)]["mean_batch_size"] >= 1.0
    assert [(c["concurrency"], c["max_batch_size"]) for c in doc["batching_vs_no_batching"]] == [
        (1, 8), (1, 4), (4, 8), (4, 4)
    ]  # fmt: skip


def test_lstm_cpu_quick(tmp_path: Path) -> None:
    out = tmp_path / "lstm_cpu.json"
    run_script("lstm_cpu.py", "--quick", "--out", str(out))
    doc = json.loads(out.read_text())
    check_header(doc, "lstm_cpu")
    padded = {(r["shape"], r["mode"]) for r in doc["padded_batches"]}
    shapes = ("ctc_head_2x256", "student_layer_1x256")
    assert padded == {(s, m) for s in shapes for m in ("inference", "training")}
    for r in doc["padded_batches"]:
        assert set(r["ms"]) == {"packed", "run_lstm", "unpadded"} and r["padding_ratio"] > 0
    scenarios = [r["scenario"] for r in doc["thread_scenarios"]]
    assert scenarios == ["one_thread", "main_thread_ran_lstm", "decode_threads_resampled"]
    assert doc["thread_scenarios"][0]["slowdown_vs_one_thread"] == 1.0
    assert out.with_suffix(".md").exists()


@pytest.mark.slow
def test_soak_quick(tmp_path: Path) -> None:
    from model_training.testing import build_tiny_bundle

    bundle = build_tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "soak.json"
    run_script("soak.py", "--quick", "--model-dir", str(bundle), "--out", str(out), timeout=600)
    doc = json.loads(out.read_text())
    check_header(doc, "soak")
    summary = doc["summary"]
    assert summary["requests"] > 0 and summary["server_errors_5xx"] == 0
    assert summary["not_ready_samples"] == 0
    hostile = summary["by_kind"]["hostile"]
    assert set(hostile["concat"]["statuses"]) == {"415"}
    assert all(s["rss_mb"] > 0 and s["open_fds"] > 0 for s in doc["samples"])


@pytest.mark.slow
def test_streaming_load_quick(tmp_path: Path) -> None:
    out = tmp_path / "streaming.json"
    run_script("streaming_load.py", "--quick", "--out", str(out))
    doc = json.loads(out.read_text())
    check_header(doc, "streaming_load")
    rows = {(r["server"], r["streams"]): r for r in doc["rows"]}
    assert set(rows) == {(s, n) for s in ("batched", "unbatched") for n in (1, 2)}
    for r in rows.values():
        assert r["deltas"] > 0 and not r["connect_errors"]
        assert r["latency_p50_s"] <= r["latency_p99_s"] <= r["latency_max_s"]
    assert rows[("unbatched", 2)]["mean_streams_per_step"] == pytest.approx(1.0)
    assert [r["streams"] for r in doc["model_only"]] == [1, 2]
    assert all(r["stacked_ms_per_100ms"] > 0 for r in doc["model_only"])
    assert out.with_suffix(".png").exists()


def test_distill_throughput_quick(tmp_path: Path) -> None:
    out = tmp_path / "dt.json"
    run_script("distill_throughput.py", "--quick", "--threads", "1", "--out", str(out), timeout=600)
    doc = json.loads(out.read_text())
    check_header(doc, "distill_throughput")
    result = doc["results"]["lstm_small"]
    for mode in ("cached", "on_the_fly"):
        assert result["modes"][mode]["steps_per_s"] > 0
        assert result["modes"][mode]["samples"] == 2  # 3 steps, the first dropped
    ratio = result["modes"]["cached"]["steps_per_s"] / result["modes"]["on_the_fly"]["steps_per_s"]
    assert result["speedup_cached_over_on_the_fly"] == pytest.approx(ratio)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a GPU")
def test_gpu_check_without_a_gpu_runs_nothing(tmp_path: Path) -> None:
    script = BENCH_DIR.parent / "scripts" / "gpu_check.sh"
    out = tmp_path / "gpu"
    env = {"PATH": "/usr/bin:/bin", "PY": sys.executable, "OUT": str(out)}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "no CUDA GPU" in proc.stderr
    assert not out.exists()  # no results, so no GPU numbers without a GPU


def test_precision_cer_on_a_tiny_bundle(tmp_path: Path) -> None:
    from model_training.testing import build_tiny_bundle
    from model_training.training.fixtures import write_tone_corpus

    bundle = build_tiny_bundle(tmp_path / "bundle")
    manifest = write_tone_corpus(tmp_path / "corpus", 2, 0.5, 0.8)
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join([rows[0]] + [r.replace("\t\t", "\tHELLO\t") for r in rows[1:]]))
    out = tmp_path / "pc.json"
    run_script(
        "precision_cer.py", "--model", str(bundle), "--manifest", str(manifest),
        "--rounds", "1", "--threads", "1", "--out", str(out),
    )  # fmt: skip
    doc = json.loads(out.read_text())
    check_header(doc, "precision_cer")
    assert set(doc["results"]) == {"fp32", "bf16", "int8"}
    assert doc["settings"]["utterances"] == 2
    fp32 = doc["results"]["fp32"]
    assert fp32["cer_change_points"] == 0 and fp32["speedup_vs_fp32"] == 1
    for r in doc["results"].values():
        assert r["cer"] >= 0 and r["rtf"] > 0


def test_lm_beam_on_a_tiny_bundle_with_an_lm(tmp_path: Path) -> None:
    from model_training.bundle import attach_lm
    from model_training.decoding import LMDecoderConfig
    from model_training.ngram_lm import build_kneser_ney
    from model_training.testing import build_tiny_bundle
    from model_training.training.fixtures import write_tone_corpus

    bundle = build_tiny_bundle(tmp_path / "bundle", seed=3, varied=True)
    manifest = write_tone_corpus(tmp_path / "corpus", 2, 0.5, 0.8)
    rows = manifest.read_text().splitlines()
    manifest.write_text("\n".join([rows[0]] + [r.replace("\t\t", "\tHELLO\t") for r in rows[1:]]))
    out = tmp_path / "beam.json"
    args = ["--model", str(bundle), "--manifest", f"dev={manifest}", "--beams", "1 8"]
    no_lm = run_script("lm_beam.py", *args, "--out", str(out), check=False)
    assert no_lm.returncode != 0 and "no LM decoder" in no_lm.stderr and not out.exists()

    lm = build_kneser_ney(["HELLO THERE", "HELLO WORLD"], 2).write_arpa(tmp_path / "lm.arpa.gz")
    attach_lm(bundle, lm, LMDecoderConfig(str(lm), 1.5, -0.5, 50))
    run_script("lm_beam.py", *args, "--out", str(out))
    doc = json.loads(out.read_text())
    check_header(doc, "lm_beam")
    assert doc["settings"]["lm_weight"] == 1.5 and doc["settings"]["shipped_beam_size"] == 50
    from model_training.data.manifest import read_manifest

    seconds = read_manifest(manifest).total_samples / 16000
    assert doc["settings"]["audio_seconds"]["dev"] == pytest.approx(seconds, abs=0.05)
    dev = doc["results"]["dev"]
    assert [r["beam_size"] for r in dev] == [1, 8]
    for r in dev:
        assert r["cer"] >= 0 and r["decode_rtf"] > 0
    assert "| 8 |" in out.with_suffix(".md").read_text()
