"""The `edge` command line: export, predict, info, convert, train, distill, slim, compress (and bench from the bench package).

Heavy modules (torch, onnx, export, bench) are imported inside the commands that need them,
so `edge predict` on an ONNX file never imports torch.
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from pathlib import Path

import click

from edge import __version__
from edge.core import backends
from edge.core import weight_formats as formats


def _int_list(value: str | None, option: str = "--pools", distinct: bool = True) -> tuple[int, ...] | None:
    """``"0,1,2"`` -> (0, 1, 2); at least one integer, with ``distinct`` none twice (else a usage error)."""
    if value is None or (option == "--pools" and value.strip() == "auto"):  # auto: edge.inference.pools
        return None if value is None else "auto"
    try:
        numbers = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}", param_hint=option) from None
    if not numbers or (distinct and len(set(numbers)) != len(numbers)):
        raise click.BadParameter(f"expected comma-separated integers{', each once' if distinct else ''}, got "
                                 f"{value!r}", param_hint=option)
    return numbers


class FiniteRange(click.FloatRange):
    """`click.FloatRange` that also refuses nan and inf (``float()`` accepts both)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


# --threads/--workers: torch starts two OS threads per --threads at its first call, so a typo like
# 100000 would start 200,000; no machine edge runs on has this many cores
THREADS = click.IntRange(1, 256)


@contextmanager
def _user_errors():
    """Known failures (`edge.core.errors.EdgeError`) -> one clear line on stderr and exit code 2 (never a
    traceback); click's own usage errors pass through to click, which also exits 2."""
    from edge.core.errors import EdgeError

    try:
        yield
    except EdgeError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted: no file was left half-written (train, distill, slim and compress continue with "
                   "--resume)", err=True)
        sys.exit(130)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge")
def main():
    """Compress a Food-11 StudentNet and ship it: export to small ONNX files, predict, benchmark."""


@main.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .onnx file to write.")
@click.option("--quant", default="fp32", show_default=True, metavar=formats.syntax(),
              help="How weights are stored (codes are decoded when the model is loaded: inference stays fp32): "
                   + formats.help_text() + ".")
@click.option("--per-channel", is_flag=True, help="One min-max range (uintN) or codebook (kmeansK) per output channel.")
@click.option("--method", default=formats.DEFAULT_METHOD, show_default=True,
              type=click.Choice(list(formats.METHODS)),
              help="uintN/kmeansK: " + "; ".join(f"{k} = {v}" for k, v in formats.METHODS.items()) + ".")
@click.option("--entropy", is_flag=True,
              help="Entropy-code the integer codes (smaller file; only edge opens it: `edge convert --to onnx` "
                   "writes the plain ONNX file).")
@click.option("--train-epochs", default=0, show_default=True, type=click.IntRange(0),
              help="uintN/kmeansK: trained quantization, epochs of KD on augmented --calib images (codebooks "
                   "and scales, or the codes on the fixed grid; and the biases).")
@click.option("--fp16-below", default=formats.FP16_BELOW, show_default=True, type=click.IntRange(0), metavar="N",
              help="uintN/kmeansK --method gptq: layers with fewer than N weights stay fp16 (the sensitive small ones).")
@click.option("--low-rank", type=FiniteRange(0, 1, min_open=True), metavar="ENERGY",
              help="fp32/fp16: store pointwise convs and the classifier as SVD factors U·V keeping ENERGY (e.g. "
                   "0.99) of the squared singular values, where that saves bytes (folded back at load).")
