"""The `edge` command line: parse each command's options into its typed options object
(`edge.core.options`) and call the one function that does the command (the same one the Python API
`edge.api` calls); print what it reports. No command body lives here.

One convention for every command: ``-o/--output`` names what it writes; an existing output is refused
(exit 2) unless ``--overwrite`` is given (runs that can continue take ``--resume``); ``-q/--quiet``
shows no progress bars, only errors and the result; ``--json`` prints the result as one JSON document
on stdout (bench, attack and sensitivity: ``--json PATH`` writes it, ``--json`` alone prints it).

Heavy modules (torch, onnx, export, bench) are imported inside the commands that need them,
so `edge predict` on an ONNX file never imports torch.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
from contextlib import contextmanager, nullcontext, redirect_stdout
from pathlib import Path

import click

from edge import __version__
from edge.core import backends
from edge.core import weight_formats as formats
from edge.core.options import (THREADS_MAX, AttackOptions, BenchOptions, ExportOptions, PredictOptions,
                               SensitivityOptions)


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


def _rates(value: str) -> tuple[float, ...]:
    """``--rate``: one or more fractions strictly between 0 and 1."""
    try:
        rates = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        rates = ()
    if not rates or not all(0 < r < 1 for r in rates):
        raise click.BadParameter(f"expected comma-separated fractions between 0 and 1, got {value!r}")
    return rates


class FiniteRange(click.FloatRange):
    """`click.FloatRange` that also refuses nan and inf (``float()`` accepts both); shown as FLOAT."""

    name = "float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class Checked(click.ParamType):
    """A number option checked by its options class's `edge.core.options.Rule`: the one validation the
    Python API applies too (a bad value is click's usage error, exit 2)."""

    def __init__(self, options_class, field: str):
        self.field, self.rule = field, options_class.RULES[field]
        self.name = "integer" if self.rule.kind == "int" else "float"

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            try:
                value = int(value) if self.rule.kind == "int" else float(value)
            except ValueError:
                self.fail(f"{value!r} is not a valid {self.name}", param, ctx)
        try:
            return self.rule.check(self.field, value)
        except (TypeError, ValueError) as err:
            self.fail(str(err), param, ctx)



class Whole(click.IntRange):
    """click's IntRange without Python's ``int()`` leniency: ``1_000``, `` 7`` and non-ASCII digits are
    refused (a typo, not a number the user meant)."""

    name = "integer"

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not re.fullmatch(r"[+-]?[0-9]+", value):
            self.fail(f"{value!r} is not a whole number (digits 0-9 only)", param, ctx)
        return super().convert(value, param, ctx)


class Seed(Whole):
    """A seed: a whole number that torch's and numpy's generators both take, 0 .. 2**63-1 (a negative
    one or one past 64 bits failed deep inside them)."""

    def __init__(self):
        super().__init__(0, SEED_MAX)

    def _describe_range(self) -> str:
        return "0<=x<2**63"


SEED_MAX = 2**63 - 1

# --threads/--workers: torch starts two OS threads per --threads at its first call, so a typo like
# 100000 would start 200,000; no machine edge runs on has this many cores
THREADS = Whole(1, THREADS_MAX)
STDOUT = Path("-")  # `--json` alone (bench, attack, sensitivity): the document goes to stdout


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


def _command_line() -> str:
    return "edge " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def parse_options(options_class, params: dict):
    """-> (the command's options object, whether --json asked for the document on stdout): click's parameters
    less the presentation ones (--json; --quiet where nothing of the command shows progress) and the launcher's
    (--processes: how many ranks run the command, `_launch_ranks`)."""
    from edge.core.options import from_click, option_names

    params = dict(params)
    params.pop("processes", None)
    as_json = params.pop("json", False) or params.get("json_out") == STDOUT
    if params.get("json_out") == STDOUT:
        params["json_out"] = None
    if "quiet" not in option_names(options_class):
        params.pop("quiet", None)
    return from_click(options_class, params), as_json


def _execute(command, options_class, params: dict, *args) -> None:
    """``params`` -> ``options_class`` -> ``command(options, *args)``; print its report (or, with --json, its
    JSON document alone on stdout: anything else the command prints goes to stderr); exit with its code."""
    import json

    from edge.core.reports import Report

    processes = params.pop("processes", 1)
    with _user_errors():
        options, as_json = parse_options(options_class, params)
        _launch_ranks(processes, options)
        with redirect_stdout(sys.stderr) if as_json else nullcontext():
            result = command(options, *args)
    report = result if isinstance(result, Report) else Report((), result)
    if as_json:
        click.echo(json.dumps(report.document, indent=2, default=str))
    else:
        for line in report.lines:
            click.echo(line, err=report.stderr)
    sys.exit(report.exit_code)


def _launch_ranks(processes: int, options) -> None:
    """``--processes N`` (train, distill, slim), its options checked: run this command line as N torchrun
    ranks and exit when they are done (nothing to do in one process, or in a rank of such a run)."""
    if processes == 1:
        return
    from edge.train.distributed import check_processes, launch

    if check_processes(processes, options.loop.batch):
        launch(processes, sys.argv[1:])
        sys.exit(0)


def _output(help_text: str, required: bool = True, file_okay: bool = True):
    """-o/--output, with the one rule for an existing output said in its help."""
    return click.option("-o", "--output", required=required, type=click.Path(path_type=Path, dir_okay=not file_okay,
                                                                                  file_okay=file_okay),
                        help=help_text + " An existing one is refused unless --overwrite is given.")


OVERWRITE = click.option("--overwrite", is_flag=True, help="Replace existing outputs (refused without it).")
QUIET = click.option("-q", "--quiet", is_flag=True, help="No progress bars: only errors and the result.")
JSON = click.option("--json", is_flag=True, help="Print the result as one JSON document on stdout.")


def _json_path(what: str):
    """--json PATH (the existing convention of bench, attack, sensitivity) or --json alone: stdout."""
    return click.option("--json", "json_out", is_flag=False, flag_value=str(STDOUT), metavar="[PATH]",
                        type=click.Path(dir_okay=False, allow_dash=True, path_type=Path),
                        help=f"Write {what} as JSON to PATH; --json alone prints it on stdout instead of the table.")


def _with(options):
    def apply(command):
        for option in reversed(options):
            command = option(command)
        return command
    return apply


def _pools_option(help_text: str = "Pool positions for a homework checkpoint (default 0,1,2,3).", auto=False):
    """--pools I,J,..; with ``auto`` also ``auto`` (predict: the placement the photos it reads fit best)."""
    def parse(ctx, param, value):
        if value is not None and value.strip() == "auto" and not auto:
            raise click.BadParameter("--pools auto compares BatchNorm statistics on the photos `edge predict` reads: "
                                     "give the positions here (e.g. 0,1,2,5)", param_hint="--pools")
        return _int_list(value)
    return click.option("--pools", callback=parse, metavar="I,J,..|auto" if auto else "I,J,..", help=help_text)


class _Commands(click.Group):
    """edge's commands; one that reaches a module of an extra this install lacks (torch in the runtime-only
    install, `edge.core.extras`) ends with one line naming the extra to install, exit code 2."""

    def invoke(self, ctx):
        from edge.core.extras import missing_extra

        try:
            return super().invoke(ctx)
        except ImportError as err:
            missing = missing_extra(err)
            if missing is None:
                raise
            click.echo(f"error: {missing}", err=True)
            sys.exit(2)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge")
def main():
    """Compress a Food-11 StudentNet and ship it: export to small ONNX files, predict, benchmark.

    Every command: -o/--output names what it writes; an existing output is refused unless --overwrite
    is given (train, distill, slim and compress continue a run with --resume); -q/--quiet hides
    progress bars; --json prints the result as JSON.
    """


@main.command()
@click.argument("checkpoint", required=False, type=click.Path(dir_okay=False, path_type=Path))
@_output("The .onnx file to write.", file_okay=True)
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
@click.option("--train-epochs", default=0, show_default=True, type=Checked(ExportOptions, "train_epochs"),
              help="uintN/kmeansK: trained quantization, epochs of KD on augmented --calib images (codebooks "
                   "and scales, or the codes on the fixed grid; and the biases).")
@click.option("--fp16-below", default=formats.FP16_BELOW, show_default=True, type=Checked(ExportOptions, "fp16_below"), metavar="N",
              help="uintN/kmeansK --method gptq: layers with fewer than N weights stay fp16 (the sensitive small ones).")
@click.option("--low-rank", type=Checked(ExportOptions, "low_rank"), metavar="ENERGY",
              help="fp32/fp16: store pointwise convs and the classifier as SVD factors U·V keeping ENERGY (e.g. "
                   "0.99) of the squared singular values, where that saves bytes (folded back at load).")
@click.option("--calib", "calibration_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of unlabelled images to calibrate gptq on (default: synthetic images, data-free).")
@click.option("--calib-images", "calibration_images", default=64, show_default=True, type=Checked(ExportOptions, "calibration_images"),
              help="How many --calib images to use (the first ones in id order).")
@_pools_option("Stages followed by a max-pool (default: the homework's 0,1,2,3).")
@click.option("--images", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of real images for the parity check (default: random input). When it is the "
                   "--calib folder, the images after the calibration ones are used.")
@click.option("--max-drop", type=Checked(ExportOptions, "max_drop"), metavar="POINTS",
              help="Pick the smallest weight format whose top-1 agreement with fp32 (and accuracy, with "
                   "--labels) on --images stays within POINTS; prints what it tried. Overrides --quant.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), help="Id,label CSV for --images.")
@_with([OVERWRITE, QUIET, JSON])
def export(**params):
    """Export CHECKPOINT to ONNX: a StudentNet (ours, a homework .bin, 8-bit or 16-bit pickle) or any
    model file of `edge train` (the cnn / group baselines, torchvision classifiers).

    Without CHECKPOINT, exports the shipped student (the homework TA's StudentNet, rebuilt from
    models/food11_student_uint8.onnx), so the command works on a fresh clone. BatchNorm is folded, torch.onnx.export
    writes the graph and the weight format is applied to its Conv / Gemm weights; the model's config,
    preprocessing, classes and weight format go into the file's metadata. Prints the file's size, its
    weights, the parity check against torch and the graph ONNX Runtime runs.
    """
    from edge.core.options import ExportOptions
    from edge.workflows.exporting import export_command

    _execute(export_command, ExportOptions, params)


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--images", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of real images to measure on.")
@click.option("--limit", default=128, show_default=True, type=Checked(SensitivityOptions, "limit"), help="Images used (first by id).")
@click.option("--bits", default=8, show_default=True, type=Checked(SensitivityOptions, "bits"), help="Bit width of the rounding.")
@click.option("--per-channel", is_flag=True, help="Per-output-channel min-max (or codebook) instead of per tensor.")
@click.option("--kmeans", type=Checked(SensitivityOptions, "kmeans"), metavar="K",
              help="Weight sharing instead of min-max: K shared values (plain k-means) per tensor or channel.")
@_pools_option()
@_json_path("the rows")
@_with([OVERWRITE, QUIET])
def sensitivity(**params):
    """Per-layer sensitivity: quantize each layer alone (min-max, --bits) and measure how many
    answers change on real images; the most sensitive layers come first. Writes only with --json PATH
    (an existing file is refused unless --overwrite is given)."""
    from edge.core.options import SensitivityOptions
    from edge.workflows.exporting import sensitivity_command

    _execute(sensitivity_command, SensitivityOptions, params)


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("data_dir", type=click.Path(path_type=Path))
@_output("The Kaggle CSV to write (Id,label).")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path),
              help="Id,label CSV of the true labels: prints accuracy.")
