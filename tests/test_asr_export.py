"""Export a fine-tuning run to a bundle (fp32 and int8), evaluate it, and the ASR CLI."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from model_training.bundle import attach_lm, load_bundle, read_bundle_config
from model_training.cli import app
from model_training.decoding import LMDecoderConfig, greedy_ctc_decode_batch
from model_training.models.ctc import ASRModel
from model_training.ngram_lm import build_kneser_ney
from model_training.testing import build_tiny_bundle, tiny_ctc_head
from model_training.text import CharVocab
from model_training.training.evaluate import (
    load_recognizer,
    load_upstream,
    save_head,
    score,
)
from model_training.training.export import export_run
from model_training.training.fixtures import write_labelled_tones

VOCAB = CharVocab()


@pytest.fixture
def manifest(tmp_path) -> Path:
    """Three short noise-and-tone clips with transcripts (scores are not the point here)."""
    return write_labelled_tones(tmp_path, [(0.7, "A B"), (1.1, "HELLO"), (0.5, "YES")])


@pytest.fixture
def student_run(tmp_path) -> Path:
    """A fine-tuning run dir whose head sits on a tiny student bundle (random weights)."""
    upstream_dir = build_tiny_bundle(tmp_path / "student", with_ctc=False)
    upstream, ref = load_upstream(upstream_dir)
    assert ref["kind"] == "bundle"
    torch.manual_seed(1)
    head = tiny_ctc_head(upstream.hidden_dims)
    save_head(tmp_path / "run" / "best", head, VOCAB, ref, {"step": 7, "dev": {"wer": 0.5}})
    return tmp_path / "run"


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return 0.1 * torch.randn(3, 12000, generator=g), torch.tensor([12000, 7000, 3000])


def test_export_then_load_gives_identical_outputs(student_run: Path, tmp_path) -> None:
    provenance = export_run(student_run, tmp_path / "bundle")
    config = read_bundle_config(tmp_path / "bundle")
    assert config["upstream"]["type"] == "lstm_student" and config["quantize"] is None
    assert config["provenance"]["step"] == 7 and provenance["upstream"]["kind"] == "bundle"
    assert "# bundle" in (tmp_path / "bundle" / "README.md").read_text()
    run_model = load_recognizer(student_run).model
    bundle = load_bundle(tmp_path / "bundle")
    waves, lengths = _inputs()
    with torch.no_grad():
        out_a, lp_a = run_model(waves, lengths)
        out_b, lp_b = bundle.model(waves, lengths)
    assert torch.equal(out_a.lengths, out_b.lengths)
    assert torch.equal(lp_a, lp_b)
    assert all(
        torch.equal(x, y) for x, y in zip(out_a.hidden_states, out_b.hidden_states, strict=True)
    )


@pytest.mark.parametrize("causal", [False, True])
def test_model_card_names_the_head_direction(tmp_path, causal: bool) -> None:
    upstream_dir = build_tiny_bundle(tmp_path / "student", with_ctc=False, causal=causal)
    upstream, ref = load_upstream(upstream_dir)
    head = tiny_ctc_head(upstream.hidden_dims, causal=causal)
    save_head(tmp_path / "run" / "best", head, VOCAB, ref, {"step": 1})
    export_run(tmp_path / "run", tmp_path / "bundle")
    card = (tmp_path / "bundle" / "README.md").read_text()
    assert ("BiLSTM" in card) is not causal
    assert ("unidirectional (causal) LSTM" in card) is causal


def test_int8_export_measures_and_decodes(student_run: Path, manifest: Path, tmp_path) -> None:
    out = tmp_path / "int8"
    export_run(student_run, out, quantize="int8", eval_manifest=manifest, repeats=2)
    config = read_bundle_config(out)
    assert config["quantize"] == "int8"
    q = config["provenance"]["quantization"]
    assert q["speed"]["fp32_seconds"] > 0 and q["speed"]["int8_seconds"] > 0
    assert q["speed"]["speedup"] == pytest.approx(
        q["speed"]["fp32_seconds"] / q["speed"]["int8_seconds"], rel=0.01
    )
    ev = config["provenance"]["evaluation"]
    assert q["wer_change"] == pytest.approx(ev["int8"]["wer"] - ev["fp32"]["wer"])
    card = (out / "README.md").read_text()
    assert "int8 dynamic quantization" in card and f"x{q['speed']['speedup']:.2f}" in card
    assert "WER change int8 - fp32" in card

    bundle = load_bundle(out)
    assert isinstance(bundle.model, ASRModel)
    assert isinstance(bundle.model.head.lstm, torch.ao.nn.quantized.dynamic.LSTM)
    waves, lengths = _inputs()
    with torch.no_grad():
        up, lp = bundle.model(waves, lengths)
    transcripts = greedy_ctc_decode_batch(lp, up.lengths, VOCAB, 1 / bundle.frame_rate)
    for tr, n in zip(transcripts, lengths.tolist(), strict=True):
        assert tr.duration <= n / 16000
        prev = 0.0
        for w in tr.words:
            assert prev <= w.start < w.end <= tr.duration + 1e-9
            prev = w.end


def test_export_refuses_bundles_and_bad_quantization(student_run: Path, tmp_path) -> None:
    bundle = build_tiny_bundle(tmp_path / "asr")
    with pytest.raises(ValueError, match="export takes a fine-tuning run"):
        export_run(bundle, tmp_path / "out")
    with pytest.raises(ValueError, match="quantize"):
        export_run(student_run, tmp_path / "out", quantize="int4")


def test_load_upstream_kinds(tmp_path) -> None:
    fbank, ref = load_upstream("fbank")
    assert ref["kind"] == "fbank" and not fbank.training
    rebuilt, _ = load_upstream(ref)
    assert rebuilt.config == fbank.config
    with pytest.raises(FileNotFoundError, match="not found"):
        load_upstream(tmp_path / "missing")
    q = build_tiny_bundle(tmp_path / "q", with_ctc=False, quantize="int8")
    with pytest.raises(ValueError, match="quantize at export"):
        load_upstream(q)
    student, ref = load_upstream(build_tiny_bundle(tmp_path / "s", with_ctc=False))
    assert not any(p.requires_grad for p in student.parameters())


def test_cli_finetune_export_evaluate(manifest: Path, tmp_path) -> None:
    runner = CliRunner()
    root = Path(__file__).resolve().parents[1]
    run_dir = tmp_path / "run"
    result = runner.invoke(
        app,
        [
            "finetune-ctc",
            "--upstream",
            "fbank",
            "--train",
            str(manifest),
            "--dev",
            str(manifest),
            "--out",
            str(run_dir),
            "--config",
            str(root / "configs" / "ctc" / "tiny.yaml"),
            "--max-steps",
            "3",
            "--set",
            "eval_every=2",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["best"]["step"] in (2, 3)
    assert (run_dir / "best" / "head.safetensors").is_file()
    assert list((run_dir / "checkpoints").glob("checkpoint-*.pt"))

    bundle = tmp_path / "bundle"
    result = runner.invoke(
        app,
        [
            *("export", "--run", str(run_dir), "--out", str(bundle), "--quantize", "int8"),
            *("--repeats", "1", "--speed-seconds", "1"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["speedup"] > 0

    result = runner.invoke(app, ["evaluate", "--model", str(bundle), "--manifest", str(manifest)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    for key in ("wer", "cer", "utterances", "audio_seconds", "rtf", "parameters"):
        assert key in report
    assert report["utterances"] == 3
    assert report["audio_seconds"] == pytest.approx(2.3)
    assert report["parameters"] == read_bundle_config(bundle)["parameters"]


def test_student_checkpoint_and_teacher_upstreams(manifest: Path, tmp_path) -> None:
    from model_training.models.student import lstm_student_tiny
    from model_training.models.teacher import build_teacher, tiny_hubert_config
    from model_training.training.distill import save_student
    from model_training.training.finetune_ctc import FinetuneConfig, run

    root = Path(__file__).resolve().parents[1]
    student_file = save_student(
        tmp_path / "distill" / "student.safetensors",
        lstm_student_tiny(),
        factory="lstm_tiny",
        provenance={},
    )
    teacher_dir = build_teacher(tiny_hubert_config()).save(tmp_path / "teacher")
    for name, spec in (("student", student_file), ("teacher", teacher_dir)):
        cfg = FinetuneConfig.from_yaml(
            root / "configs" / "ctc" / "tiny.yaml",
            ["max_steps=2", "eval_every=2"],
            upstream=str(spec),
            train_manifest=str(manifest),
            dev_manifest=str(manifest),
            run_dir=str(tmp_path / f"run_{name}"),
        )
        run(cfg)
        meta = json.loads((tmp_path / f"run_{name}" / "best" / "head.json").read_text())
        assert meta["upstream"]["kind"] == name
    export_run(tmp_path / "run_student", tmp_path / "student_bundle")
    config = read_bundle_config(tmp_path / "student_bundle")
    assert config["upstream"]["type"] == "lstm_student"
    assert config["upstream"]["config"]["num_classes"] == 0  # training head dropped
    with pytest.raises(ValueError, match="cannot bundle"):
        export_run(tmp_path / "run_teacher", tmp_path / "teacher_bundle")


def test_evaluate_in_bf16_runs_under_autocast(student_run: Path, manifest: Path, monkeypatch):
    """--precision bf16 evaluates under CPU autocast; fp16 on CPU and unknown names fail early."""
    from model_training.training import evaluate as evaluate_module

    recognizer = load_recognizer(student_run)
    seen: list[bool] = []
    transcribe = evaluate_module.transcribe_batch

    def recording(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return transcribe(*args, **kwargs)

    monkeypatch.setattr(evaluate_module, "transcribe_batch", recording)
    result = evaluate_module.evaluate_recognizer(recognizer, manifest, precision="bf16")
    assert result["precision"] == "bf16" and result["cer"] is not None
    assert seen and all(seen)
    seen.clear()
    evaluate_module.evaluate_recognizer(recognizer, manifest)
    assert seen and not any(seen)
    for bad in ("fp16", "int4"):
        with pytest.raises(ValueError):
            evaluate_module.evaluate_recognizer(recognizer, manifest, precision=bad)


def test_fp16_weights_halve_the_file_load_as_float32_and_measure_the_change(
    student_run: Path, manifest: Path, tmp_path
) -> None:
    export_run(student_run, tmp_path / "fp32")
    provenance = export_run(
        student_run, tmp_path / "fp16", eval_manifest=manifest, weights_dtype="float16"
    )
    size = {d: (tmp_path / d / "model.safetensors").stat().st_size for d in ("fp32", "fp16")}
    assert size["fp16"] < 0.6 * size["fp32"]
    assert read_bundle_config(tmp_path / "fp16")["weights_dtype"] == "float16"
    assert set(provenance["fp16_weights"]) == {"wer", "cer"}
    assert provenance["evaluation"]["fp16_weights"]["utterances"] == 3
    full, half = load_bundle(tmp_path / "fp32").model, load_bundle(tmp_path / "fp16").model
    assert all(p.dtype == torch.float32 for p in half.parameters())
    waves, lengths = _inputs()
    with torch.no_grad():
        _, lp_full = full(waves, lengths)
        _, lp_half = half(waves, lengths)
    assert not torch.equal(lp_full, lp_half)  # the weights were really rounded ...
    torch.testing.assert_close(lp_half, lp_full, atol=2e-2, rtol=0)  # ... and stay close
    with pytest.raises(ValueError, match="weights_dtype"):
        export_run(student_run, tmp_path / "bf", weights_dtype="bfloat16")


def test_fp16_rounding_leaves_rebuilt_buffers_exact() -> None:
    """Only the stored weights go through float16: the log-mel front-end's window and
    filterbank are rebuilt in float32 at load, so rounding them would make the exported
    bundle's verification (an exact comparison) fail for every log-mel student."""
    from model_training.models.student import lstm_student_tiny
    from model_training.testing import TINY_LOGMEL
    from model_training.training.export import fp16_rounded

    model = lstm_student_tiny(frontend="logmel", logmel=dict(TINY_LOGMEL)).eval()
    stored = model.state_dict()
    rebuilt = {n: b for n, b in model.named_buffers() if n not in stored}
    assert rebuilt  # the front-end has non-persistent float buffers
    rounded = fp16_rounded(model)
    rounded_buffers = dict(rounded.named_buffers())
    for name, buf in rebuilt.items():
        assert torch.equal(rounded_buffers[name], buf), name
    for name, t in rounded.state_dict().items():
        if t.is_floating_point():
            assert torch.equal(t, t.half().float()), name
    assert any(
        t.is_floating_point() and not torch.equal(t, rounded.state_dict()[n])
        for n, t in stored.items()
    )