@click.option("--calib", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of unlabelled images to calibrate gptq on (default: synthetic images, data-free).")
@click.option("--calib-images", default=64, show_default=True, type=click.IntRange(1),
              help="How many --calib images to use (the first ones in id order).")
@click.option("--pools", metavar="I,J,..", help="Stages followed by a max-pool (default: the homework's 0,1,2,3).")
@click.option("--images", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of real images for the parity check (default: random input). When it is the "
                   "--calib folder, the images after the calibration ones are used.")
@click.option("--max-drop", type=FiniteRange(0, 100), metavar="POINTS",
              help="Pick the smallest weight format whose top-1 agreement with fp32 (and accuracy, with "
                   "--labels) on --images stays within POINTS; prints what it tried. Overrides --quant.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), help="Id,label CSV for --images.")
def export(checkpoint, output, quant, per_channel, method, entropy, train_epochs, fp16_below, low_rank, calib, calib_images, pools,
           images, max_drop, labels):
    """Export CHECKPOINT to ONNX: a StudentNet (ours, a homework .bin, 8-bit or 16-bit pickle) or any
    model file of `edge train` (the cnn / group baselines, torchvision classifiers).

    Without CHECKPOINT, exports the shipped student (the homework TA's StudentNet, rebuilt from
    models/food11_student_uint8.onnx), so the command works on a fresh clone. BatchNorm is folded, torch.onnx.export writes the graph
    and the weight format is applied to its Conv / Gemm weights; the model's config,
    preprocessing, classes and weight format go into the file's metadata.
    """
    from edge.io.checkpoints import load_model
    from edge.core.files import check_output
    from edge.inference.shipped import SHIPPED_STUDENT, shipped_student
    from edge.export.exporter import export_onnx, leftover_dequantization, preprocessed_images, parity_check, runtime_ops, sample_inputs
    from edge.export.quantize import QuantSpec

    with _user_errors():
        check_output(output, inputs=(checkpoint or SHIPPED_STUDENT, calib, images, labels), writes_model=True,
                     model_format="onnx", what="ONNX file")
        try:
            spec = QuantSpec(quant, per_channel, method, fp16_below, entropy, train_epochs, low_rank)
        except ValueError as err:
            raise click.BadParameter(str(err), param_hint="--quant") from None
        _check_export_options(spec, calib, images, labels, max_drop)
        ckpt = load_model(checkpoint, pools=_int_list(pools)) if checkpoint else shipped_student()
        click.echo(f"model: {checkpoint or 'the shipped student, ' + ckpt.source} "
                   f"({ckpt.describe()}, {ckpt.parameters:,} parameters)")
        calibrates = spec.calibrated or max_drop is not None  # --max-drop tries calibrated candidates
        calibration = preprocessed_images(ckpt, calib, calib_images) if calib and calibrates else (None, "")
        same = images and calib and images.resolve() == calib.resolve()
        if max_drop is not None:
            return _export_within_drop(ckpt, output, max_drop, calibration, images, labels,
                                       calib_images if same else 0)
        size, described = export_onnx(ckpt, output, spec, *calibration)
        leftover = leftover_dequantization(output)
        parity_input = preprocessed_images(ckpt, images, 64, offset=calib_images) if same else sample_inputs(ckpt, images)
        parity = parity_check(ckpt, output, *parity_input)
        click.echo(f"wrote {output}: {size:,} bytes; " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in described.items()))
        click.echo(f"parity vs torch fp32 on {parity.source}: max |logit diff| {parity.max_abs_diff:.4g}, "
                   f"top-1 agreement {parity.agreement:.2%}")
        if spec.weights == "int8":
            click.echo(f"runtime graph: int8 QDQ kept for int8 kernels ({runtime_ops(output)['DequantizeLinear']} "
                       "DequantizeLinear)")
        else:
            click.echo("runtime graph: " + ("no dequantization left after load" if not leftover
                                             else f"decode ops left at run time: {leftover}"))


FORMAT_OPTIONS = ("quant", "per_channel", "method", "entropy", "train_epochs", "fp16_below", "low_rank")


def _check_export_options(spec, calib, images, labels, max_drop) -> None:
    """Options that would do nothing in this mode are mistakes, said at once (exit 2)."""
    ctx = click.get_current_context()
    given = [name for name in FORMAT_OPTIONS if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if max_drop is not None and given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise click.UsageError(f"--max-drop chooses the weight format from its candidates; {flags} would be ignored")
    if spec.per_channel and "per_channel" not in spec.format.options:
        raise click.UsageError(f"--per-channel sets integer ranges; --quant {spec.weights} has none")
    if calib and not spec.calibrated and max_drop is None:
        raise click.UsageError(f"--calib calibrates gptq and int8; --quant {spec.weights} --method {spec.method} "
                               "uses no calibration")
    if labels and not images:
        raise click.UsageError("--labels label the --images folder; give --images DIR too")
    if "fp16_below" in given and not (spec.bits and spec.calibrated):
        raise click.UsageError("--fp16-below keeps small layers fp16 in uintN/kmeansK --method gptq; --quant "
                               f"{spec.weights}{f' --method {spec.method}' if spec.bits else ''} stores every layer alike")


def _export_within_drop(ckpt, output, max_drop, calibration, images, labels, offset):
    """--max-drop: try formats from the smallest file up, write the first within the drop."""
    import numpy as np

    from edge.data.folders import list_samples, read_labels
    from edge.export.exporter import preprocessed_images
    from edge.export.select import select_format

    if not images:
        raise click.UsageError("--max-drop needs --images DIR (validation images to measure the drop on)")
    samples = list_samples(images, ckpt.card.classes, strict_classes=True)[offset:]
    pictures, _ = preprocessed_images(ckpt, images, len(samples), offset)
    truth = read_labels(labels) if labels else {s.id: s.label for s in samples if s.label is not None}
    known = truth and all(s.id in truth for s in samples)
    label_array = np.array([truth[s.id] for s in samples]) if known else None
    chosen, trials = select_format(ckpt, output, pictures, label_array, max_drop, *calibration)
    width = max(len(trial.name) for trial in trials)
    click.echo(f"{'format':<{width}} {'bytes':>10} {'agreement':>10} {'accuracy':>9}  within {max_drop} pt "
               f"on {len(samples)} images")
    for trial in trials:
        accuracy = f"{trial.accuracy:.2f}%" if trial.accuracy is not None else "-"
        click.echo(f"{trial.name:<{width}} {trial.bytes:>10,} {trial.agreement:>9.2f}% {accuracy:>9}  "
                   f"{'yes' if trial.passed else 'no'}")
    if chosen is None:
        raise click.ClickException(f"no format stays within {max_drop} points; nothing written")
    click.echo(f"wrote {output}: {chosen.name}, {chosen.bytes:,} bytes")


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--images", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of real images to measure on.")
@click.option("--limit", default=128, show_default=True, type=click.IntRange(1), help="Images used (first by id).")
@click.option("--bits", default=8, show_default=True, type=click.IntRange(1, 8), help="Bit width of the rounding.")
@click.option("--per-channel", is_flag=True, help="Per-output-channel min-max (or codebook) instead of per tensor.")
@click.option("--kmeans", type=click.IntRange(2, 256), metavar="K",
              help="Weight sharing instead of min-max: K shared values (plain k-means) per tensor or channel.")
@click.option("--pools", metavar="I,J,..", help="Pool positions for a homework checkpoint.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the rows as JSON.")
def sensitivity(checkpoint, images, limit, bits, per_channel, kmeans, pools, json_out):
    """Per-layer sensitivity: quantize each layer alone (min-max, --bits) and measure how many
    answers change on real images; the most sensitive layers come first."""
    import dataclasses
    import json

    from edge.io.checkpoints import load_model
    from edge.core.files import atomic_write, check_output
    from edge.export.exporter import preprocessed_images
    from edge.export.sensitivity import layer_sensitivity

    with _user_errors():
        if json_out:
            check_output(json_out, inputs=(checkpoint, images), what="JSON")
        ckpt = load_model(checkpoint, pools=_int_list(pools))
        pictures, source = preprocessed_images(ckpt, images, limit)
        rows = layer_sensitivity(ckpt.build(), pictures, bits, per_channel, kmeans)
        click.echo(f"{f'kmeans{kmeans}' if kmeans else f'uint{bits}'}{' per-channel' if per_channel else ''}, "
                   f"one layer at a time, on {source}")
        click.echo(f"{'layer':<10} {'weights':>8} {'agreement':>10} {'max |dlogit|':>13}")
        for row in rows:
            click.echo(f"{row.name:<10} {row.weights:>8,} {row.agreement:>9.2%} {row.max_logit_change:>13.3f}")
        if json_out:
            text = json.dumps([dataclasses.asdict(r) for r in rows], indent=2)
            atomic_write(json_out, lambda f: f.write(text), binary=False)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The Kaggle CSV to write (Id,label).")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path),
              help="Id,label CSV of the true labels: prints accuracy.")
