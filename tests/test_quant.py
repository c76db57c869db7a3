"""Weight codecs, calibration (GPTQ, bias correction, equalization) on any torch classifier, and the
accuracy-aware tools: packing, sub-byte export, --max-drop, sensitivity. The core maths runs on tiny
seeded synthetic models (a StudentNet, a residual net, torchvision's mobilenet_v3_small); the TA
student on real photos where ../shared is present."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from edge.io.checkpoints import load_checkpoint
from edge.core.config import StudentConfig
from edge.models.fold import fold_model, model_layers
from edge.models.student import StudentNet, build_student
from edge.codec.quant import minmax_encode, pack_codes, unpack_codes
from edge.inference.runtime import OnnxClassifier
from edge.export.calibrate import Passes, calibrate, decoded_model, grouped, input_rows, synthetic_images
from edge.export.equalize import equalization_pairs, equalize
from edge.export.exporter import export_onnx, leftover_dequantization, prepare, preprocessed_images
from edge.export.quantize import QuantSpec, encode_model
from edge.export.select import select_format
from edge.export.sensitivity import layer_sensitivity, logits


def _randomised(model: nn.Module, seed: int = 0, gain: tuple[float, float] = (0.2, 3.0)) -> nn.Module:
    """``model`` in eval mode with bell-shaped weights and BatchNorm statistics that spread its channels
    (each BatchNorm multiplies a channel by ``gain / sqrt(var)``, var in 0.5..2)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.normal_(0, (2 / module.weight[0].numel()) ** 0.5)
                if module.bias is not None:
                    module.bias.uniform_(-0.1, 0.1)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(*gain)
                module.bias.uniform_(-0.3, 0.3)
    return model.eval()


class _ResidualNet(nn.Module):
    """Two residual blocks (one strided, with a 1x1 downsample), on 1-channel images."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                               nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.b = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                               nn.Conv2d(32, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 1, stride=2, bias=False), nn.BatchNorm2d(32))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(self.a(x) + x)
        x = F.relu(self.b(x) + self.down(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _mobilenet():
    """torchvision's mobilenet_v3_small (hardswish, squeeze-excitation, residuals) at a quarter width, 1 channel."""
    from torchvision.models import mobilenet_v3_small

    model = mobilenet_v3_small(num_classes=10, width_mult=0.25)
    model.features[0][0] = nn.Conv2d(1, model.features[0][0].out_channels, 3, 2, 1, bias=False)
    return _randomised(model, gain=(0.5, 1.5))  # 50 layers deep: milder BatchNorms keep the logits finite


TINY_STUDENT = StudentConfig(widths=(8, 16, 32, 64), pools=(0, 1), input_size=32)
MODELS = {"student": (lambda: _randomised(StudentNet(TINY_STUDENT)), (3, 32, 32)),
          "residual": (lambda: _randomised(_ResidualNet()), (1, 32, 32)), "mobilenet_v3_small": (_mobilenet, (1, 32, 32))}


def _images(shape, count, seed):
    return np.random.default_rng(seed).random((count, *shape), dtype=np.float32)


@pytest.mark.parametrize("name", list(MODELS))
def test_gptq_output_error_is_below_minmax_on_any_classifier(name):
    build, shape = MODELS[name]
    folded = fold_model(build())
    calibration, held_out = synthetic_images(16, shape[0], shape[1], seed=1), synthetic_images(16, shape[0], shape[1], seed=2)
    reference = logits(folded, held_out)

    def error(method):
        spec = QuantSpec("uint4", per_channel=True, method=method, fp16_below=0)
        layers, encodings = encode_model(folded, spec, calibration, progress=False)
        assert [l.name for l in layers] == [l.name for l in model_layers(folded)]
        return float(np.square(logits(decoded_model(folded, layers, encodings), held_out) - reference).mean())

    assert error("gptq") < 0.7 * error("minmax")
    np.testing.assert_array_equal(logits(folded, held_out), reference)  # the caller's model is not changed


def test_without_images_calibration_runs_on_synthetic_ones_of_the_input_shape():
    folded = fold_model(_randomised(_ResidualNet()))
    spec = QuantSpec("uint8", fp16_below=0)
    _, data_free = encode_model(folded, spec, input_shape=(1, 16, 16), progress=False)
    _, explicit = encode_model(folded, spec, synthetic_images(64, 1, 16), progress=False)
    assert all(np.array_equal(data_free[name].q, explicit[name].q) for name in explicit)
    with pytest.raises(ValueError, match="input_shape"):
        encode_model(folded, spec)


