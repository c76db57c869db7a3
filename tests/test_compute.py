"""Backends x compute precisions: the ov-cpu backend (OpenVINO, an optional extra: its tests skip with the
reason where it is absent, and its "missing extra" row is tested by blocking it), bf16 and int8 compute,
micro-batches, `edge predict --provider auto` / `--compute` and `edge bench --compute --calib`."""

from __future__ import annotations

import json
import re
import threading

import numpy as np
import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.core import backends, cpu
from edge.data.preprocess import first_images
from edge.inference import int8 as int8_compute
from edge.inference.auto import summary
from edge.inference.openers import photos_from
from edge.inference.runtime import OnnxClassifier
from test_runtime_install import COMPRESSED, python_without

OPENVINO_ABSENT = backends.unavailable(backends.resolve("ov-cpu"))
needs_openvino = pytest.mark.skipif(bool(OPENVINO_ABSENT), reason=f"ov-cpu: {OPENVINO_ABSENT}")
ONNX_ABSENT = int8_compute.missing()


def test_micro_batches_keep_a_large_batchs_answers_and_fit_the_cache(synthetic_student_onnx, synthetic_photos):
    model = OnnxClassifier(COMPRESSED, threads=1)
    assert model.micro_batch == 1  # 16 channels x 256 x 256 x 4 B = 4 MiB per image in a 4 MiB budget
    assert OnnxClassifier(synthetic_student_onnx).micro_batch == 128  # 8 x 32 x 32 x 4 B: the whole batch at once
    x = first_images(synthetic_photos, model.card, 5)
    batched = model(x)
    one_by_one = np.concatenate([model(x[i:i + 1]) for i in range(len(x))])
    assert batched.shape == (5, 11)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-4)


def test_lanes_run_a_calls_micro_batches_on_threads_of_their_own_with_the_same_answers(synthetic_photos):
    model = OnnxClassifier(COMPRESSED, threads=1)
    x = first_images(synthetic_photos, model.card, 5)
    one_lane, callers, run = model(x), [], model.run

    def observed(part):
        callers.append(threading.current_thread().name)
        return run(part)

    model.run = observed
    model.spread(2)
    here = threading.current_thread().name
    np.testing.assert_allclose(model(x), one_lane, rtol=1e-5, atol=1e-5)  # in order, whatever finished first
    assert callers[:2] != [here, here] and callers[2:] == [here] * 3  # the first 2 images on lanes, 3 here
    assert all(name.startswith("lane") for name in callers[:2])
    assert model.lanes_faster in (True, False)  # which way was faster per image decides the next batches
    for faster, where in ((True, "lane"), (False, here)):
        callers.clear()
        model.lanes_faster = faster
        np.testing.assert_allclose(model(x), one_lane, rtol=1e-5, atol=1e-5)
        assert len(callers) == 5 and all(name.startswith(where) for name in callers)
    callers.clear()
    model.lanes_faster = True
    model(x[:1])  # one micro-batch: run where it was called
    assert callers == [here]


def test_a_spread_batch_gets_a_single_threaded_lane_session_and_the_bench_spreads_over_its_threads(synthetic_photos,
                                                                                                 tmp_path):
    from edge.bench.worker import Target, open_backend

    model = open_backend(Target("ort-cpu", "uint4", str(COMPRESSED), threads=2))
    assert model.lanes == 2 and model.session.get_session_options().intra_op_num_threads == 2
    x = first_images(synthetic_photos, model.card, 5)
    model(x)  # three micro-batches: the lanes share a single-threaded session, the one-image session keeps 2
    assert model._lane_session.get_session_options().intra_op_num_threads == 1
    assert open_backend(Target("ort-cpu", "uint4", str(COMPRESSED), threads=1)).lanes == 1
    from edge.bench.worker import Worker

    np.save(tmp_path / "x.npy", x)
    reply = Worker(Target("ort-cpu", "uint4", str(COMPRESSED), threads=2)).measure(str(tmp_path / "x.npy"), [1, 5], 0, 1)
    assert reply["lanes_faster"] in (True, False)  # the bench's JSON says per repeat which way ran its batches


