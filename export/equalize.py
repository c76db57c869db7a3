"""Cross-layer equalization of a folded torch classifier (Nagel et al., "Data-Free Quantization", ICCV 2019).

After BatchNorm folding, the output channels of a layer can span ranges hundreds of times apart, and
one per-tensor min-max grid then wastes most of its levels on a few wide channels. Scaling output
channel ``c`` of a layer by ``1 / s_c`` and the matching input channel of the next layer by ``s_c``
leaves the network's function unchanged whenever everything between them commutes with a positive
per-channel scale, ``f(x * s) == f(x) * s``. The pairs are read from the model's fx graph: a conv or
linear layer whose output feeds only the next conv or linear layer through ReLU, leaky ReLU,
max/average pooling, zero padding, dropout (eval) or a flatten of a 1x1 map (`equalization_pairs`).
ReLU6, hardswish and other clipping activations do not commute (they clip at a fixed 6), and a
residual add or concat lets the output reach more than one layer: such pairs are left alone. In a
StudentNet that leaves each pointwise conv with the next stage's depthwise conv (through its max-pool)
and the last one with the classifier (through global average pooling). The equalized model is the
same function in float; only its quantization error changes, and it costs no bytes.

The scales: ``s_c = r1_c^(1 - b) / r2_c^b`` for channel ranges ``r1`` (first layer's rows) and ``r2``
(second layer's input channels) leaves the first layer's rows spanning ``(r1 r2)^b`` and the second's
channels ``(r1 r2)^(1 - b)``: ``b = 0`` gives the first layer one range for every row, ``b = 1`` the
second, ``b = 1/2`` is DFQ's choice. When one layer stays float (small layers are kept fp16) it
absorbs all of the spread. Otherwise each pair takes the balance (or no scaling) whose
min-max-rounded pair output on the calibration images is closest to float's, since DFQ's midpoint is
not always best: a depthwise conv with 9 weights per channel loses more to a coarse grid than a
pointwise one.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from edge.codec.quant import minmax_encode
from edge.export.calibrate import Passes

SCALE_LIMITS = (1e-3, 1e3)  # keep fp16 copies of the scaled weights far from under/overflow
BALANCES = (0.0, 0.25, 0.5, 0.75, 1.0)
SEARCH_IMAGES = 32

# f(x * s) == f(x) * s for a positive per-channel s (flatten only of a 1x1 map, checked by shape)
_MODULES = (nn.ReLU, nn.LeakyReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
            nn.ZeroPad2d, nn.Dropout, nn.Identity, nn.Flatten)
_FUNCTIONS = {F.relu, torch.relu, F.leaky_relu, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
              F.adaptive_max_pool2d, F.dropout, torch.flatten}
_METHODS = {"relu", "flatten"}
_FLATTENS = {torch.flatten, "flatten", nn.Flatten}


def _module(model: fx.GraphModule, node: fx.Node):
    return model.get_submodule(node.target) if node.op == "call_module" else None


def _is_layer(model: fx.GraphModule, node: fx.Node) -> bool:
    return isinstance(_module(model, node), (nn.Conv2d, nn.Linear))


def _zero_pad(node: fx.Node) -> bool:
    padding = dict(zip(("input", "pad", "mode", "value"), node.args)) | node.kwargs
    return node.target is F.pad and padding.get("mode") in (None, "constant") and not padding.get("value")


def _commutes(model: fx.GraphModule, node: fx.Node, source: fx.Node) -> bool:
    """``node`` applies a scale-commuting op to ``source`` alone (its other arguments are constants)."""
    kind = {"call_module": lambda: isinstance(_module(model, node), _MODULES),
            "call_function": lambda: node.target in _FUNCTIONS or _zero_pad(node),
            "call_method": lambda: node.target in _METHODS}.get(node.op, lambda: False)()
    others = [*node.args[1:], *node.kwargs.values()]
    if not kind or not node.args or node.args[0] is not source or any(isinstance(a, fx.Node) for a in others):
        return False
    before, after = source.meta["tensor_meta"].shape, node.meta["tensor_meta"].shape
    flattens = node.target in _FLATTENS or type(_module(model, node)) in _FLATTENS
    return before[:2] == after[:2] and (not flattens or int(np.prod(before[2:])) == 1)


def _channels_match(model: fx.GraphModule, first: fx.Node, second: fx.Node) -> bool:
    channels = _module(model, first).weight.shape[0]
    follower = _module(model, second)
    if isinstance(follower, nn.Linear):
        return follower.in_features == channels and len(second.args[0].meta["tensor_meta"].shape) == 2
    return follower.in_channels == channels


def equalization_pairs(model: fx.GraphModule, example: torch.Tensor) -> list[tuple[str, str, list[fx.Node]]]:
    """(first layer, second layer, the graph nodes from the first to the second) for every pair whose
    scaling is exact; ``example`` (a batch of inputs) gives the shapes."""
    ShapeProp(model).propagate(example)
    calls = Counter(node.target for node in model.graph.nodes if node.op == "call_module")
    pairs = []
    for node in model.graph.nodes:
        if not _is_layer(model, node) or calls[node.target] > 1:
            continue
        path = [node]
        while len(path[-1].users) == 1:
            user = next(iter(path[-1].users))
            if _is_layer(model, user):
                if calls[user.target] == 1 and user.args[0] is path[-1] and _channels_match(model, node, user):
                    pairs.append((node.target, user.target, path + [user]))
                break
            if not _commutes(model, user, path[-1]):
                break
            path.append(user)
    return pairs


def _subgraph(model: fx.GraphModule, path: list[fx.Node]) -> fx.GraphModule:
    """The nodes of ``path`` as a module of their own (sharing ``model``'s layers): first input -> last output."""
    graph, env = fx.Graph(), {}
    env[path[0].args[0]] = graph.placeholder("x")
    for node in path:
        env[node] = graph.node_copy(node, env.__getitem__)
    graph.output(env[path[-1]])
    return fx.GraphModule(model, graph)


def _input_channel_index(module: nn.Module) -> torch.Tensor:
    """(out, in per group): which input channel each weight column of ``module`` reads."""
    groups = getattr(module, "groups", 1)
    out, per_group = module.weight.shape[:2]
    return (torch.arange(out)[:, None] // (out // groups)) * per_group + torch.arange(per_group)[None, :]


def _scales(first: nn.Module, second: nn.Module, balance: float) -> torch.Tensor:
    r1 = first.weight.detach().double().abs().flatten(1).amax(1)
    index = _input_channel_index(second)
    per_column = second.weight.detach().double().abs().reshape(*index.shape, -1).amax(-1)
    r2 = torch.zeros(len(r1), dtype=torch.float64).scatter_reduce(0, index.flatten(), per_column.flatten(), "amax")
    live = (r1 > 0) & (r2 > 0)
    log_s = (1 - balance) * torch.log(torch.where(live, r1, 1.0)) - balance * torch.log(torch.where(live, r2, 1.0))
    log_s -= log_s[live].mean() if live.any() else 0.0
    return torch.where(live, torch.exp(log_s), 1.0).clamp(*SCALE_LIMITS)


def _scaled(first: nn.Module, second: nn.Module, s: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """(first weight, first bias, second weight) with first's output channels divided by ``s``."""
    w1, b1, w2 = (t.detach().clone() for t in (first.weight, first.bias, second.weight))
    if s is None:
        return w1, b1, w2
    column_scale = s[_input_channel_index(second)].reshape(*w2.shape[:2], *[1] * (w2.ndim - 2))
    return ((w1.double() / s.reshape(-1, *[1] * (w1.ndim - 1))).float(), (b1.double() / s).float(),
            (w2.double() * column_scale).float())


@torch.no_grad()
def _assign(first: nn.Module, second: nn.Module, weights: tuple[torch.Tensor, ...]) -> None:
    first.weight.copy_(weights[0])
    first.bias.copy_(weights[1])
    second.weight.copy_(weights[2])


def _rounded(weight: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
    return torch.from_numpy(minmax_encode(weight.numpy(), bits, per_channel).decode())


@torch.no_grad()
def equalize(model: fx.GraphModule, images: np.ndarray, bits: int = 8, per_channel: bool = False,
             fp16_below: int = 0) -> list[tuple[str, str]]:
    """Rescale every equalizable pair of ``model`` in place; -> the pairs, by layer name.

    Layers with fewer than ``fp16_below`` weights will be stored as floats (they take all of the
    spread); the others' scaling is chosen by the pair's output error on ``images`` after min-max
    rounding to ``bits`` (per channel or not).
    """
    sample = np.ascontiguousarray(images[:SEARCH_IMAGES])
    done, passes = [], Passes(model, sample, batch=len(sample))
    for first_name, second_name, path in equalization_pairs(model, torch.from_numpy(sample[:1])):
        first, second = model.get_submodule(first_name), model.get_submodule(second_name)
        floats = [m.weight.numel() < fp16_below for m in (first, second)]
        if all(floats):
            continue
        if any(floats):
            _assign(first, second, _scaled(first, second, _scales(first, second, 0.0 if floats[1] else 1.0)))
        else:
            captured = {}
            passes.advance(first_name)  # the layers before this pair are final
            passes.run({first_name: lambda _m, x, _y: captured.setdefault("x", x)}, stop_at=first_name)
            pair, x = _subgraph(model, path), captured["x"]
            reference = pair(x)
            options = [_scaled(first, second, None)] + [_scaled(first, second, _scales(first, second, b))
                                                        for b in BALANCES]

            def error(option):
                _assign(first, second, (_rounded(option[0], bits, per_channel), option[1],
                                        _rounded(option[2], bits, per_channel)))
                return float(torch.square(pair(x) - reference).mean())

            _assign(first, second, min(options, key=error))
        done.append((first_name, second_name))
    return done
