"""What `edge train`, `edge distill`, `edge slim` and `edge compress` were asked, as frozen dataclasses.

The CLI builds one of `TrainOptions`, `DistillOptions`, `SlimOptions` or `CompressOptions` (with
its `SearchSettings`) from click's parameters (`from_click`) and hands it to the command
(`edge.workflows.runs`, `edge.workflows.compress`); the option groups the commands share (`DataOptions`, `LoopOptions`, `KDOptions`, `ShapeOptions`,
`RunFileOptions`) are composed, not repeated. Field names are the click parameter names, so the
CLI and these classes cannot drift apart: `from_click` refuses a parameter no field takes.
Constructors are keyword-only; the Python API builds them directly.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path

from edge.core.config import ConfigError


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

    def __post_init__(self):
        numbers = {"--lr": self.lr, "--temperature": self.temperature, "--ridge": self.ridge,
                   "--budget-minutes": self.budget_minutes, "--step": self.step, "--min-keep": self.min_keep}
        not_finite = [name for name, value in numbers.items() if not math.isfinite(value)]
        if not_finite:
            raise ConfigError(f"{', '.join(not_finite)} must be finite numbers (a NaN or infinity trains nothing "
                              f"and cannot be resumed)")
        if self.temperature <= 0 or self.ridge < 0 or self.budget_minutes <= 0:
            raise ConfigError("--temperature and --budget-minutes must be positive, --ridge at least 0")
        if self.target_bytes < 1 or self.epochs < 1 or self.batch < 2 or self.lr <= 0:
            raise ConfigError("target bytes, epochs and learning rate must be positive, batch at least 2")
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