@click.option("--provider", default="cpu", show_default=True, type=click.Choice(backends.SPELLINGS),
              help="cpu/cuda: ONNX Runtime's CPU/CUDA provider for .onnx files (torch's device for checkpoints). "
                   "All: " + backends.help_text() + ".")
@click.option("--batch", default=4, show_default=True, type=click.IntRange(1),
              help="Images per model call (small batches stay in cache; the CSV is the same for any).")
@click.option("--workers", type=THREADS,
              help="Threads that decode images, each a batch at a time before running the model on it "
                   "(default: all cores).")
@click.option("--threads", type=THREADS,
              help="Inference threads (default: all cores). ONNX on CPU: this many single-threaded "
                   "model calls at once.")
@click.option("--pools", metavar="I,J,..|auto", help="Pool positions for a homework checkpoint (default 0,1,2,3, "
              "checked against its BatchNorm statistics; auto: the placement they fit best).")
@click.option("--skip-bad", is_flag=True, help="Skip images that cannot be decoded (listed) instead of failing.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def predict(model, data_dir, output, labels, provider, batch, workers, threads, pools, skip_bad, quiet):
    """Predict every image in DATA_DIR with MODEL and write the Kaggle CSV.

    MODEL: an ONNX file we exported (runs on ONNX Runtime, no torch needed) or any checkpoint
    edge reads. DATA_DIR: a Food-11 split folder (testing/NNNN.jpg, training/<class>_<n>.jpg)
    or a folder of class subfolders.
    """
    from edge.data.folders import list_samples, read_labels
    from edge.core.files import check_output
    from edge.inference.predict import open_model, predict_samples, write_csv

    with _user_errors():
        check_output(output, inputs=(model, labels, data_dir), what="prediction CSV")
        classifier, lanes = open_model(model, provider, threads, _int_list(pools), data_dir)
        samples = list_samples(data_dir, classifier.card.classes, strict_classes=True)
        truth = read_labels(labels, len(classifier.card.classes)) if labels else None
        result = predict_samples(classifier, samples, batch, workers, skip_bad, progress=not quiet, lanes=lanes)
        write_csv(output, result)
        click.echo(f"wrote {output}: {len(result.samples)} predictions ({classifier.provider}) in {result.wall_s:.1f} s; "
                   f"CPU: decoding {result.decode_cpu_s:.1f} s, inference {result.infer_cpu_s:.1f} s", err=True)
        for problem in result.skipped:
            click.echo(f"skipped: {problem}", err=True)
        scored = result.accuracy(truth)
        if scored:
            name = f"agreement with {labels.name}" if labels else "accuracy"
            click.echo(f"{name}: {scored[0]:.2%} of {scored[1]} images", err=True)
        elif labels:
            click.echo(f"warning: no image id of {data_dir} is in {labels}: no accuracy", err=True)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--pools", metavar="I,J,..", help="Pool positions for a homework checkpoint.")
def info(model, pools):
    """Show what MODEL is: StudentNet config, preprocessing, classes, weight format, size."""
    import json

    from edge.core.formats import is_onnx
    from edge.codec.metadata import model_size

    with _user_errors():
        if is_onnx(model):
            from edge.inference.runtime import OnnxClassifier

            if pools:
                raise click.BadParameter(f"{model} is an ONNX file, whose graph fixes its pools", param_hint="--pools")
            loaded = OnnxClassifier(model)
            card, net, extra = loaded.card, loaded.net, {"weights": loaded.quant}
            parameters, flops = model_size(card, net)
            if net:
                extra["architecture"] = {"arch": net["arch"], "groups": net["groups"]}
        else:
            from edge.io.checkpoints import load_model

            ckpt = load_model(model, pools=_int_list(pools))
            card, parameters, flops = ckpt.card, ckpt.parameters, ckpt.flops
            extra = {"format": ckpt.source, "model": ckpt.describe()}
        summary = {"file": str(model), "bytes": model.stat().st_size, "parameters": parameters,
                   "mflops": round(flops / 1e6, 1), **card.to_dict(), **extra}
        click.echo(json.dumps(summary, indent=2))


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "target", required=True, type=click.Choice(["edge", "homework8", "homework16", "onnx"]),
              help="edge: our torch checkpoint (config inside); homework8/16: the homework's pickles; onnx: the "
                   "plain ONNX file (any ONNX Runtime opens it) of an entropy-coded edge .onnx (--entropy).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--pools", metavar="I,J,..", help="Pool positions for a homework checkpoint.")
