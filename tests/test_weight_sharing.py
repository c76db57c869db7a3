"""Weight sharing (kmeansK), entropy-coded files (--entropy) and the formats table, on tiny seeded
models (fast) and, where ../shared is present, the TA student on real photos."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.cli import main
from edge.core.config import StudentConfig
from edge.codec.entropy import EntropyError, decode_stream, encode_stream, expand, is_entropy_coded
from edge.models.fold import FoldedLayer, fold_model, model_layers
from edge.models.student import build_student
from edge.io.checkpoints import init_checkpoint
from edge.codec.quant import CodebookCode, pack_codes
from edge.inference.runtime import ModelError, OnnxClassifier
from edge.export.calibrate import decoded_model
from edge.export.exporter import export_onnx, leftover_dequantization, prepare
from edge.core.weight_formats import CANDIDATES, parse_format
from edge.export.kmeans import calibrated_codebook, codebook_quantizer, plain_codebook, refit_codebook, weighted_kmeans_1d
from edge.export.quantize import QuantSpec, candidate_specs, encode_model
from edge.export.sensitivity import logits
from synthetic import save_sealed, trained_like

SMALL = StudentConfig(input_size=32)  # the homework's widths (256K weights) on 32x32 inputs


@pytest.fixture(scope="module")
def small():
    """An initialised StudentNet with bell-shaped (normal) weights, as trained ones are; init's are uniform."""
    ckpt = init_checkpoint(SMALL)
    rng = np.random.default_rng(0)
    state = {k: (rng.normal(size=v.shape) * 0.05).astype(np.float32) if k.endswith("weight") and v.ndim > 1 else v
             for k, v in ckpt.state.items()}
    return dataclasses.replace(ckpt, state=state)


def _folded(checkpoint):
    """What `export_onnx` encodes: the classifier merged, BatchNorm folded."""
    return prepare(checkpoint.build())[0]


def test_codebook_decode_is_a_table_lookup_per_tensor_and_per_channel():
    q = np.array([[0, 2, 1], [1, 1, 0]], np.uint8)
    shared = CodebookCode(q, np.array([-1.0, 0.5, 2.0], np.float16))
    np.testing.assert_array_equal(shared.decode(), [[-1.0, 2.0, 0.5], [0.5, 0.5, -1.0]])
    per_channel = CodebookCode(q, np.array([-1.0, 0.5, 2.0], np.float16), np.array([1.0, -2.0], np.float16))
    np.testing.assert_array_equal(per_channel.decode(), [[-1.0, 2.0, 0.5], [-1.0, -1.0, 2.0]])
    assert shared.bits == 2 and CodebookCode(q, np.zeros(16, np.float16)).bits == 4


@pytest.mark.parametrize("per_channel", [False, True])
def test_kmeans_file_decodes_exactly_in_onnx_runtime_and_nothing_is_left_at_run_time(small, per_channel, tmp_path):
    spec = QuantSpec("kmeans16", per_channel=per_channel, method="minmax")
    path = tmp_path / "k16.onnx"
    size, described = export_onnx(small, path, spec)
    assert described["codebook"].endswith("scaled per output channel (fp16)") == per_channel
    folded = _folded(small)
    layers, encodings = encode_model(folded, spec)
    stored = sum(e.q.size / 2 + 2 * e.codebook.size + 2 * len(e.q) * per_channel for e in encodings.values())
    assert size < stored + 15_000  # 4-bit indices densely packed, fp16 codebooks (and scales) + biases, graph
    assert leftover_dequantization(path) == {}
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(OnnxClassifier(path)(images), logits(decoded_model(folded, layers, encodings), images),
                               rtol=1e-4, atol=1e-4)


def test_weighted_kmeans_is_exact_with_enough_centroids_and_follows_the_weights():
    values = np.array([0.0, 0.0, 1.0, 3.0, 3.0, 7.0])
    np.testing.assert_array_equal(weighted_kmeans_1d(values, np.ones(6), 8), [0.0, 1.0, 3.0, 7.0])
    x = np.array([0.0, 1.0])
    assert weighted_kmeans_1d(x, np.array([1.0, 1.0]), 1)[0] == pytest.approx(0.5)
    assert weighted_kmeans_1d(x, np.array([1.0, 9.0]), 1)[0] == pytest.approx(0.9)
    code = plain_codebook(np.array([[0.0, 1.0, 5.0, 5.1]], np.float32), 2, per_channel=False)
    np.testing.assert_allclose(np.unique(code.decode()), [0.5, 5.05], rtol=1e-3)  # fp16 centroids