@needs_openvino
def test_openvino_lanes_give_the_answers_of_one_call_at_a_time(synthetic_photos):
    from edge.inference.openvino_backend import OpenVinoClassifier

    model = OpenVinoClassifier(COMPRESSED, threads=2)
    x = first_images(synthetic_photos, model.card, 5)
    one_at_a_time = model(x)
    model.spread(2)
    np.testing.assert_allclose(model(x), one_at_a_time, rtol=1e-4, atol=1e-4)  # NUM_STREAMS=2 was off by hundreds
    lane = model._lane_requests.get().get_compiled_model()
    assert lane.get_property("INFERENCE_NUM_THREADS") == 1
    assert lane.get_property("ENABLE_CPU_PINNING") is False  # pinned, every lane took the same core


def test_bf16_and_int8_say_why_not_on_a_cpu_without_their_instructions(monkeypatch):
    monkeypatch.setattr(cpu, "flags", lambda: frozenset({"avx2", "fma"}))
    ov, ort = backends.resolve("ov-cpu"), backends.resolve("ort-cpu")
    assert "avx512_bf16 or amx_bf16" in backends.compute_missing(ov, "bf16")
    assert "avx512_vnni" in backends.compute_missing(ort, "int8")
    assert backends.compute_missing(ort, "bf16") == "ort-cpu computes in fp32, int8, not bf16"
    assert backends.compute_missing(ov, "fp32") is None
    with pytest.raises(backends.ComputeError, match="unknown compute precision 'fp8'"):
        backends.parse_computes("fp32,fp8")


@pytest.mark.skipif(bool(ONNX_ABSENT), reason=str(ONNX_ABSENT))
def test_int8_compute_runs_integer_convolutions_calibrated_on_photos(synthetic_student_onnx, synthetic_photos):
    if backends.compute_missing(backends.resolve("ort-cpu"), "int8"):
        pytest.skip(backends.compute_missing(backends.resolve("ort-cpu"), "int8"))
    fp32 = OnnxClassifier(synthetic_student_onnx, threads=1)
    int8 = OnnxClassifier(synthetic_student_onnx, threads=1, compute="int8", calib=photos_from(synthetic_photos))
    assert int8.provider == "CPUExecutionProvider int8" and int8.compute == "int8"
    import onnx

    graph = onnx.load_from_string(int8.int8_bytes(photos_from(synthetic_photos))).graph
    assert any(n.op_type == "QuantizeLinear" for n in graph.node)
    x = first_images(synthetic_photos, fp32.card, 8)
    reference, ours = fp32(x), int8(x)
    assert not np.array_equal(reference, ours)  # really computed another way
    assert np.abs(ours - reference).max() < 0.1 * np.abs(reference).max()
    with pytest.raises(backends.ProviderUnavailable, match="give --calib DIR"):
        OnnxClassifier(synthetic_student_onnx, compute="int8")


@needs_openvino
@pytest.mark.parametrize("model_file", ["synthetic", "entropy-coded"])
def test_ov_cpu_runs_edge_files_with_the_same_preprocessing_and_answers(model_file, synthetic_student_onnx,
                                                                       synthetic_photos):
    from edge.inference.openvino_backend import OpenVinoClassifier

    path = synthetic_student_onnx if model_file == "synthetic" else COMPRESSED
    reference, ours = OnnxClassifier(path, threads=1), OpenVinoClassifier(path, threads=1)
    assert ours.card == reference.card and ours.provider.startswith("OpenVINO") and ours.session is None
    x = first_images(synthetic_photos, ours.card, 5)
    np.testing.assert_allclose(ours(x), reference(x), rtol=1e-3, atol=1e-3)


@needs_openvino
def test_ov_cpu_bf16_where_the_cpu_has_it(synthetic_student_onnx, synthetic_photos):
    from edge.inference.openvino_backend import OpenVinoClassifier

    reason = backends.compute_missing(backends.resolve("ov-cpu"), "bf16")
    if reason:
        with pytest.raises(backends.ProviderUnavailable, match="bf16 needs a CPU with"):
            OpenVinoClassifier(synthetic_student_onnx, compute="bf16")
        return
    model = OpenVinoClassifier(synthetic_student_onnx, threads=1, compute="bf16")
    x = first_images(synthetic_photos, model.card, 5)
    reference = OnnxClassifier(synthetic_student_onnx, threads=1)(x)
    assert model.provider.endswith("bf16") and not np.array_equal(model(x), reference)
    np.testing.assert_allclose(model(x), reference, atol=0.05 * np.abs(reference).max())


