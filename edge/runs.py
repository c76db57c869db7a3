"""What `edge train`, `edge distill` and `edge slim` do with their options: open the data, build or
load the models, put a `edge.train.Run` together, run it, and print a summary line.

Option names (the keys of ``opts``) are the click parameter names of those commands.

Under ``torchrun`` each command joins the process group first (`edge.distributed`); setting up
(data, models, the output check) runs on every rank inside `edge.distributed.together`, so a
failure on one rank stops them all; rank 0 alone prints and writes.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import torch

from edge.checkpoints import CheckpointError
from edge.config import ConfigError, Preprocess, StudentConfig
from edge.datasets import Augment, ImageSet, load_images
from edge.distributed import group, load_shared, say, together
from edge.files import atomic_write, check_output, check_output_dir
from edge.nets import STUDENT_ARCHS, NetFile, NetSpec, check_compatible, count_parameters, load_net
from edge.train import Recipe, Run, accuracy, best_path, default_precise_bn, fit, init_model

FASHION_MNIST = "fashion-mnist"


def _device(name: str) -> torch.device:
    from edge.torch_backend import resolve_device

    try:
        return resolve_device(name)
    except RuntimeError as err:
        raise ConfigError(str(err)) from None


def _setup(opts: dict) -> torch.device:
    """Threads, and the device this process trains on (joining torchrun's process group, if any)."""
    from edge import distributed

    if opts.get("threads"):
        torch.set_num_threads(opts["threads"])
    return distributed.start(_device(opts["device"]), bool(opts.get("sync_bn")))


def _input_paths(opts: dict) -> list[Path]:
    """The files and folders a run reads (data folders without their @START:STOP slice)."""
    paths = [Path(str(opts[k]).rsplit("@", 1)[0]) for k in ("data", "val", "test") if opts.get(k)]
    return paths + [Path(opts[k]) for k in ("labels", "val_labels", "test_labels", "teacher", "student", "weights")
                    if opts.get(k)]


def check_run_outputs(opts: dict) -> None:
    """Every path `edge train` / `edge distill` write, checked before any data is decoded: the run
    file and its .best.pt (an existing run is continued only with --resume, never replaced),
    --metrics and --cache-dir; none may be an input."""
    out, resume, inputs = Path(opts["output"]), bool(opts.get("resume")), _input_paths(opts)
    hint = "continue its run with --resume (same options), or choose another -o"
    check_output(out, inputs=inputs, overwrite=resume, writes_model=True, what="run file", hint=hint)
    if resume and not out.exists():
        raise ConfigError(f"{out}: nothing to resume (no such file): run without --resume first")
    best = best_path(out)
    check_output(best, inputs=inputs, overwrite=resume, writes_model=True, what="best-epoch file", hint=hint)
    if opts.get("metrics"):
        check_output(opts["metrics"], inputs=[*inputs, out, best], what="--metrics JSON")
    _check_cache_dir(opts, inputs)


def _check_cache_dir(opts: dict, inputs: list[Path]) -> None:
    if opts.get("cache_dir"):
        check_output_dir(opts["cache_dir"], inputs=inputs, what="--cache-dir")


def fresh_preprocess(opts: dict) -> Preprocess:
    """The inputs of a model trained from scratch: Fashion-MNIST is grey (default 32 px, the 28 px
    images zero-padded), folders RGB (default 256 px, the homework's centre crop)."""
    grey = opts["data"].startswith(FASHION_MNIST)
    size = opts.get("input_size") or (32 if grey else 256)
    if grey:
        return Preprocess(crop=size, resize=opts.get("resize"), mean=(0.0,), std=(1.0,), color="L")
    return Preprocess(crop=size, resize=opts.get("resize"))


def open_sets(opts: dict, preprocess: Preprocess, classes: tuple[str, ...] = ()):
    """(train, val, test, augment) for ``preprocess``; val/test are None when not asked for."""
    augment = Augment(preprocess.crop, opts.get("padding") or 0, flip=not opts.get("no_flip"))
    common = {"workers": opts.get("decode_threads") or 4, "cache_dir": opts.get("cache_dir")}
    train = load_images(opts["data"], preprocess, augment, labels_csv=opts.get("labels"), class_hint=classes, **common)
    hint = classes or train.classes or ()

    def evaluation(key: str) -> ImageSet | None:
        return load_images(opts[key], preprocess, labels_csv=opts.get(f"{key}_labels"), class_hint=hint, **common) \
            if opts.get(key) else None

    val, test = evaluation("val"), evaluation("test")
    say(f"data: train {len(train)} images ({opts['data']}), val {len(val) if val else 0}, "
        f"test {len(test) if test else 0}; input {preprocess.crop}px {preprocess.color}")
    return train, val, test, augment


def _recipe(opts: dict, epochs_key: str = "epochs", arch: str = "dw") -> Recipe:
    precise_bn = opts.get("precise_bn")
    return Recipe(epochs=opts[epochs_key], batch_size=opts["batch"], lr=opts["lr"], weight_decay=opts["weight_decay"],
                  schedule=opts["schedule"], seed=opts["seed"], sparsity=opts.get("sparsity") or 0.0,
                  precise_bn=default_precise_bn(arch) if precise_bn is None else precise_bn)


def _spec(arch: str, opts: dict, preprocess: Preprocess, classes: tuple[str, ...]) -> NetSpec:
    """A fresh model's architecture: the homework's StudentNet shape unless --widths/--pools say
    otherwise; baselines sized to that StudentNet's parameter count."""
    shape = {k: opts[k] for k in ("widths", "pools") if opts.get(k) is not None}
    base = StudentConfig(input_size=preprocess.crop, num_classes=len(classes), in_channels=len(preprocess.color),
                         **shape)
    if arch in ("cnn", "group"):
        from edge.baselines import sized_like

        groups = opts.get("groups") or 4 if arch == "group" else 1
        return NetSpec(arch, base if opts.get("widths") else sized_like(base, groups), groups)
    return NetSpec(arch, base)


def _classes_of(train: ImageSet) -> tuple[str, ...]:
    if train.classes is None:
        raise ConfigError(f"the training images have no labels: a model trained from scratch needs labelled "
                          f"data (a Food-11 training/ folder, class subfolders, {FASHION_MNIST}:train or --labels; "
                          f"distill also takes the classes an edge teacher file names)")
    return train.classes


def _fresh_net(arch: str, opts: dict, train: ImageSet, preprocess: Preprocess,
               known: tuple[str, ...] = ()) -> NetFile:
    """A new model for ``train``'s classes (or, on unlabelled data, ``known``: the teacher's)."""
    classes = train.classes or known or _classes_of(train)
    return NetFile(_spec(arch, opts, preprocess, classes), preprocess, classes, {})


def _init(net: NetFile, opts: dict) -> torch.nn.Module:
    model = init_model(net, opts["seed"])
    if opts.get("weights") and net.spec.arch not in STUDENT_ARCHS:
        from edge.teacher import load_classifier_weights

        fresh = load_classifier_weights(model, opts["weights"], net.spec.arch)
        say(f"initial weights: {opts['weights']}" + (f" (re-initialised: {', '.join(fresh)})" if fresh else ""))
    elif opts.get("weights"):
        raise ConfigError("--weights initialises torchvision architectures; start a StudentNet from a file with "
                          "`edge distill --student FILE`")
    return model


def _about(opts: dict, *keys: str) -> dict:
    return {k: str(opts[k]) if isinstance(opts[k], Path) else opts[k] for k in keys if opts.get(k) is not None}


def _finish(run: Run, summary: dict, test: ImageSet | None, opts: dict, began: float) -> dict:
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
    if opts.get("metrics") and group().main:
        atomic_write(opts["metrics"], lambda f: f.write(json.dumps(result, indent=2).encode()))
    return result


def _run(net: NetFile, model, objective, opts: dict, sets, about: dict, device: torch.device) -> Run:
    train, val, _, augment = sets
    return Run(net, model, objective, _recipe(opts, arch=net.spec.arch), train, augment, Path(opts["output"]), val, device,
               opts.get("workers") or 0, about, not opts.get("quiet"))


def train_command(opts: dict) -> dict:
    """`edge train`: a teacher, baseline or student from scratch on labels (cross-entropy)."""
    from edge.train import CrossEntropy

    began = time.time()
    device = _setup(opts)
    with together("setting up"):
        if group().main:
            check_run_outputs(opts)
        preprocess = fresh_preprocess(opts)
        sets = open_sets(opts, preprocess)
        net = _fresh_net(opts["arch"], opts, sets[0], preprocess)
        model = _init(net, opts)
    say(f"model: {net.spec.describe()}, {count_parameters(model):,} parameters")
    about = _about(opts, "data", "val", "labels", "val_labels", "padding", "weights", "arch")
    run = _run(net, model, CrossEntropy(), opts, sets, about, device)
    return _finish(run, fit(run, opts.get("resume", False), opts.get("stop_after")), sets[2], opts, began)


def teacher_classes(path: Path, arch: str) -> tuple[str, ...]:
    """Read the teacher file before any data is decoded (a hostile or damaged file fails first);
    -> the classes it names (an edge file), or () for a plain torchvision state dict."""
    try:
        return load_net(path).classes
    except CheckpointError:
        if arch in STUDENT_ARCHS:
            raise
        from edge.checkpoints import read_torch

        read_torch(path)
        return ()


def load_teacher(path: Path, arch: str, classes: tuple[str, ...], preprocess: Preprocess) -> torch.nn.Module:
    """A teacher from our model file, any StudentNet file, or a torchvision state dict (``arch``)."""
    try:
        net = load_net(path)
    except CheckpointError as err:
        from edge.teacher import load_classifier_weights, torchvision_classifier

        if arch in STUDENT_ARCHS:
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


def _alpha(opts: dict, train: ImageSet) -> float:
    """--alpha, by default 0.5 on labelled data and 1 (label-free) on unlabelled data."""
    if opts.get("alpha") is None:
        return 0.5 if train.labelled else 1.0
    if opts["alpha"] < 1 and not train.labelled:
        raise ConfigError(f"--alpha {opts['alpha']:g} mixes in cross-entropy, but {opts['data']} has images without "
                          f"labels: use --alpha 1 (label-free) or give --labels")
    return opts["alpha"]


def _objective(teacher, student: torch.nn.Module, opts: dict, preprocess: Preprocess, alpha: float):
    from edge.distill import Distillation, FeatureHint

    hint = None
    if opts.get("feature"):
        s_layer, _, t_layer = opts["feature"].partition(":")
        if not t_layer:
            raise ConfigError(f"--feature wants STUDENT_LAYER:TEACHER_LAYER (e.g. cnn.4:layer2), "
                              f"got {opts['feature']!r}")
        probe = torch.zeros(2, len(preprocess.color), preprocess.crop, preprocess.crop)
        try:
            hint = FeatureHint(student, teacher, s_layer, t_layer, probe)
        except ValueError as err:
            raise ConfigError(f"--feature: {err}") from None
    return Distillation(teacher, alpha, opts["temperature"], hint, opts.get("feature_weight") or 1.0)


def distill_command(opts: dict) -> dict:
    """`edge distill`: a student (fresh, or started from a file) taught by a teacher."""
    began = time.time()
    device = _setup(opts)
    with together("setting up"):
        if group().main:
            check_run_outputs(opts)
        named = teacher_classes(opts["teacher"], opts["teacher_arch"])
        start = None if opts["student"] in STUDENT_ARCHS else load_net(opts["student"])
        preprocess = start.preprocess if start else fresh_preprocess(opts)
        known = start.classes if start else named
        sets = open_sets(opts, preprocess, known)
        net = start or _fresh_net(opts["student"], opts, sets[0], preprocess, known)
        model = _init(net, opts)
        teacher = load_teacher(opts["teacher"], opts["teacher_arch"], net.classes, preprocess)
        alpha = _alpha(opts, sets[0])
    say(f"student: {net.spec.describe()}, {count_parameters(model):,} parameters; KD alpha {alpha:g}, "
        f"T {opts['temperature']:g}" + (f", feature hint {opts['feature']}" if opts.get("feature") else ""))
    about = _about(opts, "data", "val", "labels", "val_labels", "padding", "teacher", "student", "feature",
                   "feature_weight", "temperature") | {"alpha": alpha}
    run = _run(net, model, _objective(teacher, model, opts, preprocess, alpha), opts, sets, about, device)
    return _finish(run, fit(run, opts.get("resume", False), opts.get("stop_after")), sets[2], opts, began)


def slim_command(opts: dict) -> dict:
    """`edge slim`: iterative network slimming of a StudentNet, one curve per rate; resumable."""
    from edge.slim import SlimSetup, plot_curves, slim_curve, write_curves

    began = time.time()
    device = _setup(opts)
    with together("setting up"):
        if group().main:
            _check_slim_output(opts)
        _check_quant(opts)
        base = load_net(opts["student"])
        if base.spec.arch != "dw":
            raise ConfigError(f"{opts['student']}: slimming works on StudentNets (arch dw), this is {base.spec.arch}")
        train, val, test, augment = open_sets(opts, base.preprocess, base.classes)
        if val is None:
            raise ConfigError("--val is required: each round keeps its best epoch by validation accuracy")
        teacher = load_teacher(opts["teacher"], opts["teacher_arch"], base.classes, base.preprocess) \
            if opts.get("teacher") else base.build()
        alpha = _alpha(opts, train)
    out = Path(opts["output"])
    test_kind = f"agreement with {Path(opts['test_labels']).name}" if opts.get("test_labels") else "accuracy"
    setup = SlimSetup(train, val, augment, teacher, _recipe(opts, "finetune_epochs"), out, alpha, opts["temperature"],
                      opts["scope"], test, test_kind, opts["quant"], opts["method"], device,
                      opts.get("workers") or 0, not opts.get("quiet"), bool(opts.get("resume")))
    curves = _slim_record(opts, out, setup, alpha)
    previous_seconds = curves.get("seconds", 0.0)

    def save() -> None:
        curves["seconds"] = round(previous_seconds + time.time() - began, 1)
        if group().main:
            write_curves(out / "curve.json", curves)

    per_curve = opts["rounds"] * opts["finetune_epochs"]
    for i, rate in enumerate(opts["rate"]):
        stop = None if opts.get("stop_after") is None else opts["stop_after"] - i * per_curve
        if stop is not None and stop <= 0:
            return _stopped(opts, out, curves)
        if i == len(curves["curves"]):
            curves["curves"].append({"rate": rate, "points": []})
        curve = curves["curves"][i]

        def record(points: list[dict], curve=curve) -> None:
            curve["points"] = list(points)
            save()

        if len(slim_curve(base, rate, opts["rounds"], setup, opts["student"], curve["points"], stop, record)) \
                <= opts["rounds"]:
            return _stopped(opts, out, curves)
    save()
    if not group().main:  # the record, the figure and the summary are rank 0's
        return curves
    plot_curves(out / "curve.png", curves)
    for curve in curves["curves"]:
        say(_curve_line(curve))
    say(f"done in {curves['seconds']:.0f}s: wrote {out / 'curve.json'}, {out / 'curve.png'} and each round's "
        f"model + {opts['quant']} ONNX under {out}/rate*/")
    return curves


def _check_quant(opts: dict) -> None:
    """--quant / --method of each round's export, checked before any work."""
    from edge.export.quantize import QuantSpec

    try:
        QuantSpec(opts["quant"], method=opts["method"])
    except ValueError as err:
        raise ConfigError(f"--quant {opts['quant']}: {err}") from None


def _check_slim_output(opts: dict) -> None:
    """The output folder, before any work: a new folder or one without a slimming run (with
    --resume: one holding the run's curve.json); never an input or a folder holding one."""
    out, inputs = Path(opts["output"]), _input_paths(opts)
    check_output_dir(out, inputs=inputs, what="slimming output folder")
    record = out / "curve.json"
    if opts.get("resume") and not record.exists():
        raise ConfigError(f"{record}: nothing to resume (no such file): run without --resume first")
    if not opts.get("resume") and (record.exists() or any(p.is_file() for p in out.glob("rate*/*"))):
        raise ConfigError(f"{out}: holds a slimming run (curve.json or rate*/ files): continue it with --resume "
                          f"(same options), or choose a new folder")
    for path in inputs:
        if path.resolve().is_relative_to(out.resolve()) and path.is_file():
            raise ConfigError(f"{path}: an input inside the output folder {out} could be overwritten by a round's "
                              f"file: move it out or choose another -o")
    _check_cache_dir(opts, inputs)


def _slim_record(opts: dict, out: Path, setup, alpha: float) -> dict:
    """A fresh curve record, or with --resume the one in OUTPUT (its settings must be these)."""
    from dataclasses import asdict

    settings = json.loads(json.dumps(
        _about(opts, "student", "data", "val", "test", "labels", "val_labels", "test_labels", "padding", "no_flip",
               "teacher", "teacher_arch", "rounds", "scope", "quant", "method", "temperature")
        | {"rate": list(opts["rate"]), "alpha": alpha, "recipe": asdict(setup.recipe)}))
    path = out / "curve.json"
    if not opts.get("resume"):
        return {"title": f"slimming {Path(opts['student']).name} ({opts['scope']} threshold, KD alpha {alpha:g})",
                "command": "edge " + " ".join(shlex.quote(a) for a in sys.argv[1:]), "settings": settings,
                "curves": []}
    contents = group().file_bytes(path)  # rank 0's record, on every rank
    if contents is None:
        raise ConfigError(f"{path}: nothing to resume (no such file): run without --resume first")
    try:
        saved = json.loads(contents)
        differ = {k: (saved["settings"].get(k), v) for k, v in settings.items() if saved["settings"].get(k) != v}
    except (ValueError, KeyError, AttributeError) as err:
        raise ConfigError(f"{path}: not a resumable slimming record ({err})") from None
    if differ:
        raise ConfigError(f"{path}: --resume needs the run's own settings; these differ (saved, now): "
                          + ", ".join(f"{k} {a!r} != {b!r}" for k, (a, b) in differ.items()))
    return saved


def _stopped(opts: dict, out: Path, curves: dict) -> dict:
    say(f"stopped after {opts['stop_after']} fine-tuning epochs: {out / 'curve.json'} holds the rounds done; "
        f"continue with --resume (same options)")
    return curves


def _curve_line(curve: dict) -> str:
    parts = []
    for p in curve["points"]:
        acc = p.get("test_accuracy", p["val_accuracy"])
        onnx = f"/{p['onnx_test_accuracy']:.1%} onnx" if "onnx_test_accuracy" in p else ""
        parts.append(f"r{p['round']}: {p['parameters']:,}p {p['onnx_bytes']:,}B {acc:.1%}{onnx}")
    return f"rate {curve['rate']:g}: " + " | ".join(parts)
