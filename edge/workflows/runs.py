"""What `edge train`, `edge distill` and `edge slim` do with their options: open the data, build or
load the models, put a `edge.train.loop.Run` together, run it, and print a summary line.

Each command takes its frozen options (`edge.core.options`), built once by the CLI or by a caller.

Under ``torchrun`` each command joins the process group first (`edge.train.distributed`); setting up
(data, models, the output check) runs on every rank inside `edge.train.distributed.together`, so a
failure on one rank stops them all; rank 0 alone prints and writes.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import torch

from edge.core.errors import CheckpointError
from edge.core.config import ConfigError, Preprocess, StudentConfig
from edge.data.datasets import Augment, ImageSet, decode_image_set
from edge.train.distributed import group, say, together
from edge.train.shared import load_shared
from edge.core.files import atomic_write, check_output, check_output_dir, real_path
from edge.core.formats import sniff_file
from edge.core.json_text import loads
from edge.models.registry import STUDENT_ARCHS, NetSpec, check_runs, count_parameters
from edge.io.netfile import NetFile, check_compatible
from edge.io.checkpoints import load_net
from edge.core.options import DataOptions, DistillOptions, LoopOptions, ShapeOptions, SlimOptions, TrainOptions, flat
from edge.train.loop import Recipe, Run, accuracy, best_path, default_precise_bn, fit, init_model

FASHION_MNIST = "fashion-mnist"


def _device(name: str) -> torch.device:
    from edge.inference.torch_backend import resolve_device

    try:
        return resolve_device(name)
    except RuntimeError as err:
        raise ConfigError(str(err)) from None


def _setup(loop: LoopOptions) -> torch.device:
    """Threads, and the device this process trains on (joining torchrun's process group, if any)."""
    from edge.train import distributed

    if loop.threads:
        torch.set_num_threads(loop.threads)
    return distributed.start(_device(loop.device), loop.sync_bn)


def _input_paths(options: TrainOptions | DistillOptions | SlimOptions) -> list[Path]:
    """The files and folders a run reads."""
    return options.sources.paths() + [Path(p) for p in options.model_files if p]


def check_run_outputs(options: TrainOptions | DistillOptions) -> None:
    """Every path `edge train` / `edge distill` write, checked before any data is decoded: the run
    file and its .best.pt (an existing run is continued only with --resume, never replaced),
    --metrics and --cache-dir; none may be an input."""
    run, inputs = options.run, _input_paths(options)
    out = Path(run.output)
    _check_resume_or_overwrite(run.resume, run.overwrite)
    hint = "continue its run with --resume (same options), pass --overwrite to start it over, or choose another -o"
    replace = run.resume or run.overwrite
    check_output(out, inputs=inputs, overwrite=replace, writes_model=True, what="run file", hint=hint)
    if run.resume and not out.exists():
        raise ConfigError(f"{out}: nothing to resume (no such file): run without --resume first")
    best = best_path(out)
    check_output(best, inputs=inputs, overwrite=replace, writes_model=True, what="best-epoch file", hint=hint)
    if run.metrics:
        check_output(run.metrics, inputs=[*inputs, out, best], overwrite=replace, what="--metrics JSON")
    _check_cache_dir(options.sources, inputs)


def _check_resume_or_overwrite(resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the output, --overwrite starts it over: give one of them")


def _check_cache_dir(sources: DataOptions, inputs: list[Path]) -> None:
    if sources.cache_dir:
        check_output_dir(sources.cache_dir, inputs=inputs, what="--cache-dir")


def fresh_preprocess(sources: DataOptions, shape: ShapeOptions) -> Preprocess:
    """The inputs of a model trained from scratch: Fashion-MNIST is grey (default 32 px, the 28 px
    images zero-padded), folders RGB (default 256 px, the homework's centre crop)."""
    grey = sources.data.startswith(FASHION_MNIST)
    size = shape.input_size or (32 if grey else 256)
    if grey:
        return Preprocess(crop=size, resize=shape.resize, mean=(0.0,), std=(1.0,), color="L")
    return Preprocess(crop=size, resize=shape.resize)


def open_sets(sources: DataOptions, preprocess: Preprocess, classes: tuple[str, ...] = (), progress: bool = True):
    """(train, val, test, augment) for ``preprocess``; val/test are None when not asked for; ``progress``:
    decoding bars (off under --quiet)."""
    augment = Augment(preprocess.crop, sources.padding, sources.rotation, flip=not sources.no_flip)
    common = {"workers": sources.decode_threads, "cache_dir": sources.cache_dir, "progress": progress}
    train = decode_image_set(sources.data, preprocess, augment, labels_csv=sources.labels, class_hint=classes,
                             **common)
    hint = classes or train.classes or ()

    def evaluation(source: str | None, labels: Path | None) -> ImageSet | None:
        return decode_image_set(source, preprocess, labels_csv=labels, class_hint=hint, **common) if source else None

    val, test = evaluation(sources.val, sources.val_labels), evaluation(sources.test, sources.test_labels)
    say(f"data: train {len(train)} images ({sources.data}), val {len(val) if val else 0}, "
        f"test {len(test) if test else 0}; input {preprocess.crop}px {preprocess.color}")
    return train, val, test, augment


def _recipe(loop: LoopOptions, epochs: int, sparsity: float = 0.0) -> Recipe:
    precise_bn = default_precise_bn() if loop.precise_bn is None else loop.precise_bn
    return Recipe(epochs=epochs, batch_size=loop.batch, lr=loop.lr, weight_decay=loop.weight_decay,
                  schedule=loop.schedule, seed=loop.seed, sparsity=sparsity, precise_bn=precise_bn)


def _spec(arch: str, shape: ShapeOptions, preprocess: Preprocess, classes: tuple[str, ...]) -> NetSpec:
    """A fresh model's architecture: the homework's StudentNet shape unless --widths/--pools say
    otherwise; baselines sized to that StudentNet's parameter count."""
    sizes = {k: v for k, v in (("widths", shape.widths), ("pools", shape.pools)) if v is not None}
    base = StudentConfig(input_size=preprocess.crop, num_classes=len(classes), in_channels=len(preprocess.color),
                         **sizes)
    if arch in ("cnn", "group"):
        from edge.models.baselines import sized_like

        groups = shape.groups or 4 if arch == "group" else 1
        return NetSpec(arch, base if shape.widths else sized_like(base, groups), groups)
    return NetSpec(arch, base)


def _classes_of(train: ImageSet) -> tuple[str, ...]:
    if train.classes is None:
        raise ConfigError(f"the training images have no labels: a model trained from scratch needs labelled "
                          f"data (a Food-11 training/ folder, class subfolders, {FASHION_MNIST}:train or --labels; "
                          f"distill also takes the classes an edge teacher file names)")
    return train.classes


def _check_shape(arch: str, shape: ShapeOptions, preprocess: Preprocess) -> None:
    """A fresh model's shape options, checked before any data is decoded (its classes come from the data later and
    change only the classifier): bad --pools at --input-size 2048 decoded every photo first."""
    check_runs(_spec(arch, shape, preprocess, ("a", "b")), f"--arch {arch}")


def _fresh_net(arch: str, shape: ShapeOptions, train: ImageSet, preprocess: Preprocess,
               known: tuple[str, ...] = ()) -> NetFile:
    """A new model for ``train``'s classes (or, on unlabelled data, ``known``: the teacher's)."""
    classes = train.classes or known or _classes_of(train)
    spec = _spec(arch, shape, preprocess, classes)
    check_runs(spec, f"--arch {arch}")
    return NetFile(spec, preprocess, classes, {})


def _init(net: NetFile, seed: int, weights: str | None = None) -> torch.nn.Module:
    model = init_model(net, seed)
    if weights and net.spec.arch not in STUDENT_ARCHS:
        from edge.io.netfile import load_classifier_weights

        fresh = load_classifier_weights(model, weights, net.spec.arch)
        say(f"initial weights: {weights}" + (f" (re-initialised: {', '.join(fresh)})" if fresh else ""))
    elif weights:
        raise ConfigError("--weights initialises torchvision architectures; start a StudentNet from a file with "
                          "`edge distill --student FILE`")
    return model


def _about(options, *names: str) -> dict:
    """The named options that are set, as a run records them (paths as text)."""
    values = flat(options)
    return {k: str(values[k]) if isinstance(values[k], Path) else values[k] for k in names if values[k] is not None}


def _finish(run: Run, summary: dict, test: ImageSet | None, metrics: Path | None, began: float) -> dict:
    """Test the last and the best epoch, print the summary line, write --metrics."""
    result = {"command": "edge " + " ".join(shlex.quote(a) for a in sys.argv[1:]), "model": run.net.spec.describe(),
              "parameters": count_parameters(run.model), "epochs": run.recipe.epochs, "processes": group().world,
              "seconds": round(time.time() - began, 1), **summary}
    line = f"{run.net.spec.describe()}, {result['parameters']:,} parameters, {run.recipe.epochs} epochs"
    last = summary["last"]
    if "val_accuracy" in last:
        line += (f" | val {last['val_kind']}: last {last['val_accuracy']:.2%}, best "
                 f"{summary['best']['val_accuracy']:.2%} (epoch {summary['best']['epoch']})")
    if test is not None:
        result["test_accuracy_last"] = accuracy(run.model, test, run.device, group=group())
        best = load_shared(run.best_path).build().to(run.device)
        result["test_accuracy_best"] = accuracy(best, test, run.device, group=group())
        line += (f" | test accuracy: last {result['test_accuracy_last']:.2%}, "
                 f"best-by-val {result['test_accuracy_best']:.2%}")
    say(f"done in {result['seconds']:.0f}s: {line} | wrote {run.out} (last, resumable) and {run.best_path}")
    if metrics and group().main:
        atomic_write(metrics, lambda f: f.write(json.dumps(result, indent=2).encode()))
    return result


def _fit(options: TrainOptions | DistillOptions, net: NetFile, model, objective, sets, about: dict,
         device: torch.device, began: float) -> dict:
    """Run the from-scratch run (continuing its file with --resume), test it and print the summary."""
    train, val, test, augment = sets
    loop, run_file = options.loop, options.run
    run = Run(net, model, objective, _recipe(loop, run_file.epochs, run_file.sparsity), train, augment,
              Path(run_file.output), val, device, loop.workers, about, not loop.quiet)
    return _finish(run, fit(run, run_file.resume, run_file.stop_after), test, run_file.metrics, began)


def train_command(options: TrainOptions) -> dict:
    """`edge train`: a teacher, baseline or student from scratch on labels (cross-entropy)."""
    from edge.train.loop import CrossEntropy

    began = time.time()
    device = _setup(options.loop)
    with together("setting up"):
        if group().main:
            check_run_outputs(options)
        preprocess = fresh_preprocess(options.sources, options.shape)
        _check_shape(options.arch, options.shape, preprocess)
        sets = open_sets(options.sources, preprocess, progress=not options.loop.quiet)
        net = _fresh_net(options.arch, options.shape, sets[0], preprocess)
        model = _init(net, options.loop.seed, options.weights)
    say(f"model: {net.spec.describe()}, {count_parameters(model):,} parameters")
    about = _about(options, "data", "val", "labels", "val_labels", "padding", "rotation", "weights", "arch")
    return _fit(options, net, model, CrossEntropy(), sets, about, device, began)


def teacher_classes(path: Path, arch: str) -> tuple[str, ...]:
    """Read the teacher file before any data is decoded (a hostile or damaged file fails first);
    -> the classes it names (an edge file), or () for a plain torchvision state dict."""
    try:
        return load_net(path).classes
    except CheckpointError:
        if arch in STUDENT_ARCHS or not _torch_file(path):
            raise
        from edge.io.torch_files import read_torch

        read_torch(path)
        return ()


def load_teacher(path: Path, arch: str, classes: tuple[str, ...], preprocess: Preprocess) -> torch.nn.Module:
    """A teacher from our model file, any StudentNet file, or a torchvision state dict (``arch``): a torch file
    that is not the former (one that is no torch file, a pipe or a folder keeps `load_net`'s refusal: read as
    a state dict, a pickle said "Unsupported operand 149" and a pipe blocked the run for ever)."""
    try:
        net = load_net(path)
    except CheckpointError as err:
        from edge.io.netfile import load_classifier_weights
        from edge.models.classifiers import torchvision_classifier

        if arch in STUDENT_ARCHS or not _torch_file(path):
            raise err
        model = torchvision_classifier(arch, len(classes), len(preprocess.color))
        fresh = load_classifier_weights(model, path, arch)
        if fresh:
            raise CheckpointError(f"{path}: a teacher needs every weight; these do not fit a {arch} with "
                                  f"{len(classes)} classes: {', '.join(fresh[:4])}") from None
        say(f"teacher: {arch} state dict {path} ({count_parameters(model):,} parameters)")
        return model.eval()
    check_compatible(net, NetFile(net.spec, preprocess, classes, {}), f"teacher {path} vs the student")
    say(f"teacher: {path} ({net.spec.describe()}, {count_parameters(net.build()):,} parameters)")
    return net.build()


def _torch_file(path: Path) -> bool:
    """A regular file that `torch.save` wrote (a zip or the legacy format), by its first bytes."""
    try:
        return Path(path).is_file() and sniff_file(path) in ("torch-zip", "torch-legacy")
    except OSError:
        return False


def _alpha(alpha: float | None, train: ImageSet, data: str) -> float:
    """--alpha, by default 0.5 on labelled data and 1 (label-free) on unlabelled data."""
    if alpha is None:
        return 0.5 if train.labelled else 1.0
    if alpha < 1 and not train.labelled:
        raise ConfigError(f"--alpha {alpha:g} mixes in cross-entropy, but {data} has images without "
                          f"labels: use --alpha 1 (label-free) or give --labels")
    return alpha


def _objective(teacher, student: torch.nn.Module, options: DistillOptions, preprocess: Preprocess, alpha: float):
    from edge.train.distill import Distillation, FeatureHint

    hint = None
    if options.feature:
        s_layer, _, t_layer = options.feature.partition(":")
        if not t_layer:
            raise ConfigError(f"--feature wants STUDENT_LAYER:TEACHER_LAYER (e.g. cnn.4:layer2), "
                              f"got {options.feature!r}")
        probe = torch.zeros(2, len(preprocess.color), preprocess.crop, preprocess.crop)
        try:
            hint = FeatureHint(student, teacher, s_layer, t_layer, probe)
        except ValueError as err:
            raise ConfigError(f"--feature: {err}") from None
    return Distillation(teacher, alpha, options.kd.temperature, hint, options.feature_weight)


def distill_command(options: DistillOptions) -> dict:
    """`edge distill`: a student (fresh, or started from a file) taught by a teacher."""
    began = time.time()
    device = _setup(options.loop)
    with together("setting up"):
        if group().main:
            check_run_outputs(options)
        named = teacher_classes(options.teacher, options.teacher_arch)
        start = None if options.student in STUDENT_ARCHS else load_net(options.student)
        preprocess = start.preprocess if start else fresh_preprocess(options.sources, options.shape)
        if start is None:
            _check_shape(options.student, options.shape, preprocess)
        known = start.classes if start else named
        sets = open_sets(options.sources, preprocess, known, not options.loop.quiet)
        net = start or _fresh_net(options.student, options.shape, sets[0], preprocess, known)
        model = _init(net, options.loop.seed)
        teacher = load_teacher(options.teacher, options.teacher_arch, net.classes, preprocess)
        alpha = _alpha(options.kd.alpha, sets[0], options.sources.data)
    say(f"student: {net.spec.describe()}, {count_parameters(model):,} parameters; KD alpha {alpha:g}, "
        f"T {options.kd.temperature:g}" + (f", feature hint {options.feature}" if options.feature else ""))
    about = _about(options, "data", "val", "labels", "val_labels", "padding", "rotation", "teacher", "student", "feature",
                   "feature_weight", "temperature") | {"alpha": alpha}
    objective = _objective(teacher, model, options, preprocess, alpha)
    return _fit(options, net, model, objective, sets, about, device, began)


def slim_command(options: SlimOptions) -> dict:
    """`edge slim`: iterative network slimming of a StudentNet, one curve per rate; resumable."""
    from edge.prune.slim import SlimSetup, plot_curves, slim_curve, write_curves

    began = time.time()
    loop, sources = options.loop, options.sources
    device = _setup(loop)
    with together("setting up"):
        if group().main:
            _check_slim_output(options)
        quant = _quant_spec(options)
        base = load_net(options.student)
        if base.spec.arch != "dw":
            raise ConfigError(f"{options.student}: slimming works on StudentNets (arch dw), this is {base.spec.arch}")
        train, val, test, augment = open_sets(sources, base.preprocess, base.classes, not loop.quiet)
        if val is None:
            raise ConfigError("--val is required: each round keeps its best epoch by validation accuracy")
        teacher = load_teacher(options.teacher, options.teacher_arch, base.classes, base.preprocess) \
            if options.teacher else base.build()
        alpha = _alpha(options.kd.alpha, train, sources.data)
    out = Path(options.output)
    test_kind = f"agreement with {Path(sources.test_labels).name}" if sources.test_labels else "accuracy"
    setup = SlimSetup(train=train, val=val, augment=augment, teacher=teacher,
                      recipe=_recipe(loop, options.finetune_epochs), out_dir=out, alpha=alpha,
                      temperature=options.kd.temperature, scope=options.scope, test=test, test_kind=test_kind,
                      quant=quant, device=device, workers=loop.workers, progress=not loop.quiet,
                      resume=options.resume)
    curves = _slim_record(options, out, setup, alpha)
    previous_seconds = curves.get("seconds", 0.0)

    def save() -> None:
        curves["seconds"] = round(previous_seconds + time.time() - began, 1)
        if group().main:
            write_curves(out / "curve.json", curves)

    per_curve = options.rounds * options.finetune_epochs
    for i, rate in enumerate(options.rate):
        stop = None if options.stop_after is None else options.stop_after - i * per_curve
        if stop is not None and stop <= 0:
            return _stopped(options.stop_after, out, curves)
        if i == len(curves["curves"]):
            curves["curves"].append({"rate": rate, "points": []})
        curve = curves["curves"][i]

        def record(points: list[dict], curve=curve) -> None:
            curve["points"] = list(points)
            save()

        if len(slim_curve(base, rate, options.rounds, setup, str(options.student), curve["points"], stop, record)) \
                <= options.rounds:
            return _stopped(options.stop_after, out, curves)
    save()
    if not group().main:  # the record, the figure and the summary are rank 0's
        return curves
    plot_curves(out / "curve.png", curves)
    for curve in curves["curves"]:
        say(_curve_line(curve))
    say(f"done in {curves['seconds']:.0f}s: wrote {out / 'curve.json'}, {out / 'curve.png'} and each round's "
        f"model + {options.quant} ONNX under {out}/rate*/")
    return curves


def _quant_spec(options: SlimOptions):
    """--quant / --method of each round's export (`edge.export.quantize.QuantSpec`), checked before any work."""
    from edge.export.quantize import QuantSpec

    try:
        return QuantSpec(options.quant, method=options.method)
    except ValueError as err:
        raise ConfigError(f"--quant {options.quant}: {err}") from None


MAX_RECORD_BYTES = 16 * 2 ** 20  # a curve.json of 100 rates x 100 rounds is under 4 MiB


def _check_slim_output(options: SlimOptions) -> None:
    """The output folder, before any work: a new folder or one without a slimming run (with
    --resume: one holding the run's curve.json); never an input or a folder holding one."""
    out, inputs = Path(options.output), _input_paths(options)
    check_output_dir(out, inputs=inputs, what="slimming output folder")
    _check_resume_or_overwrite(options.resume, options.overwrite)
    record = out / "curve.json"
    if options.resume:  # checked again on every rank once the data is open (`_slim_record`)
        if record.is_file() and record.stat().st_size > MAX_RECORD_BYTES:
            raise ConfigError(f"{record}: refused: over {MAX_RECORD_BYTES:,} bytes, not a slimming record")
        _resumable_record(record, record.read_bytes() if record.is_file() else None, options)
    held = record.exists() or any(p.is_file() for p in out.glob("rate*/*"))
    if held and not (options.resume or options.overwrite):
        raise ConfigError(f"{out}: holds a slimming run (curve.json or rate*/ files): continue it with --resume "
                          f"(same options), pass --overwrite to start it over, or choose a new folder")
    for path in inputs:
        if real_path(path).is_relative_to(real_path(out)) and path.is_file():
            raise ConfigError(f"{path}: an input inside the output folder {out} could be overwritten by a round's "
                              f"file: move it out or choose another -o")
    _check_cache_dir(options.sources, inputs)


def _slim_record(options: SlimOptions, out: Path, setup, alpha: float) -> dict:
    """A fresh curve record, or with --resume the one in OUTPUT (`_resumable_record`, its settings these)."""
    from dataclasses import asdict

    settings = json.loads(json.dumps(
        _about(options, "student", "data", "val", "test", "labels", "val_labels", "test_labels", "padding", "rotation",
               "no_flip", "teacher", "teacher_arch", "rounds", "scope", "quant", "method", "temperature")
        | {"rate": list(options.rate), "alpha": alpha, "recipe": asdict(setup.recipe)}))
    path = out / "curve.json"
    if not options.resume:
        return {"title": f"slimming {Path(options.student).name} ({options.scope} threshold, KD alpha {alpha:g})",
                "command": "edge " + " ".join(shlex.quote(a) for a in sys.argv[1:]), "settings": settings,
                "curves": []}
    saved = _resumable_record(path, group().file_bytes(path), options)  # rank 0's record, on every rank
    differ = {k: (saved["settings"].get(k), v) for k, v in settings.items() if saved["settings"].get(k) != v}
    if differ:
        raise ConfigError(f"{path}: --resume needs the run's own settings; these differ (saved, now): "
                          + ", ".join(f"{k} {a!r} != {b!r}" for k, (a, b) in differ.items()))
    return saved


def _resumable_record(path: Path, contents: bytes | None, options: SlimOptions) -> dict:
    """``contents`` of the curve.json at ``path``, checked: JSON with settings, and curves as a run of these rates and
    rounds writes them, its seal intact (`edge.prune.slim.curves_problem`); `ConfigError` naming the file otherwise."""
    from edge.prune.slim import curves_problem

    if contents is None:
        raise ConfigError(f"{path}: nothing to resume (no such file): run without --resume first")
    try:
        saved = loads(contents)
        problem = None if isinstance(saved, dict) and isinstance(saved.get("settings"), dict) else \
            "not a JSON object with settings"
    except ValueError as err:  # UnicodeDecodeError too
        problem = str(err)
    problem = problem or curves_problem(saved, list(options.rate), options.rounds)
    if problem:
        raise ConfigError(f"{path}: not a resumable slimming record ({problem}): start the run over with --overwrite")
    return saved


def _stopped(stop_after: int, out: Path, curves: dict) -> dict:
    say(f"stopped after {stop_after} fine-tuning epochs: {out / 'curve.json'} holds the rounds done; "
        f"continue with --resume (same options)")
    return curves


def _curve_line(curve: dict) -> str:
    parts = []
    for p in curve["points"]:
        acc = p.get("test_accuracy", p["val_accuracy"])
        onnx = f"/{p['onnx_test_accuracy']:.1%} onnx" if "onnx_test_accuracy" in p else ""
        parts.append(f"r{p['round']}: {p['parameters']:,}p {p['onnx_bytes']:,}B {acc:.1%}{onnx}")
    return f"rate {curve['rate']:g}: " + " | ".join(parts)
