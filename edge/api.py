"""edge's Python API: load a model, export it, predict a folder, benchmark; re-exported by `edge`.

Each function does what an `edge` command does (`export_model`: `edge export`, `predict_images`:
`edge predict`, `benchmark`: `edge bench`), without click: the same checks (outputs before any
work; bad input raises an `edge.core.errors.EdgeError` subclass naming it) and the same tables (weight
formats: `edge.core.weight_formats`; backends: `edge.core.backends`). Everything heavy is imported inside the
functions, so ``import edge`` stays cheap and predicting with an ONNX file never imports torch.
(They cannot be called ``export``/``predict``/``bench``: ``edge.export``, ``edge.inference.predict`` and
``edge.bench`` are modules, and importing one rebinds that name on the package.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

PathLike = str | os.PathLike


@dataclass(frozen=True)
class ExportResult:
    """What `export_model` wrote."""

    path: Path
    bytes: int
    weights: dict  # the weight format as the file's metadata describes it (edge.export.quantize.QuantSpec.describe)


class Prediction(NamedTuple):
    """One image's answer."""

    id: str  # the image's id, as the Kaggle CSV writes it
    label: int  # class index
    name: str  # class name from the model's card


def load_model(path: PathLike, pools: tuple[int, ...] | None = None, input_size: int | None = None):
    """Read any model file edge knows (the model-file protocol, `edge.io.checkpoints.load_model`).

    Args:
        path: a homework StudentNet ``.bin``/``.pt`` or pickle, an edge checkpoint, an `edge train` file, or a
            plain state dict of a torchvision classifier (recognised from its tensors).
        pools: stages followed by a max-pool, for homework files whose config is not inside (default 0,1,2,3).
        input_size: the centre crop of a file that does not record one (homework files, plain state dicts;
            default 256).

    Returns:
        The model file: ``.card`` (`edge.core.config.ModelCard`: config, preprocessing, classes) and ``.build()``
        (a ``torch.nn.Module`` in eval mode with its float weights).

    Raises:
        edge.core.errors.CheckpointError: the file is missing, damaged, hostile or not a model edge reads.
    """
    from edge.io.checkpoints import load_model as load

    return load(path, pools=pools, input_size=input_size)


def export_model(model_path: PathLike, output: PathLike, quant: str = "uint8", *,
                 calibration_dir: PathLike | None = None, calibration_images: int = 64,
                 **format_options) -> ExportResult:
    """Export a model file to a self-describing ONNX file, as `edge export` does.

    Args:
        model_path: any model file `load_model` reads.
        output: the ``.onnx`` file to write (never an input, a folder or another kind of file).
        quant: a weight format of `edge.core.weight_formats.FORMATS`: ``fp32``, ``fp16``, ``uintN``, ``kmeansK``, ``int8``.
        calibration_dir: unlabelled images that calibrate ``--method gptq`` and ``int8`` (default: synthetic ones).
        calibration_images: how many of them (the first in id order).
        **format_options: `edge.export.quantize.QuantSpec` fields the format lists (``per_channel``, ``method``,
            ``entropy``, ``train_epochs``, ``fp16_below``, ``low_rank``).

    Returns:
        `ExportResult`: the path, its size in bytes and the weight format's description.

    Raises:
        ValueError: an unknown format, an option the format does not take, or calibration images for a
            format that uses none.
        edge.core.errors.EdgeError: an unreadable model file or image folder, or an output that cannot be written.
    """
    from edge.io.checkpoints import load_model as load
    from edge.export.exporter import export_onnx, preprocessed_images
    from edge.export.quantize import QuantSpec
    from edge.core.files import check_output

    spec = QuantSpec(quant, **format_options)
    if calibration_dir and not spec.calibrated:
        raise ValueError(f"calibration_dir calibrates gptq and int8; {spec.label} (method {spec.method}) uses none")
    check_output(output, inputs=(model_path, calibration_dir), writes_model=True, model_format="onnx",
                 what="ONNX file")
    model = load(model_path)
    calibration = preprocessed_images(model, calibration_dir, calibration_images) \
        if calibration_dir and spec.calibrated else (None, "")
    size, weights = export_onnx(model, output, spec, *calibration)
    return ExportResult(Path(output), size, weights)


