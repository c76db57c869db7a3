"""edge's model files of any architecture (`NetFile`), and loading a torchvision classifier's weights.

A model file is ``torch.save`` of plain data (loadable with ``weights_only=True``): the spec,
preprocessing, class names, state dict and, during training, the run's state. `NetFile` is such a
file in memory, and an `edge.io.checkpoints.ModelFile` (`edge.io.checkpoints.load_model` returns it for
every architecture but ``dw``). A ``dw`` file is also an edge checkpoint (card + homework-named
weights), so every StudentNet reader reads it as it is.

A teacher's weights (`load_classifier_weights`) come from our model file, a plain state dict of that
classifier (the homework's ``teacher_resnet18.bin``: ``torch.save(resnet18(num_classes=11).state_dict())``),
or torchvision's ImageNet weights. Nothing is downloaded: ``imagenet`` means the file torchvision would
have cached (``~/.cache/torch/hub/checkpoints``), or pass its path. ImageNet weights lose their
1000-class head (re-initialised for our classes); for one-channel inputs the first conv's RGB filters
are summed, which is what a grey image repeated on three channels would see.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from edge.core.config import ConfigError, ModelCard, Preprocess, StudentConfig, default_classes
from edge.core.errors import CheckpointError
from edge.io.torch_files import CHECKPOINT_KEY, NET_KEY, check_weights, read_torch, write_torch
from edge.models.classifiers import first_conv
from edge.models.registry import NetSpec, build_net, check_runs, count_flops, count_parameters


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
    write_torch(path, payload)


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
    """A plain ``torch.save(model.state_dict())`` of a torchvision classifier (`edge.models.classifiers.
    recognise_classifier` names it from its tensors) as a `NetFile`, with the homework's
    preprocessing (a ``input_size`` centre crop, default 256, no normalisation: the file does not
    say how it was trained); None when the tensors are no recognised classifier's."""
    from edge.models.classifiers import recognise_classifier

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


def check_compatible(a: NetFile | ModelCard, b: NetFile | ModelCard, what: str) -> None:
    """Two models that must see the same inputs and predict the same classes (teacher, student)."""
    if a.preprocess != b.preprocess:
        raise ConfigError(f"{what}: preprocessing differs ({a.preprocess} vs {b.preprocess})")
    if len(a.classes) != len(b.classes):
        raise ConfigError(f"{what}: {len(a.classes)} vs {len(b.classes)} classes")


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
    first = first_conv(model)[0] + ".weight"
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