@click.option("--provider", default="cpu", show_default=True, type=click.Choice((*backends.SPELLINGS, "auto")),
              help="cpu/cuda: ONNX Runtime's CPU/CUDA provider for .onnx files (torch's device for checkpoints). "
                   "auto (.onnx): the fastest installed CPU backend x compute precision whose answers agree with "
                   "fp32 on >= 99.5% of the --calib photos (measured first; the choice is in the log line). "
                   "All: " + backends.help_text() + ".")
@click.option("--compute", default="fp32", show_default=True, type=click.Choice(tuple(backends.COMPUTES)),
              help="Compute precision of an .onnx file: " + "; ".join(f"{c.name}: {c.description}"
                                                                 for c in backends.COMPUTES.values())
                   + ". Other than fp32, its agreement with fp32 on the --calib photos is measured and reported.")
@click.option("--calib", type=click.Path(file_okay=False, path_type=Path),
              help="Photos for int8's activation ranges, bf16-mixed's layer choice and the agreement of "
                   "--compute/--provider auto "
                   "(default: the first photos of DATA_DIR; no labels needed).")
@click.option("--batch", default=4, show_default=True, type=Checked(PredictOptions, "batch"),
              help="Images per model call (small batches stay in cache; the CSV is the same for any).")
@click.option("--workers", type=Checked(PredictOptions, "workers"),
              help="Threads that decode images, each a batch at a time before running the model on it "
                   "(default: all cores).")
