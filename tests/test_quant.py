"""Weight codecs and the accuracy-aware tools: packing, sub-byte export, --max-drop, sensitivity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.checkpoints import load_checkpoint
from edge.quant import minmax_encode, pack_codes, unpack_codes
from edge.runtime import OnnxClassifier
from edge.export.exporter import export_onnx, leftover_dequantization, load_images
from edge.export.quantize import QuantSpec
from edge.export.select import select_format
from edge.export.sensitivity import layer_sensitivity


@settings(max_examples=120, deadline=None)
@given(bits=st.integers(1, 8), size=st.integers(1, 300), seed=st.integers(0, 2 ** 16))
def test_every_width_packs_densely_and_unpacks_exactly(bits, size, seed):
    q = np.random.default_rng(seed).integers(0, 2 ** bits, size=(size, 1), dtype=np.uint8)
    packed = pack_codes(q, bits)
    assert len(packed) == -(-size * bits // 8)
    np.testing.assert_array_equal(unpack_codes(packed, bits, q.shape), q)


def test_sub_byte_layout_puts_the_first_code_in_the_lowest_bits():
    assert list(pack_codes(np.array([1, 2, 3, 0, 3]), 2)) == [1 | 2 << 2 | 3 << 4, 3]
    assert list(pack_codes(np.array([5, 7, 1]), 3)) == [5 | 7 << 3 | (1 & 3) << 6, 0]


@pytest.mark.parametrize("bits", [3, 5, 6, 7])
def test_odd_widths_are_packed_in_the_file_and_decoded_exactly_by_onnx_runtime(bits, tmp_path):
    import dataclasses

    from edge.config import StudentConfig
    from edge.fold import fold_student
    from edge.models import init_checkpoint
    from edge.export.calibrate import folded_forward
    from edge.export.quantize import encode_layers

    ckpt = init_checkpoint(StudentConfig(input_size=32))  # the homework's widths: 256K weights
    spec = QuantSpec(f"uint{bits}", per_channel=True, method="minmax")
    path = tmp_path / "odd.onnx"
    size, _ = export_onnx(ckpt, path, spec)
    layers = fold_student(ckpt.card.config, ckpt.state)
    weights = sum(layer.weight.size for layer in layers)
    assert size < weights * (bits + 1) / 8  # codes densely packed (one per byte would be `weights` bytes)
    assert leftover_dequantization(path) == {}
    _, codes = encode_layers(layers, spec)
    decoded = [dataclasses.replace(l, weight=codes[l.name].decode(), bias=l.bias.astype(np.float16).astype(np.float32))
               for l in layers]
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(OnnxClassifier(path)(images), folded_forward(decoded, images), rtol=1e-4, atol=1e-4)


def test_minmax_is_exact_at_the_ends_and_on_constants():
    w = np.array([[-1.0, 0.0, 3.0], [2.0, 2.0, 2.0]], np.float32)
    code = minmax_encode(w, 8)
    assert code.q.min() == 0 and code.q.max() == 255
    assert code.decode()[0, 0] == -1.0 and code.decode()[0, 2] == 3.0
    per_channel = minmax_encode(w, 4, per_channel=True)
    np.testing.assert_array_equal(per_channel.decode()[1], w[1])


@pytest.fixture(scope="module")
def ta(ta_student):
    return load_checkpoint(ta_student)


def test_uint4_file_is_packed_and_folded_at_load(ta, food11_test, tmp_path):
    path = tmp_path / "ta_uint4.onnx"
    calibration = load_images(ta, food11_test, 32)
    size, _ = export_onnx(ta, path, QuantSpec("uint4", per_channel=True), *calibration)
    uint8_size, _ = export_onnx(ta, tmp_path / "ta_uint8.onnx", QuantSpec("uint8"), *calibration)
    assert size < 0.65 * uint8_size
    assert leftover_dequantization(path) == {}
    images, _ = load_images(ta, food11_test, 64, offset=32)
    agreement = np.mean(OnnxClassifier(path)(images).argmax(1) == OnnxClassifier(tmp_path / "ta_uint8.onnx")(images).argmax(1))
    assert agreement >= 0.85


def test_max_drop_returns_the_smallest_format_within_the_drop(ta, food11_test, tmp_path):
    validation, _ = load_images(ta, food11_test, 96)
    chosen, trials = select_format(ta, tmp_path / "chosen.onnx", validation, None, max_drop=0.5,
                                   candidates=(QuantSpec("uint2", per_channel=True, method="minmax"),
                                               QuantSpec("fp16"), QuantSpec("fp32")))
    assert [t.passed for t in trials][:1] == [False]  # 2-bit min-max loses far more than 0.5 pt
    assert chosen is trials[-1] and chosen.agreement >= 99.5
    assert (tmp_path / "chosen.onnx").stat().st_size == chosen.bytes


def test_sensitivity_ranks_layers(ta, food11_test):
    images, _ = load_images(ta, food11_test, 16)
    rows = layer_sensitivity(ta, images, bits=2)
    assert len(rows) == 16 and rows[0].agreement <= rows[-1].agreement
    assert rows[0].max_logit_change > 0
    shared = layer_sensitivity(ta, images, kmeans=4)
    assert len(shared) == 16 and shared[0].agreement <= shared[-1].agreement and shared[0].max_logit_change > 0


def test_int8_qdq_runs_int8_kernels(ta, food11_test, tmp_path):
    from edge.export.exporter import runtime_ops

    path = tmp_path / "ta_int8.onnx"
    calibration = load_images(ta, food11_test, 16)
    export_onnx(ta, path, QuantSpec("int8", per_channel=True), *calibration)
    ops = runtime_ops(path)
    assert any(op.startswith("QLinear") for op in ops), ops
    model = OnnxClassifier(path)
    assert model.quant["weights"] == "int8" and model.card == ta.card
    images, _ = load_images(ta, food11_test, 32, offset=16)
    assert model(images).shape == (32, 11)


def test_equalization_keeps_the_function_and_shrinks_per_tensor_error(ta, food11_test):
    import dataclasses

    from edge.fold import fold_student
    from edge.export.calibrate import folded_forward
    from edge.export.equalize import equalizable, equalize

    images, _ = load_images(ta, food11_test, 16)
    layers = fold_student(ta.card.config, ta.state)
    equalized = equalize(layers)
    pairs = [i for i in range(len(layers) - 1) if equalizable(layers[i], layers[i + 1])]
    assert len(pairs) == 7  # every pointwise conv -> next depthwise conv, and the last one -> classifier
    before, after = folded_forward(layers, images), folded_forward(equalized, images)
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4 * np.abs(before).max())

    def per_tensor_error(model, i):
        quantized = list(model)
        quantized[i] = dataclasses.replace(model[i], weight=minmax_encode(model[i].weight, 8).decode())
        return float(np.square(folded_forward(quantized, images) - before).mean())

    # the pair (cnn.5.3 -> cnn.6.0): its depthwise channels span very different ranges after BN folding
    first = next(i for i, layer in enumerate(layers) if layer.name == "cnn.6.0")
    assert per_tensor_error(equalized, first) < 0.6 * per_tensor_error(layers, first)


def test_mixed_precision_gives_named_layers_their_own_width(ta, food11_test):
    from edge.fold import fold_student
    from edge.export.calibrate import folded_forward
    from edge.export.quantize import encode_layers

    calibration, _ = load_images(ta, food11_test, 16)
    held_out, _ = load_images(ta, food11_test, 32, offset=16)
    layers = fold_student(ta.card.config, ta.state)
    spec = QuantSpec("uint4", per_channel=True)
    plain_layers, plain = encode_layers(layers, spec, calibration)
    mixed_layers, mixed = encode_layers(layers, spec, calibration, layer_bits={"cnn.4.3": 8})
    assert mixed["cnn.4.3"].bits == 8 and plain["cnn.4.3"].bits == 4
    assert all(mixed[name].bits == 4 for name in ("cnn.3.3", "cnn.5.3", "fc.0"))
    reference = folded_forward(layers, held_out)

    def error(quantized):
        return float(np.square(folded_forward(quantized, held_out) - reference).mean())

    assert error(mixed_layers) < 0.95 * error(plain_layers)  # 32,768 weights at 8 bits: a visible share of the error