def test_least_squares_centroids_are_cluster_means_under_an_identity_hessian():
    rng = np.random.default_rng(1)
    weights = torch.from_numpy(rng.normal(size=(1, 4, 6)))
    codes = torch.from_numpy(rng.integers(0, 3, size=(1, 4, 6)))
    book = refit_codebook(weights, torch.eye(6, dtype=torch.float64)[None], codes, torch.zeros(3, dtype=torch.float64),
                          torch.ones(1, 4, dtype=torch.float64), damping=1e-9)
    np.testing.assert_allclose(book.numpy(), [weights[codes == k].mean() for k in range(3)], atol=1e-6)
    scales = torch.tensor([[1.0, 2.0, 1.0, 2.0]], dtype=torch.float64)  # per channel: means of w / s, weighted by s²
    book = refit_codebook(weights, torch.eye(6, dtype=torch.float64)[None], codes, torch.zeros(3, dtype=torch.float64),
                          scales, damping=1e-9)
    s = scales[..., None].expand_as(weights)
    np.testing.assert_allclose(book.numpy(), [float((weights * s)[codes == k].sum() / (s * s)[codes == k].sum())
                                              for k in range(3)], atol=1e-6)
    quantize = codebook_quantizer(torch.tensor([[[-1.0, 0.0, 2.0]]], dtype=torch.float64))
    q, values = quantize(torch.tensor([[0.9, 1.1, -3.0]], dtype=torch.float64))
    assert q.tolist() == [[1, 2, 0]] and values.tolist() == [[0.0, 2.0, -1.0]]


@pytest.mark.parametrize("per_channel", [False, True])
def test_calibrated_codebook_beats_plain_kmeans_on_the_output(per_channel):
    rng = np.random.default_rng(2)
    inputs = rng.normal(size=(512, 8)) @ rng.normal(size=(8, 32)) + 0.1 * rng.normal(size=(512, 32))  # correlated
    layer = FoldedLayer("fc.0", "fc", rng.normal(size=(24, 32)).astype(np.float32), np.zeros(24, np.float32))
    rows = torch.from_numpy(inputs)[None]
    hessian = torch.einsum("gmk,gml->gkl", rows, rows)

    def output_error(code):
        return float(np.square((code.decode().astype(np.float64) - layer.weight) @ inputs.T).mean())

    assert output_error(calibrated_codebook(layer, hessian, 8, per_channel)) < 0.3 * output_error(
        plain_codebook(layer.weight, 8, per_channel))


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 8), size=st.integers(1, 3000), skew=st.floats(0.0, 3.0), seed=st.integers(0, 2 ** 16))
def test_entropy_coding_round_trips_random_and_skewed_codes(bits, size, skew, seed):
    rng = np.random.default_rng(seed)
    probabilities = np.exp(-skew * np.arange(2 ** bits))
    codes = rng.choice(2 ** bits, size=size, p=probabilities / probabilities.sum()).astype(np.uint8)
    packed = pack_codes(codes, bits)
    codec, layout, data = encode_stream(packed, bits)
    np.testing.assert_array_equal(decode_stream(codec, layout, data, bits, len(packed)), packed)
    if skew >= 2 and size >= 2000 and bits >= 4:  # nearly all codes 0 or 1: far under `bits` bits each
        assert len(data) < 0.5 * len(packed)


def test_corrupt_entropy_streams_are_refused():
    packed = pack_codes(np.arange(200, dtype=np.uint8) % 16, 4)
    codec, layout, data = encode_stream(packed, 4)
    with pytest.raises(EntropyError):
        decode_stream(codec, layout, data[:-5] + b"\x00" * 5, 4, len(packed))
    with pytest.raises(EntropyError):
        decode_stream(codec, layout, data, 4, len(packed) + 1)


def test_entropy_file_is_smaller_refused_by_plain_onnx_runtime_and_opened_by_edge(small, tmp_path):
    import onnxruntime as ort

    plain, coded = tmp_path / "plain.onnx", tmp_path / "coded.onnx"
    export_onnx(small, plain, QuantSpec("uint4", method="minmax"))
    size, described = export_onnx(small, coded, QuantSpec("uint4", method="minmax", entropy=True))
    assert size == coded.stat().st_size < plain.stat().st_size  # per-tensor 4-bit codes are bell-shaped
    assert "edge convert" in described["entropy"]
    with pytest.raises(Exception, match="edge.entropy"):
        ort.InferenceSession(str(coded), providers=["CPUExecutionProvider"])
    assert "edge convert" in onnx.load(coded).doc_string
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_array_equal(OnnxClassifier(coded)(images), OnnxClassifier(plain)(images))
    assert leftover_dequantization(coded) == {}
    stored = {t.name: t for t in onnx.load(plain).graph.initializer}
    assert all(stored[t.name] == t for t in expand(onnx.load(coded)).graph.initializer)


