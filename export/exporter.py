"""Export any torch classifier edge loads to ONNX and prove the file: one path for every model.

`export_onnx`: a StudentNet's classifier merged into its last pointwise conv (`merged_classifier`:
exact, fewer weights), BatchNorm folded (`edge.models.fold.fold_model`), weights encoded (`edge.export.quantize`), the
folded module written by the standard exporter (``torch.onnx.export``), then the weight formats
applied to its initializers (`edge.export.onnx_graph`) or, for int8, ONNX Runtime's QDQ quantization
(`edge.export.int8`); the model card (and, for architectures other than StudentNet, their `NetSpec`,
parameters and flops) go into the metadata, and the file is fully checked before it is written.
`parity_check` compares it with the torch model, `leftover_dequantization` proves no decoding
survives ONNX Runtime's session creation.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass

import numpy as np
import onnx

from edge.data.folders import DatasetError
from edge.models.merge import merged_classifier
from edge.models.fold import fold_model
from edge.export.calibrate import CALIBRATION_IMAGES, synthetic_images
from edge.export.onnx_graph import INPUT_NAME, OPSET, OUTPUT_NAME, GraphError, compact, write_checked
from edge.codec.metadata import write_metadata
from edge.export.quantize import QuantSpec, encode_model


@dataclass(frozen=True)
class Parity:
    """ONNX Runtime vs torch fp32 on the same inputs."""

    max_abs_diff: float
    agreement: float
    images: int
    source: str


def export_onnx(model_file, path: str | os.PathLike, spec: QuantSpec, calibration: np.ndarray | None = None,
                calibration_source: str = "", layer_bits: dict[str, int] | None = None,
                progress: bool = True, matching=None, recipe: dict | None = None) -> tuple[int, dict]:
    """Fold, encode, export, apply the weight formats, fully check and atomically write the ONNX file.

    ``model_file``: anything with ``.card`` (`edge.core.config.ModelCard`) and ``.build()`` (the torch
    classifier in eval mode). Calibrated formats use ``calibration`` images, or synthetic ones when
    none are given; ``layer_bits`` gives named layers of a uintN format another bit width (mixed precision,
    `edge.export.mixed_precision`); ``matching`` (`edge.export.quantize.Matching`): what ``spec.train_epochs``
    trains the stored values against, when not the model itself; ``recipe``: how the model was made (slimmed
    widths, pruning, fine-tuning), kept in the metadata as ``recipe``. Returns the file size in bytes and the weight-format description stored in the
    metadata.
    """
    import torch

    card, quant = model_file.card, spec.describe()
    folded, merge = prepare(model_file.build())
    quant.update(merge)
    if spec.calibrated and calibration is None:
        calibration = synthetic_images(CALIBRATION_IMAGES, card.config.in_channels, card.config.input_size)
        calibration_source = f"{CALIBRATION_IMAGES} synthetic 1/f images (data-free)"
    if spec.calibrated:
        quant["calibration"] = calibration_source
    if layer_bits:
        quant["layer_bits"] = dict(layer_bits)
    if recipe:
        quant["recipe"] = dict(recipe)
    if spec.train_epochs and matching is not None:
        quant["trained_against"] = f"{matching.about}, on {len(matching.images)} images, lr {matching.lr:g} x scale"
    net = _net_entry(model_file)
    layers, encodings = encode_model(folded, spec, calibration, layer_bits,
                                     input_shape=(card.config.in_channels, card.config.input_size, card.config.input_size),
                                     progress=progress, matching=matching)
    quant.update(spec.handler.encoded_entries(spec, encodings))
    with torch.no_grad():
        for layer in layers:  # the float weights the file holds (after equalization, bias correction)
            module = folded.get_submodule(layer.name)
            module.weight.copy_(torch.from_numpy(layer.weight))
            module.bias.copy_(torch.from_numpy(layer.bias))
    model = spec.handler.apply(_float_graph(folded, card), layers, encodings, spec, calibration)
    write_metadata(model, card, quant, net)
    return write_checked(model, path, spec.entropy), quant


def prepare(model) -> tuple:
    """-> (the folded graph `export_onnx` encodes for torch ``model``, the metadata entry of its
    classifier merge): `merged_classifier`, then every BatchNorm folded (`edge.models.fold.fold_model`)."""
    merged, entry = merged_classifier(model)
    return fold_model(merged), entry


def _float_graph(folded, card) -> onnx.ModelProto:
    """``torch.onnx.export`` (TorchScript) of ``folded`` for a batch of the card's images, compacted."""
    import torch

    config = card.config
    example = torch.zeros(1, config.in_channels, config.input_size, config.input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        try:
            torch.onnx.export(folded, example, buffer, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              opset_version=OPSET, dynamo=False)
        except Exception as err:  # the exporter raises many types for what ONNX cannot express
            raise GraphError(f"torch.onnx.export cannot write this model: {type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''}") from err
    return compact(onnx.load_from_string(buffer.getvalue()))


def _net_entry(model_file) -> dict | None:
    """``edge.net`` of an architecture other than StudentNet: its NetSpec, parameters and flops."""
    spec = getattr(model_file, "spec", None)
    if spec is None or spec.arch == "dw":
        return None
    return {**spec.to_dict(), "parameters": model_file.parameters, "flops": model_file.flops}


def runtime_ops(path: str | os.PathLike) -> Counter:
    """Op types of the graph ONNX Runtime actually runs (after its optimisations)."""
    return Counter(node.op_type for node in _runtime_graph(path).node)


def leftover_dequantization(path: str | os.PathLike) -> dict[str, int]:
    """Ops still computing from stored constants alone after session creation, i.e. weight decoding that
    constant folding did not remove (empty when every weight was folded; int8 QDQ keeps its
    DequantizeLinear on purpose)."""
    graph = _runtime_graph(path)
    constants = {t.name for t in graph.initializer}
    return dict(Counter(node.op_type for node in graph.node
                        if node.input and all(name in constants for name in node.input if name)))


def _runtime_graph(path: str | os.PathLike) -> onnx.GraphProto:
    import onnxruntime as ort

    from edge.codec.entropy import session_source
    from edge.inference.runtime import session_options

    with tempfile.TemporaryDirectory() as tmp:
        optimized = os.path.join(tmp, "optimized.onnx")
        options = session_options(optimized_path=optimized)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        ort.InferenceSession(session_source(path), options, providers=["CPUExecutionProvider"])
        return onnx.load(optimized).graph


def preprocessed_images(model_file, image_dir, limit: int, offset: int = 0) -> tuple[np.ndarray, str]:
    """Up to ``limit`` images of ``image_dir`` in id order from ``offset``, preprocessed as the model's card says."""
    from edge.data.folders import list_samples
    from edge.data.preprocess import load_image

    card = model_file.card
    samples = list_samples(image_dir, card.classes, strict_classes=True)[offset:offset + limit]
    if not samples:
        raise DatasetError(f"{image_dir}: no images left after the first {offset}")
    return np.stack([load_image(s.path, card.preprocess) for s in samples]), f"{len(samples)} images from {image_dir}"


def sample_inputs(model_file, image_dir, limit: int = 64, seed: int = 0):
    """Preprocessed real images from ``image_dir`` (up to ``limit``), else seeded uniform noise."""
    if image_dir:
        return preprocessed_images(model_file, image_dir, limit)
    config = model_file.card.config
    rng = np.random.default_rng(seed)
    shape = (8, config.in_channels, config.input_size, config.input_size)
    return rng.random(shape, dtype=np.float32), "8 random images (pass --images DIR for real ones)"


COLLAPSED = 0.5  # top-1 agreement with torch fp32 below this: the weight format destroyed the model


def parity_check(model_file, onnx_path: str | os.PathLike, images: np.ndarray, source: str,
                 minimum: float = COLLAPSED, shown: str | os.PathLike | None = None) -> Parity:
    """Compare ONNX Runtime on ``onnx_path`` with the model file's (unfolded) torch module on ``images``; a
    file agreeing on fewer than ``minimum`` of them is removed and refused (`GraphError`, naming ``shown``:
    the path the user asked for, when ``onnx_path`` is a draft of it), never kept silently."""
    import torch

    from edge.inference.runtime import OnnxClassifier

    ours, reference = OnnxClassifier(onnx_path), model_file.build()
    with torch.inference_mode():
        a = np.concatenate([ours(images[i:i + 16]) for i in range(0, len(images), 16)])
        b = np.concatenate([reference(torch.from_numpy(images[i:i + 16])).numpy() for i in range(0, len(images), 16)])
    parity = Parity(float(np.abs(a - b).max()), float(np.mean(a.argmax(1) == b.argmax(1))), len(images), source)
    if parity.agreement < minimum:
        os.unlink(onnx_path)
        raise GraphError(f"{shown or onnx_path}: removed: its top-1 agreement with torch fp32 is {parity.agreement:.2%} on "
                         f"{source} (below {minimum:.0%}): this weight format destroys the model; choose more bits")
    return parity
