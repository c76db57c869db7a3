"""Read model files of every kind a user may hold (`load_model`, `load_checkpoint`, `load_net`), and
write StudentNet weights.

`load_model` is the one reader of a model file, whatever it holds: it returns a `ModelFile`
(card, parameter and FLOP counts, where it came from, ``build()`` -> the torch module). A
StudentNet comes back as a `Checkpoint` (weights under the homework's names, numpy); an `edge
train` file of another architecture (the cnn / group baselines, a torchvision classifier) as
an `edge.io.netfile.NetFile`. `load_checkpoint` reads StudentNets only, for the commands that work on
StudentNet's layers (convert, sensitivity, slimming). StudentNet files come as:

- ours: ``torch.save`` of ``{"edge_checkpoint": 1, "card": ..., "state_dict": ...}``
- a homework state dict ``.bin`` (``torch.save``, zip or the old non-zip format)
- the homework's 8-bit pickle: name -> (min, max, uint8 array); 0-dim entries as floats
- the homework's 16-bit pickle: name -> float16 array

Torch files are read with ``torch.load(weights_only=True)`` and pickles with
`edge.core.safe_pickle`, so loading never runs code from a file. Weights come back as numpy
arrays under the homework's names (``cnn.{i}.{j}.*``, ``fc.0.*``); the config is read from
our files or inferred from tensor shapes (pool positions cannot be seen in shapes: they
default to the homework's and can be given).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from edge.codec.checksum import pickle_damage, seal_pickle
from edge.codec.quant import minmax_encode
from edge.core.config import HOMEWORK_POOLS, ModelCard, Preprocess, StudentConfig, default_classes
from edge.core.errors import CheckpointError
from edge.core.files import atomic_write
from edge.core.formats import sniff, sniff_file
from edge.core.safe_pickle import UnsafePickleError, safe_load_prefix
from edge.io.torch_files import (CHECKPOINT_KEY, NET_KEY, check_weights, model_file, onnx_not_weights, read_torch,
                                write_torch)

MAX_PICKLE_BYTES = 1 << 30  # a weights pickle is read whole; torch files are read by torch

if TYPE_CHECKING:
    from torch import nn

    from edge.io.netfile import NetFile


STAGE_KEY = re.compile(r"cnn\.(\d+)\.0\.weight$")  # a StudentNet stage's first conv


@runtime_checkable
class ModelFile(Protocol):
    """What every model file edge reads offers, whatever its architecture (`load_model`'s result).

    ``card``: the inputs (``card.preprocess``: size, colour, normalisation), the classes and the
    config (``config.in_channels`` / ``input_size`` / ``num_classes`` hold for every architecture;
    its widths and pools describe a StudentNet only). ``parameters``: trainable parameters of the
    unfolded model; ``flops``: multiply-accumulates x2 per image of its convolutions and linear
    layers (BatchNorm folded). ``source``: where the weights came from (``edge``, ``state-dict``,
    ``homework-8bit``, ``edge mobilenet_v3_small``, ...). ``build()``: a new torch module with the
    file's float weights, in eval mode. ``describe()``: the architecture in one line."""

    @property
    def card(self) -> ModelCard: ...

    @property
    def parameters(self) -> int: ...

    @property
    def flops(self) -> int: ...

    @property
    def source(self) -> str: ...

    def build(self) -> "nn.Module": ...

    def describe(self) -> str: ...


@dataclass
class Checkpoint:
    """A StudentNet: weights under the homework's names plus the card that describes them (a `ModelFile`)."""

    card: ModelCard
    state: dict[str, np.ndarray]
    source: str  # edge | state-dict | homework-8bit | homework-16bit
    pools_assumed: bool = False  # the homework's pool positions, neither given nor in the file

    @property
    def parameters(self) -> int:
        return self.card.config.num_parameters()

    @property
    def flops(self) -> int:
        return self.card.config.flops()

    def build(self) -> "nn.Module":
        """The StudentNet with these weights, in eval mode."""
        from edge.models.student import build_student

        return build_student(self.card.config, self.state)

    def describe(self) -> str:
        config = self.card.config
        assumed = " (assumed: not in the file)" if self.pools_assumed else ""
        return f"StudentNet widths {list(config.widths)}, pools {list(config.pools)}{assumed}"

    def with_pools(self, pools: tuple[int, ...], assumed: bool) -> "Checkpoint":
        """The same weights with max-pools after ``pools``."""
        config = dataclasses.replace(self.card.config, pools=pools)
        return dataclasses.replace(self, card=dataclasses.replace(self.card, config=config), pools_assumed=assumed)


def load_model(path: str | os.PathLike, pools: tuple[int, ...] | None = None,
               input_size: int | None = None) -> ModelFile:
    """Read any model file edge knows: a StudentNet (ours, the homework's .bin state dicts and 8-/16-bit
    pickles, a dw model file) as a `Checkpoint`, an `edge train` file of another architecture as an
    `edge.io.netfile.NetFile`, and so is a plain state dict of a torchvision classifier (recognised from
    its tensors, `edge.models.classifiers.recognise_classifier`; ``input_size`` sets its crop). ``pools``/
    ``input_size`` override what is inferred for a StudentNet. Never runs code from the file;
    anything else is a `CheckpointError` with one line saying why."""
    _refuse_auto_pools(path, pools)
    path, obj, source = _read_weights_object(path)
    if _net_arch(obj) not in (None, "dw"):
        from edge.io.netfile import net_from_dict

        if pools is not None or input_size is not None:
            raise CheckpointError(f"{path}: --pools / input size describe StudentNets; this {_net_arch(obj)} file "
                                  f"records its own shape")
        return net_from_dict(path, obj)
    if source == "state-dict" and isinstance(obj, dict) and not _has_student_stages(obj) and pools is None:
        from edge.io.netfile import net_from_state_dict

        net = net_from_state_dict(path, obj, input_size)
        if net is not None:
            return net
        _refuse_near_miss(path, obj)
    return _student_from(path, obj, source, pools, input_size)


def _refuse_auto_pools(path, pools) -> None:
    """``--pools auto`` needs photos to compare BatchNorm statistics on (`edge.inference.pools`): only readers
    given photos resolve it (`edge predict`); here it is refused."""
    if pools == "auto":
        raise CheckpointError(f"{path}: --pools auto compares BatchNorm statistics on photos the model will see: "
                              f"`edge predict` does it on its images; here give --pools I,J,..")


def _refuse_near_miss(path: Path, obj: dict) -> None:
    """A state dict that is nearly a torchvision classifier's (one tensor misshapen, missing or extra) is
    refused saying which, rather than as 'not a StudentNet'."""
    from edge.models.classifiers import near_miss

    if all(hasattr(v, "shape") for v in obj.values()):
        hint = near_miss(obj)
        if hint:
            raise CheckpointError(f"{path}: the tensors of a {hint}: not a model edge can build")


def _has_student_stages(obj: dict) -> bool:
    return any(isinstance(k, str) and STAGE_KEY.match(k) for k in obj)


def load_checkpoint(path: str | os.PathLike, pools: tuple[int, ...] | None = None,
                    input_size: int | None = None) -> Checkpoint:
    """Read a StudentNet from any supported file; ``pools``/``input_size`` override what is inferred.
    Files of other architectures are refused (with their arch named): read those with `load_model`."""
    _refuse_auto_pools(path, pools)
    path, obj, source = _read_weights_object(path)
    arch = _net_arch(obj)
    if arch not in (None, "dw"):
        check_weights(obj.get("state_dict") if isinstance(obj.get("state_dict"), dict) else {}, path)
        raise CheckpointError(f"{path}: an edge model file of arch {arch!r}, not a StudentNet: this command reads "
                              f"StudentNets (edge train --arch dw, edge distill, the homework's files)")
    if source == "state-dict" and isinstance(obj, dict) and not _has_student_stages(obj):
        from edge.models.classifiers import recognise_classifier

        found = recognise_classifier(obj) if all(hasattr(v, "shape") for v in obj.values()) else None
        if found:
            raise CheckpointError(f"{path}: a plain {found[0]} state dict, not a StudentNet: this command reads "
                                  f"StudentNets (export, predict and info read torchvision classifiers)")
    return _student_from(path, obj, source, pools, input_size)


def _read_weights_object(path: str | os.PathLike) -> tuple[Path, object, str | None]:
    """-> (path, what the file holds, its homework source or None): torch files through
    ``torch.load(weights_only=True)``, pickles through `edge.core.safe_pickle`; ONNX, empty, unknown
    and oversized files are refused with the reason."""
    path = model_file(path)
    try:
        with open(path, "rb") as f:  # read no more than the file holds (read(n) reserves n bytes first)
            data = f.read(min(os.fstat(f.fileno()).st_size, MAX_PICKLE_BYTES) + 1)
    except OSError as err:
        raise CheckpointError(f"{path}: cannot read ({err.strerror})") from None
    if not data:
        raise CheckpointError(f"{path}: file is empty")
    kind = sniff(data)
    if kind == "onnx":
        raise CheckpointError(f"{path}: {onnx_not_weights(path)}")
    if kind == "unknown":
        raise CheckpointError(f"{path}: not a weights file edge reads (a torch checkpoint or state dict, or the "
                              f"homework's 8-/16-bit pickle): its first bytes match none of them")
    if kind.startswith("torch"):
        return path, read_torch(path), "state-dict"
    if len(data) > MAX_PICKLE_BYTES:
        raise CheckpointError(f"{path}: refused: a weights pickle over {MAX_PICKLE_BYTES:,} bytes (the homework's "
                              f"are well under 1 MB)")
    return path, _pickle_load(path, data), None


def _net_arch(obj) -> str | None:
    """The architecture an `edge.models.registry` model file names (``?`` when damaged); None for other objects."""
    if not (isinstance(obj, dict) and obj.get(NET_KEY)):
        return None
    net = obj.get("net")
    return str(net.get("arch", "?")) if isinstance(net, dict) else "?"


def _student_from(path: Path, obj, source: str | None, pools, input_size) -> Checkpoint:
    if isinstance(obj, dict) and obj.get(CHECKPOINT_KEY):
        return _from_edge_dict(path, obj, pools, input_size)
    state, source = _to_numpy_state(path, obj, source)
    config = infer_config(state, pools=pools, input_size=input_size, origin=str(path))
    return Checkpoint(ModelCard(config, Preprocess(crop=config.input_size), default_classes(config.num_classes)),
                      state, source, pools_assumed=pools is None)


def _pickle_load(path: Path, data: bytes):
    try:
        obj, end = safe_load_prefix(data)
    except UnsafePickleError as err:
        raise CheckpointError(f"{path}: {err}") from None
    except Exception as err:
        raise CheckpointError(f"{path}: not a weights file we know (torch checkpoint, state dict, or the "
                              f"homework's 8-/16-bit pickle): {type(err).__name__}: {err}") from None
    damage = pickle_damage(data, end)
    if damage:
        raise CheckpointError(f"{path}: damaged pickle: {damage}; refused")
    return obj


def _to_numpy_state(path: Path, obj, source: str | None) -> tuple[dict[str, np.ndarray], str]:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of weights (tensor name -> tensor), found a "
                              f"{type(obj).__name__}")
    if not obj:
        raise CheckpointError(f"{path}: holds an empty dict: no weights")
    state, kinds = {}, set()
    for name, value in obj.items():
        try:
            state[name], kind = _to_array(value)
        except (TypeError, ValueError, OverflowError, MemoryError):
            state[name], kind = np.asarray(None), None
        kinds |= {kind} - {None}
        if state[name].dtype.kind not in "fiub":
            raise CheckpointError(f"{path}: entry {name!r} is not a tensor of numbers (found "
                                  f"{type(value).__name__}): not a weights file edge reads")
    if source is None:
        source = kinds.pop() if len(kinds) == 1 else "state-dict"
    check_weights(state, path)
    return {k: v.astype(np.int64) if k.endswith("num_batches_tracked") else v.astype(np.float32)
            for k, v in state.items()}, source