def test_passes_resume_from_graph_cuts_and_see_what_the_model_computes():
    folded = fold_model(_randomised(_ResidualNet()))
    images = _images((1, 16, 16), 4, 0)
    names = [layer.name for layer in model_layers(folded)]
    reference, resumed, starts = {}, {}, {}
    Passes(folded, images).run({name: lambda _m, _x, y, name=name: reference.setdefault(name, y) for name in names})
    passes = Passes(folded, images)
    for name in names:
        passes.advance(name)
        starts[name] = passes.start.name
        passes.run({name: lambda _m, _x, y, name=name: resumed.setdefault(name, y)}, stop_at=name)
        torch.testing.assert_close(resumed[name], reference[name], rtol=0, atol=0)
    # a chain resumes right before the layer; inside a residual block, before the block (the add reads its input)
    assert starts["a.0"] == starts["a.3"] == "stem_2" and starts["b.3"] == "relu" and starts["fc"] == "flatten"


def test_layer_inputs_as_rows_reproduce_any_convolution():
    torch.manual_seed(0)
    for conv in (nn.Conv2d(4, 6, 3, stride=2, padding=(1, 2), dilation=2, groups=2),
                 nn.Conv2d(4, 8, (3, 1), padding="same", padding_mode="reflect", groups=4),
                 nn.Conv2d(4, 4, 1, stride=2), nn.Linear(4, 3)):
        x = torch.randn(2, 4, 9, 9) if isinstance(conv, nn.Conv2d) else torch.randn(2, 5, 4)
        layer = model_layers(fold_model(nn.Sequential(conv)))[0]
        rows = input_rows(conv, x).double()  # (groups, rows, weights per output)
        weights = grouped(layer, layer.weight)  # (groups, outputs per group, weights per output)
        got = torch.einsum("grk,gmk->gmr", weights, rows) + grouped(layer, layer.bias[:, None])[..., 0][:, None, :]
        y = conv(x).detach().double()
        if isinstance(conv, nn.Conv2d):  # (N, groups * R, H, W) -> (groups, N * H * W, R)
            y = y.reshape(len(y), layer.groups, -1, y.shape[2] * y.shape[3]).permute(1, 0, 3, 2)
        np.testing.assert_allclose(got.numpy(), y.reshape(got.shape).numpy(), atol=1e-5)


