"""Every network edge can build, by architecture name: the registry behind ``--arch``.

``NetSpec`` = an architecture name plus a `StudentConfig` for its shape: ``dw`` is the StudentNet
family (the one `edge export` ships), ``cnn`` / ``group`` the baselines of `edge.models.baselines`,
any other name a torchvision classifier (`edge.models.classifiers`), which uses only the config's input
channels, classes and input size. Model files that carry a spec: `edge.io.netfile`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from edge.core.config import ConfigError, StudentConfig
from edge.core.registry import Registry

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


TORCHVISION = "torchvision"  # the builder of every arch not registered by its own name
_BUILDERS = Registry("arch", "edge/models/__init__.py")


def register_arch(*names: str):
    """Register the decorated ``builder(spec) -> module`` under each of ``names`` (`edge.models` registers
    every architecture's builder when the package is imported)."""
    return _BUILDERS.register(*names)


def build_net(spec: NetSpec) -> nn.Module:
    """A freshly initialised module for ``spec`` (torch's default init under the current seed)."""
    return _BUILDERS.get(spec.arch, _BUILDERS[TORCHVISION])(spec)


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


