"""Calibration for weight quantization on any folded torch classifier (`edge.models.fold.fold_model`):
layer inputs captured by forward hooks, GPTQ rounding onto a fixed min-max grid, and bias correction.

GPTQ (Frantar et al., ICLR 2023; the OBQ update of Hassibi & Stork) quantizes a layer's weights one
input column at a time and pushes each rounding error onto the columns not yet quantized, weighted by
the inverse Hessian of the layer's inputs, so ``Q x`` tracks ``W x`` on the data rather than ``Q ≈ W``.
Bias correction (Nagel et al., "Data-Free Quantization", ICCV 2019) then shifts each bias by the mean
output error. Layers are processed in forward order, each on the inputs it receives from the model
whose earlier layers already hold their quantized weights (the model's own forward runs them), so
each layer also compensates for the errors upstream.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from tqdm import tqdm

from edge.models.fold import FoldedLayer, model_layers

DAMPING = 0.01
CALIBRATION_IMAGES = 64  # synthetic images when none are given
BATCH = 16
ROW_CHUNK = 4  # images unfolded at a time (their patch rows are the memory peak)


def synthetic_images(count: int, channels: int, size: int | tuple[int, int], seed: int = 0) -> np.ndarray:
    """Random images with a natural-image power spectrum (amplitude ~ 1/f^1.5), in 0..1.

    Used when no calibration folder is given: early conv layers see edges and smooth regions
    in proportions close to photos', which uniform noise does not give them.
    """
    height, width = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    fy, fx = np.fft.fftfreq(height)[:, None], np.fft.rfftfreq(width)[None, :]
    radius = np.sqrt(fy ** 2 + fx ** 2)
    radius[0, 0] = 1.0
    shape = (count, channels, height, width // 2 + 1)
    spectrum = (rng.normal(size=shape) + 1j * rng.normal(size=shape)) / radius ** 1.5
    images = np.fft.irfft2(spectrum, s=(height, width))
    images -= images.mean(axis=(2, 3), keepdims=True)
    images *= 0.25 / images.std(axis=(1, 2, 3), keepdims=True)
    images += rng.uniform(0.3, 0.6, size=(count, channels, 1, 1))
    return np.clip(images, 0, 1).astype(np.float32)


def input_rows(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A conv's or linear layer's input as the rows each output multiplies by its weights:
    (groups, rows, weights per output), for any kernel, stride, padding, dilation and groups."""
    if isinstance(module, nn.Linear):
        return x.reshape(1, -1, x.shape[-1])
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)  # what Conv2d pads, numbers or "same"
    patches = F.unfold(x, module.kernel_size, module.dilation, 0, module.stride)  # (N, C*k*k, L)
    n, width, positions = patches.shape
    groups = module.groups
    return patches.reshape(n, groups, width // groups, positions).permute(1, 0, 3, 2).reshape(groups, -1, width // groups)


def grouped(layer: FoldedLayer, array: np.ndarray) -> torch.Tensor:
    """Weights (or per-row grid bounds) as (groups, outputs per group, weights per output)."""
    flat = torch.from_numpy(np.array(array, dtype=np.float64)).reshape(array.shape[0], -1)
    return flat.reshape(layer.groups, -1, flat.shape[1])


def grid_quantizer(lo: torch.Tensor, step: torch.Tensor, levels: int):
    """``quantize(column (G, R)) -> (codes, values)`` on the grid ``lo + step * q``, q in 0..levels
    (bounds (G, R, 1), broadcast)."""

    def quantize(column: torch.Tensor):
        q = torch.clamp(torch.round((column - lo[..., 0]) / step[..., 0]), 0, levels)
        return q, lo[..., 0] + q * step[..., 0]

    return quantize


def gptq_codes(weights: torch.Tensor, hessian: torch.Tensor, quantize, damping: float = DAMPING) -> torch.Tensor:
    """Codes for ``weights`` (G, R, K) from ``quantize(column (G, R)) -> (codes, values)``
    (`grid_quantizer`, `edge.export.kmeans.codebook_quantizer`), assigning column by column with GPTQ
    error feedback through ``hessian`` (G, K, K).

    Columns go in order of decreasing Hessian diagonal ("act-order"): the inputs that carry the
    most energy are rounded first, while the most columns are left to absorb their error.
    """
    order = torch.argsort(torch.diagonal(hessian, dim1=1, dim2=2), dim=1, descending=True)  # (G, K)
    w = torch.gather(weights, 2, order[:, None, :].expand_as(weights)).clone()
    h = torch.gather(torch.gather(hessian, 1, order[:, :, None].expand_as(hessian)), 2,
                     order[:, None, :].expand_as(hessian))
    dead = torch.diagonal(h, dim1=1, dim2=2) == 0
    h.diagonal(dim1=1, dim2=2)[dead] = 1.0
    h += torch.eye(h.shape[-1], dtype=h.dtype) * (damping * torch.diagonal(h, dim1=1, dim2=2).mean(1))[:, None, None]
    upper = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    codes = torch.zeros_like(w, dtype=torch.int64)
    unsort = torch.argsort(order, dim=1)
    for j in range(w.shape[-1]):
        q, value = quantize(w[:, :, j])
        codes[:, :, j] = q.to(torch.int64)
        error = (w[:, :, j] - value) / upper[:, j, j][:, None]
        w[:, :, j + 1:] -= error[:, :, None] * upper[:, j, j + 1:][:, None, :]
    return torch.gather(codes, 2, unsort[:, None, :].expand_as(codes))


class _Stop(Exception):
    """Ends a pass early, once it has what it needs (``value``: the node's value it stopped at)."""

    def __init__(self, value=None):
        super().__init__()
        self.value = value


class _Until(fx.Interpreter):
    def __init__(self, model: fx.GraphModule, stop: fx.Node | None):
        super().__init__(model)
        self.stop = stop

    def run_node(self, node):
        value = super().run_node(node)
        if node is self.stop:
            raise _Stop(value)
        return value


class Passes:
    """Forward passes of calibration images through a `edge.models.fold.fold_model` graph, batch by batch,
    with forward hooks on named modules. The images' values are kept at a graph cut (a node all later
    nodes read through) whose upstream layers are final (`advance`), and passes resume there: on a
    chain of layers, each layer's pass runs that layer rather than every layer before it."""

    def __init__(self, model: fx.GraphModule, images: np.ndarray, batch: int = BATCH):
        self.model, self.nodes = model, list(model.graph.nodes)
        self.index = {node: i for i, node in enumerate(self.nodes)}
        self.cuts, reach = [], 0
        for i, node in enumerate(self.nodes):
            if reach <= i:  # no earlier node is read after this one
                self.cuts.append(node)
            reach = max([reach, i, *(self.index[user] for user in node.users)])
        self.start = self.nodes[0]  # the input
        self.values = [torch.from_numpy(np.ascontiguousarray(images[i:i + batch])) for i in range(0, len(images), batch)]

    def _resume(self, value: torch.Tensor, stop: fx.Node | None = None):
        env = dict.fromkeys(self.nodes[:self.index[self.start]]) | {self.start: value}
        try:
            return _Until(self.model, stop).run(initial_env=env)
        except _Stop as reached:
            return reached.value

    @torch.no_grad()
    def advance(self, name: str) -> None:
        """Keep the values at the latest cut before module ``name`` runs (the layers before it are final)."""
        target = self.index[next(n for n in self.nodes if n.op == "call_module" and n.target == name)]
        cut = max((c for c in self.cuts if self.index[c] < target), key=self.index.get)
        if cut is not self.start:
            self.values = [self._resume(value, cut) for value in self.values]
            self.start = cut

    @torch.no_grad()
    def run(self, hooks: dict, stop_at: str | None = None) -> None:
        """A pass calling ``hooks[name](module, input tensor, output)`` after each named module runs;
        with ``stop_at``, each batch stops after that module."""

        def hook(name):
            def call(module, args, output):
                hooks[name](module, args[0], output)
                if name == stop_at:
                    raise _Stop
            return call

        handles = [self.model.get_submodule(name).register_forward_hook(hook(name)) for name in hooks]
        try:
            for value in self.values:
                self._resume(value)
        finally:
            for handle in handles:
                handle.remove()


def output_means(model: fx.GraphModule, images: np.ndarray, names: list[str]) -> dict[str, torch.Tensor]:
    """{layer name: mean output per channel (float64)} of ``model``'s convs and linears on ``images``."""
    sums, counts = {}, {}

    def record(name):
        def hook(module, _x, output):
            flat = output.double().movedim(-1 if isinstance(module, nn.Linear) else 1, 0).flatten(1)
            sums[name], counts[name] = sums.get(name, 0) + flat.sum(1), counts.get(name, 0) + flat.shape[1]
        return hook

    Passes(model, images).run({name: record(name) for name in names})
    return {name: sums[name] / counts[name] for name in names}


def input_statistics(passes: Passes, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The Hessian ``Σ x xᵀ`` (G, K, K) and the mean row (G, K) of layer ``name``'s inputs (float64),
    on the model as it is now."""
    total = {"hessian": 0, "sum": 0, "rows": 0}

    def accumulate(module, x, _output):
        for part in x.split(ROW_CHUNK):
            rows = input_rows(module, part).double()
            total["hessian"] = total["hessian"] + torch.einsum("gmk,gml->gkl", rows, rows)
            total["sum"] = total["sum"] + rows.sum(1)
            total["rows"] += rows.shape[1]

    passes.advance(name)
    passes.run({name: accumulate}, stop_at=name)
    return total["hessian"], total["sum"] / total["rows"]


@torch.no_grad()
def set_weights(model: nn.Module, name: str, weight: np.ndarray, bias: np.ndarray | None = None) -> None:
    module = model.get_submodule(name)
    module.weight.copy_(torch.from_numpy(np.asarray(weight, np.float32)))
    if bias is not None:
        module.bias.copy_(torch.from_numpy(np.asarray(bias, np.float32)))


@torch.no_grad()
def calibrate(model: fx.GraphModule, images: np.ndarray, encode, progress: bool = True) -> dict:
    """Encode ``model``'s layers (`edge.models.fold.model_layers`) in forward order on ``images``, in place:
    each gets its decoded weights and a bias corrected so its mean output matches the float model's.

    ``encode(layer, hessian)`` returns the layer's weight encoding (anything with ``decode()``) from
    the Hessian (G, K, K) of its inputs on the model whose earlier layers are already quantized.
    Returns the encodings by layer name.
    """
    layers = model_layers(model)
    float_means = output_means(model, images, [layer.name for layer in layers])
    encodings, passes = {}, Passes(model, images)
    for layer in tqdm(layers, desc="calibrating", unit="layer", disable=not progress):
        hessian, mean_row = input_statistics(passes, layer.name)
        encodings[layer.name] = encode(layer, hessian)
        weight = encodings[layer.name].decode()
        # the layer is linear: its mean output is its weights times the mean input row (patch), plus the bias
        quant_mean = torch.einsum("grk,gk->gr", grouped(layer, weight), mean_row).reshape(-1)
        set_weights(model, layer.name, weight, (float_means[layer.name] - quant_mean).numpy())
    return encodings


def decoded_model(folded: nn.Module, layers: list[FoldedLayer], encodings: dict, bias_dtype=np.float16) -> nn.Module:
    """A copy of ``folded`` holding what a file stores: each layer's decoded weight (``encodings``) and
    its bias (``layers``) as ``bias_dtype`` — the torch reference of an exported file."""
    import copy

    model = copy.deepcopy(folded)
    for layer in layers:
        set_weights(model, layer.name, encodings[layer.name].decode(), layer.bias.astype(bias_dtype).astype(np.float32))
    return model
