"""Torchvision classifiers by name (teachers, resnet18 by default; any ``--arch`` edge does not build itself).

`recognise_classifier` names the architecture of a plain state dict from its tensors alone, so
`edge.io.checkpoints.load_model` reads such a file as it is; `near_miss` names the one a damaged
state dict nearly is. Loading their weights (our files, plain state dicts, ImageNet's):
`edge.io.netfile.load_classifier_weights`.
"""

from __future__ import annotations

import torch
from torch import nn

from edge.core.errors import CheckpointError


def torchvision_classifier(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """``torchvision.models.<name>(num_classes=...)``, its first conv taking ``in_channels``."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        examples = ", ".join(n for n in names if n.startswith(("resnet", "mobilenet", "efficientnet")))
        raise CheckpointError(f"unknown architecture {name!r}: use dw, cnn, group or a torchvision classifier "
                              f"({examples}, ...)")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if getattr(model, "aux_logits", False):  # googlenet, inception_v3: in training they return a tuple with the
        model.aux_logits = False             # auxiliary heads' logits; edge trains the main head (aux kept: same weights)
    if in_channels != 3:
        _set_input_channels(model, in_channels)
    return model


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    return next((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))


# Architectures a plain state dict is recognised as (`recognise_classifier`): the common small
# classifiers users bring; each is built on the meta device (shapes only) to compare.
RECOGNISED_ARCHS = ("resnet18", "resnet34", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2",
                    "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "efficientnet_b1",
                    "efficientnet_b2", "efficientnet_b3", "mnasnet0_5", "mnasnet1_0", "shufflenet_v2_x0_5",
                    "shufflenet_v2_x1_0", "squeezenet1_0", "squeezenet1_1", "densenet121", "googlenet", "vgg11_bn",
                    "vgg16", "alexnet", "convnext_tiny")
_PROBE_CLASSES = 7919  # a class count no real layer width equals: marks the head's tensors


def _shapes(name: str, num_classes: int, in_channels: int = 3) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = torchvision_classifier(name, num_classes, in_channels)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def recognise_classifier(state: dict) -> tuple[str, int, int] | None:
    """(torchvision name, classes, input channels) of the `RECOGNISED_ARCHS` classifier whose tensors
    are exactly ``state``'s, names and shapes; None when none is."""
    import warnings

    keys = set(state)
    for name in RECOGNISED_ARCHS:
        with warnings.catch_warnings():  # googlenet/inception warn about their default init
            warnings.simplefilter("ignore")
            probe = _shapes(name, _PROBE_CLASSES)
            if set(probe) != keys:
                continue
            head = next(k for k, shape in probe.items() if shape and shape[0] == _PROBE_CLASSES)
            first = next(k for k, shape in probe.items() if len(shape) == 4)
            classes, channels = int(state[head].shape[0]), int(state[first].shape[1])
            expected = _shapes(name, classes, channels)
        if all(tuple(state[k].shape) == shape for k, shape in expected.items()):
            return name, classes, channels
    return None


def near_miss(state: dict) -> str | None:
    """For a state dict no `RECOGNISED_ARCHS` classifier matches exactly: the one holding at least 90% of its
    tensor names, and what differs (missing, unexpected, misshapen tensors); None when none is that close."""
    import warnings

    keys = set(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        probes = {name: _shapes(name, _PROBE_CLASSES) for name in RECOGNISED_ARCHS}
    name, probe = max(probes.items(), key=lambda item: len(keys & set(item[1])) / len(item[1]))
    if len(keys & set(probe)) < 0.9 * len(probe):
        return None
    first = next(k for k, shape in probe.items() if len(shape) == 4)
    shown = {k: "(" + ", ".join("classes" if d == _PROBE_CLASSES else str(d) for d in shape) + ")"
             for k, shape in probe.items()}
    wrong = [f"{k} {tuple(state[k].shape)} != {shown[k]}" for k in probe
             if k in keys and k != first and not _fits(tuple(state[k].shape), probe[k])]
    differences = [f"{what} {names[:3]}" for what, names in (("missing", sorted(set(probe) - keys)),
                                                            ("unexpected", sorted(keys - set(probe))),
                                                            ("misshapen", wrong)) if names]
    return f"{name} except: " + (", ".join(differences) or "shapes that disagree with one another (class counts)")


def _fits(shape: tuple, probe: tuple) -> bool:
    """A tensor's shape against a probe's, its class count free."""
    return len(shape) == len(probe) and all(p == _PROBE_CLASSES or s == p for s, p in zip(shape, probe))


def _set_input_channels(model: nn.Module, channels: int) -> None:
    name, conv = first_conv(model)
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups if conv.groups == 1 else channels, conv.bias is not None)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)
