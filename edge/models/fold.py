"""Weights -> the inference graph's layers, BatchNorm folded into the conv before it.

`fold_model` does it for any traceable torch classifier (torch.fx); `model_layers` lists the folded
model's convs and linear layers (named by module path, e.g. the homework's ``cnn.1.3``) as numpy.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx, nn

from edge.core.errors import CheckpointError

BN_EPS = 1e-5  # BatchNorm2d's default epsilon (`edge.prune.reconstruct` folds by hand with it)


@dataclass(frozen=True)
class FoldedLayer:
    """A conv (or the classifier, ``kind == 'fc'``) with its bias, ready for inference."""

    name: str
    kind: str  # "conv" | "fc"
    weight: np.ndarray
    bias: np.ndarray
    groups: int = 1


def fold_model(model: nn.Module) -> fx.GraphModule:
    """An eval-mode copy of any traceable classifier with every BatchNorm folded into the conv before it.

    Uses torch.fx (`torch.fx.experimental.optimization.fuse`), so StudentNet, the baselines and
    torchvision classifiers fold alike; parameter names are kept (``cnn.0.0.weight``,
    ``features.0.0.weight``). Every conv and linear layer gets a bias (zeros where it had none), so
    each layer of the exported graph is a weight plus a bias. ``model`` itself is not changed.
    """
    from torch.fx.experimental.optimization import fuse

    try:
        folded = fuse(copy.deepcopy(model).double().eval()).float()  # fold in float64, round once
    except Exception as err:  # fx raises many types for untraceable code
        raise CheckpointError(f"cannot trace {type(model).__name__} with torch.fx to fold its BatchNorms: "
                              f"{type(err).__name__}: {err}") from err
    for name, module in folded.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is None:
            module.bias = nn.Parameter(torch.zeros(module.weight.shape[0]))
        if isinstance(module, (nn.Conv2d, nn.Linear)) and not all(bool(p.isfinite().all()) for p in module.parameters()):
            raise CheckpointError(f"layer {name}: folding its BatchNorm gives weights beyond float32 (weight x "
                                  f"gamma / sqrt(running_var + eps) overflows): the model cannot be exported")
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