@click.option("--threads", type=Checked(PredictOptions, "threads"),
              help="Inference threads (default: all cores). ONNX on CPU: this many single-threaded "
                   "model calls at once.")
@_pools_option("Pool positions for a homework checkpoint (default 0,1,2,3, checked against its BatchNorm "
               "statistics; auto: the placement they fit best).", auto=True)
@click.option("--skip-bad", is_flag=True, help="Skip images that cannot be decoded (listed) instead of failing.")
@_with([OVERWRITE, QUIET, JSON])
def predict(**params):
    """Predict every image in DATA_DIR with MODEL and write the Kaggle CSV.

    MODEL: an ONNX file we exported (runs on ONNX Runtime, no torch needed) or any checkpoint
    edge reads. DATA_DIR: a Food-11 split folder (testing/NNNN.jpg, training/<class>_<n>.jpg)
    or a folder of class subfolders. The summary goes to stderr (--json: its JSON to stdout).
    """
    from edge.core.options import PredictOptions
    from edge.workflows.predicting import predict_command

    _execute(predict_command, PredictOptions, params)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@_pools_option()
@_with([QUIET, JSON])
def info(**params):
    """Show what MODEL is: StudentNet config, preprocessing, classes, weight format, size (an aligned
    key: value listing; --json for the JSON document)."""
    from edge.core.options import InfoOptions
    from edge.workflows.model_files import info_command

    _execute(info_command, InfoOptions, params)