def test_card_names_the_decoder_before_and_after_an_lm_is_attached(
    student_run: Path, tmp_path
) -> None:
    """The exported card says greedy; attaching an LM replaces that, never contradicts it."""
    bundle = tmp_path / "bundle"
    export_run(student_run, bundle)
    card = (bundle / "README.md").read_text()
    assert card.count("## Decoding") == 1 and "Greedy CTC decoding, no language model" in card
    lm = build_kneser_ney(["A B", "HELLO", "YES A"], 2).write_arpa(tmp_path / "t.arpa.gz")
    attach_lm(bundle, lm, LMDecoderConfig(str(lm)))
    card = (bundle / "README.md").read_text()
    assert card.count("## Decoding") == 1 and "word n-gram LM" in card
    assert "no language model" not in card
    # a section added after the greedy one (weight interpolation) survives a new LM
    (bundle / "README.md").write_text(card + "\n## Weight interpolation\n\nMixed.\n")
    attach_lm(bundle, lm, LMDecoderConfig(str(lm)))
    card = (bundle / "README.md").read_text()
    assert card.count("## Decoding") == 1 and "## Weight interpolation\n\nMixed." in card


def test_evaluate_per_engine_scores_each_engine_of_the_speaker_ids(student_run: Path, tmp_path):
    """--per-engine groups utterances by the speaker id's part before ':' and scores each group
    on exactly its own utterances (checked against the per-utterance details)."""
    from model_training.data.manifest import read_manifest, write_manifest

    clips = [(0.7, "A B"), (1.1, "HELLO"), (0.5, "YES"), (0.9, "NO WAY")]
    tones = read_manifest(write_labelled_tones(tmp_path / "eval", clips))
    speakers = ["espeak:en-us+f3", "kokoro:af_kore", "espeak:en", "plain"]
    entries = [replace(e, speaker=s) for e, s in zip(tones, speakers, strict=True)]
    manifest = write_manifest(tmp_path / "eval" / "engines.tsv", entries)
    details, output = tmp_path / "details.jsonl", tmp_path / "scores.json"
    args = ["evaluate", "--model", str(student_run), "--manifest", str(manifest)]
    result = CliRunner().invoke(
        app, [*args, "--per-engine", "--details", str(details), "--output", str(output)]
    )
    assert result.exit_code == 0, result.output
    by_engine = json.loads(output.read_text())["by_engine"]
    assert {k: v["utterances"] for k, v in by_engine.items()} == {
        "espeak": 2,
        "kokoro": 1,
        "plain": 1,
    }
    rows = {row["id"]: row for row in map(json.loads, details.read_text().splitlines())}
    for engine, members in {"espeak": [0, 2], "kokoro": [1], "plain": [3]}.items():
        picked = [rows[entries[k].id] for k in members]
        expected = score([r["ref"] for r in picked], [r["hyp"] for r in picked])
        assert by_engine[engine]["wer"] == pytest.approx(expected["wer"])
        assert by_engine[engine]["cer"] == pytest.approx(expected["cer"])
    plain = CliRunner().invoke(app, [*args, "--output", str(output)])
    assert plain.exit_code == 0 and "by_engine" not in json.loads(output.read_text())
