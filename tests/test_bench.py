"""`edge bench`: planning, worker processes, summaries, reports, and real runs (default model, TA student)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edge.bench import machine, report
from edge.core.backends import parse_list
from edge.bench.harness import Settings, load_subjects, noisy_note, plan, run_bench
from edge.bench.rows import Row, spread, summarise_times
from edge.bench.worker import RowProcess, Target
from edge.cli import main

CUDA_IN_ORT = "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One real `edge bench` run through the CLI on the default model (fast settings)."""
    out = tmp_path_factory.mktemp("bench")
    args = ["bench", "--provider", "cpu,cuda,torch-cpu", "--quant", "fp32,uint8:minmax", "--batch", "1,2",
            "--repeats", "2", "--min-time", "0.05", "--threads", "1", "--quiet", "--json", str(out / "r.json"),
            "--markdown", str(out / "r.md"), "--plot", str(out / "r.png")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, result.output, json.loads((out / "r.json").read_text())


def _row(doc, backend, fmt=None):
    return next(r for r in doc["rows"] if r["backend"] == backend and (fmt is None or r["format"] == fmt))


def test_provider_names_accept_the_users_spelling():
    assert parse_list("cpu,cuda,torch-cpu,tensorrt") == ("ort-cpu", "ort-cuda", "torch-cpu", "ort-tensorrt")
    assert parse_list("ORT-CPU, cpu") == ("ort-cpu",)
    with pytest.raises(ValueError, match="gpu"):
        parse_list("gpu")


def test_rough_peak_follows_the_widest_simd_fma():
    assert machine.flops_per_cycle({"avx512f", "avx2", "fma"})[0] == 64
    assert machine.flops_per_cycle({"avx2", "fma"}, "GenuineIntel", 6, 85)[0] == 32
    assert machine.flops_per_cycle({"avx2", "fma"}, "AuthenticAMD", 23, 1)[0] == 16  # Zen 1 splits 256-bit ops
    assert machine.flops_per_cycle({"sse2"})[0] == 8
    cpu = machine.cpu_info()
    assert cpu["cores"] >= 1 and (cpu["peak_gflops"] is None or cpu["peak_gflops"] > 1)


def test_repeat_summaries():
    summary = summarise_times({1: [0.010, 0.020, 0.030, 0.040], 4: [0.1, 0.1]})
    assert summary["latency_batch"] == 1
    assert summary["p50_ms"] == pytest.approx(25.0)
    assert summary["img_s"][4] == pytest.approx(40.0)
    assert spread([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0}
    assert spread([]) is None


def _timed(b1_s: float, b32_s: float) -> dict:
    """A worker's ``measure`` reply: three calls per batch at these seconds per call."""
    return {"load_s": 0.1, "times": {"1": [b1_s] * 3, "32": [b32_s] * 3}, "rss_bytes": {"1": 1 << 20, "32": 2 << 20},
            "providers": ["CPUExecutionProvider"], "torch_loaded": False}


def test_the_best_batch_has_the_most_images_per_second_over_the_repeats_and_the_table_shows_it():
    row = Row("m", "ort-cpu", "fp32", 1000, 10, 10)
    for b1_s, b32_s in ((0.001, 0.030), (0.001, 0.034), (0.002, 0.030)):  # repeat 2 alone would say b=1
        row.record("ok", _timed(b1_s, b32_s))
    assert row.best_batch == 32 and row.to_json()["best_batch"] == 32  # median 1067 img/s against 1000
    doc = {"settings": {"batches": [1, 32], "threads": 1}, "machine": {"cpu": {"cores": 1, "peak_gflops": None}},
           "models": [{}], "rows": [row.to_json()]}
    headers, cells, _ = report.table(doc)
    assert cells[0][headers.index("best b")] == "32"
    slower = Row("m", "ort-cpu", "fp32", 1000, 10, 10)
    slower.record("ok", _timed(0.001, 0.040))
    assert slower.best_batch == 1


def test_default_run_rows(default_run):
    _, output, doc = default_run
    fp32, uint8, torch_row = (_row(doc, "ort-cpu", "fp32"), _row(doc, "ort-cpu", "uint8:minmax"),
                              _row(doc, "torch-cpu"))
    for row in (fp32, uint8, torch_row):
        assert row["status"] == "ok" and len(row["repeats"]) == 2
        assert 0 < row["p50_ms"]["min"] <= row["p50_ms"]["median"] <= row["p50_ms"]["max"]
        assert row["img_s"]["2"]["median"] > 0 and row["load_ms"]["median"] > 0
        assert 10 < row["peak_rss_mb"]["1"] <= row["peak_rss_mb"]["2"]
        assert row["parameters"] == 256_779
    assert uint8["bytes"] < fp32["bytes"] / 3  # uint8 codes + min-max vs float32
    assert fp32["providers"] == ["CPUExecutionProvider"]
    assert fp32["torch_loaded"] is False and uint8["torch_loaded"] is False  # ORT rows never import torch
    assert torch_row["torch_loaded"] is True
    assert torch_row["speedup_vs_torch_cpu_fp32"]["median"] == pytest.approx(1.0)
    assert fp32["speedup_vs_torch_cpu_fp32"]["median"] > 0
    assert "ort-cpu" in output and "p50 ms b=1" in output and doc["settings"]["threads"] == 1


def test_unavailable_backend_gets_a_row_with_the_reason(default_run):
    _, output, doc = default_run
    cuda = [r for r in doc["rows"] if r["backend"] == "ort-cuda"]
    if CUDA_IN_ORT:
        assert all(r["status"] == "ok" and r["providers"][0] == "CUDAExecutionProvider" for r in cuda)
    else:
        assert len(cuda) == 1 and cuda[0]["status"] == "unavailable" and cuda[0]["p50_ms"] is None
        assert "onnxruntime-gpu" in cuda[0]["reason"] and "unavailable [1]" in output


def test_reports_are_written(default_run):
    out, _, doc = default_run
    text = (out / "r.md").read_text()
    assert doc["command"] in text and doc["machine"]["cpu"]["model"] in text
    assert "| Backend | Format | Status |" in text and "uint8:minmax / fp32 p50 latency" in text
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cpu = doc["machine"]["cpu"]
    if cpu["peak_gflops"]:  # --threads 1: GFLOP/s are set against one core's share of the peak
        assert report.usable_peak(doc) == (pytest.approx(cpu["peak_gflops"] / cpu["cores"]), 1)


def test_compare_checks_medians_against_the_other_runs_spread(default_run):
    _, _, doc = default_run
    ok = sum(row["status"] == "ok" for row in doc["rows"])  # p50, img/s, and x torch but for torch itself
    assert report.compare(doc, doc)[0].endswith(f": {3 * ok - 1} agree, 0 overlap, 0 DIFFER")
    slower = json.loads(json.dumps(doc))
    for row in slower["rows"]:
        if row["p50_ms"]:
            row["p50_ms"] = {k: v * 10 for k, v in row["p50_ms"].items()}
    lines = report.compare(slower, doc)  # only the p50 columns changed
    assert lines[0].endswith(f": {2 * ok - 1} agree, 0 overlap, {ok} DIFFER")
    assert sum(line.startswith("DIFFER  ort-cpu fp32 p50 ms") for line in lines) == 1
    low, high = {"min": 1.0, "median": 2.0, "max": 3.0}, {"min": 2.5, "median": 4.0, "max": 5.0}
    assert report._verdict(low, high) == "overlap"  # ranges meet, neither median inside the other range


def test_a_broken_backend_is_an_error_row_not_a_crash(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not onnx")
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 256, 256), np.float32))
    process = RowProcess(Target("ort-cpu", "fp32", str(bad)))
    try:
        assert process.wait_ready()[0] == "ready"
        status, reason = process.call("measure", inputs=str(tmp_path / "x.npy"), batches=[1], min_seconds=0.01,
                                      min_calls=1)
    finally:
        process.close()
    assert status == "error" and "not a loadable ONNX model" in reason