@main.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--to", "target", required=True, type=click.Choice(["edge", "homework8", "homework16", "onnx"]),
              help="edge: our torch checkpoint (config inside); homework8/16: the homework's pickles; onnx: the "
                   "plain ONNX file (any ONNX Runtime opens it) of an entropy-coded edge .onnx (--entropy).")
@_output("The converted file to write.")
@_pools_option()
@_with([OVERWRITE, QUIET, JSON])
def convert(**params):
    """Rewrite CHECKPOINT in another weights format (homework pickles read by the homework's decoder)."""
    from edge.core.options import ConvertOptions
    from edge.workflows.model_files import convert_command

    _execute(convert_command, ConvertOptions, params)


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
@click.option("--compute", "computes", default="fp32", show_default=True, metavar="PRECISION,..",
              help="Compute precisions of the ONNX backends that run them (" + ", ".join(backends.COMPUTES)
                   + "): bf16 and bf16-mixed where the CPU has AVX512_BF16/AMX, int8 and bf16-mixed calibrated "
                   "on --calib. Every row's "
                   "agreement with fp32 is measured on --data (and --calib).")
@click.option("--calib", type=click.Path(file_okay=False, path_type=Path),
              help="Calibration photos: int8's activation ranges, bf16-mixed's float32 layers and the agreement "
                   "that decides the "
                   "--provider auto choice recorded in the JSON.")
@click.option("--batch", "batches", default="1,32", show_default=True, metavar="B,..",
              callback=lambda ctx, param, value: _int_list(value, "--batch", distinct=False),
              help="Batch sizes: latency at the smallest, throughput at each.")
@click.option("--threads", type=Checked(BenchOptions, "threads"),
              help="Inference threads per backend (default: the library's, all cores). On a machine shared "
                   "with other work, 1 is far steadier.")
@click.option("--repeats", default=3, show_default=True, type=Checked(BenchOptions, "repeats"),
              help="Rounds over all rows (interleaved); cells show median (min-max) over them.")
@click.option("--min-time", default=0.5, show_default=True, type=Checked(BenchOptions, "min_time"),
              help="Seconds of timed calls per batch size per repeat (after warm-up).")