def _to_array(value) -> tuple[np.ndarray, str | None]:
    """One entry of a weights dict -> (numpy array, the homework format it shows, if any). Only
    arrays, tensors, numbers and the 8-bit (min, max, codes) triple are weights: a list is refused
    (nested lists sharing one object expand to any size)."""
    if isinstance(value, tuple) and len(value) == 3 and isinstance(value[2], np.ndarray):
        lo, hi, q = (float(v) if not isinstance(v, np.ndarray) else v for v in value)
        return (np.float64(q) / 255 * (hi - lo)) + lo, "homework-8bit"  # the homework's decode8, term for term
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy(), None
    if not isinstance(value, (np.ndarray, np.generic, int, float)):
        raise TypeError(type(value).__name__)
    array = np.asarray(value)
    return array, "homework-16bit" if array.dtype == np.float16 else None


def _from_edge_dict(path: Path, obj: dict, pools, input_size) -> Checkpoint:
    try:
        card = ModelCard.from_dict(obj["card"])
        state, _ = _to_numpy_state(path, obj["state_dict"], "edge")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: damaged edge checkpoint ({err})") from None
    if pools is not None or input_size is not None:
        config = card.config
        try:
            config = StudentConfig(config.widths, config.pools if pools is None else pools,
                                   config.input_size if input_size is None else input_size, config.num_classes,
                                   config.in_channels)
        except ValueError as err:
            raise CheckpointError(f"{path}: {err}") from None
        card = ModelCard(config, dataclasses.replace(card.preprocess, crop=config.input_size), card.classes)
    preprocess, config = card.preprocess, card.config
    if (len(preprocess.color), preprocess.crop) != (config.in_channels, config.input_size):
        raise CheckpointError(f"{path}: damaged edge checkpoint (its preprocessing makes {len(preprocess.color)}x"
                              f"{preprocess.crop}px inputs, its network takes {config.in_channels}x"
                              f"{config.input_size}px)")
    infer_config(state, pools=card.config.pools, input_size=card.config.input_size, origin=str(path))
    return Checkpoint(card, state, "edge")