def convert(checkpoint, target, output, pools):
    """Rewrite CHECKPOINT in another weights format (homework pickles read by the homework's decoder)."""
    from edge.io.checkpoints import load_checkpoint, save_checkpoint, save_homework_pickle
    from edge.core.files import check_output

    with _user_errors():
        check_output(output, inputs=(checkpoint,), writes_model=True, what="converted model")
        if target == "onnx":
            from edge.codec.entropy import write_plain

            return click.echo(f"wrote {output}: {write_plain(checkpoint, output):,} bytes (plain ONNX)")
        ckpt = load_checkpoint(checkpoint, pools=_int_list(pools))
        if target == "edge":
            save_checkpoint(output, ckpt.card, ckpt.state)
        else:
            save_homework_pickle(output, ckpt.state, bits=8 if target == "homework8" else 16)
        click.echo(f"wrote {output}: {output.stat().st_size:,} bytes ({target})")


@main.command()
@click.argument("models", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", type=click.Path(file_okay=False, path_type=Path),
              help="Image folder: adds accuracy, agreement with torch fp32 and end-to-end images/s.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), help="Id,label CSV for --data.")
@click.option("--provider", "providers", default=",".join(backends.NAMES), show_default=True, metavar="NAME,..",
              help="Backends, comma-separated: " + backends.help_text() + ".")
@click.option("--quant", "quants", metavar="FORMAT[:METHOD],..",
              help=f"ONNX weight formats ({formats.syntax()}; METHOD: {', '.join(formats.METHODS)}) a checkpoint is "
                   f"exported to [default: {','.join(formats.BENCH_FORMATS)}; without MODEL "
                   f"{','.join(map(formats.data_free, formats.BENCH_FORMATS))}, as an initialised model has nothing "
                   "to calibrate]. torch-cuda also runs fp16.")
@click.option("--batch", "batches", default="1,32", show_default=True, metavar="B,..",
              help="Batch sizes: latency at the smallest, throughput at each.")
@click.option("--threads", type=THREADS,
              help="Inference threads per backend (default: the library's, all cores). On a machine shared "
                   "with other work, 1 is far steadier.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1),
              help="Rounds over all rows (interleaved); cells show median (min-max) over them.")
@click.option("--min-time", default=0.5, show_default=True, type=FiniteRange(0.01),
              help="Seconds of timed calls per batch size per repeat (after warm-up).")
@click.option("--pools", metavar="I,J,..", help="Pool positions for homework checkpoints (default 0,1,2,3).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write results JSON.")
@click.option("--markdown", "markdown_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the markdown report.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG: size vs accuracy, latency per backend.")
@click.option("--compare", "previous", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An earlier --json: say whether both runs' medians lie within each other's spread.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def bench(models, data, labels, providers, quants, batches, threads, repeats, min_time, pools, json_out,
          markdown_out, plot_out, previous, quiet):
    """Benchmark MODELs on every backend x weight format: size, accuracy, load time, latency,
    throughput, peak RSS, GFLOP/s vs the CPU's rough peak.

    MODEL: a checkpoint (exported to each --quant format on the fly) or an .onnx file. Without
    MODEL: a freshly initialised homework StudentNet on synthetic input (sizes and speed only).
    Each row runs in its own process; backends that cannot run here get a row saying why.
    """
    from edge.bench.cli import run_command

    with _user_errors():
        sys.exit(run_command(list(models), data=data, labels=labels, providers=providers, quants=quants,
                             batches=_int_list(batches, "--batch", distinct=False), threads=threads, repeats=repeats,
                             min_time=min_time,
                             pools=_int_list(pools), json_out=json_out, markdown_out=markdown_out,
                             plot_out=plot_out, previous=previous, quiet=quiet))


@main.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path),
              help="Id,label CSV of the true labels (default: from the file names, else the first model's "
                   "clean answers).")