@_pools_option("Pool positions for homework checkpoints (default 0,1,2,3).")
@_json_path("the results")
@click.option("--markdown", "markdown_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the markdown report.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a PNG: size vs accuracy, latency per backend.")
@click.option("--compare", "previous", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="An earlier --json: say whether both runs' medians lie within each other's spread.")
@_with([OVERWRITE, QUIET])
def bench(**params):
    """Benchmark MODELs on every backend x weight format: size, accuracy, load time, latency,
    throughput, peak RSS, GFLOP/s vs the CPU's rough peak.

    MODEL: a checkpoint (exported to each --quant format on the fly) or an .onnx file. Without
    MODEL: a freshly initialised homework StudentNet on synthetic input (sizes and speed only).
    Each row runs in its own process; backends that cannot run here get a row saying why (exit 1
    when a row failed). Existing --json/--markdown/--plot files are refused unless --overwrite.
    """
    from edge.bench.command import bench_command
    from edge.core.options import BenchOptions

    _execute(bench_command, BenchOptions, params, _command_line())


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
@click.option("--steps", default=10, show_default=True, type=Checked(AttackOptions, "steps"), help="ifgsm iterations.")
@click.option("--defense", "defenses", default="gaussian:1.5,median:3,jpeg:75,bits:4", show_default=True,
              metavar="NAME:VALUE,..", help="Input defenses scored on clean and attacked images: gaussian:SIGMA, "
                                           "median:K, jpeg:QUALITY, bits:N; '' for none.")
@click.option("--source", type=click.Path(dir_okay=False, path_type=Path),
              help="Also a transfer attack: images made on this model (e.g. the fp32 checkpoint) scored by each MODEL.")
@click.option("--save-adversarial", "save_dir", type=click.Path(path_type=Path),
              help="Folder for the attacked images as lossless PNGs named by image (METHOD-epsK/0007.png; "
                   "under the crafting model's file name when several models craft).")
@_json_path("the report")
@click.option("--markdown", "markdown_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the markdown table.")
@click.option("--plot", "plot_out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write accuracy-vs-eps curves here and the original/attacked/defended grid to OUT-examples.png.")
@click.option("--limit", type=Checked(AttackOptions, "limit"), help="Only the first N images (id order).")
@click.option("--batch", default=8, show_default=True, type=Checked(AttackOptions, "batch"), help="Images per gradient step.")
@click.option("--threads", default=1, show_default=True, type=Checked(AttackOptions, "threads"), help="torch CPU threads.")
@_pools_option("Pool positions for homework checkpoints (default 0,1,2,3).")
@click.option("--overwrite", is_flag=True,
              help="Replace existing report files / write into a non-empty --save-adversarial folder (refused "
                   "without it).")
@_with([QUIET])
def attack(**params):
    """Attack MODEL(s) with FGSM / iterative FGSM on DATA_DIR's images and score input defenses.

    MODEL: a checkpoint (attacked and scored in torch) or an ONNX file we exported (attacked
    white-box through its decoded weights rebuilt in torch, scored by ONNX Runtime). Images are
    attacked in the model's input space (its centre crop), rounded to 8-bit pixels, L-inf <= eps.
    Prints accuracy, attack success rate, L-inf and each defense's accuracy per model x method x eps.
    """
    from edge.core.options import AttackOptions
    from edge.workflows.attack_report import attack_command

    _execute(attack_command, AttackOptions, params, _command_line())