def _not_stages(state: dict, stages: list[int]) -> str:
    """Why ``state`` (with StudentNet ``stages`` found) is no StudentNet, naming what it nearly is."""
    if stages:
        gap = min(set(range(max(stages) + 1)) - set(stages))
        return (f"its StudentNet stages skip cnn.{gap} (cnn.<i>.0.weight found for i in {stages}): a stage is "
                "missing or renamed")
    prefix = _shared_prefix(state)
    if prefix:
        from edge.models.classifiers import near_miss, recognise_classifier

        inner = {k[len(prefix):]: v for k, v in state.items()}
        found = recognise_classifier(inner)
        nearly = ("StudentNet" if any(STAGE_KEY.match(k) for k in inner) else found[0] if found else near_miss(inner))
        if nearly:
            return (f"the tensors of a {nearly}, each named under {prefix!r} (as DataParallel's 'module.' when saved "
                    f"from a wrapped model): save the unwrapped model's state_dict, or strip the prefix")
    return ("no consecutive cnn.<i>.0.weight stages found: not a StudentNet (nor a torchvision classifier edge "
            "recognises from its tensors)")


def _shared_prefix(state: dict) -> str | None:
    """The first name part every tensor name shares (``module.``), if any."""
    names = [k for k in state if isinstance(k, str)]
    prefix = names[0].split(".", 1)[0] + "." if names and "." in names[0] else None
    return prefix if prefix and len(names) == len(state) and all(k.startswith(prefix) for k in names) else None


