"""Export a StudentNet checkpoint to ONNX and prove the file: full onnx.checker, parity vs torch,
size, and that no dequantization survives ONNX Runtime's session creation."""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx

from edge.checkpoints import Checkpoint
from edge.data import DatasetError
from edge.fold import fold_model, model_layers
from edge.export.calibrate import synthetic_images
from edge.export.generic import BaselineCheckpoint, export_baseline
from edge.export.onnx_graph import build_onnx, write_checked
from edge.metadata import write_metadata
from edge.quant import FloatWeight
from edge.export.quantize import QuantSpec, encode_model

CALIBRATION_IMAGES = 64

_DEQUANT_OPS = {"Cast", "Sub", "Div", "Mul", "Add", "DequantizeLinear", "BitShift", "Mod", "Split", "Gather",
                "MatMul"}


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime vs torch fp32 on the same inputs."""

    max_abs_diff: float
    agreement: float
    images: int
    source: str


def export_onnx(checkpoint: Checkpoint, path: str | os.PathLike, spec: QuantSpec,
                calibration: np.ndarray | None = None, calibration_source: str = "") -> tuple[int, dict]:
    """Fold, encode, build, fully check and atomically write the ONNX file.

    Calibrated integer formats use ``calibration`` images, or synthetic ones when none are given.
    Returns the file size in bytes and the weight-format description stored in the metadata.
    """
    if isinstance(checkpoint, BaselineCheckpoint):
        return export_baseline(checkpoint, path, spec)
    from edge.models import build_student

    folded = fold_model(build_student(checkpoint.card.config, checkpoint.state))
    layers = model_layers(folded)
    quant = spec.describe()
    if spec.calibrated:
        if calibration is None:
            config = checkpoint.card.config
            calibration = synthetic_images(CALIBRATION_IMAGES, config.in_channels, config.input_size)
            calibration_source = f"{CALIBRATION_IMAGES} synthetic 1/f images (data-free)"
        quant["calibration"] = calibration_source
    if spec.weights == "int8":
        from edge.export.int8 import quantize_qdq

        model = quantize_qdq(build_onnx(checkpoint.card, layers, *_float_parts(layers), quant), calibration,
                             spec.per_channel)
        write_metadata(model, checkpoint.card, quant)
    else:
        layers, encodings = encode_model(folded, spec, calibration)
        bias_dtype = np.float32 if spec.weights == "fp32" else np.float16
        model = build_onnx(checkpoint.card, layers, encodings, bias_dtype, quant)
    return write_checked(model, path, spec.entropy), quant


def _float_parts(layers):
    return {layer.name: FloatWeight(layer.weight) for layer in layers}, np.float32


def runtime_ops(path: str | os.PathLike) -> Counter:
    """Op types of the graph ONNX Runtime actually runs (after its optimisations)."""
    import onnxruntime as ort

    from edge.entropy import session_source
    from edge.runtime import session_options

    with tempfile.TemporaryDirectory() as tmp:
        optimized = os.path.join(tmp, "optimized.onnx")
        options = session_options(optimized_path=optimized)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        ort.InferenceSession(session_source(path), options, providers=["CPUExecutionProvider"])
        return Counter(node.op_type for node in onnx.load(optimized).graph.node)


def leftover_dequantization(path: str | os.PathLike) -> dict[str, int]:
    """Decode ops still present after session creation (empty when every weight was folded)."""
    return {op: n for op, n in runtime_ops(path).items() if op in _DEQUANT_OPS}


def load_images(checkpoint: Checkpoint, image_dir, limit: int, offset: int = 0) -> tuple[np.ndarray, str]:
    """Up to ``limit`` preprocessed images of ``image_dir`` in id order, starting at ``offset``."""
    from edge.data import list_samples
    from edge.preprocess import load_image

    samples = list_samples(image_dir, checkpoint.card.classes, strict_classes=True)[offset:offset + limit]
    if not samples:
        raise DatasetError(f"{image_dir}: no images left after the first {offset}")
    images = np.stack([load_image(s.path, checkpoint.card.preprocess) for s in samples])
    return images, f"{len(samples)} images from {image_dir}"


def sample_inputs(checkpoint: Checkpoint, image_dir, limit: int = 64, seed: int = 0):
    """Preprocessed real images from ``image_dir`` (up to ``limit``), else seeded uniform noise."""
    if image_dir:
        return load_images(checkpoint, image_dir, limit)
    config = checkpoint.card.config
    rng = np.random.default_rng(seed)
    shape = (8, config.in_channels, config.input_size, config.input_size)
    return rng.random(shape, dtype=np.float32), "8 random images (pass --images DIR for real ones)"


def parity_check(checkpoint: Checkpoint, onnx_path: str | os.PathLike, images: np.ndarray, source: str) -> Parity:
    """Compare ONNX Runtime on ``onnx_path`` with the unfolded torch model on ``images``."""
    from edge.runtime import OnnxClassifier
    from edge.torch_backend import TorchClassifier

    ours = OnnxClassifier(onnx_path)
    reference = TorchClassifier(checkpoint)
    a = np.concatenate([ours(images[i:i + 16]) for i in range(0, len(images), 16)])
    b = np.concatenate([reference(images[i:i + 16]) for i in range(0, len(images), 16)])
    return Parity(float(np.abs(a - b).max()), float(np.mean(a.argmax(1) == b.argmax(1))), len(images), source)