_TRAINING_OPTIONS = [
    click.option("--val", help="Validation data (same forms as DATA); keeps the best epoch. Unlabelled: agreement "
                               "with the teacher."),
    click.option("--test", help="Test data, scored at the end (never used to choose)."),
    click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), help="Id,label CSV for DATA."),
    click.option("--val-labels", type=click.Path(dir_okay=False, path_type=Path), help="Id,label CSV for --val."),
    click.option("--test-labels", type=click.Path(dir_okay=False, path_type=Path), help="Id,label CSV for --test."),
    click.option("--padding", default=0, show_default=True, type=Whole(0),
                 help="RandomCrop's symmetric padding per side (the homework: 0; e.g. 4 for 32 px images)."),
    click.option("--no-flip", is_flag=True, help="No random horizontal flip."),
    click.option("--rotation", default=15.0, show_default=True, type=FiniteRange(0, 180), metavar="DEGREES",
                 help="Largest random rotation (the homework's 15; 0: none)."),
    click.option("--batch", default=64, show_default=True, type=Whole(1)),
    click.option("--lr", default=1e-3, show_default=True, type=FiniteRange(0, min_open=True),
                 help="AdamW learning rate."),
    click.option("--weight-decay", default=0.01, show_default=True, type=FiniteRange(0)),
    click.option("--schedule", default="cosine", show_default=True, type=click.Choice(["cosine", "constant"]),
                 help="Learning rate per epoch."),
    click.option("--seed", default=0, show_default=True, type=Seed(),
                 help="Seeds initialisation, batch order and augmentation (an epoch is a function of it)."),
    click.option("--precise-bn", type=Whole(0), metavar="IMAGES",
                 help="Re-estimate BatchNorm statistics on this many training images after each epoch (precise BN; "
                      "0 = off, the homework's recipe) [default: 1024: slow BatchNorm averages lag a short run]."),
    click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:N."),
    click.option("--threads", type=THREADS, help="torch CPU threads (default: all cores)."),
    click.option("--workers", default=0, show_default=True, type=Whole(0),
                 help="DataLoader worker processes that crop/augment batches (the same batches for any number)."),
    click.option("--decode-threads", default=4, show_default=True, type=Whole(1),
                 help="Threads decoding images once into the uint8 cache."),
    click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
                 help="Keep decoded images here; later runs on the same files skip decoding."),
    click.option("-q", "--quiet", is_flag=True, help="No progress bars (epoch lines and the summary remain)."),
    JSON,
    click.option("--sync-bn", is_flag=True,
                 help="Under torchrun: BatchNorm statistics over the global batch (all processes), not each "
                      "process's share."),
    click.option("--processes", default=1, show_default=True, type=Whole(1),
                 help="Run as this many processes on this machine (edge starts torchrun --standalone once every "
                      "option is checked; one GPU each when CUDA is used); --batch is split among them."),
]
_KD_OPTIONS = [
    click.option("--temperature", default=20.0, show_default=True, type=FiniteRange(0, min_open=True),
                 help="KD temperature T."),
    click.option("--alpha", type=FiniteRange(0, 1),
                 help="KD weight: alpha*T^2*KL + (1-alpha)*CE [default: 0.5 with labels, 1 (label-free) without]."),
]
_FRESH_MODEL_OPTIONS = [
    click.option("--input-size", type=Whole(4),
                 help="Input side in pixels, recorded in the model file (predict, export and bench use it): the "
                      "centre crop [default: 256 for folders, the homework's; 32 for fashion-mnist, the 28 px "
                      "images zero-padded]. Add --resize N to scale folder photos down to it first."),
    click.option("--resize", type=Whole(1), help="Resize the shorter side to this first (folders only)."),
    click.option("--widths", callback=lambda ctx, param, value: _int_list(value, "--widths", distinct=False),
                 metavar="W0,W1,..",
                 help="Stage widths [default: the homework's 16,32,64,128,256,256,256,256; baselines sized to "
                      "its parameter count]."),
    click.option("--pools", callback=lambda ctx, param, value: _int_list(value), metavar="I,J,..",
                 help="Stages followed by a 2x2 max-pool [default: 0,1,2,3]."),
    click.option("--groups", type=Whole(1), help="Groups of the group-conv baseline [default: 4]."),
    click.option("--epochs", default=10, show_default=True, type=Whole(1)),
    click.option("--sparsity", default=0.0, show_default=True, type=FiniteRange(0),
                 help="L1 on BatchNorm gammas (network slimming, e.g. 1e-4), so `edge slim` finds channels to cut."),
    click.option("--resume", is_flag=True, help="Continue OUTPUT's run (same options) to the same result."),
    click.option("--overwrite", is_flag=True, help="Start the run over in an existing OUTPUT (refused without it "
                                                  "or --resume)."),
    click.option("--stop-after", type=Whole(1), metavar="EPOCH",
                 help="Stop after this epoch (the schedule still spans --epochs); continue later with --resume."),
    click.option("--metrics", type=click.Path(dir_okay=False, path_type=Path), help="Write the run's summary JSON."),
    _output("The run's file (last epoch, resumable); the best epoch goes to NAME.best.pt."),
]


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
    from edge.core.options import TrainOptions
    from edge.workflows.runs import train_command

    _execute(train_command, TrainOptions, params)


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
    from edge.core.options import DistillOptions
    from edge.workflows.runs import distill_command

    _execute(distill_command, DistillOptions, params)