@needs_openvino
def test_bf16_mixed_keeps_the_most_sensitive_convolutions_float32_and_comes_closer_to_fp32(synthetic_photos):
    from edge.inference import bf16_mixed
    from edge.inference.openvino_backend import OpenVinoClassifier

    reason = backends.compute_missing(backends.resolve("ov-cpu"), "bf16-mixed")
    if reason:
        pytest.skip(reason)
    with pytest.raises(backends.ProviderUnavailable, match="bf16-mixed compute is calibrated on photos .* --calib"):
        OpenVinoClassifier(COMPRESSED, threads=1, compute="bf16-mixed")
    mixed = OpenVinoClassifier(COMPRESSED, threads=1, compute="bf16-mixed", calib=photos_from(synthetic_photos))
    assert 1 <= len(mixed.fp32_layers) <= bf16_mixed.MAX_FP32_LAYERS
    assert mixed.provider.endswith(f"bf16-mixed ({len(mixed.fp32_layers)} of 15 convolutions fp32)")
    x = first_images(synthetic_photos, mixed.card, 8)
    reference = OnnxClassifier(COMPRESSED, threads=1)(x)
    plain = OpenVinoClassifier(COMPRESSED, threads=1, compute="bf16")(x)
    assert bf16_mixed.divergence(reference, mixed(x)) < bf16_mixed.divergence(reference, plain)
    everywhere = mixed._compile({"INFERENCE_NUM_THREADS": 1}, bf16_mixed.keep_fp32(
        mixed._model(), bf16_mixed.convolutions(mixed._model())))  # every convolution kept: nearer still
    assert bf16_mixed.divergence(reference, bf16_mixed.logits(everywhere, x)) < bf16_mixed.divergence(reference, plain)


@needs_openvino
def test_an_openvino_that_refuses_the_layer_attribute_makes_bf16_mixed_unavailable(monkeypatch):
    import openvino as ov

    from edge.inference import bf16_mixed

    model = ov.Core().read_model(OnnxClassifier(COMPRESSED, threads=1).plain_bytes(), b"")
    monkeypatch.setitem(bf16_mixed.KEEP_FP32, "value", "notatype:f16")  # as an OpenVINO without it would refuse
    with pytest.raises(backends.ProviderUnavailable, match=r"bf16-mixed needs an OpenVINO that keeps single layers "
                                                           r"float32 \(2026.4 does\); OpenVINO [\d.]+ refused it: \S"):
        bf16_mixed.keep_fp32(model, bf16_mixed.convolutions(model)[:1])


def test_divergence_is_the_kl_of_the_softmaxes():
    from edge.inference.bf16_mixed import divergence

    same = np.array([[1.0, 2.0, 3.0]], np.float32)
    assert divergence(same, same) == pytest.approx(0, abs=1e-12)
    assert divergence(same, same + 5) == pytest.approx(0, abs=1e-12)  # softmax ignores a shift
    p, q = np.array([0.5, 0.5]), np.array([0.9, 0.1])
    expected = float((p * np.log(p / q)).sum())
    assert divergence(np.log(p)[None], np.log(q)[None]) == pytest.approx(expected, rel=1e-9)


