"""`edge predict` once its options are built: open the model, answer every image of the folder, write the
Kaggle CSV (when an output is given) and report. `edge.predict_images` and the CLI both call
`predict_command`. An ONNX model never imports torch here."""

from __future__ import annotations

from edge.core.files import check_output
from edge.core.options import PredictOptions
from edge.core.reports import Report


def predict_command(options: PredictOptions) -> Report:
    """Predict every image of ``options.data_dir``; the report's value is ``(classifier, predictions)``."""
    from edge.data.folders import list_samples, read_labels
    from edge.inference.openers import cpu_cores
    from edge.inference.ort_memory import expect_images
    from edge.inference.predict import open_model, predict_samples, write_csv

    if options.output:
        check_output(options.output, inputs=(options.model, options.labels, options.data_dir),
                     overwrite=options.overwrite, what="prediction CSV")
    expect_images(options.batch * (options.threads or cpu_cores()))  # at most one batch per lane
    classifier, lanes = open_model(options.model, options.provider, options.threads, options.pools,
                                   options.data_dir)
    samples = list_samples(options.data_dir, classifier.card.classes, strict_classes=True)
    truth = read_labels(options.labels, len(classifier.card.classes)) if options.labels else None
    result = predict_samples(classifier, samples, options.batch, options.workers, options.skip_bad,
                             progress=not options.quiet, lanes=lanes)
    if options.output:
        write_csv(options.output, result)
    document = _summary(options, classifier, result, truth)
    return Report(_lines(options, document), document, stderr=True, value=(classifier, result))


def _summary(options: PredictOptions, classifier, result, truth) -> dict:
    scored = result.accuracy(truth)
    return {"model": str(options.model), "output": str(options.output) if options.output else None,
            "provider": classifier.provider, "predictions": len(result.samples), "wall_s": round(result.wall_s, 3),
            "decode_cpu_s": round(result.decode_cpu_s, 3), "infer_cpu_s": round(result.infer_cpu_s, 3),
            "skipped": list(result.skipped),
            "scored": {"against": options.labels.name if options.labels else "file names",
                       "accuracy": scored[0], "images": scored[1]} if scored else None}


def _lines(options: PredictOptions, doc: dict) -> tuple[str, ...]:
    where = f"wrote {options.output}: " if options.output else ""
    lines = [f"{where}{doc['predictions']} predictions ({doc['provider']}) in {doc['wall_s']:.1f} s; "
             f"CPU: decoding {doc['decode_cpu_s']:.1f} s, inference {doc['infer_cpu_s']:.1f} s"]
    lines += [f"skipped: {problem}" for problem in doc["skipped"]]
    if doc["scored"]:
        name = f"agreement with {options.labels.name}" if options.labels else "accuracy"
        lines.append(f"{name}: {doc['scored']['accuracy']:.2%} of {doc['scored']['images']} images")
    elif options.labels:
        lines.append(f"warning: no image id of {options.data_dir} is in {options.labels}: no accuracy")
    return tuple(lines)
