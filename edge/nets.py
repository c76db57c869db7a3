"""Every network a training run can build, by name, and the model files that carry them.

``NetSpec`` = an architecture name plus a `StudentConfig` for its shape: ``dw`` is the StudentNet
family (the one `edge export` ships), ``cnn`` / ``group`` the baselines of `edge.baselines`,
any other name a torchvision classifier (`edge.teacher`), which uses only the config's input
channels, classes and input size.

A model file is ``torch.save`` of plain data (loadable with ``weights_only=True``): the spec,
preprocessing, class names, state dict and, during training, the run's state. A ``dw`` file is
also an edge checkpoint (card + homework-named weights), so `edge export`, `predict` and
`info` read it as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.checkpoints import CHECKPOINT_KEY, NET_KEY, CheckpointError, check_finite, load_checkpoint, read_torch
from edge.config import ConfigError, ModelCard, Preprocess, StudentConfig
from edge.files import atomic_write
from edge.formats import sniff, sniff_file

STUDENT_ARCHS = ("dw", "cnn", "group")


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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class NetFile:
    spec: NetSpec
    preprocess: Preprocess
    classes: tuple[str, ...]
    state: dict[str, torch.Tensor]
    extra: dict = field(default_factory=dict)

    def build(self) -> nn.Module:
        """The module with these weights, in eval mode."""
        model = build_net(self.spec)
        model.load_state_dict(self.state)
        return model.eval()

    @property
    def card(self) -> ModelCard:
        return ModelCard(self.spec.config, self.preprocess, self.classes)


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
        try:
            spec = NetSpec.from_dict(obj["net"])
            known = (NET_KEY, CHECKPOINT_KEY, "net", "preprocess", "classes", "state_dict", "card")
            extra = {k: v for k, v in obj.items() if k not in known}
            net = NetFile(spec, Preprocess.from_dict(obj["preprocess"]), tuple(obj["classes"]), obj["state_dict"],
                          extra)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: damaged edge model file ({err})") from None
        check_finite(net.state, path)
        return net
    if contents is not None:
        raise CheckpointError(f"{path}: not an edge model file")
    ckpt = load_checkpoint(path)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in ckpt.state.items()}
    return NetFile(NetSpec("dw", ckpt.card.config), ckpt.card.preprocess, ckpt.card.classes, state)


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