@click.option("--eps", default="1/255,2/255,8/255", show_default=True, metavar="E,..",
              help="L-inf budgets on 0..1 pixels, fractions or decimals, each >= 1/255.")
@click.option("--method", "methods", default="fgsm,ifgsm", show_default=True, metavar="fgsm,ifgsm",
              help="fgsm: one signed-gradient step; ifgsm: --steps projected steps of 2.5*eps/steps.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(1), help="ifgsm iterations.")
@click.option("--defense", "defenses", default="gaussian:1.5,median:3,jpeg:75,bits:4", show_default=True,
              metavar="NAME:VALUE,..", help="Input defenses scored on clean and attacked images: gaussian:SIGMA, "
                                           "median:K, jpeg:QUALITY, bits:N; '' for none.")
@click.option("--source", type=click.Path(dir_okay=False, path_type=Path),
              help="Also a transfer attack: images made on this model (e.g. the fp32 checkpoint) scored by each MODEL.")
@click.option("--save-adversarial", "save_dir", type=click.Path(path_type=Path),
              help="Folder for the attacked images as lossless PNGs named by image (METHOD-epsK/0007.png; "
                   "under the crafting model's file name when several models craft).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the report JSON.")
@click.option("--markdown", "markdown_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the markdown table.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write accuracy-vs-eps curves here and the original/attacked/defended grid to OUT-examples.png.")
@click.option("--limit", type=click.IntRange(1), help="Only the first N images (id order).")
@click.option("--batch", default=8, show_default=True, type=click.IntRange(1), help="Images per gradient step.")
@click.option("--threads", default=1, show_default=True, type=THREADS, help="torch CPU threads.")
@click.option("--pools", metavar="I,J,..", help="Pool positions for homework checkpoints (default 0,1,2,3).")
@click.option("--overwrite", is_flag=True, help="Replace existing report files / write into a non-empty folder.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def attack(models, data_dir, labels, eps, methods, steps, defenses, source, save_dir, json_out, markdown_out,
           plot_out, limit, batch, threads, pools, overwrite, quiet):
    """Attack MODEL(s) with FGSM / iterative FGSM on DATA_DIR's images and score input defenses.

    MODEL: a checkpoint (attacked and scored in torch) or an ONNX file we exported (attacked
    white-box through its decoded weights rebuilt in torch, scored by ONNX Runtime). Images are
    attacked in the model's input space (its centre crop), rounded to 8-bit pixels, L-inf <= eps.
    Prints accuracy, attack success rate, L-inf and each defense's accuracy per model x method x eps.
    """
    import shlex

    import torch

    from edge.workflows.attack_report import attack_command

    torch.set_num_threads(threads)
    with _user_errors():
        attack_command(list(models), data_dir, labels=labels, eps=eps, methods=methods, steps=steps,
                       defenses=defenses, source=source, save_dir=save_dir, json_out=json_out,
                       markdown_out=markdown_out, plot_out=plot_out, limit=limit, batch=batch,
                       pools=_int_list(pools), overwrite=overwrite, progress=not quiet,
                       command="edge attack " + " ".join(shlex.quote(a) for a in sys.argv[2:]))


def _rates(value: str) -> tuple[float, ...]:
    """``--rate``: one or more fractions strictly between 0 and 1."""
    try:
        rates = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        rates = ()
    if not rates or not all(0 < r < 1 for r in rates):
        raise click.BadParameter(f"expected comma-separated fractions between 0 and 1, got {value!r}")
    return rates


_TRAINING_OPTIONS = [
    click.option("--val", help="Validation data (same forms as DATA); keeps the best epoch. Unlabelled: agreement "
                               "with the teacher."),
    click.option("--test", help="Test data, scored at the end (never used to choose)."),
    click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), help="Id,label CSV for DATA."),
    click.option("--val-labels", type=click.Path(dir_okay=False, path_type=Path), help="Id,label CSV for --val."),
    click.option("--test-labels", type=click.Path(dir_okay=False, path_type=Path), help="Id,label CSV for --test."),
    click.option("--padding", default=0, show_default=True, type=click.IntRange(0),
                 help="RandomCrop's symmetric padding per side (the homework: 0; e.g. 4 for 32 px images)."),
    click.option("--no-flip", is_flag=True, help="No random horizontal flip."),
    click.option("--batch", default=64, show_default=True, type=click.IntRange(1)),
    click.option("--lr", default=1e-3, show_default=True, type=FiniteRange(0, min_open=True),
                 help="AdamW learning rate."),
    click.option("--weight-decay", default=0.01, show_default=True, type=FiniteRange(0)),
    click.option("--schedule", default="cosine", show_default=True, type=click.Choice(["cosine", "constant"]),
                 help="Learning rate per epoch."),
    click.option("--seed", default=0, show_default=True, type=int,
                 help="Seeds initialisation, batch order and augmentation (an epoch is a function of it)."),
    click.option("--precise-bn", type=click.IntRange(0), metavar="IMAGES",
                 help="Re-estimate BatchNorm statistics on this many training images after each epoch (precise BN; "
                      "0 = off, the homework's recipe) [default: 1024: slow BatchNorm averages lag a short run]."),
    click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:N."),
    click.option("--threads", type=THREADS, help="torch CPU threads (default: all cores)."),
    click.option("--workers", default=0, show_default=True, type=click.IntRange(0),
                 help="DataLoader worker processes that crop/augment batches (the same batches for any number)."),
    click.option("--decode-threads", default=4, show_default=True, type=click.IntRange(1),
                 help="Threads decoding images once into the uint8 cache."),
    click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
                 help="Keep decoded images here; later runs on the same files skip decoding."),
    click.option("--quiet", is_flag=True, help="No progress bars (epoch lines and the summary remain)."),
    click.option("--sync-bn", is_flag=True,
                 help="Under torchrun: BatchNorm statistics over the global batch (all processes), not each "
                      "process's share."),
]
_KD_OPTIONS = [
    click.option("--temperature", default=20.0, show_default=True, type=FiniteRange(0, min_open=True),
                 help="KD temperature T."),
    click.option("--alpha", type=FiniteRange(0, 1),
                 help="KD weight: alpha*T^2*KL + (1-alpha)*CE [default: 0.5 with labels, 1 (label-free) without]."),
]
_FRESH_MODEL_OPTIONS = [
    click.option("--input-size", type=click.IntRange(4),
                 help="Input side in pixels, recorded in the model file (predict, export and bench use it): the "
                      "centre crop [default: 256 for folders, the homework's; 32 for fashion-mnist, the 28 px "
                      "images zero-padded]. Add --resize N to scale folder photos down to it first."),
    click.option("--resize", type=click.IntRange(1), help="Resize the shorter side to this first (folders only)."),
    click.option("--widths", callback=lambda ctx, param, value: _int_list(value, "--widths", distinct=False),
                 metavar="W0,W1,..",
                 help="Stage widths [default: the homework's 16,32,64,128,256,256,256,256; baselines sized to "
                      "its parameter count]."),
    click.option("--pools", callback=lambda ctx, param, value: _int_list(value), metavar="I,J,..",
                 help="Stages followed by a 2x2 max-pool [default: 0,1,2,3]."),
    click.option("--groups", type=click.IntRange(1), help="Groups of the group-conv baseline [default: 4]."),
    click.option("--epochs", default=10, show_default=True, type=click.IntRange(1)),
    click.option("--sparsity", default=0.0, show_default=True, type=FiniteRange(0),
                 help="L1 on BatchNorm gammas (network slimming, e.g. 1e-4), so `edge slim` finds channels to cut."),
    click.option("--resume", is_flag=True, help="Continue OUTPUT's run (same options) to the same result."),
    click.option("--stop-after", type=click.IntRange(1), metavar="EPOCH",
                 help="Stop after this epoch (the schedule still spans --epochs); continue later with --resume."),
    click.option("--metrics", type=click.Path(dir_okay=False, path_type=Path), help="Write the run's summary JSON."),
    click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
                 help="The run's file (last epoch, resumable); the best epoch goes to NAME.best.pt."),
]


