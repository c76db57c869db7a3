"""What each `edge` command was asked, as frozen dataclasses, and the one validation of those values.

The CLI builds one options object per command from click's parameters (`from_click`) and hands it to
the command's one public function (`edge.workflows.*`, `edge.bench.command`); the Python API
(`edge.api`) builds the same objects from its arguments, so both go through the same checks: every
field listed in a class's ``RULES`` is checked in ``__post_init__`` by `validate` (a wrong type is a
`TypeError` naming the parameter, a bad value a `ConfigError`, an `edge.core.errors.EdgeError`). The
option groups the training commands share (`DataOptions`, `LoopOptions`, `KDOptions`, `ShapeOptions`,
`RunFileOptions`) are composed, not repeated. Field names are the click parameter names, so the CLI
and these classes cannot drift apart: `from_click` refuses a parameter no field takes.
Constructors are keyword-only.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass
from pathlib import Path

from edge.core import backends
from edge.core import weight_formats as formats
from edge.core.config import ConfigError

THREADS_MAX = 256  # torch starts two OS threads per --threads; no machine edge runs on has more cores


@dataclass(frozen=True)
class Rule:
    """What one option accepts: its kind (``int``, ``float``, ``bool``, ``str``, ``Path``, ``ints``: a
    non-empty tuple of integers, ``stages``: one with none twice, ``paths``: a tuple of paths), an
    inclusive range (``low_open``: low excluded), ``choices``, whether None is allowed, and the CLI flag when it is not ``--<name>``."""

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple = ()
    optional: bool = False
    flag: str | None = None

    def check(self, name: str, value):
        """``value`` checked (paths made `Path`); raises TypeError / ConfigError naming ``name``."""
        label = f"{name} ({self.flag or '--' + name.replace('_', '-')})"
        if value is None:
            if self.optional:
                return None
            raise TypeError(f"{label} is required, got None")
        checked = _KINDS[self.kind](label, value)
        for number in checked if isinstance(checked, tuple) else (checked,) if self.kind in ("int", "float") else ():
            self._check_range(label, number)
        if self.choices and checked not in self.choices:
            raise ConfigError(f"{label}: {checked!r} is not one of {', '.join(map(str, self.choices))}")
        return checked

    def _check_range(self, label: str, number) -> None:
        if self.low is not None and (number <= self.low if self.low_open else number < self.low):
            raise ConfigError(f"{label} must be {'>' if self.low_open else '>='} {self.low:g}, got {number!r}")
        if self.high is not None and number > self.high:
            raise ConfigError(f"{label} must be <= {self.high:g}, got {number!r}")


def _integer(label: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{label} must be an integer, got {type(value).__name__} {value!r}")
    return value


def _number(label: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{label} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{label} must be a finite number, got {value!r}")
    return value


def _flag(label: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{label} must be True or False, got {type(value).__name__} {value!r}")
    return value


def _text(label: str, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{label} must be a string, got {type(value).__name__} {value!r}")
    return value


def _path(label: str, value) -> Path:
    if not isinstance(value, (str, os.PathLike)) or str(value) == "":
        raise TypeError(f"{label} must be a path (str or os.PathLike), got {type(value).__name__} {value!r}")
    return Path(value)


def _integers(label: str, value) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise TypeError(f"{label} must be a tuple of integers, got {type(value).__name__} {value!r}")
    if not value:
        raise ConfigError(f"{label} must name at least one integer, got {value!r}")
    return tuple(_integer(label, v) for v in value)


def _stages(label: str, value) -> tuple[int, ...]:
    """Stage indices, each once (as the CLI's ``--pools 0,0`` is refused, not read as ``0``)."""
    stages = _integers(label, value)
    if len(set(stages)) != len(stages):
        raise ConfigError(f"{label} must name each stage once, got {value!r}")
    return stages


def _placement(label: str, value) -> tuple[int, ...] | str:
    """Pool positions, or ``"auto"``: the placement the file's BatchNorm statistics fit best (predict only)."""
    return value if value == "auto" else _stages(label, value)


def _paths(label: str, value) -> tuple[Path, ...]:
    """One path (a str or PathLike is one model, never iterated) or a list/tuple of paths."""
    if isinstance(value, (str, os.PathLike)):
        return (_path(label, value),)
    if not isinstance(value, (tuple, list)):
        raise TypeError(f"{label} must be a path or a list of paths, got {type(value).__name__} {value!r}")
    return tuple(_path(label, v) for v in value)


_KINDS = {"int": _integer, "float": _number, "bool": _flag, "str": _text, "Path": _path, "ints": _integers,
          "stages": _stages, "placement": _placement, "paths": _paths}


def validate(options) -> None:
    """Check every field of ``options`` its class's ``RULES`` names (the one validation of the CLI and the API)."""
    for name, rule in type(options).RULES.items():
        object.__setattr__(options, name, rule.check(name, getattr(options, name)))


class Validated:
    """Base of the options classes whose ``RULES`` are checked when they are built."""

    RULES: typing.ClassVar[dict[str, Rule]] = {}

    def __post_init__(self):
        validate(self)


def _output_rules(*names: str, optional: bool = True) -> dict[str, Rule]:
    return {name: Rule("Path", optional=optional) for name in names} | {"overwrite": Rule("bool")}


POOLS = Rule("stages", low=0, optional=True)
POOLS_OR_AUTO = Rule("placement", low=0, optional=True, flag="--pools")
THREADS = Rule("int", 1, THREADS_MAX, optional=True)


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    """The images a run reads: DATA, --val, --test (each ``FOLDER[@START:STOP]`` or ``fashion-mnist:SPLIT``),
    their label CSVs, augmentation and decoding."""

    data: str
    val: str | None = None
    test: str | None = None
    labels: Path | None = None
    val_labels: Path | None = None
    test_labels: Path | None = None
    padding: int = 0  # RandomCrop's padding per side
    no_flip: bool = False
    rotation: float = 15.0  # largest random rotation, degrees (the homework's RandomRotation(15))
    decode_threads: int = 4
    cache_dir: Path | None = None

    def paths(self) -> list[Path]:
        """The files and folders read (data folders without their @START:STOP slice)."""
        folders = [Path(str(source).rsplit("@", 1)[0]) for source in (self.data, self.val, self.test) if source]
        return folders + [Path(p) for p in (self.labels, self.val_labels, self.test_labels) if p]


@dataclass(frozen=True, kw_only=True)
class LoopOptions:
    """How the training loop runs: optimiser settings, seed, device and parallelism."""

    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.01
    schedule: str = "cosine"
    seed: int = 0
    precise_bn: int | None = None  # None: `edge.train.loop.default_precise_bn`
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch CPU threads
    workers: int = 0  # DataLoader processes
    quiet: bool = False
    sync_bn: bool = False  # under torchrun: BatchNorm statistics over the global batch


@dataclass(frozen=True, kw_only=True)
class KDOptions:
    """Knowledge distillation: alpha*T^2*KL + (1-alpha)*CE."""

    temperature: float = 20.0
    alpha: float | None = None  # None: 0.5 with labels, 1 (label-free) without


@dataclass(frozen=True, kw_only=True)
class ShapeOptions:
    """A fresh model's input and architecture size (None: the defaults of the data and the homework)."""

    input_size: int | None = None
    resize: int | None = None
    widths: tuple[int, ...] | None = None
    pools: tuple[int, ...] | None = None
    groups: int | None = None  # the group-conv baseline


@dataclass(frozen=True, kw_only=True)
class RunFileOptions:
    """A from-scratch run: its file (resumable), length, and what it writes beside."""

    output: Path
    epochs: int = 10
    sparsity: float = 0.0  # L1 on BatchNorm gammas
    resume: bool = False
    overwrite: bool = False  # start the run over in an existing file
    stop_after: int | None = None
    metrics: Path | None = None


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """`edge train`: a model from scratch with cross-entropy."""

    arch: str = "dw"
    weights: str | None = None  # a torchvision arch's initial weights: imagenet or a state dict path
    sources: DataOptions
    loop: LoopOptions = LoopOptions()
    shape: ShapeOptions = ShapeOptions()
    run: RunFileOptions

    @property
    def model_files(self) -> tuple:
        return (self.weights,)


@dataclass(frozen=True, kw_only=True)
class DistillOptions:
    """`edge distill`: a student (fresh, or from a file) taught by a teacher."""

    teacher: Path
    teacher_arch: str = "resnet18"
    student: str = "dw"  # an arch for a fresh student, or a model file
    feature: str | None = None  # S_LAYER:T_LAYER
    feature_weight: float = 1.0
    sources: DataOptions
    loop: LoopOptions = LoopOptions()
    kd: KDOptions = KDOptions()
    shape: ShapeOptions = ShapeOptions()
    run: RunFileOptions

    @property
    def model_files(self) -> tuple:
        return (self.teacher, self.student)


@dataclass(frozen=True, kw_only=True)
class SlimOptions:
    """`edge slim`: iterative network slimming of a StudentNet file."""

    student: Path
    rate: tuple[float, ...] = (0.1,)
    rounds: int = 3
    finetune_epochs: int = 2
    scope: str = "stage"
    teacher: Path | None = None
    teacher_arch: str = "resnet18"
    quant: str = "uint8"  # each round's export (edge.core.weight_formats)
    method: str = "gptq"
    output: Path
    resume: bool = False
    overwrite: bool = False  # start over in a folder holding a slimming run
    stop_after: int | None = None  # fine-tuning epochs in all
    sources: DataOptions
    loop: LoopOptions = LoopOptions()
    kd: KDOptions = KDOptions()

    @property
    def model_files(self) -> tuple:
        return (self.student, self.teacher)


@dataclass(frozen=True, kw_only=True)
class SearchSettings:
    """What an `edge compress` search is asked to do; a resumed search must be given the same."""

    target_bytes: int
    epochs: int = 4  # function-matching epochs per slimming round
    step: float = 0.1  # largest cut of the keep fraction in one round
    min_keep: float = 0.5  # never slim below this fraction of the prunable widths
    batch: int = 32
    lr: float = 5e-5
    temperature: float = 1.0
    ridge: float = 0.01  # least-squares re-fits pulled towards the layer's old weights (quantize better)
    calibration: int = 64  # training photos that calibrate GPTQ (and 4x that for reconstruction)
    seed: int = 0
    budget_minutes: float = 30.0
    qat_epochs: int = 8  # quantization-aware fine-tuning of the first fitting slimmed uintN file (0: none)
    qat_lr: float = 1e-3  # its rate, relative to each tensor's scale (edge.export.finetune)
    views: int = 8  # augmented views of each validation photo that rank fitting candidates (0: none)

    def __post_init__(self):
        numbers = {"--lr": self.lr, "--qat-lr": self.qat_lr, "--temperature": self.temperature, "--ridge": self.ridge,
                   "--budget-minutes": self.budget_minutes, "--step": self.step, "--min-keep": self.min_keep}
        not_finite = [name for name, value in numbers.items() if not math.isfinite(value)]
        if not_finite:
            raise ConfigError(f"{', '.join(not_finite)} must be finite numbers (a NaN or infinity trains nothing "
                              f"and cannot be resumed)")
        if self.temperature <= 0 or self.ridge < 0 or self.budget_minutes <= 0:
            raise ConfigError("--temperature and --budget-minutes must be positive, --ridge at least 0")
        if self.target_bytes < 1 or self.epochs < 1 or self.batch < 2 or self.lr <= 0 or self.qat_lr <= 0:
            raise ConfigError("target bytes, epochs and learning rates must be positive, batch at least 2")
        if self.qat_epochs < 0 or self.views < 0:
            raise ConfigError("--qat-epochs and --views must be at least 0")
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be in 0 .. 2**63-1 (what torch's and numpy's generators take), got "
                              f"{self.seed}")
        if not 0 < self.min_keep <= 1 or not 0 < self.step < 1:
            raise ConfigError("--min-keep must be in (0, 1] and --step in (0, 1)")


