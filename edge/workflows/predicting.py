"""`edge predict` once its options are built: open the model, answer every image of the folder, write the
Kaggle CSV (when an output is given) and report. `edge.predict_images` and the CLI both call
`predict_command`. An ONNX model never imports torch here. ``--provider auto`` and a ``--compute`` other than
fp32 are measured first (`edge.inference.auto`): the choice and its agreement with fp32 are in the log line."""

from __future__ import annotations

from edge.core.config import ConfigError
from edge.core.files import check_output
from edge.core.options import PredictOptions
from edge.core.reports import Report


def predict_command(options: PredictOptions) -> Report:
    """Predict every image of ``options.data_dir``; the report's value is ``(classifier, predictions)``."""
    from edge.data.folders import list_samples, read_labels
    from edge.core.cpu import cpu_cores
    from edge.inference.ort_memory import expect_images
    from edge.inference.predict import predict_samples, write_csv

    if options.output:
        check_output(options.output, inputs=(options.model, options.labels, options.data_dir),
                     overwrite=options.overwrite, what="prediction CSV")
    expect_images(options.batch * (options.threads or cpu_cores()))  # at most one batch per lane
    classifier, lanes, measured = _open(options)
    samples = list_samples(options.data_dir, classifier.card.classes, strict_classes=True)
    truth = read_labels(options.labels, len(classifier.card.classes)) if options.labels else None
    result = predict_samples(classifier, samples, options.batch, options.workers, options.skip_bad,
                             progress=not options.quiet, lanes=lanes)
    if options.output:
        write_csv(options.output, result)
    document = {**_summary(options, classifier, result, truth), "measured": measured}
    return Report(_lines(options, document), document, stderr=True, value=(classifier, result))


def _open(options: PredictOptions):
    """-> (classifier, lanes, what was measured to choose it: `edge.inference.auto`'s report, or None)."""
    from edge.core.formats import is_onnx
    from edge.inference.predict import open_model

    if options.provider != "auto" and options.compute == "fp32":
        return (*open_model(options.model, options.provider, options.threads, options.pools, options.data_dir), None)
    if not is_onnx(options.model):
        raise ConfigError(f"--provider auto and --compute choose among the ONNX backends; {options.model} is a "
                          "checkpoint (`edge export` it first)")
    from edge.core.backends import BackendError, resolve
    from edge.inference.auto import choose

    only = None
    if options.provider != "auto":
        try:
            only = (resolve(options.provider, "onnxruntime").name, options.compute)
        except BackendError as err:
            raise ConfigError(f"--provider: {err}") from None
    if options.calib is not None and not options.calib.is_dir():
        raise ConfigError(f"--calib: {options.calib} is not a folder of images")
    return choose(options.model, options.calib or options.data_dir, options.threads, only)


def _summary(options: PredictOptions, classifier, result, truth) -> dict:
    scored = result.accuracy(truth)
    return {"model": str(options.model), "output": str(options.output) if options.output else None,
            "provider": classifier.provider, "predictions": len(result.samples), "wall_s": round(result.wall_s, 3),
            "decode_cpu_s": round(result.decode_cpu_s, 3), "infer_cpu_s": round(result.infer_cpu_s, 3),
            "skipped": list(result.skipped),
            "scored": {"against": options.labels.name if options.labels else "file names",
                       "accuracy": scored[0], "images": scored[1]} if scored else None}


def _lines(options: PredictOptions, doc: dict) -> tuple[str, ...]:
    from edge.inference.auto import summary

    where = f"wrote {options.output}: " if options.output else ""
    lines = [f"{where}{doc['predictions']} predictions ({doc['provider']}) in {doc['wall_s']:.1f} s; "
             f"CPU: decoding {doc['decode_cpu_s']:.1f} s, inference {doc['infer_cpu_s']:.1f} s"
             + (f"; {summary(doc['measured'])}" if doc["measured"] else "")]
    lines += [f"skipped: {problem}" for problem in doc["skipped"]]
    if doc["scored"]:
        name = f"agreement with {options.labels.name}" if options.labels else "accuracy"
        lines.append(f"{name}: {doc['scored']['accuracy']:.2%} of {doc['scored']['images']} images")
    elif options.labels:
        lines.append(f"warning: no image id of {options.data_dir} is in {options.labels}: no accuracy")
    return tuple(lines)