def _with(options):
    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command
    return apply


@main.command()
@click.argument("data")
@click.option("--arch", default="dw", show_default=True,
              help="dw (StudentNet), cnn / group (baselines at its parameter count), or any torchvision classifier "
                   "by name (resnet18, mobilenet_v2, mobilenet_v3_small, efficientnet_b0, ...; with --input-size).")
@click.option("--weights", "--teacher-weights", "weights",
              help="Initial weights of a torchvision arch: imagenet (the file torchvision caches; nothing is "
                   "downloaded) or a state dict PATH (e.g. the homework's teacher_resnet18.bin).")
@_with(_FRESH_MODEL_OPTIONS)
@_with(_TRAINING_OPTIONS)
def train(**params):
    """Train a model from scratch on DATA with cross-entropy: a teacher, a baseline or a student.

    DATA: a folder (Food-11 training/ with <class>_<n>.jpg, or class subfolders) or
    fashion-mnist:train; add @START:STOP for a slice in id order. Writes OUTPUT after every
    epoch (resume with --resume) and the best epoch by --val accuracy to OUTPUT's .best.pt.
    """
    from edge.core.options import TrainOptions, from_click
    from edge.workflows.runs import train_command

    with _user_errors():
        train_command(from_click(TrainOptions, params))


@main.command()
@click.argument("data")
@click.option("--teacher", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Teacher file: one `edge train` wrote, any StudentNet file, or a torchvision state dict "
                   "(the homework's teacher_resnet18.bin) with --teacher-arch.")