@dataclass(frozen=True, kw_only=True)
class CompressOptions:
    """`edge compress`: the search and the files and switches around it."""

    search: SearchSettings
    model: Path
    images: str
    output: Path
    labels: Path | None = None
    val: str | None = None
    test: str | None = None
    test_labels: Path | None = None
    teacher: Path | None = None
    teacher_arch: str = "resnet18"
    report: Path | None = None
    resume: bool = False
    overwrite: bool = False
    threads: int | None = None
    cache_dir: Path | None = None
    quiet: bool = False


@dataclass(frozen=True, kw_only=True)
class ExportOptions(Validated):
    """`edge export` / `edge.export_model`: a model file (None: the shipped student) to one ONNX file."""

    checkpoint: Path | None = None
    output: Path
    quant: str = "fp32"
    per_channel: bool = False
    method: str = formats.DEFAULT_METHOD
    entropy: bool = False
    train_epochs: int = 0
    fp16_below: int = formats.FP16_BELOW
    low_rank: float | None = None
    calibration_dir: Path | None = None
    calibration_images: int = 64
    pools: tuple[int, ...] | None = None
    images: Path | None = None
    max_drop: float | None = None
    labels: Path | None = None
    overwrite: bool = False

    RULES: typing.ClassVar = {
        "checkpoint": Rule("Path", optional=True), "quant": Rule("str"), "per_channel": Rule("bool"),
        "method": Rule("str", choices=tuple(formats.METHODS)), "entropy": Rule("bool"),
        "train_epochs": Rule("int", 0), "fp16_below": Rule("int", 0),
        "low_rank": Rule("float", 0, 1, low_open=True, optional=True),
        "calibration_dir": Rule("Path", optional=True, flag="--calib"),
        "calibration_images": Rule("int", 1, flag="--calib-images"), "pools": POOLS,
        "images": Rule("Path", optional=True), "max_drop": Rule("float", 0, 100, optional=True),
        "labels": Rule("Path", optional=True), **_output_rules("output", optional=False)}

    FORMAT_OPTIONS: typing.ClassVar = ("quant", "per_channel", "method", "entropy", "train_epochs", "fp16_below",
                                       "low_rank")

    def given_format_options(self) -> list[str]:
        """The weight-format options set to something other than their default (``--max-drop`` ignores them)."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return [name for name in self.FORMAT_OPTIONS if getattr(self, name) != defaults[name]]


@dataclass(frozen=True, kw_only=True)
class PredictOptions(Validated):
    """`edge predict` / `edge.predict_images`: every image of a folder (the CSV when ``output`` is set)."""

    model: Path
    data_dir: Path
    output: Path | None = None
    labels: Path | None = None
    provider: str = "cpu"  # or "auto": `edge.inference.auto`
    compute: str = "fp32"  # a precision of `edge.core.backends.COMPUTES`
    calib: Path | None = None  # photos for int8 ranges and agreement (default: the first of data_dir)
    batch: int = 4
    workers: int | None = None
    threads: int | None = None
    pools: tuple[int, ...] | str | None = None  # or "auto": `edge.inference.pools`
    skip_bad: bool = False
    quiet: bool = False
    overwrite: bool = False

    RULES: typing.ClassVar = {
        "model": Rule("Path"), "data_dir": Rule("Path"), "labels": Rule("Path", optional=True),
        "provider": Rule("str"), "compute": Rule("str"), "calib": Rule("Path", optional=True),
        "batch": Rule("int", 1), "workers": THREADS,
        "threads": THREADS, "pools": POOLS_OR_AUTO, "skip_bad": Rule("bool"), "quiet": Rule("bool"),
        **_output_rules("output")}


@dataclass(frozen=True, kw_only=True)
class InfoOptions(Validated):
    """`edge info`: what a model file is."""

    model: Path
    pools: tuple[int, ...] | None = None

    RULES: typing.ClassVar = {"model": Rule("Path"), "pools": POOLS}


CONVERT_TARGETS = ("edge", "homework8", "homework16", "onnx")


@dataclass(frozen=True, kw_only=True)
class ConvertOptions(Validated):
    """`edge convert`: a model file rewritten in another format."""

    checkpoint: Path
    target: str
    output: Path
    pools: tuple[int, ...] | None = None
    overwrite: bool = False

    RULES: typing.ClassVar = {"checkpoint": Rule("Path"), "target": Rule("str", choices=CONVERT_TARGETS, flag="--to"),
                              "pools": POOLS, **_output_rules("output", optional=False)}


@dataclass(frozen=True, kw_only=True)
class SensitivityOptions(Validated):
    """`edge sensitivity`: each layer quantized alone, measured on real images."""

    checkpoint: Path
    images: Path
    limit: int = 128
    bits: int = 8
    per_channel: bool = False
    kmeans: int | None = None
    pools: tuple[int, ...] | None = None
    json_out: Path | None = None
    overwrite: bool = False

    RULES: typing.ClassVar = {
        "checkpoint": Rule("Path"), "images": Rule("Path"), "limit": Rule("int", 1), "bits": Rule("int", 1, 8),
        "per_channel": Rule("bool"), "kmeans": Rule("int", 2, 256, optional=True), "pools": POOLS,
        **_output_rules("json_out")}


@dataclass(frozen=True, kw_only=True)
class BenchOptions(Validated):
    """`edge bench` / `edge.benchmark`: models x backends x weight formats, each row in its own process."""

    models: tuple[Path, ...] = ()
    data: Path | None = None
    labels: Path | None = None
    providers: str = ",".join(backends.NAMES)
    quants: str | None = None
    computes: str = "fp32"  # precisions of `edge.core.backends.COMPUTES`, comma-separated
    calib: Path | None = None  # photos for int8 ranges and the --provider auto choice
    batches: tuple[int, ...] = (1, 32)
    threads: int | None = None
    repeats: int = 3
    min_time: float = 0.5
    pools: tuple[int, ...] | None = None
    json_out: Path | None = None
    markdown_out: Path | None = None
    plot_out: Path | None = None
    previous: Path | None = None
    quiet: bool = False
    overwrite: bool = False

    RULES: typing.ClassVar = {
        "models": Rule("paths"), "data": Rule("Path", optional=True), "labels": Rule("Path", optional=True),
        "providers": Rule("str", flag="--provider"), "quants": Rule("str", optional=True, flag="--quant"),
        "computes": Rule("str", flag="--compute"), "calib": Rule("Path", optional=True),
        "batches": Rule("ints", 1, flag="--batch"), "threads": THREADS, "repeats": Rule("int", 1),
        "min_time": Rule("float", 0.01), "pools": POOLS, "previous": Rule("Path", optional=True, flag="--compare"),
        "quiet": Rule("bool"), **_output_rules("json_out", "markdown_out", "plot_out")}


@dataclass(frozen=True, kw_only=True)
class AttackOptions(Validated):
    """`edge attack`: FGSM / iterative FGSM on a folder's images, with input defenses scored."""

    models: tuple[Path, ...]
    data_dir: Path
    labels: Path | None = None
    eps: str = "1/255,2/255,8/255"
    methods: str = "fgsm,ifgsm"
    steps: int = 10
    defenses: str = "gaussian:1.5,median:3,jpeg:75,bits:4"
    source: Path | None = None
    save_dir: Path | None = None
    json_out: Path | None = None
    markdown_out: Path | None = None
    plot_out: Path | None = None
    limit: int | None = None
    batch: int = 8
    threads: int = 1
    pools: tuple[int, ...] | None = None
    quiet: bool = False
    overwrite: bool = False

    RULES: typing.ClassVar = {
        "models": Rule("paths"), "data_dir": Rule("Path"), "labels": Rule("Path", optional=True),
        "eps": Rule("str"), "methods": Rule("str", flag="--method"), "steps": Rule("int", 1),
        "defenses": Rule("str", flag="--defense"), "source": Rule("Path", optional=True),
        "save_dir": Rule("Path", optional=True, flag="--save-adversarial"), "limit": Rule("int", 1, optional=True),
        "batch": Rule("int", 1), "threads": Rule("int", 1, THREADS_MAX), "pools": POOLS, "quiet": Rule("bool"),
        **_output_rules("json_out", "markdown_out", "plot_out")}


def option_names(cls) -> set[str]:
    """Every leaf option name of an options class (its groups opened up)."""
    hints = typing.get_type_hints(cls)
    names = set()
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        names |= option_names(kind) if dataclasses.is_dataclass(kind) else {field.name}
    return names


def from_click(cls, params: dict, *, _used: set | None = None):
    """``cls`` built from click's parameters: each field by its name, option groups (fields whose type is one
    of these dataclasses) from the same parameters. A parameter no field takes is a programming error."""
    used = set() if _used is None else _used
    values = {}
    for name, kind in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(kind):
            values[name] = from_click(kind, params, _used=used)
        elif name in params:
            values[name] = params[name]
            used.add(name)
    if _used is None and set(params) - used:
        raise TypeError(f"{cls.__name__} takes no {', '.join(sorted(set(params) - used))}")
    return cls(**values)


def flat(options) -> dict:
    """Every leaf option by its click name (the groups opened up): what run records store."""
    values = {}
    for field in dataclasses.fields(options):
        value = getattr(options, field.name)
        values.update(flat(value) if dataclasses.is_dataclass(value) else {field.name: value})
    return values