class _Pairs(nn.Module):
    """Pairs that equalize exactly (through ReLU + max-pool into a depthwise conv, ReLU + zero padding
    into a full conv, ReLU + dropout into a linear layer) and ones that must not (ReLU6, a residual)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.c, self.d = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3)
        self.e = nn.Conv2d(16, 16, 1)
        self.fc1, self.drop, self.fc2 = nn.Linear(16, 12), nn.Dropout(0.2), nn.Linear(12, 5)

    def forward(self, x):
        x = self.b(F.max_pool2d(F.relu(self.a(x)), 2))
        x = self.d(F.pad(F.relu(self.c(F.relu6(x))), (1, 1, 1, 1)))
        x = self.e(x) + x
        return self.fc2(self.drop(F.relu(self.fc1(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)))))


def test_equalization_finds_the_exact_pairs_and_keeps_the_function():
    model = _randomised(_Pairs())
    with torch.no_grad():  # channel ranges 30x apart: per-tensor rounding wastes most levels
        for layer in (model.a, model.c, model.fc1):
            layer.weight.mul_(torch.logspace(-0.7, 0.7, len(layer.weight)).reshape(-1, *[1] * (layer.weight.ndim - 1)))
    folded = fold_model(model)
    images = _images((3, 16, 16), 16, 0)
    assert [(a, b) for a, b, _ in equalization_pairs(folded, torch.from_numpy(images[:1]))] == \
        [("a", "b"), ("c", "d"), ("fc1", "fc2")]
    before = logits(folded, images)
    equalized = copy.deepcopy(folded)
    assert equalize(equalized, images, bits=8) == [("a", "b"), ("c", "d"), ("fc1", "fc2")]
    np.testing.assert_allclose(logits(equalized, images), before, rtol=1e-4, atol=1e-4 * np.abs(before).max())
    assert not torch.equal(equalized.a.weight, folded.a.weight)  # something was rescaled

    def rounded_error(model):  # every layer min-max rounded to 8 bits per tensor
        layers = model_layers(model)
        codes = {l.name: minmax_encode(l.weight, 8) for l in layers}
        return float(np.square(logits(decoded_model(model, layers, codes, np.float32), images) - before).mean())

    assert rounded_error(equalized) < 0.5 * rounded_error(folded)


def test_a_student_equalizes_each_pointwise_conv_with_the_next_depthwise_and_the_classifier():
    folded = fold_model(_randomised(StudentNet(StudentConfig(input_size=32))))
    pairs = [(a, b) for a, b, _ in equalization_pairs(folded, torch.zeros(1, 3, 32, 32))]
    assert pairs == [(f"cnn.{i}.3", f"cnn.{i + 1}.0") for i in range(1, 7)] + [("cnn.7.3", "fc.0")]


def test_bias_correction_removes_the_mean_output_error():
    folded = fold_model(_randomised(StudentNet(TINY_STUDENT)))
    calibration, held_out = _images((3, 32, 32), 32, 1), _images((3, 32, 32), 32, 2)
    layers = model_layers(folded)
    codes = {l.name: minmax_encode(l.weight, 3) for l in layers}
    corrected = copy.deepcopy(folded)
    calibrate(corrected, calibration, lambda layer, hessian: codes[layer.name], progress=False)
    reference = logits(folded, held_out)

    def mean_error(model):  # the error every image shares, per class
        return float(np.abs((logits(model, held_out) - reference).mean(0)).mean())

    assert mean_error(corrected) < 0.5 * mean_error(decoded_model(folded, layers, codes, np.float32))
    for layer in model_layers(corrected):
        np.testing.assert_array_equal(layer.weight, codes[layer.name].decode())  # only the biases moved


def test_sensitivity_ranks_the_layers_of_any_classifier():
    images = _images((1, 32, 32), 8, 0)
    rows = layer_sensitivity(_randomised(_ResidualNet()), images, bits=2, progress=False)
    assert sorted(r.name for r in rows) == sorted(l.name for l in model_layers(fold_model(_ResidualNet())))
    assert rows[0].max_logit_change > 0 and rows[0].agreement <= rows[-1].agreement


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
    from edge.io.checkpoints import init_checkpoint

    ckpt = init_checkpoint(StudentConfig(input_size=32))  # the homework's widths: 256K weights
    spec = QuantSpec(f"uint{bits}", per_channel=True, method="minmax")
    path = tmp_path / "odd.onnx"
    size, _ = export_onnx(ckpt, path, spec)
    folded = prepare(ckpt.build())[0]  # what the file encodes: the classifier merged, BatchNorm folded
    weights = sum(layer.weight.size for layer in model_layers(folded))
    assert size < weights * (bits + 1) / 8  # codes densely packed (one per byte would be `weights` bytes)
    assert leftover_dequantization(path) == {}
    layers, codes = encode_model(folded, spec)
    images = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(OnnxClassifier(path)(images), logits(decoded_model(folded, layers, codes), images),
                               rtol=1e-4, atol=1e-4)


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
    calibration = preprocessed_images(ta, food11_test, 32)
    size, _ = export_onnx(ta, path, QuantSpec("uint4", per_channel=True), *calibration)
    uint8_size, _ = export_onnx(ta, tmp_path / "ta_uint8.onnx", QuantSpec("uint8"), *calibration)
    assert size < 0.65 * uint8_size
    assert leftover_dequantization(path) == {}
    images, _ = preprocessed_images(ta, food11_test, 64, offset=32)
    agreement = np.mean(OnnxClassifier(path)(images).argmax(1) == OnnxClassifier(tmp_path / "ta_uint8.onnx")(images).argmax(1))
    assert agreement >= 0.85


def test_max_drop_returns_the_smallest_format_within_the_drop(ta, food11_test, tmp_path):
    validation, _ = preprocessed_images(ta, food11_test, 96)
    chosen, trials = select_format(ta, tmp_path / "chosen.onnx", validation, None, max_drop=0.5,
                                   candidates=(QuantSpec("uint2", per_channel=True, method="minmax"),
                                               QuantSpec("fp16"), QuantSpec("fp32")))
    assert [t.passed for t in trials][:1] == [False]  # 2-bit min-max loses far more than 0.5 pt
    assert chosen is trials[-1] and chosen.agreement >= 99.5
    assert (tmp_path / "chosen.onnx").stat().st_size == chosen.bytes


def test_sensitivity_ranks_layers(ta, food11_test):
    images, _ = preprocessed_images(ta, food11_test, 16)
    model = build_student(ta.card.config, ta.state)
    rows = layer_sensitivity(model, images, bits=2, progress=False)
    assert len(rows) == 16 and rows[0].agreement <= rows[-1].agreement
    assert rows[0].max_logit_change > 0
    shared = layer_sensitivity(model, images, kmeans=4, progress=False)
    assert len(shared) == 16 and shared[0].agreement <= shared[-1].agreement and shared[0].max_logit_change > 0


def test_int8_qdq_runs_int8_kernels(ta, food11_test, tmp_path):
    from edge.export.exporter import runtime_ops

    path = tmp_path / "ta_int8.onnx"
    calibration = preprocessed_images(ta, food11_test, 16)
    export_onnx(ta, path, QuantSpec("int8", per_channel=True), *calibration)
    ops = runtime_ops(path)
    assert any(op.startswith("QLinear") for op in ops), ops
    model = OnnxClassifier(path)
    assert model.quant["weights"] == "int8" and model.card == ta.card
    images, _ = preprocessed_images(ta, food11_test, 32, offset=16)
    assert model(images).shape == (32, 11)


def test_equalization_keeps_the_function_and_shrinks_per_tensor_error(ta, food11_test):
    images, _ = preprocessed_images(ta, food11_test, 16)
    held_out, _ = preprocessed_images(ta, food11_test, 32, offset=16)
    folded = fold_model(build_student(ta.card.config, ta.state))
    equalized = copy.deepcopy(folded)
    assert len(equalize(equalized, images)) == 7  # every pointwise conv -> next depthwise conv, the last -> classifier
    before = logits(folded, held_out)
    np.testing.assert_allclose(logits(equalized, held_out), before, rtol=1e-4, atol=1e-4 * np.abs(before).max())

    def per_tensor_error(model, names):
        layers = [l for l in model_layers(model) if l.name in names]
        codes = {l.name: minmax_encode(l.weight, 8) for l in layers}
        return float(np.square(logits(decoded_model(model, layers, codes, np.float32), held_out) - before).mean())

    # the pair (cnn.5.3 -> cnn.6.0): its depthwise channels span very different ranges after BN folding
    pair = ("cnn.5.3", "cnn.6.0")
    assert per_tensor_error(equalized, pair) < 0.8 * per_tensor_error(folded, pair)


def test_mixed_precision_gives_named_layers_their_own_width(ta, food11_test):
    calibration, _ = preprocessed_images(ta, food11_test, 16)
    held_out, _ = preprocessed_images(ta, food11_test, 32, offset=16)
    folded = fold_model(build_student(ta.card.config, ta.state))
    spec = QuantSpec("uint4", per_channel=True)
    plain_layers, plain = encode_model(folded, spec, calibration, progress=False)
    mixed_layers, mixed = encode_model(folded, spec, calibration, layer_bits={"cnn.4.3": 8}, progress=False)
    assert mixed["cnn.4.3"].bits == 8 and plain["cnn.4.3"].bits == 4
    assert all(mixed[name].bits == 4 for name in ("cnn.3.3", "cnn.5.3", "fc.0"))
    reference = logits(folded, held_out)

    def error(layers, encodings):
        return float(np.square(logits(decoded_model(folded, layers, encodings, np.float32), held_out) - reference).mean())

    assert error(mixed_layers, mixed) < 0.95 * error(plain_layers, plain)  # 32,768 weights at 8 bits: a visible share


def test_max_drop_calibrates_its_candidates_on_the_calib_folder(synthetic_student, synthetic_photos, tmp_path):
    import json

    import onnx
    from click.testing import CliRunner

    from edge.cli import main

    out = tmp_path / "chosen.onnx"
    result = CliRunner().invoke(main, ["export", str(synthetic_student), "--max-drop", "100", "--calib",
                                       str(synthetic_photos), "--calib-images", "6", "--images",
                                       str(synthetic_photos), "-o", str(out)])
    assert result.exit_code == 0, result.output
    quant = json.loads({p.key: p.value for p in onnx.load(out).metadata_props}["edge.quant"])
    assert quant["calibration"] == f"6 images from {synthetic_photos}"  # not silently data-free


@pytest.mark.parametrize("option", [["--quant", "uint8"], ["--per-channel"], ["--fp16-below", "10"]])
def test_max_drop_refuses_format_options_it_would_ignore(synthetic_student, synthetic_photos, tmp_path, option):
    from click.testing import CliRunner

    from edge.cli import main

    result = CliRunner().invoke(main, ["export", str(synthetic_student), "--max-drop", "1", "--images",
                                       str(synthetic_photos), "-o", str(tmp_path / "x.onnx"), *option])
    assert result.exit_code == 2 and f"{option[0]} would be ignored" in result.output
    assert not (tmp_path / "x.onnx").exists()
