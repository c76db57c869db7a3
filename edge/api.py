"""edge's Python API: load a model, export it, predict a folder, benchmark; re-exported by `edge`.

Each function builds the options object of an `edge` command (`edge.core.options`) and calls the
same function the command calls (`export_model`: `edge export`, `predict_images`: `edge predict`,
`benchmark`: `edge bench`), so the rules are the CLI's: every argument is checked when the options
are built (a wrong type raises `TypeError` naming the parameter, a bad value an
`edge.core.errors.EdgeError` subclass naming it), outputs before any work (an existing output is
refused unless ``overwrite=True``), and the same tables (weight formats: `edge.core.weight_formats`;
backends: `edge.core.backends`). Everything heavy is imported inside the
functions, so ``import edge`` stays cheap and predicting with an ONNX file never imports torch.
(They cannot be called ``export``/``predict``/``bench``: ``edge.export``, ``edge.inference.predict`` and
``edge.bench`` are modules, and importing one rebinds that name on the package.)
"""

from __future__ import annotations

import os
from contextlib import contextmanager
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
        TypeError: an argument of the wrong type (named).
        edge.core.errors.EdgeError: a bad value (named); `edge.core.errors.CheckpointError`: the file is missing,
            damaged, hostile or not a model edge reads.
    """
    from edge.core.options import POOLS, Rule
    from edge.io.checkpoints import load_model as load

    return load(Rule("Path").check("path", path), pools=POOLS.check("pools", pools),
                input_size=Rule("int", 4, optional=True).check("input_size", input_size))


def export_model(model_path: PathLike, output: PathLike, quant: str = "uint8", *,
                 calibration_dir: PathLike | None = None, calibration_images: int = 64, overwrite: bool = False,
                 **format_options) -> ExportResult:
    """Export a model file to a self-describing ONNX file, as `edge export` does (the same function:
    `edge.workflows.exporting.export_command`, parity check included).

    Args:
        model_path: any model file `load_model` reads.
        output: the ``.onnx`` file to write (never an input, a folder or another kind of file).
        quant: a weight format of `edge.core.weight_formats.FORMATS`: ``fp32``, ``fp16``, ``uintN``, ``kmeansK``, ``int8``.
        calibration_dir: unlabelled images that calibrate ``--method gptq`` and ``int8`` (default: synthetic ones).
        calibration_images: how many of them (the first in id order).
        overwrite: replace an existing ``output`` (an ONNX file); without it an existing output is refused.
        **format_options: `edge.export.quantize.QuantSpec` fields the format lists (``per_channel``, ``method``,
            ``entropy``, ``train_epochs``, ``fp16_below``, ``low_rank``), and ``pools``.

    Returns:
        `ExportResult`: the path, its size in bytes and the weight format's description.

    Raises:
        TypeError: an argument of the wrong type (named).
        edge.core.errors.EdgeError: a bad value (named; e.g. an unknown format, an option the format does not
            take, calibration images for a format that uses none, a negative epoch count), an unreadable model
            file or image folder, or an output that cannot be written. It is also a ValueError.
    """
    from edge.core.options import ExportOptions
    from edge.workflows.exporting import export_command

    with _named_as_api(checkpoint="model_path"):
        options = ExportOptions(checkpoint=_model_path(model_path), output=output, quant=quant,
                                calibration_dir=calibration_dir, calibration_images=calibration_images,
                                overwrite=overwrite, **format_options)
    report = export_command(options)
    if report.value is None:  # --max-drop (max_drop=...): no format stays within the drop
        from edge.core.config import ConfigError

        raise ConfigError(report.lines[-1].removeprefix("error: "))
    size, weights = report.value
    return ExportResult(Path(output), size, weights)


def _model_path(path):
    """A model file argument: None would silently export the shipped student, so it is refused here."""
    if path is None:
        raise TypeError("model_path must be a path (str or os.PathLike), got None")
    return path


def predict_images(model: PathLike, images_dir: PathLike, *, provider: str = "cpu", compute: str = "fp32",
                   calib: PathLike | None = None, batch: int = 4, threads: int | None = None, skip_bad: bool = False,
                   progress: bool = False) -> list[Prediction]:
    """Predict every image in a folder, as `edge predict` does (the same function,
    `edge.workflows.predicting.predict_command`, without writing the CSV).

    Args:
        model: an ONNX file edge exported (ONNX Runtime, no torch imported) or any model file `load_model` reads.
        images_dir: a Food-11 split folder (``testing/NNNN.jpg``, ``training/<class>_<n>.jpg``) or class subfolders.
        provider: a backend of `edge.core.backends` (``cpu``, ``cuda``, ``ort-cuda``, ``ov-cpu``, ``torch-cpu``, ...),
            or ``auto`` (an ONNX file): the fastest installed CPU backend x compute precision whose answers agree with
            fp32 on >= 99.5% of the calibration photos (`edge.inference.auto`).
        compute: an ONNX file's compute precision (``fp32``, ``bf16``, ``bf16-mixed``, ``int8``); other than fp32 its
            agreement with fp32 on the calibration photos is measured first.
        calib: the calibration photos (default: the first of ``images_dir``).
        batch: images per model call (an integer >= 1).
        threads: inference threads (default: all cores; else 1..256).
        skip_bad: skip images that cannot be decoded instead of failing.
        progress: show a progress bar.

    Returns:
        One `Prediction` per image, in id order.

    Raises:
        TypeError: an argument of the wrong type (named).
        edge.core.errors.EdgeError: a bad value (named), an unreadable model or folder, undecodable images
            (without ``skip_bad``), or a provider that cannot run here or does not run this kind of file.
    """
    from edge.core.options import PredictOptions
    from edge.workflows.predicting import predict_command

    with _named_as_api(data_dir="images_dir"):
        options = PredictOptions(model=model, data_dir=images_dir, provider=provider, compute=compute, calib=calib,
                                 batch=batch, threads=threads, skip_bad=skip_bad,
                                 quiet=not _flag("progress", progress))
    classifier, result = predict_command(options).value
    names = classifier.card.classes
    return [Prediction(s.id, int(label), names[label]) for s, label in zip(result.samples, result.labels)]


@contextmanager
def _named_as_api(**parameters: str):
    """Errors of the options being built name the API's parameter where its option field is called otherwise
    (``min_time (--min-time)`` -> ``min_seconds (--min-time)``)."""
    from edge.core.errors import EdgeError

    try:
        yield
    except (TypeError, EdgeError) as err:
        text = str(err)
        field = next((f for f in parameters if text.startswith(f"{f} (")), None)
        if field is None:
            raise
        raise type(err)(parameters[field] + text.removeprefix(field)) from None


def _flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def benchmark(models: PathLike | list[PathLike] = (), *, providers: str = "ort-cpu", quants: str | None = None,
              computes: str = "fp32", calib: PathLike | None = None, batches: tuple[int, ...] = (1, 32), data: PathLike | None = None, labels: PathLike | None = None,
              threads: int | None = None, repeats: int = 3, min_seconds: float = 0.5,
              progress: bool = False) -> dict:
    """Benchmark models on backends x weight formats, as `edge bench` does (the same function,
    `edge.bench.command.bench_command`; each row in its own process).

    Args:
        models: one model file (a path) or a list of them (exported to each of ``quants`` on the fly) or
            ``.onnx`` files; none: a freshly initialised homework StudentNet.
        providers: comma-separated backends of `edge.core.backends` (``cpu`` = ``ort-cpu``, ``torch-cpu``, ...).
        quants: comma-separated ``FORMAT[:METHOD]`` (`edge.core.weight_formats.parse_choice`); default
            `edge.core.weight_formats.BENCH_FORMATS` (data-free without models).
        computes: comma-separated compute precisions (``fp32``, ``bf16``, ``bf16-mixed``, ``int8``) of the backends
            that run them.
        calib: calibration photos (int8's ranges; agreement on them decides the ``auto_choice`` of the document).
        batches: batch sizes (at least one, each >= 1): latency at the smallest, throughput at each.
        data, labels: an image folder (and its Id,label CSV) for accuracy and end-to-end images/s.
        threads: inference threads per backend.
        repeats: rounds over all rows, interleaved.
        min_seconds: timed seconds per batch size per repeat (at least 0.01).
        progress: show progress bars.

    Returns:
        The results document (``rows``, ``machine``, ``settings``, ``models``) that ``edge bench --json`` writes.

    Raises:
        TypeError: an argument of the wrong type (named).
        edge.core.errors.EdgeError: a bad value (named: an unknown backend or weight format, no batch size, ...;
            also a ValueError), or a model file edge cannot use.
    """
    from edge.bench.command import bench_command
    from edge.core.options import BenchOptions

    with _named_as_api(min_time="min_seconds"):
        options = BenchOptions(models=models, providers=providers, quants=quants, computes=computes, calib=calib,
                               batches=batches, threads=threads, repeats=repeats, min_time=min_seconds, data=data,
                               labels=labels, quiet=not _flag("progress", progress))
    return bench_command(options).document