def test_a_worker_that_dies_loses_only_its_row(tmp_path):
    process = RowProcess(Target("ort-cpu", "fp32", str(tmp_path / "m.onnx")))
    try:
        assert process.wait_ready() == ("ready", None)
        process.process.kill()
        status, reason = process.call("measure", inputs="x.npy", batches=[1], min_seconds=0.01, min_calls=1)
    finally:
        process.close()
    assert status == "error" and "the worker process died (exit code -9)" in reason


def test_an_onnx_model_runs_as_it_is_and_torch_says_why_not(tmp_path):
    from edge.io.checkpoints import init_checkpoint
    from edge.export.exporter import export_onnx
    from edge.export.quantize import QuantSpec

    path = tmp_path / "m.onnx"
    export_onnx(init_checkpoint(), path, QuantSpec("fp16"))
    settings = Settings(providers=("ort-cpu", "torch-cpu"))
    jobs = plan(load_subjects([path], settings, tmp_path), settings, tmp_path)
    assert [(j.row.backend, j.row.fmt, j.row.status) for j in jobs] == [
        ("ort-cpu", "fp16", "ok"), ("torch-cpu", "fp32", "unavailable")]
    assert jobs[0].target.path == str(path) and "ONNX file" in jobs[1].row.reason
    assert jobs[0].row.weights["weights"] == "fp16"