@click.option("--teacher-arch", default="resnet18", show_default=True,
              help="The torchvision classifier a plain state dict --teacher belongs to.")
@click.option("--student", default="dw", show_default=True,
              help="dw | cnn | group for a fresh student, or a model file to start from.")
@click.option("--feature", metavar="S_LAYER:T_LAYER",
              help="Also distil a feature map through a 1x1 regressor, e.g. cnn.4:layer2.")
@click.option("--feature-weight", default=1.0, show_default=True, type=FiniteRange(0))
@_with(_KD_OPTIONS)
@_with(_FRESH_MODEL_OPTIONS)
@_with(_TRAINING_OPTIONS)
def distill(**params):
    """Train a student from a teacher (knowledge distillation, the homework's loss).

    loss = alpha*T^2*KL(softmax(t/T) || softmax(s/T)) + (1-alpha)*CE, AdamW. Unlabelled DATA
    (e.g. Food-11 testing/) trains label-free with alpha 1.
    """
    from edge.core.options import DistillOptions, from_click
    from edge.workflows.runs import distill_command

    with _user_errors():
        distill_command(from_click(DistillOptions, params))


@main.command()
@click.argument("student", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("data")
@click.option("--rate", default="0.1", show_default=True, callback=lambda ctx, param, value: _rates(value),
              metavar="R[,R..]", help="Fraction of the remaining channels removed each round; several rates give "
                                      "several curves on one figure.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1))
@click.option("--finetune-epochs", default=2, show_default=True, type=click.IntRange(1),
              help="KD fine-tuning epochs after each round (the best by --val is kept).")
@click.option("--scope", default="stage", show_default=True, type=click.Choice(["stage", "global"]),
              help="Rank channels within each stage (the homework), or by one global |gamma| threshold "
                   "(Liu et al., after --sparsity training).")
@click.option("--teacher", type=click.Path(dir_okay=False, path_type=Path),
              help="Teacher for fine-tuning [default: the unpruned STUDENT].")
@click.option("--teacher-arch", default="resnet18", show_default=True,
              help="The torchvision classifier a plain state dict --teacher belongs to.")
@click.option("--quant", default="uint8", show_default=True, metavar=formats.syntax(),
              help="Weight format of each round's ONNX export, as in `edge export`.")
@click.option("--method", default=formats.DEFAULT_METHOD, show_default=True,
              type=click.Choice(list(formats.METHODS)),
              help="Rounding of integer formats, as in `edge export` (gptq calibrates on 64 --val images).")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for curve.json, curve.png and every round's model and ONNX file.")
@click.option("--resume", is_flag=True,
              help="Continue the interrupted slimming in OUTPUT (same options): recorded rounds are kept, the "
                   "round in progress continues from its last epoch, to the same result.")
@click.option("--stop-after", type=click.IntRange(1), metavar="EPOCHS",
              help="Stop once this many fine-tuning epochs have run in all (over rates and rounds, in order); "
                   "continue later with --resume.")
@_with(_KD_OPTIONS)
@_with(_TRAINING_OPTIONS)
def slim(**params):
    """Network-slim STUDENT (a StudentNet file): prune channels by BatchNorm |gamma|, physically.

    Each round removes RATE of the remaining channels per stage (never a whole layer), fine-tunes
    with knowledge distillation on DATA (label-free when DATA has no labels), keeps the best epoch
    by --val, exports it and records parameters, ONNX bytes and accuracy in OUTPUT/curve.json after
    every round. An interrupted run (Ctrl-C, a crash, --stop-after) continues with --resume.
    """
    from edge.core.options import SlimOptions, from_click
    from edge.workflows.runs import slim_command

    with _user_errors():
        slim_command(from_click(SlimOptions, params))


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--images", required=True, metavar="DIR[@A:B]",
              help="Unlabelled photos to calibrate, reconstruct and fine-tune on (every 5th by id is held back "
                   "for validation unless --val is given).")
@click.option("--target-bytes", required=True, type=click.IntRange(1), help="The ONNX file must fit this many bytes.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The .onnx file to write: the best fitting candidate.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path),
              help="Id,label CSV: validation accuracy ranks candidates first (agreement with MODEL otherwise), "
                   "and labels --test.")
@click.option("--val", metavar="DIR[@A:B]", help="Validation photos (instead of holding back every 5th of --images).")
@click.option("--test", metavar="DIR[@A:B]", help="Photos only scored, never used to choose.")
@click.option("--test-labels", type=click.Path(dir_okay=False, path_type=Path),
              help="Id,label CSV for --test [default: --labels].")
@click.option("--teacher", type=click.Path(dir_okay=False, path_type=Path),
              help="Teacher for fine-tuning [default: MODEL itself].")
@click.option("--teacher-arch", default="resnet18", show_default=True,
              help="The torchvision classifier a plain state dict --teacher belongs to.")
@click.option("--report", type=click.Path(file_okay=False, path_type=Path),
              help="Folder for report.json/.md, frontier.png, state.json and every candidate "
                   "[default: OUTPUT.compress].")
@click.option("--resume", is_flag=True, help="Continue the interrupted search in the report folder (same options).")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--epochs", default=4, show_default=True, type=click.IntRange(1),
              help="Function-matching fine-tuning epochs per slimming round.")