def test_cli_entropy_export_info_and_convert_to_plain_onnx(tmp_path):
    runner = CliRunner()
    coded, plain = tmp_path / "k.onnx", tmp_path / "plain.onnx"
    result = runner.invoke(main, ["export", "-o", str(coded), "--quant", "kmeans16", "--method", "minmax", "--entropy"])
    assert result.exit_code == 0, result.output
    assert "no dequantization left after load" in result.output
    info = runner.invoke(main, ["info", "--json", str(coded)])
    assert info.exit_code == 0 and '"weights": "kmeans16"' in info.output and "entropy" in info.output
    result = runner.invoke(main, ["convert", str(coded), "--to", "onnx", "-o", str(plain)])
    assert result.exit_code == 0, result.output
    assert not is_entropy_coded(onnx.load(plain)) and is_entropy_coded(onnx.load(coded))
    import onnxruntime as ort

    ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"])
    again = runner.invoke(main, ["convert", str(coded), "--to", "onnx", "-o", str(coded)])
    assert again.exit_code == 2 and "is the same file as" in again.output
    bad = runner.invoke(main, ["export", "-o", str(tmp_path / "x.onnx"), "--quant", "fp16", "--entropy"])
    assert bad.exit_code == 2 and "--entropy" in bad.output


def test_corrupt_entropy_file_is_a_clear_model_error(small, tmp_path):
    path = tmp_path / "coded.onnx"
    export_onnx(small, path, QuantSpec("uint4", method="minmax", entropy=True))
    model = onnx.load(path)
    data = next(a for a in model.graph.node[0].attribute if a.name == "data")
    data.s = data.s[: len(data.s) // 2]
    save_sealed(model, path)
    with pytest.raises(ModelError, match="corrupt"):
        OnnxClassifier(path)


def test_formats_table_parses_names_and_lists_the_candidates():
    assert parse_format("kmeans16")[1] == 16 and parse_format("uint5")[0].bits(5) == 5
    assert parse_format("kmeans16")[0].bits(16) == 4 and parse_format("kmeans17")[0].bits(17) == 5
    for bad in ("kmeans1", "kmeans300", "uint9", "int4"):
        with pytest.raises(ValueError, match="unknown weight format"):
            parse_format(bad)
    assert len(candidate_specs()) == len(CANDIDATES) and candidate_specs()[-1] == QuantSpec("fp32")
    with pytest.raises(ValueError, match="train-epochs"):
        QuantSpec("fp16", train_epochs=2)


def test_low_rank_is_exact_at_full_rank_and_keeps_the_asked_energy():
    from edge.export.lowrank import factorize, rank_for_energy

    weight = np.random.default_rng(3).normal(size=(24, 16, 1, 1)).astype(np.float32)
    np.testing.assert_allclose(factorize(weight, 16).decode(), weight, atol=1e-5)
    singular = np.array([3.0, 2.0, 1.0, 0.0])
    assert [rank_for_energy(singular, e) for e in (0.5, 9 / 14, 13 / 14, 0.99, 1.0)] == [1, 1, 2, 3, 3]
    truncated = factorize(weight, 4)
    assert truncated.rank == 4 and truncated.left.array.shape == (24, 4) and truncated.right.array.shape == (4, 16)
    kept = np.linalg.svd(weight.reshape(24, 16), compute_uv=False)
    residual = np.linalg.norm(truncated.decode() - weight) ** 2
    assert residual == pytest.approx(np.sum(kept[4:] ** 2), rel=1e-4)  # Eckart-Young: the best rank-4 error


def test_low_rank_file_is_smaller_folded_at_load_and_exact_at_energy_one(small, tmp_path):
    from edge.export.lowrank import LowRankWeight

    folded = _folded(small)
    full, _ = export_onnx(small, tmp_path / "fp16.onnx", QuantSpec("fp16"))
    export_onnx(small, tmp_path / "one.onnx", QuantSpec("fp16", low_rank=1.0))
    assert not any(node.op_type == "MatMul" for node in onnx.load(tmp_path / "one.onnx").graph.node)  # full rank
    # never saves bytes, so nothing is factored
    path = tmp_path / "low.onnx"
    size, described = export_onnx(small, path, QuantSpec("fp16", low_rank=0.5))
    assert size < 0.9 * full and "U·V" in described["low_rank"]
    assert leftover_dequantization(path) == {}
    layers, encodings = encode_model(folded, QuantSpec("fp16", low_rank=0.5))
    assert any(isinstance(e, LowRankWeight) for e in encodings.values())
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(OnnxClassifier(path)(images), logits(decoded_model(folded, layers, encodings), images),
                               rtol=1e-3, atol=1e-3)


def _tiny_teacher(seed: int = 4):
    """A folded tiny StudentNet with large random weights (coarse codes hurt it) and some images."""
    config = StudentConfig(widths=(8, 16, 32), pools=(0, 1), input_size=32)
    rng = np.random.default_rng(seed)
    state = {k: (rng.normal(size=v.shape) * 0.3).astype(np.float32) if k.endswith("weight") and v.ndim > 1 else v
             for k, v in init_checkpoint(config).state.items()}
    return fold_model(build_student(config, state)), rng.random((48, 3, 32, 32), dtype=np.float32)


@pytest.mark.parametrize("spec", [QuantSpec("kmeans4", method="minmax"), QuantSpec("kmeans4", per_channel=True, method="minmax"),
                                  QuantSpec("uint3", method="minmax"), QuantSpec("uint3", per_channel=True, method="minmax")],
                         ids=lambda s: s.label)
def test_trained_quantization_matches_the_teacher_better_on_held_out_images(spec):
    from edge.export.finetune import train_quantized

    teacher, images = _tiny_teacher()
    train, held_out = images[:32], images[32:]
    layers, codes = encode_model(teacher, spec)
    quantized = decoded_model(teacher, layers, codes, np.float32)
    target = logits(teacher, held_out)

    def error(model):
        return float(np.square(logits(model, held_out) - target).mean())

    before = error(quantized)
    trained = train_quantized(quantized, codes, teacher, train, epochs=8, lr=3e-2, progress=False)
    assert error(quantized) < 0.8 * before  # the model now holds the trained weights
    for layer in model_layers(quantized):
        code, old = trained[layer.name], codes[layer.name]
        np.testing.assert_array_equal(code.decode(), layer.weight)
        assert type(code) is type(old) and code.q.shape == old.q.shape
        if isinstance(code, CodebookCode):  # indices fixed, fp16 values trained
            np.testing.assert_array_equal(code.q, old.q)
            assert code.codebook.dtype == np.float16 and (code.scale is None) == (old.scale is None)
        else:  # codes re-chosen on the same grid
            assert code.q.max() <= code.levels and (code.offset == old.offset).all() and (code.step == old.step).all()


def test_trained_export_is_what_onnx_runtime_computes(tmp_path):
    config = StudentConfig(widths=(8, 16, 32, 48), pools=(0, 1), input_size=32)
    ckpt = dataclasses.replace(init_checkpoint(config), state=trained_like(config))
    spec = QuantSpec("kmeans16", per_channel=True, train_epochs=2)
    path = tmp_path / "trained.onnx"
    _, described = export_onnx(ckpt, path, spec)
    assert "trained" in described and "classifier_merge" in described
    folded = _folded(ckpt)
    layers, encodings = encode_model(folded, spec, input_shape=(3, 32, 32), progress=False)
    images = np.random.default_rng(1).random((4, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(OnnxClassifier(path)(images), logits(decoded_model(folded, layers, encodings), images),
                               rtol=1e-4, atol=1e-4)


def test_spec_labels_name_every_option():
    assert QuantSpec("uint8").label == "uint8"
    assert QuantSpec("kmeans16", per_channel=True, entropy=True).label == "kmeans16 per-channel entropy"
    assert QuantSpec("fp16", low_rank=0.9).label == "fp16 low-rank 0.9"
    assert QuantSpec("kmeans16", fp16_below=3000, train_epochs=2).label == "kmeans16 fp16-below 3000 trained 2"
    assert QuantSpec("kmeans16", method="minmax", fp16_below=3000).label == "kmeans16"  # data-free keeps every layer coded


def test_frontier_keeps_the_smallest_file_within_the_drop_per_technique(tmp_path):
    import json

    from studies.frontier import compress_technique, frontier, run_points, technique

    assert technique("--quant uint4 --per-channel --entropy") == "uintN per-channel + entropy"
    assert compress_technique({"stage": "mixed", "format": "uint4 per-channel entropy=True cnn.2.3:8"}) \
        == "mixed precision: uint4 per-channel + entropy"
    assert compress_technique({"stage": "slimming", "format": "uint8"}) == "slimming + uint8"
    assert technique("--quant kmeans16 --fp16-below 3000") == "kmeansK per-tensor + fp16 small layers"
    assert technique("--quant fp16 --low-rank 0.9") == "fp16 + low rank"
    rows = [("--quant fp32", 1000, 0.80), ("--quant uint4", 100, 0.795), ("--quant uint3", 80, 0.78),
            ("--quant uint5", 120, 0.80), ("--quant kmeans16", 90, 0.70)]
    run = tmp_path / "run.json"
    run.write_text(json.dumps({"held_out": 10, "calib_count": 5, "rows": [
        {"variant": v, "bytes": b, "accuracy": a, "agreement": 1.0} for v, b, a in rows]}))
    best = {row["technique"]: row["best"] for row in frontier(run_points(run), 0.01)}
    assert best["uintN per-tensor"]["options"] == "--quant uint4"  # uint3 is smaller but 2 pt down
    assert best["kmeansK per-tensor"] is None
