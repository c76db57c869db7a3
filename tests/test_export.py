"""ONNX export of real homework students: full checker, self-describing metadata, agreement with
torch fp32 on the real photos, size against the homework's 8-bit pickle and the hand-built graph's
files, and no dequantization left at run time. (Synthetic models on any clone: test_baseline_export.)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge.io.checkpoints import load_checkpoint
from edge.core.config import Preprocess
from edge.data.folders import list_samples, read_labels
from edge.models.fold import model_layers
from edge.data.preprocess import load_image
from edge.inference.runtime import OnnxClassifier
from edge.inference.shipped import shipped_student
from edge.inference.torch_backend import TorchClassifier
from edge.export.exporter import export_onnx, leftover_dequantization, prepare, runtime_ops
from edge.export.quantize import QuantSpec

README_EXAMPLES = Path(__file__).resolve().parents[1] / "bench" / "results" / "readme_examples.json"
HOMEWORK_8BIT_PICKLE_BYTES = 268_471
HAND_BUILT_BYTES = {"fp32": 1_021_787, "fp16": 513_301, "uint8": 264_572}  # the hand graph builder's files (287cad8)


def _logits(model, images, batch=50):
    return np.concatenate([model(images[i:i + batch]) for i in range(0, len(images), batch)])


@pytest.fixture(scope="module")
def photos(food11_test):
    samples = list_samples(food11_test)
    return samples, np.stack([load_image(s.path, Preprocess()) for s in samples])


@pytest.fixture(scope="module")
def ta(ta_student, tmp_path_factory):
    ckpt = load_checkpoint(ta_student)
    folder = tmp_path_factory.mktemp("onnx")
    paths = {}
    for quant in ("fp32", "fp16", "uint8"):
        paths[quant] = folder / f"ta_{quant}.onnx"
        export_onnx(ckpt, paths[quant], QuantSpec(quant))
    return ckpt, paths


def test_files_are_valid_and_self_describing(ta):
    ckpt, paths = ta
    for quant, path in paths.items():
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        loaded = OnnxClassifier(path)
        assert loaded.card == ckpt.card
        assert loaded.quant["weights"] == quant
        assert loaded.card.preprocess.crop == 256 and not loaded.card.preprocess.exif_transpose


def test_uint8_is_no_bigger_than_the_homework_pickle(ta):
    _, paths = ta
    sizes = {q: p.stat().st_size for q, p in paths.items()}
    assert sizes["uint8"] <= HOMEWORK_8BIT_PICKLE_BYTES
    assert all(sizes[quant] <= 1.005 * HAND_BUILT_BYTES[quant] for quant in sizes)  # the one export path costs no bytes
    assert sizes["fp16"] < sizes["fp32"] / 1.9


def test_no_dequantization_survives_session_creation(ta):
    _, paths = ta
    assert leftover_dequantization(paths["uint8"]) == {}
    assert leftover_dequantization(paths["fp16"]) == {}
    assert runtime_ops(paths["uint8"]) == runtime_ops(paths["fp32"])


def test_agreement_with_torch_on_real_photos(ta, photos, reference_labels):
    ckpt, paths = ta
    samples, images = photos
    torch_logits = _logits(TorchClassifier(ckpt), images)
    reference = torch_logits.argmax(1)
    truth = read_labels(reference_labels)
    labels = np.array([truth[s.id] for s in samples])
    fp32_acc = np.mean(reference == labels)
    print(f"\nTA student on {len(samples)} real photos: torch fp32 agreement with reference labels {fp32_acc:.2%}")
    for quant, path in paths.items():
        logits = _logits(OnnxClassifier(path), images)
        agreement = np.mean(logits.argmax(1) == reference)
        accuracy = np.mean(logits.argmax(1) == labels)
        print(f"  {quant}: {path.stat().st_size:,} B, top-1 agreement with torch fp32 {agreement:.2%}, "
              f"agreement with reference labels {accuracy:.2%}")
        if quant == "fp32":
            assert np.abs(logits - torch_logits).max() < 1e-3 and agreement == 1.0
        elif quant == "fp16":
            assert agreement >= 0.99  # even fp16 weights flip ~3 of 497: this student has many near-ties
        else:
            assert agreement >= 0.985
            assert abs(accuracy - fp32_acc) <= 0.01


def test_plain_minmax_is_the_homework_rounding(ta_student, tmp_path):
    ckpt = load_checkpoint(ta_student)
    path = tmp_path / "minmax.onnx"
    export_onnx(ckpt, path, QuantSpec("uint8", method="minmax"))
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    expected = [np.round((w - w.min()) / (w.max() - w.min()) * 255).reshape(-1)
                for w in (layer.weight.astype(np.float64) for layer in model_layers(prepare(ckpt.build())[0]))]
    np.testing.assert_array_equal(weights["codes8"], np.concatenate(expected))  # every layer's codes, in order


def test_default_model_exports_without_any_data(tmp_path):
    """The quick start's export (the shipped student, uint8, data-free) writes the bytes the README quotes."""
    ckpt = shipped_student()
    size, quant = export_onnx(ckpt, tmp_path / "default.onnx", QuantSpec("uint8"))
    assert quant["calibration"].endswith("(data-free)")
    assert size == json.loads(README_EXAMPLES.read_text())["quick_start_bytes"], "re-run python -m studies.readme_examples"
    x = np.random.default_rng(0).random((4, 3, 256, 256), dtype=np.float32)
    ours, theirs = OnnxClassifier(tmp_path / "default.onnx")(x), TorchClassifier(ckpt)(x)
    assert np.abs(ours - theirs).max() < 0.05 * np.abs(theirs).max()


def test_deeper_variant_and_per_channel(hw7, photos, tmp_path):
    ckpt = load_checkpoint(hw7 / "student_deeper_16bit.pkl", pools=(0, 1, 2, 5))
    path = tmp_path / "deeper.onnx"
    export_onnx(ckpt, path, QuantSpec("uint8", per_channel=True))
    assert OnnxClassifier(path).card.config.pools == (0, 1, 2, 5)
    images = photos[1][:64]
    agreement = np.mean(_logits(OnnxClassifier(path), images).argmax(1) == _logits(TorchClassifier(ckpt), images).argmax(1))
    assert agreement >= 0.95
