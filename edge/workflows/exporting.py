"""`edge export` and `edge sensitivity` once their options are built: the checks, the export (or the
``--max-drop`` search, or the per-layer measurement) and the `edge.core.reports.Report` they print.
`edge.export_model` and the CLI both call `export_command`."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from edge.core.config import ConfigError
from edge.core.files import atomic_write, check_output, real_path
from edge.core.options import ExportOptions, SensitivityOptions
from edge.core.reports import Report


def export_command(options: ExportOptions) -> Report:
    """Export a model file (the shipped student without one) to ONNX; parity-check it against torch."""
    from edge.export.exporter import export_onnx, parity_check, preprocessed_images, sample_inputs

    spec, model = _prepare(options)
    calibrates = spec.calibrated or options.max_drop is not None  # --max-drop tries calibrated candidates
    calibration = preprocessed_images(model, options.calibration_dir, options.calibration_images) \
        if options.calibration_dir and calibrates else (None, "")
    same = options.images and options.calibration_dir and \
        real_path(options.images) == real_path(options.calibration_dir)
    if options.max_drop is not None:
        return _export_within_drop(options, model, calibration, options.calibration_images if same else 0)
    parity_input = preprocessed_images(model, options.images, 64, offset=options.calibration_images) if same \
        else sample_inputs(model, options.images)
    with _unproven(options.output) as draft:  # an existing output is replaced only by a file that passed parity
        size, described = export_onnx(model, draft, spec, *calibration)
        parity = parity_check(model, draft, *parity_input, shown=options.output)
    document = {"model": _model_line(options, model), "output": str(options.output), "bytes": size,
                "weights": described, "parity": {"source": parity.source, "max_abs_diff": parity.max_abs_diff,
                                                 "agreement": parity.agreement},
                "runtime_graph": _runtime_graph(options, spec)}
    return Report(_export_lines(document), document, value=(size, described))


@contextmanager
def _unproven(output: Path):
    """A temporary path beside ``output`` for a file still to be checked: moved onto ``output`` when the block
    succeeds, removed when it fails (so a refused export never costs the file it would have replaced)."""
    handle, name = tempfile.mkstemp(dir=output.parent, prefix=f".{output.name}.", suffix=".onnx")
    os.close(handle)
    draft = Path(name)
    try:
        yield draft
        os.replace(draft, output)
    finally:
        draft.unlink(missing_ok=True)


def _prepare(options: ExportOptions):
    """The weight format and the loaded model, after every check that needs no model."""
    from edge.export.quantize import QuantSpec
    from edge.inference.shipped import SHIPPED_STUDENT, shipped_student
    from edge.io.checkpoints import load_model

    check_output(options.output, inputs=(options.checkpoint or SHIPPED_STUDENT, options.calibration_dir,
                                         options.images, options.labels),
                 overwrite=options.overwrite, writes_model=True, model_format="onnx", what="ONNX file")
    try:
        spec = QuantSpec(options.quant, options.per_channel, options.method, options.fp16_below, options.entropy,
                         options.train_epochs, options.low_rank)
    except ValueError as err:
        raise ConfigError(f"--quant {options.quant}: {err}") from None
    check_export_options(options, spec)
    if options.checkpoint:
        return spec, load_model(options.checkpoint, pools=options.pools)
    return spec, shipped_student()


def check_export_options(options: ExportOptions, spec) -> None:
    """Options that would do nothing in this mode are mistakes, said at once."""
    given = options.given_format_options()
    if options.max_drop is not None and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ConfigError(f"--max-drop chooses the weight format from its candidates; {flags} would be ignored")
    if options.max_drop is not None and not options.images:
        raise ConfigError("--max-drop needs --images DIR (validation images to measure the drop on)")
    if spec.per_channel and "per_channel" not in spec.format.options:
        raise ConfigError(f"--per-channel sets integer ranges; --quant {spec.weights} has none")
    if options.calibration_dir and not spec.calibrated and options.max_drop is None:
        raise ConfigError(f"--calib (calibration_dir) calibrates gptq and int8; --quant {spec.weights} --method "
                          f"{spec.method} uses no calibration")
    if options.labels and not options.images:
        raise ConfigError("--labels label the --images folder; give --images DIR too")
    if "fp16_below" in given and not (spec.bits and spec.calibrated):
        raise ConfigError("--fp16-below keeps small layers fp16 in uintN/kmeansK --method gptq; --quant "
                          f"{spec.weights}{f' --method {spec.method}' if spec.bits else ''} stores every layer alike")


def _model_line(options: ExportOptions, model) -> str:
    name = options.checkpoint or "the shipped student, " + model.source
    return f"{name} ({model.describe()}, {model.parameters:,} parameters)"


def _runtime_graph(options: ExportOptions, spec) -> str:
    from edge.export.exporter import leftover_dequantization, runtime_ops

    if spec.weights == "int8":
        return f"int8 QDQ kept for int8 kernels ({runtime_ops(options.output)['DequantizeLinear']} DequantizeLinear)"
    leftover = leftover_dequantization(options.output)
    return "no dequantization left after load" if not leftover else f"decode ops left at run time: {leftover}"


def _export_lines(document: dict) -> tuple[str, ...]:
    """A few readable lines: the model, the file, its weights, the parity check, the runtime graph."""
    weights = dict(document["weights"])
    head = f"{weights.pop('weights')} ({'per channel' if weights.pop('per_channel', False) else 'per tensor'})"
    details = [f"{key.replace('_', ' ')} {value}" for key, value in weights.items()]
    parity = document["parity"]
    return (f"model: {document['model']}",
            f"wrote {document['output']}: {document['bytes']:,} bytes",
            f"weights: {head}" + "".join(f"\n  {line}" for line in details),
            f"parity: top-1 agreement {parity['agreement']:.2%} with torch fp32, max |logit diff| "
            f"{parity['max_abs_diff']:.4g}, on {parity['source']}",
            f"runtime graph: {document['runtime_graph']}")


def _export_within_drop(options: ExportOptions, model, calibration, offset: int) -> Report:
    """--max-drop: try formats from the smallest file up, write the first within the drop."""
    from edge.export.select import select_format

    pictures, label_array, count = _validation_set(options, model, offset)
    chosen, trials = select_format(model, options.output, pictures, label_array, options.max_drop, *calibration)
    width = max(len(trial.name) for trial in trials)
    lines = [f"model: {_model_line(options, model)}",
             f"{'format':<{width}} {'bytes':>10} {'agreement':>10} {'accuracy':>9}  within {options.max_drop} pt "
             f"on {count} images"]
    for trial in trials:
        accuracy = f"{trial.accuracy:.2f}%" if trial.accuracy is not None else "-"
        lines.append(f"{trial.name:<{width}} {trial.bytes:>10,} {trial.agreement:>9.2f}% {accuracy:>9}  "
                     f"{'yes' if trial.passed else 'no'}")
    lines.append(f"wrote {options.output}: {chosen.name}, {chosen.bytes:,} bytes" if chosen
                 else f"error: no format stays within {options.max_drop} points; nothing written")
    document = {"model": _model_line(options, model), "output": str(options.output) if chosen else None,
                "chosen": chosen.name if chosen else None, "bytes": chosen.bytes if chosen else None,
                "trials": [{"format": t.name, "bytes": t.bytes, "agreement": t.agreement, "accuracy": t.accuracy,
                            "passed": t.passed} for t in trials]}
    return Report(tuple(lines), document, exit_code=0 if chosen else 1,
                  value=(chosen.bytes, {"weights": chosen.name}) if chosen else None)


def _validation_set(options: ExportOptions, model, offset: int):
    """(--images preprocessed, their labels or None, how many) for the --max-drop search."""
    import numpy as np

    from edge.data.folders import list_samples, read_labels
    from edge.export.exporter import preprocessed_images

    samples = list_samples(options.images, model.card.classes, strict_classes=True)[offset:]
    pictures, _ = preprocessed_images(model, options.images, len(samples), offset)
    truth = read_labels(options.labels) if options.labels else {s.id: s.label for s in samples
                                                                if s.label is not None}
    known = truth and all(s.id in truth for s in samples)
    return pictures, np.array([truth[s.id] for s in samples]) if known else None, len(samples)


def sensitivity_command(options: SensitivityOptions) -> Report:
    """Quantize each layer alone and measure how many answers change; the most sensitive layers first."""
    import json

    from edge.export.exporter import preprocessed_images
    from edge.export.sensitivity import layer_sensitivity
    from edge.io.checkpoints import load_model

    if options.json_out:
        check_output(options.json_out, inputs=(options.checkpoint, options.images), overwrite=options.overwrite,
                     what="JSON")
    model = load_model(options.checkpoint, pools=options.pools)
    pictures, source = preprocessed_images(model, options.images, options.limit)
    rows = [dataclasses.asdict(row) for row in
            layer_sensitivity(model.build(), pictures, options.bits, options.per_channel, options.kmeans)]
    scheme = f"kmeans{options.kmeans}" if options.kmeans else f"uint{options.bits}"
    lines = [f"{scheme}{' per-channel' if options.per_channel else ''}, one layer at a time, on {source}",
             f"{'layer':<10} {'weights':>8} {'agreement':>10} {'max |dlogit|':>13}"]
    lines += [f"{r['name']:<10} {r['weights']:>8,} {r['agreement']:>9.2%} {r['max_logit_change']:>13.3f}" for r in rows]
    if options.json_out:
        text = json.dumps(rows, indent=2)
        atomic_write(options.json_out, lambda f: f.write(text), binary=False)
    return Report(tuple(lines), {"scheme": scheme, "per_channel": options.per_channel, "source": source,
                                 "layers": rows})