@main.command()
@click.argument("student", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("data")
@click.option("--rate", default="0.1", show_default=True, callback=lambda ctx, param, value: _rates(value),
              metavar="R[,R..]", help="Fraction of the remaining channels removed each round; several rates give "
                                      "several curves on one figure.")
@click.option("--rounds", default=3, show_default=True, type=Whole(1))
@click.option("--finetune-epochs", default=2, show_default=True, type=Whole(1),
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
@_output("Folder for curve.json, curve.png and every round's model and ONNX file.", file_okay=False)
@click.option("--resume", is_flag=True,
              help="Continue the interrupted slimming in OUTPUT (same options): recorded rounds are kept, the "
                   "round in progress continues from its last epoch, to the same result.")
@click.option("--overwrite", is_flag=True,
              help="Start over in an OUTPUT folder that holds a slimming run (refused without it or --resume).")
@click.option("--stop-after", type=Whole(1), metavar="EPOCHS",
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
    from edge.core.options import SlimOptions
    from edge.workflows.runs import slim_command

    _execute(slim_command, SlimOptions, params)


@main.command()
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--images", required=True, metavar="DIR[@A:B]",
              help="Unlabelled photos to calibrate, reconstruct and fine-tune on (every 5th by id is held back "
                   "for validation unless --val is given).")
@click.option("--target-bytes", required=True, type=Whole(1), help="The ONNX file must fit this many bytes.")
@_output("The .onnx file to write: the best fitting candidate.")
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
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists (refused without it).")
@click.option("--epochs", default=4, show_default=True, type=Whole(1),
              help="Function-matching fine-tuning epochs per slimming round.")
@click.option("--step", default=0.1, show_default=True, type=FiniteRange(0, 1, min_open=True, max_open=True),
              help="Largest cut of the keep fraction in one round.")
@click.option("--min-keep", default=0.5, show_default=True, type=FiniteRange(0, 1, min_open=True),
              help="Never slim the prunable widths below this fraction.")
@click.option("--batch", default=32, show_default=True, type=Whole(2))
@click.option("--lr", default=5e-5, show_default=True, type=FiniteRange(0, min_open=True),
              help="AdamW learning rate of the fine-tuning (cosine); larger ones undo the reconstruction.")
@click.option("--temperature", default=1.0, show_default=True, type=FiniteRange(0, min_open=True))
@click.option("--ridge", default=0.01, show_default=True, type=FiniteRange(0),
              help="Pull each least-squares re-fit towards the layer's weights before pruning (relative to the "
                   "inputs' mean energy; 0 = plain least squares): smaller weights quantize better.")
@click.option("--budget-minutes", default=30.0, show_default=True, type=FiniteRange(0, min_open=True),
              help="Start no slimming round that would end after this (judged by the slowest round so far).")
@click.option("--qat-epochs", default=8, show_default=True, type=Whole(0),
              help="Quantization-aware fine-tuning of the first slimmed uintN per-channel file that fits: its codes "
                   "trained against the teacher on function-matching views of the photos (0: none).")
@click.option("--qat-lr", default=1e-3, show_default=True, type=FiniteRange(0, min_open=True),
              help="Its Adam rate, relative to each tensor's scale.")
@click.option("--views", default=8, show_default=True, type=Whole(0),
              help="Augmented views of each validation photo: fitting files rank by their mean KL divergence from "
                   "MODEL over them (0: by validation agreement).")
@click.option("--seed", default=0, show_default=True, type=Seed(), help="Seeds the slimming rounds' fine-tuning.")
@click.option("--threads", type=THREADS, help="torch CPU threads (default: all cores).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), help="Keep decoded photos here.")
@_with([QUIET, JSON])
def compress(**params):
    """Compress MODEL (a StudentNet) into an ONNX file of at most --target-bytes, label-free.

    Searches slimming depth x weight format: quantization alone, the exact merge of the last
    pointwise conv into the classifier (and more bits for its most sensitive layers with the
    bytes left under the target), then channels pruned with least-squares reconstruction
    and fine-tuned by function matching (teacher and student see the same augmented, mixed
    photos), the first slimmed 4-bit file that fits trained at its bit width against the teacher;
    keeps the fitting file whose answers are closest to MODEL's on augmented validation photos. Writes the report
    (JSON, markdown, frontier PNG). Interrupted? Run again with --resume.
    """
    from edge.core.options import CompressOptions
    from edge.workflows.compress import run_command

    _execute(run_command, CompressOptions, params)


if __name__ == "__main__":
    main()