@click.option("--step", default=0.1, show_default=True, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Largest cut of the keep fraction in one round.")
@click.option("--min-keep", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="Never slim the prunable widths below this fraction.")
@click.option("--batch", default=32, show_default=True, type=click.IntRange(2))
@click.option("--lr", default=5e-5, show_default=True, type=click.FloatRange(0, min_open=True),
              help="AdamW learning rate of the fine-tuning (cosine); larger ones undo the reconstruction.")
@click.option("--temperature", default=1.0, show_default=True, type=click.FloatRange(0, min_open=True))
@click.option("--ridge", default=0.01, show_default=True, type=click.FloatRange(0),
              help="Pull each least-squares re-fit towards the layer's weights before pruning (relative to the "
                   "inputs' mean energy; 0 = plain least squares): smaller weights quantize better.")
@click.option("--budget-minutes", default=30.0, show_default=True, type=click.FloatRange(0, min_open=True),
              help="Start no slimming round that would end after this (judged by the slowest round so far).")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--threads", type=THREADS, help="torch CPU threads (default: all cores).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Keep decoded photos here.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def compress(**params):
    """Compress MODEL (a StudentNet) into an ONNX file of at most --target-bytes, label-free.

    Searches slimming depth x weight format: quantization alone, the exact merge of the last
    pointwise conv into the classifier (and more bits for its most sensitive layers with the
    bytes left under the target), then channels pruned with least-squares reconstruction
    and fine-tuned by function matching (teacher and student see the same augmented, mixed
    photos); keeps the best validation agreement with MODEL whose file fits. Writes the report
    (JSON, markdown, frontier PNG). Interrupted? Run again with --resume.
    """
    from edge.workflows.compress import run_command
    from edge.core.options import CompressOptions, from_click

    with _user_errors():
        run_command(from_click(CompressOptions, params))


if __name__ == "__main__":
    main()