def predict_images(model: PathLike, images_dir: PathLike, *, provider: str = "cpu", batch: int = 4,
            threads: int | None = None, skip_bad: bool = False, progress: bool = False) -> list[Prediction]:
    """Predict every image in a folder, as `edge predict` does (without writing the CSV).

    Args:
        model: an ONNX file edge exported (ONNX Runtime, no torch imported) or any model file `load_model` reads.
        images_dir: a Food-11 split folder (``testing/NNNN.jpg``, ``training/<class>_<n>.jpg``) or class subfolders.
        provider: a backend of `edge.core.backends` (``cpu``, ``cuda``, ``ort-cuda``, ``torch-cpu``, ...).
        batch: images per model call.
        threads: inference threads (default: all cores).
        skip_bad: skip images that cannot be decoded instead of failing.
        progress: show a progress bar.

    Returns:
        One `Prediction` per image, in id order.

    Raises:
        edge.core.errors.EdgeError: an unreadable model or folder, undecodable images (without ``skip_bad``),
            or a provider that cannot run here or does not run this kind of file.
    """
    from edge.data.folders import list_samples
    from edge.inference.predict import open_model, predict_samples

    classifier, lanes = open_model(model, provider, threads)
    samples = list_samples(images_dir, classifier.card.classes, strict_classes=True)
    result = predict_samples(classifier, samples, batch, skip_bad=skip_bad, progress=progress, lanes=lanes)
    names = classifier.card.classes
    return [Prediction(s.id, int(label), names[label]) for s, label in zip(result.samples, result.labels)]


def benchmark(models: list[PathLike] = (), *, providers: str = "ort-cpu", quants: str | None = None,
          batches: tuple[int, ...] = (1, 32), data: PathLike | None = None, labels: PathLike | None = None,
          threads: int | None = None, repeats: int = 3, min_seconds: float = 0.5, progress: bool = False) -> dict:
    """Benchmark models on backends x weight formats, as `edge bench` does (each row in its own process).

    Args:
        models: model files (exported to each of ``quants`` on the fly) or ``.onnx`` files; none: a freshly
            initialised homework StudentNet.
        providers: comma-separated backends of `edge.core.backends` (``cpu`` = ``ort-cpu``, ``torch-cpu``, ...).
        quants: comma-separated ``FORMAT[:METHOD]`` (`edge.core.weight_formats.parse_choice`); default
            `edge.core.weight_formats.BENCH_FORMATS` (data-free without models).
        batches: batch sizes: latency at the smallest, throughput at each.
        data, labels: an image folder (and its Id,label CSV) for accuracy and end-to-end images/s.
        threads: inference threads per backend.
        repeats: rounds over all rows, interleaved.
        min_seconds: timed seconds per batch size per repeat.
        progress: show progress bars.

    Returns:
        The results document (``rows``, ``machine``, ``settings``, ``models``) that ``edge bench --json`` writes.

    Raises:
        ValueError: an unknown backend or weight format (`edge.core.backends.BackendError` is one).
        edge.core.errors.EdgeError: a model file edge cannot use.
    """
    from edge.core.backends import parse_list
    from edge.bench.harness import Settings, default_quants, parse_quants, run_bench

    paths = [Path(m) for m in models]
    settings = Settings(providers=parse_list(providers), quants=parse_quants(quants or default_quants(paths)),
                        batches=tuple(sorted(set(batches))), threads=threads, repeats=repeats, min_seconds=min_seconds,
                        data=Path(data) if data else None, labels=Path(labels) if labels else None)
    return run_bench(paths, settings, "edge.benchmark(...)", progress=progress)