def test_a_missing_openvino_is_a_row_that_says_how_to_install_it(synthetic_student_onnx, tmp_path):
    done = python_without(("openvino",), "from edge.cli import main\nsys.argv[0] = 'edge'\nmain()", "bench",
                          synthetic_student_onnx, "--provider", "ort-cpu,ov-cpu", "--batch", "1", "--repeats", "1",
                          "--min-time", "0.01", "--threads", "1", "--quiet", "--json", tmp_path / "r.json")
    assert done.returncode == 0, done.stderr
    rows = {r["backend"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert rows["ort-cpu"]["status"] == "ok"
    assert rows["ov-cpu"]["status"] == "unavailable"
    assert rows["ov-cpu"]["reason"] == 'openvino not installed: pip install "edge-compress[openvino]"'


def test_provider_auto_without_openvino_picks_among_what_is_installed(synthetic_student_onnx, synthetic_photos,
                                                                      tmp_path):
    done = python_without(("openvino",), "from edge.cli import main\nsys.argv[0] = 'edge'\nmain()", "predict",
                          synthetic_student_onnx, synthetic_photos, "-o", tmp_path / "p.csv", "--provider", "auto",
                          "--threads", "1", "--quiet", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    measured = report["measured"]
    assert measured["mode"] == "auto" and measured["backend"] == "ort-cpu" and measured["agreement"] >= 0.995
    assert summary(measured).startswith("--provider auto chose ort-cpu")  # the log line's record of the choice
    trials = {(t["backend"], t["compute"]): t for t in measured["trials"]}
    assert trials[("ort-cpu", "fp32")]["agreement"] == 1.0
    assert "openvino not installed" in trials[("ov-cpu", "fp32")]["reason"]
    plain = CliRunner().invoke(main, ["predict", str(synthetic_student_onnx), str(synthetic_photos), "-o",
                                      str(tmp_path / "fp32.csv"), "--threads", "1", "--quiet"])
    assert plain.exit_code == 0, plain.output
    if measured["compute"] == "fp32":
        assert (tmp_path / "p.csv").read_text() == (tmp_path / "fp32.csv").read_text()


@pytest.mark.skipif(bool(ONNX_ABSENT), reason=str(ONNX_ABSENT))
def test_predict_offers_a_compute_precision_only_with_its_measured_agreement(synthetic_student_onnx,
                                                                            synthetic_photos, tmp_path):
    if backends.compute_missing(backends.resolve("ort-cpu"), "int8"):
        pytest.skip(backends.compute_missing(backends.resolve("ort-cpu"), "int8"))
    result = CliRunner().invoke(main, ["predict", str(synthetic_student_onnx), str(synthetic_photos), "-o",
                                       str(tmp_path / "p.csv"), "--compute", "int8", "--calib", str(synthetic_photos),
                                       "--threads", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "(CPUExecutionProvider int8)" in result.output
    assert re.search(r"compute ort-cpu int8: \d+\.\d\d% top-1 agreement with fp32 on \d+ calibration photos",
                     result.output), result.output
    refused = CliRunner().invoke(main, ["predict", str(synthetic_student_onnx), str(synthetic_photos), "-o",
                                        str(tmp_path / "q.csv"), "--compute", "bf16", "--provider", "cpu", "--quiet"])
    assert refused.exit_code == 2 and "ort-cpu computes in fp32, int8, not bf16" in refused.output
    assert not (tmp_path / "q.csv").exists()


def test_bench_rows_per_compute_carry_agreement_peak_share_best_batch_and_the_auto_choice(
        synthetic_student_onnx, synthetic_photos, tmp_path):
    computes = "fp32,int8" if not ONNX_ABSENT else "fp32"
    result = CliRunner().invoke(main, ["bench", str(synthetic_student_onnx), "--provider", "ort-cpu", "--compute",
                                       computes, "--calib", str(synthetic_photos), "--data", str(synthetic_photos),
                                       "--batch", "1,4", "--repeats", "1", "--min-time", "0.01", "--threads", "1",
                                       "--quiet", "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "r.json").read_text())
    rows = {r["format"]: r for r in doc["rows"]}
    fp32 = rows["fp32"]
    assert fp32["compute"] == "fp32" and fp32["vs_fp32"]["agreement"] == 1.0 == fp32["vs_fp32"]["calib_agreement"]
    assert fp32["best_batch"] in (1, 4) and (fp32["peak_share"] is None or 0 < fp32["peak_share"] < 1)
    assert doc["auto_choice"]["rule"].startswith("fastest p50") and doc["auto_choice"]["agreement"] >= 0.995
    assert "--provider auto: ort-cpu" in result.output or "--provider auto:" in result.output
    int8 = rows.get("fp32@int8")
    if int8 and int8["status"] == "ok":
        assert int8["compute"] == "int8" and 0 <= int8["vs_fp32"]["agreement"] <= 1


def _row(fmt: str, compute: str, p50: float, speedup: float, agreement: float) -> dict:
    return {"status": "ok", "backend": "ort-cpu", "format": fmt, "compute": compute, "p50_ms": {"median": p50},
            "img_s": {"1": {"median": 1e3 / p50}, "32": {"median": 1.1e3 / p50}}, "peak_share": 0.4, "best_batch": 32,
            "vs_fp32": {"speedup": {"median": speedup}, "agreement": agreement, "calib_agreement": agreement},
            "repeats": [{"img_s": {"1": 1e3 / p50, "32": 1.1e3 / p50}}]}


def test_the_summary_names_the_frontier_and_whether_the_faithful_fastest_meets_the_target():
    from studies.cpu_compute_summary import markdown

    doc = {"command": "edge bench m.onnx", "started": "t", "settings": {"threads": 1}, "auto_choice": None,
           "machine": {"cpu": {"model": "Some CPU", "cores": 2, "flags": ["avx512f", "avx512_bf16"]},
                       "load_at_start": {"load_average": [0.1, 0.2, 0.3]}},
           "rows": [_row("uint4", "fp32", 1.2, 1.0, 1.0), _row("uint4@int8", "int8", 0.8, 1.5, 0.98),
                    _row("uint4@bf16", "bf16", 1.0, 1.2, 0.997), _row("slow", "fp32", 2.0, 0.6, 1.0)]}
    text = markdown(doc, "bench/results/x.json")
    assert "Some CPU (2 cores; flags: avx512f, avx512_bf16)" in text and "Source: bench/results/x.json" in text
    assert "Frontier (no other row is both faster and more faithful): ort-cpu uint4, ort-cpu uint4@bf16, " \
           "ort-cpu uint4@int8." in text
    assert "Fastest row with >= 99.5% held-out agreement: ort-cpu uint4@bf16, 1.20x ONNX Runtime fp32 at b=1: " \
           "misses the 1.3x target" in text
    assert "b=32 images/s >= b=1 images/s on every row (median of the per-repeat ratios)." in text
    assert "| 1.10 (1.10-1.10) | 32 |" in text and "--provider auto: no row qualifies." in text


def test_the_summary_pairs_b32_with_b1_per_repeat():
    from studies.cpu_compute_summary import batch_ratio, batch_verdict, repeat_noise

    row = {"repeats": [{"img_s": {"1": 100.0, "32": 90.0}}, {"img_s": {"1": 50.0, "32": 60.0}},
                       {"img_s": {"1": 80.0, "32": 84.0}}]}  # per repeat 0.90, 1.20, 1.05
    assert batch_ratio(row) == {"median": pytest.approx(1.05), "min": pytest.approx(0.9), "max": pytest.approx(1.2)}
    assert batch_ratio({"repeats": [{"img_s": {"1": 100.0}}]}) is None
    assert repeat_noise(row) == pytest.approx((100 - 50) / 80)  # b=1 against itself between repeats
    assert repeat_noise({"repeats": [{"img_s": {"1": 100.0}}]}) is None
    rows = [{"row": "a", "ratio": {"median": 1.2, "min": 1.1, "max": 1.3}, "noise": 0.01},
            {"row": "b", "ratio": {"median": 0.97, "min": 0.9, "max": 1.05}, "noise": 0.04},
            {"row": "c", "ratio": {"median": 0.97, "min": 0.96, "max": 0.98}, "noise": 0.02}]
    assert batch_verdict(rows) == ("b=32 images/s < b=1 images/s (median of the per-repeat ratios) on: b, c. "
                                   "Within the noise (below by no more than b=1 moved between repeats by itself): "
                                   "b (0.970; b=1 moved 4.0%). Slower beyond the noise: c (0.970; b=1 moved 2.0%).")
    assert batch_verdict(rows[:1]).startswith("b=32 images/s >= b=1 images/s on every row")


def test_the_log_line_counts_calibration_photos_in_words_that_agree():
    report = {"backend": "ov-cpu", "compute": "bf16-mixed", "agreement": 1.0, "calib": "cal", "ms_per_image": 0.5,
              "mode": "compute"}
    assert "on 1 calibration photo of cal," in summary({**report, "images": 1})
    assert "on 100 calibration photos of cal," in summary({**report, "images": 100})
