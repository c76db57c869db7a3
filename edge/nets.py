"""Every network a training run can build, by name, and the model files that carry them.

``NetSpec`` = an architecture name plus a `StudentConfig` for its shape: ``dw`` is the StudentNet
family (the one `edge export` ships), ``cnn`` / ``group`` the baselines of `edge.baselines`,
any other name a torchvision classifier (`edge.teacher`), which uses only the config's input
channels, classes and input size.

A model file is ``torch.save`` of plain data (loadable with ``weights_only=True``): the spec,
preprocessing, class names, state dict and, during training, the run's state. `NetFile` is such a
file in memory, and an `edge.checkpoints.ModelFile` (`edge.checkpoints.load_model` returns it for
every architecture but ``dw``). A ``dw`` file is also an edge checkpoint (card + homework-named
weights), so every StudentNet reader reads it as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.checkpoints import CHECKPOINT_KEY, NET_KEY, CheckpointError, check_weights, load_checkpoint, read_torch
from edge.config import ConfigError, ModelCard, Preprocess, StudentConfig, default_classes
from edge.files import atomic_write
from edge.formats import sniff, sniff_file

STUDENT_ARCHS = ("dw", "cnn", "group")
MAX_PARAMETERS = 1 << 30  # 4 GiB of float32 weights (resnet152 has 60M, vit_h_14 632M)


@dataclass(frozen=True)
class NetSpec:
    arch: str = "dw"
    config: StudentConfig = field(default_factory=StudentConfig)
    groups: int = 1

    def to_dict(self) -> dict:
        return {"arch": self.arch, "config": self.config.to_dict(), "groups": self.groups}

    @classmethod
    def from_dict(cls, data: dict) -> "NetSpec":
        return cls(data["arch"], StudentConfig.from_dict(data["config"]), int(data.get("groups", 1)))

    def describe(self) -> str:
        if self.arch in STUDENT_ARCHS:
            groups = f", groups {self.groups}" if self.arch == "group" else ""
            return f"{self.arch} widths {list(self.config.widths)}{groups}"
        return f"{self.arch} ({self.config.num_classes} classes, {self.config.in_channels} input channels)"


def build_net(spec: NetSpec) -> nn.Module:
    """A freshly initialised module for ``spec`` (torch's default init under the current seed)."""
    if spec.arch == "dw":
        from edge.models import StudentNet

        return StudentNet(spec.config)
    if spec.arch in ("cnn", "group"):
        from edge.baselines import ConvNet

        return ConvNet(spec.config, spec.groups)
    from edge.teacher import torchvision_classifier

    return torchvision_classifier(spec.arch, spec.config.num_classes, spec.config.in_channels)


def check_runs(spec: NetSpec, origin) -> None:
    """``spec``'s network can be built and runs on its input size: one pass on torch's ``meta`` device
    (shapes only, no memory). Torchvision architectures have their own minimum (inception_v3 needs 75 px;
    vit_b_16 takes 224 px only), and --widths 100000,100000 would allocate 40 GB: a `ConfigError` naming
    the cause otherwise, not a traceback mid-run."""
    size = spec.config.input_size
    try:
        with torch.device("meta"):
            model = build_net(spec).eval()
    except NotImplementedError:  # an init that reads values (regnet): not checkable without memory
        return
    try:
        with torch.device("meta"):
            model(torch.zeros(1, spec.config.in_channels, size, size))
    except (RuntimeError, ValueError, AssertionError, IndexError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"{origin}: {spec.arch} cannot run on {size}x{size}-pixel inputs ({reason}): choose "
                          f"another --input-size") from None
    if count_parameters(model) > MAX_PARAMETERS:
        raise ConfigError(f"{origin}: {spec.describe()} has {count_parameters(model):,} parameters, over the "
                          f"{MAX_PARAMETERS:,} edge builds: choose smaller --widths")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, in_channels: int, size: int) -> int:
    """Multiply-accumulates x2 of every Conv2d and Linear in one forward pass of a ``size`` x ``size``
    image (BatchNorm, activations and pooling not counted: what is left once BatchNorm is folded,
    as `StudentConfig.flops` counts). The pass runs on whatever device ``model`` is on (``meta``
    computes nothing)."""
    total = 0

    def count(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output[0].numel() * module.in_channels // module.groups * kernel
        else:
            total += output[0].numel() * module.in_features
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_channels, size, size, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return 2 * total


@dataclass
class NetFile:
    spec: NetSpec
    preprocess: Preprocess
    classes: tuple[str, ...]
    state: dict[str, torch.Tensor]
    extra: dict = field(default_factory=dict)
    origin: str = "edge"  # edge (a model file we wrote) | state-dict (a plain torchvision state dict)

    def build(self) -> nn.Module:
        """The module with these weights, in eval mode."""
        model = build_net(self.spec)
        model.load_state_dict(self.state)
        return model.eval()

    @property
    def card(self) -> ModelCard:
        return ModelCard(self.spec.config, self.preprocess, self.classes)

    @property
    def source(self) -> str:
        return f"{self.origin} {self.spec.arch}"

    @property
    def parameters(self) -> int:
        return count_parameters(self._shape_only())

    @property
    def flops(self) -> int:
        return count_flops(self._shape_only(), len(self.preprocess.color), self.preprocess.crop)

    def describe(self) -> str:
        return self.spec.describe()

    def _shape_only(self) -> nn.Module:
        """The architecture on torch's ``meta`` device: shapes without memory or arithmetic."""
        with torch.device("meta"):
            return build_net(self.spec)


def save_net(path: str | os.PathLike, net: NetFile) -> None:
    """Write ``net`` atomically; a ``dw`` file is also an edge checkpoint `load_checkpoint` reads."""
    payload = {NET_KEY: 1, "net": net.spec.to_dict(), "preprocess": net.preprocess.to_dict(),
               "classes": list(net.classes), "state_dict": {k: v.detach().cpu() for k, v in net.state.items()},
               **net.extra}
    if net.spec.arch == "dw":
        payload.update({CHECKPOINT_KEY: 1, "card": net.card.to_dict()})
    atomic_write(path, lambda f: torch.save(payload, f))


def load_net(path: str | os.PathLike, contents: bytes | None = None) -> NetFile:
    """Our model file of any arch, or anything `load_checkpoint` reads as a StudentNet (edge
    checkpoints, the homework's .bin and pickles) as a ``dw`` net. ``contents``: the file's bytes,
    already read (e.g. sent by another process); then only our own model files are read."""
    path = Path(path)
    obj = _read_torch(path, contents)
    if isinstance(obj, dict) and obj.get(NET_KEY):
        return net_from_dict(path, obj)
    if contents is not None:
        raise CheckpointError(f"{path}: not an edge model file")
    ckpt = load_checkpoint(path)
    state = {k: torch.from_numpy(np.array(v, order="C")) for k, v in ckpt.state.items()}
    return NetFile(NetSpec("dw", ckpt.card.config), ckpt.card.preprocess, ckpt.card.classes, state)


def net_from_dict(path: Path, obj: dict) -> NetFile:
    """The `NetFile` in ``obj`` (what ``torch.load(weights_only=True)`` read from ``path``), checked:
    every part present and well-formed, weights finite and fitting the architecture."""
    try:
        spec = NetSpec.from_dict(obj["net"])
        known = (NET_KEY, CHECKPOINT_KEY, "net", "preprocess", "classes", "state_dict", "card")
        extra = {k: v for k, v in obj.items() if k not in known}
        net = NetFile(spec, Preprocess.from_dict(obj["preprocess"]), tuple(obj["classes"]), obj["state_dict"], extra)
        ModelCard(spec.config, net.preprocess, net.classes)  # one class name per output
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(f"{path}: damaged edge model file ({err})") from None
    check_weights(net.state, path)
    _check_fits(path, net)
    check_runs(net.spec, path)
    return net


def net_from_state_dict(path: Path, state: dict, input_size: int | None = None) -> NetFile | None:
    """A plain ``torch.save(model.state_dict())`` of a torchvision classifier (`edge.teacher.
    recognise_classifier` names it from its tensors) as a `NetFile`, with the homework's
    preprocessing (a ``input_size`` centre crop, default 256, no normalisation: the file does not
    say how it was trained); None when the tensors are no recognised classifier's."""
    from edge.teacher import recognise_classifier

    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        return None
    found = recognise_classifier(state)
    if found is None:
        return None
    arch, classes, channels = found
    if channels not in (1, 3):
        raise CheckpointError(f"{path}: a {arch} whose first conv takes {channels} channels: edge feeds models "
                              f"grey (1) or RGB (3) images")
    crop = Preprocess().crop if input_size is None else input_size
    try:
        config = StudentConfig(input_size=crop, num_classes=classes, in_channels=channels)
        preprocess = Preprocess(crop=crop, color="L" if channels == 1 else "RGB", mean=(0.0,) * channels,
                                std=(1.0,) * channels)
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None
    net = NetFile(NetSpec(arch, config), preprocess, default_classes(classes), dict(state),
                  origin="state-dict")
    check_weights(net.state, path)
    check_runs(net.spec, path)
    return net


def _check_fits(path: Path, net: NetFile) -> None:
    """Every tensor of the file is one of the architecture's, with its shape (and none is missing)."""
    if not isinstance(net.state, dict) or not all(isinstance(v, torch.Tensor) for v in net.state.values()):
        raise CheckpointError(f"{path}: damaged edge model file (its state dict is not name -> tensor)")
    try:
        expected = {k: tuple(v.shape) for k, v in net._shape_only().state_dict().items()}
    except (CheckpointError, ConfigError, ValueError, TypeError) as err:
        raise CheckpointError(f"{path}: damaged edge model file ({err})") from None
    missing = [k for k in expected if k not in net.state]
    wrong = [f"{k} {tuple(v.shape)} != {expected[k]}" for k, v in net.state.items()
             if k not in expected or tuple(v.shape) != expected[k]]
    if missing or wrong:
        raise CheckpointError(f"{path}: weights do not fit a {net.spec.describe()}: missing {missing[:3]}, "
                              f"unexpected or misshapen {wrong[:3]}")


def _read_torch(path: Path, contents: bytes | None = None):
    """``torch.load(weights_only=True)`` of a zip-format file (or its ``contents``), else None (let
    other readers try)."""
    try:
        if (sniff(contents) if contents is not None else sniff_file(path)) != "torch-zip":
            return None
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    return read_torch(path, contents)


def check_compatible(a: NetFile | ModelCard, b: NetFile | ModelCard, what: str) -> None:
    """Two models that must see the same inputs and predict the same classes (teacher, student)."""
    if a.preprocess != b.preprocess:
        raise ConfigError(f"{what}: preprocessing differs ({a.preprocess} vs {b.preprocess})")
    if len(a.classes) != len(b.classes):
        raise ConfigError(f"{what}: {len(a.classes)} vs {len(b.classes)} classes")
