"""Weights -> the inference graph's layers, BatchNorm folded into the conv before it.

`fold_model` / `model_layers` do it for any traceable torch classifier (torch.fx); `fold_student`
and `fold_convnet` do it in numpy for a StudentNet / baseline state dict (layer names follow the
homework's keys).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn

from edge.checkpoints import CheckpointError
from edge.config import StudentConfig

BN_EPS = 1e-5


@dataclass(frozen=True)
class FoldedLayer:
    """A conv (or the classifier, ``kind == 'fc'``) with its bias, ready for inference."""

    name: str
    kind: str  # "conv" | "fc"
    weight: np.ndarray
    bias: np.ndarray
    groups: int = 1
    relu6: bool = False
    pool_after: bool = False


def _fold_bn(state: dict, conv: str, bn: str) -> tuple[np.ndarray, np.ndarray]:
    w = state[f"{conv}.weight"].astype(np.float64)
    b = state[f"{conv}.bias"].astype(np.float64)
    scale = state[f"{bn}.weight"].astype(np.float64) / np.sqrt(state[f"{bn}.running_var"].astype(np.float64) + BN_EPS)
    shift = state[f"{bn}.bias"].astype(np.float64) - state[f"{bn}.running_mean"].astype(np.float64) * scale
    return (w * scale[:, None, None, None]).astype(np.float32), (b * scale + shift).astype(np.float32)


def _classifier(state: dict) -> FoldedLayer:
    return FoldedLayer("fc.0", "fc", state["fc.0.weight"].astype(np.float32), state["fc.0.bias"].astype(np.float32))


def fold_student(config: StudentConfig, state: dict[str, np.ndarray]) -> list[FoldedLayer]:
    """Fold each stage's BatchNorm into the conv in front of it; pointwise convs keep their own bias."""
    layers = []
    for stage in range(config.depth):
        pool = stage in config.pools
        w, b = _fold_bn(state, f"cnn.{stage}.0", f"cnn.{stage}.1")
        if stage == 0:
            layers.append(FoldedLayer("cnn.0.0", "conv", w, b, relu6=True, pool_after=pool))
            continue
        layers.append(FoldedLayer(f"cnn.{stage}.0", "conv", w, b, groups=w.shape[0], relu6=True))
        layers.append(FoldedLayer(f"cnn.{stage}.3", "conv", state[f"cnn.{stage}.3.weight"].astype(np.float32),
                                  state[f"cnn.{stage}.3.bias"].astype(np.float32), pool_after=pool))
    layers.append(_classifier(state))
    return layers


def fold_convnet(config: StudentConfig, groups: int, state: dict[str, np.ndarray]) -> list[FoldedLayer]:
    """The same for an `edge.baselines.ConvNet`: every stage is one 3x3 conv (grouped after stage 0)
    with its BatchNorm folded in. Its channel shuffles are not layers: `edge.export.generic` adds them."""
    layers = []
    for stage in range(config.depth):
        w, b = _fold_bn(state, f"cnn.{stage}.0", f"cnn.{stage}.1")
        layers.append(FoldedLayer(f"cnn.{stage}.0", "conv", w, b, groups=groups if stage else 1, relu6=True,
                                  pool_after=stage in config.pools))
    layers.append(_classifier(state))
    return layers


def fold_model(model: nn.Module) -> fx.GraphModule:
    """An eval-mode copy of any traceable classifier with every BatchNorm folded into the conv before it.

    Uses torch.fx (`torch.fx.experimental.optimization.fuse`), so StudentNet, the baselines and
    torchvision classifiers fold alike; parameter names are kept (``cnn.0.0.weight``,
    ``features.0.0.weight``). Every conv and linear layer gets a bias (zeros where it had none), so
    each layer of the exported graph is a weight plus a bias. ``model`` itself is not changed.
    """
    from torch.fx.experimental.optimization import fuse

    try:
        folded = fuse(copy.deepcopy(model).eval())
    except Exception as err:  # fx raises many types for untraceable code
        raise CheckpointError(f"cannot trace {type(model).__name__} with torch.fx to fold its BatchNorms: "
                              f"{type(err).__name__}: {err}") from err
    for module in folded.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is None:
            module.bias = nn.Parameter(torch.zeros(module.weight.shape[0]))
    return folded


def model_layers(folded: fx.GraphModule) -> list[FoldedLayer]:
    """The convs and linear layers of a `fold_model` result, in the order the forward pass runs them,
    named by module path (a module called twice is listed once)."""
    layers, seen = [], set()
    for node in folded.graph.nodes:
        if node.op != "call_module" or node.target in seen:
            continue
        module = folded.get_submodule(node.target)
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            seen.add(node.target)
            layers.append(FoldedLayer(node.target, "conv" if isinstance(module, nn.Conv2d) else "fc",
                                      module.weight.detach().numpy().copy(), module.bias.detach().numpy().copy(),
                                      groups=getattr(module, "groups", 1)))
    return layers
