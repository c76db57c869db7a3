"""Teachers: any torchvision classifier by name (resnet18 by default), with its weights.

`recognise_classifier` names the architecture of a plain state dict from its tensors alone, so
`edge.checkpoints.load_model` reads such a file as it is. Weights come from our model file (a
teacher `edge train` wrote), a plain state dict of that classifier (the homework's ``teacher_resnet18.bin``: ``torch.save(resnet18(num_classes=11)
.state_dict())``), or torchvision's ImageNet weights. Nothing is downloaded: ``imagenet`` means
the file torchvision would have cached (``~/.cache/torch/hub/checkpoints``), or pass its path.
ImageNet weights lose their 1000-class head (re-initialised for our classes); for one-channel
inputs the first conv's RGB filters are summed, which is what a grey image repeated on three
channels would see.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from edge.checkpoints import CheckpointError, check_weights, read_torch


def torchvision_classifier(name: str, num_classes: int, in_channels: int = 3) -> nn.Module:
    """``torchvision.models.<name>(num_classes=...)``, its first conv taking ``in_channels``."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        examples = ", ".join(n for n in names if n.startswith(("resnet", "mobilenet", "efficientnet")))
        raise CheckpointError(f"unknown architecture {name!r}: use dw, cnn, group or a torchvision classifier "
                              f"({examples}, ...)")
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _set_input_channels(model, in_channels)
    return model


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
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
    wrong = [f"{k} {tuple(state[k].shape)} != {shown[k]}" for k in probe if k in keys and k != first and (
             len(state[k].shape) != len(probe[k]) or _PROBE_CLASSES not in probe[k] and tuple(state[k].shape) != probe[k])]
    return (f"{name} except: missing {sorted(set(probe) - keys)[:3]}, unexpected {sorted(keys - set(probe))[:3]}, "
            f"misshapen {wrong[:3]}")


def _set_input_channels(model: nn.Module, channels: int) -> None:
    name, conv = _first_conv(model)
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups if conv.groups == 1 else channels, conv.bias is not None)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)


def imagenet_weights_path(name: str) -> Path:
    """Where torchvision keeps ``name``'s ImageNet weights once downloaded; a clear error if absent."""
    import torchvision

    try:
        url = torchvision.models.get_model_weights(name).DEFAULT.url
    except (ValueError, AttributeError):
        raise CheckpointError(f"torchvision has no ImageNet weights for {name!r}") from None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    if not path.exists():
        raise CheckpointError(f"ImageNet weights for {name} are not on this machine (nothing is downloaded): "
                              f"fetch {url} yourself and pass its path, or place it at {path}")
    return path


def load_classifier_weights(model: nn.Module, source: str | os.PathLike, name: str) -> list[str]:
    """Load a state dict into ``model`` from a path (or ``imagenet``); return the keys left at their
    initialisation (a different head). Fails unless nearly every tensor fits."""
    path = imagenet_weights_path(name) if str(source) == "imagenet" else Path(source)
    state = read_torch(path)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "shape") for v in state.values()):
        raise CheckpointError(f"{path}: not a state dict (tensor name -> tensor)")
    check_weights(state, path)
    own = model.state_dict()
    first = _first_conv(model)[0] + ".weight"
    fitted, skipped = {}, []
    for key, value in state.items():
        if key == first and key in own and value.dim() == 4 and own[key].shape[1] == 1 and value.shape[1] == 3:
            value = value.sum(1, keepdim=True)
        if key in own and tuple(value.shape) == tuple(own[key].shape):
            fitted[key] = value
        else:
            skipped.append(key)
    missing = [k for k in own if k not in fitted]
    if len(fitted) < 0.9 * len(own):
        raise CheckpointError(f"{path}: not weights of a {name}: only {len(fitted)} of {len(own)} tensors fit "
                              f"(e.g. missing {missing[:3]}, unexpected {skipped[:3]})")
    model.load_state_dict(fitted, strict=False)
    return missing