def _shape(state: dict, key: str, origin: str) -> tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"{origin}: missing {key!r}: not a StudentNet state dict")
    return tuple(state[key].shape)


def infer_config(state: dict[str, np.ndarray], pools=None, input_size=None, origin="state dict") -> StudentConfig:
    """Read widths, depth, classes and input channels from tensor shapes, and check every tensor."""
    stages = sorted({int(m.group(1)) for k in state if (m := STAGE_KEY.match(k))})
    if not stages or stages != list(range(len(stages))):
        raise CheckpointError(f"{origin}: {_not_stages(state, stages)}")
    first = _shape(state, "cnn.0.0.weight", origin)
    if len(first) != 4 or first[2:] != (3, 3):
        raise CheckpointError(f"{origin}: cnn.0.0.weight has shape {first}, expected (C, in, 3, 3)")
    widths = [first[0]]
    for stage in stages[1:]:
        dw, pw = _shape(state, f"cnn.{stage}.0.weight", origin), _shape(state, f"cnn.{stage}.3.weight", origin)
        if dw != (widths[-1], 1, 3, 3) or pw[1:] != (widths[-1], 1, 1):
            raise CheckpointError(f"{origin}: stage {stage} shapes {dw} / {pw} do not follow a "
                                  f"{widths[-1]}-channel stage")
        widths.append(pw[0])
    fc = _shape(state, "fc.0.weight", origin)
    if len(fc) != 2 or fc[1] != widths[-1]:
        raise CheckpointError(f"{origin}: fc.0.weight has shape {fc}, expected (classes, {widths[-1]})")
    pools = HOMEWORK_POOLS if pools is None else tuple(pools)
    pools = tuple(p for p in pools if p < len(widths)) if pools == HOMEWORK_POOLS else pools
    try:
        config = StudentConfig(tuple(widths), pools, 256 if input_size is None else input_size, fc[0], first[1])
    except ValueError as err:
        raise CheckpointError(f"{origin}: {err}") from None
    _check_complete(state, config, origin)
    return config