@pytest.mark.parametrize("args, message", [
    (["--provider", "gpu"], "unknown backend"),
    (["--quant", "fp32:minmax"], "fp32 has no method"),
    (["--quant", "int4"], "unknown weight format"),
    (["--labels", "x.csv"], "--labels needs --data"),
    (["--batch", "0"], "(--batch) must be >= 1"),
    (["--compare", "x.json"], "not an `edge bench --json` file"),
])
def test_bad_options_are_usage_errors(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.json").write_text("[]")
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == 2 and message in result.output


def test_ta_student_on_real_photos(ta_student, food11_test, reference_labels, tmp_path):
    """Accuracy and agreement come from `edge predict`'s own path on real photos."""
    from edge.data.folders import list_samples, read_labels
    from edge.inference.predict import open_model, predict_samples

    folder = tmp_path / "photos"
    folder.mkdir()
    for sample in list_samples(food11_test)[:16]:
        shutil.copy(sample.path, folder / sample.path.name)
    settings = Settings(providers=("ort-cpu", "torch-cpu"), quants=("fp32", "uint8:minmax"), batches=(1, 8),
                        threads=1, repeats=1, min_seconds=0.05, data=folder, labels=reference_labels)
    doc = run_bench([ta_student], settings, "test", progress=False)
    truth = read_labels(reference_labels)
    model, lanes = open_model(ta_student, "torch-cpu")
    direct = predict_samples(model, list_samples(folder), 8, progress=False, lanes=lanes)
    fp32, uint8, torch_row = (_row(doc, "ort-cpu", "fp32"), _row(doc, "ort-cpu", "uint8:minmax"),
                              _row(doc, "torch-cpu"))
    assert tuple(torch_row["predict"]["accuracy"]) == direct.accuracy(truth)
    assert fp32["agreement_vs_torch_fp32"] == 1.0 and uint8["agreement_vs_torch_fp32"] >= 0.9
    assert fp32["predict"]["images"] == 16 and fp32["predict"]["img_s"] > 0
    assert fp32["predict"]["decode_cpu_s"] > 0 and fp32["predict"]["infer_cpu_s"] > 0
    assert fp32["bytes"] < (ta_student.stat().st_size * 1.05)



API_SCRIPT = '''import edge

model = edge.load_model("tiny.pt")
result = edge.export_model("tiny.pt", "tiny.onnx", quant="uint4", per_channel=True, method="minmax")
print("exported", result.bytes)
answers = edge.predict_images(result.path, "images")
print("predicted", len(answers))
doc = edge.benchmark([result.path], providers="cpu", batches=(1,), repeats=1, min_seconds=0.01)
print("bench", [row["status"] for row in doc["rows"]])
'''


def test_the_readme_api_example_runs_as_a_plain_script(tmp_path):
    """No main guard: the bench workers are fresh interpreters, never a re-import of the script (issue 25)."""
    from PIL import Image

    from edge.core.config import StudentConfig
    from edge.io.checkpoints import init_checkpoint, save_checkpoint

    checkpoint = init_checkpoint(StudentConfig(widths=(4, 8), pools=(0,), input_size=32))
    save_checkpoint(tmp_path / "tiny.pt", checkpoint.card, checkpoint.state)
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(np.full((40, 40, 3), 60 * i, np.uint8)).save(tmp_path / "images" / f"{i:04d}.png")
    (tmp_path / "script.py").write_text(API_SCRIPT)
    done = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert sum(line.startswith("exported") for line in lines) == 1 and lines.count("predicted 3") == 1
    assert lines[-1] == "bench ['ok']", done.stdout


def test_a_busy_machine_is_noted_with_the_steadier_setting():
    busy, quiet = {"load_average": [4.6, 4.0, 3.0]}, {"load_average": [0.3, 0.2, 0.2]}
    assert "--threads 1" in machine.busy_note(busy, 2, None) and "load average 4.6" in machine.busy_note(busy, 2, None)
    assert machine.busy_note(busy, 2, 1).endswith("timings on 1 thread will be noisy; rerun when the machine is idle")
    assert machine.busy_note(quiet, 2, None) is None and machine.busy_note({"load_average": None}, 2, None) is None


def test_a_reference_row_whose_repeats_spread_is_noted():
    row = Row("m", "torch-cpu", "fp32", None, 0, 0, runs=[{"p50_ms": 14.7}, {"p50_ms": 82.5}, {"p50_ms": 54.9}])
    steady = Row("m", "ort-cpu", "fp32", None, 0, 0, runs=[{"p50_ms": 1.0}, {"p50_ms": 1.1}])
    assert "torch-cpu fp32 p50 latency varied 5.6x" in noisy_note([steady, row], None)
    assert "--threads 1" in noisy_note([steady, row], None)
    assert noisy_note([steady], None) is None and noisy_note([], None) is None


def test_bench_says_when_the_machine_is_busy(synthetic_student_onnx, tmp_path, capsys):
    """The load reading is injected; the note is printed before the timing and kept in the document."""
    settings = Settings(providers=("ort-cpu",), batches=(1,), repeats=1, min_seconds=0.01)
    doc = run_bench([synthetic_student_onnx], settings, "test", progress=False,
                    load_reading=lambda: {"load_average": [8.0, 8.0, 8.0], "nice": 0})
    err = capsys.readouterr().err
    assert "note: the machine is busy (load average 8.0" in err and "--threads 1 gives steadier numbers" in err
    assert doc["notes"] == [err.strip()] and doc["rows"][0]["status"] == "ok"