def expected_shapes(config: StudentConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a StudentNet state dict and its shape (BN buffers included)."""
    shapes, channels = {}, config.in_channels
    for stage, width in enumerate(config.widths):
        conv = (width, channels, 3, 3) if stage == 0 else (channels, 1, 3, 3)
        bn = conv[0]
        shapes[f"cnn.{stage}.0.weight"], shapes[f"cnn.{stage}.0.bias"] = conv, (conv[0],)
        for part in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"cnn.{stage}.1.{part}"] = (bn,)
        shapes[f"cnn.{stage}.1.num_batches_tracked"] = ()
        if stage:
            shapes[f"cnn.{stage}.3.weight"], shapes[f"cnn.{stage}.3.bias"] = (width, channels, 1, 1), (width,)
        channels = width
    shapes["fc.0.weight"], shapes["fc.0.bias"] = (config.num_classes, channels), (config.num_classes,)
    return shapes


def _check_complete(state: dict, config: StudentConfig, origin: str) -> None:
    expected = expected_shapes(config)
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    extra = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} != {v}" for k, v in expected.items()
             if k in state and tuple(state[k].shape) != v and v]
    if missing or extra or wrong:
        raise CheckpointError(f"{origin}: not a StudentNet of widths {list(config.widths)}: "
                              f"missing {missing[:5]}, unexpected {extra[:5]}, wrong shapes {wrong[:5]}")


def save_checkpoint(path: str | os.PathLike, card: ModelCard, state: dict[str, np.ndarray], **extra) -> None:
    """Write our checkpoint (readable with ``torch.load(weights_only=True)``) atomically."""
    import torch

    payload = {CHECKPOINT_KEY: 1, "card": card.to_dict(),
               "state_dict": {k: torch.as_tensor(np.asarray(v)) for k, v in state.items()}, **extra}
    write_torch(path, payload)


def save_homework_pickle(path: str | os.PathLike, state: dict[str, np.ndarray], bits: int = 8) -> None:
    """Write the homework's 8-bit (or 16-bit) pickle, readable by the homework's own decoder."""
    if bits not in (8, 16):
        raise ValueError("the homework's pickle formats are 8-bit and 16-bit")
    out = {}
    for name, value in state.items():
        value = np.float64(value)
        if not isinstance(value, np.ndarray):
            out[name] = value
        elif bits == 16:
            out[name] = np.float16(value)
        else:
            code = minmax_encode(value, bits=8)
            out[name] = (np.float64(code.lo), np.float64(code.hi), code.q)
    atomic_write(path, lambda f: f.write(seal_pickle(pickle.dumps(out))))  # pickle.load reads up to the seal


def load_net(path: str | os.PathLike, contents: bytes | None = None) -> "NetFile":
    """Our model file of any arch, or anything `load_checkpoint` reads as a StudentNet (edge
    checkpoints, the homework's .bin and pickles) as a ``dw`` net. ``contents``: the file's bytes,
    already read (e.g. sent by another process); then only our own model files are read."""
    import torch

    from edge.io.netfile import NetFile, net_from_dict
    from edge.models.registry import NetSpec

    path = Path(path)
    obj = _read_torch(path, contents)
    if isinstance(obj, dict) and obj.get(NET_KEY):
        return net_from_dict(path, obj)
    if contents is not None:
        raise CheckpointError(f"{path}: not an edge model file")
    ckpt = load_checkpoint(path)
    state = {k: torch.from_numpy(np.array(v, order="C")) for k, v in ckpt.state.items()}
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


def init_checkpoint(config: StudentConfig | None = None, seed: int = 0):
    """A freshly initialised StudentNet (torch's default init, seeded) as a `Checkpoint`."""
    import torch

    from edge.models.student import StudentNet, state_to_numpy

    config = config or StudentConfig()
    torch.manual_seed(seed)
    model = StudentNet(config)
    card = ModelCard(config, Preprocess(crop=config.input_size), default_classes(config.num_classes))
    return Checkpoint(card, state_to_numpy(model), f"initialised (seed {seed})")
