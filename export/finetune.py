"""Trained quantization: the values an encoded model stores, fine-tuned by distillation on unlabelled images.

One loop for every code format of `edge.export.quantize`, run after calibration:

- kmeansK (`edge.codec.quant.CodebookCode`): the codebook and, per channel, the channel scales are trained;
  the indices stay fixed (Deep Compression's trained centroids);
- uintN (`edge.codec.quant.MinMaxCode`): latent float weights, rounded onto the layer's fixed min-max grid
  in the forward pass with a straight-through gradient (the codes are re-chosen at every step);
- every bias; the small layers kept fp16 (`edge.codec.quant.FloatWeight`) stay as they are (training
  them as well lost 1-8 pt of held-out agreement on the TA student: they are the sensitive ones).

Each tensor's learning rate is ``lr`` times its own scale (the RMS of its values; for a grid, its
step), so codebooks of normalised values, raw biases and fine grids move alike.

The loss is knowledge distillation (KL at temperature 1, label-free) to the float model's logits on
function-matching inputs (Beyer et al., CVPR 2022; `edge.train.matching`): teacher and student see the same
randomly flipped, rotated, rescaled and shifted images, mixed up in pairs (`edge.train.matching.mixup`), so
a few hundred calibration photos give a new input at every step instead of being memorised. At the
end, every value is rounded to what the file stores (fp16 codebooks, scales, biases; integer codes).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.codec.quant import CodebookCode, FloatWeight, MinMaxCode

MAX_ANGLE, MAX_SHIFT, SCALE_RANGE = 15.0, 0.1, (0.9, 1.1)  # function-matching geometry (degrees, fraction)


def matching_inputs(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A batch of preprocessed NCHW images, each randomly flipped, rotated, rescaled and shifted
    (`augmented_views`), then mixed up with another of the batch (`edge.train.matching.mixup`)."""
    from edge.train.matching import mixup

    return mixup(augmented_views(images, generator))


def augmented_views(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A batch of preprocessed NCHW images, each randomly flipped, rotated, rescaled and shifted (border
    pixels repeated): drawn from ``generator`` alone, so a seed gives the same views."""
    n = len(images)
    u = torch.rand(n, 5, generator=generator)
    angle = torch.deg2rad((u[:, 0] * 2 - 1) * MAX_ANGLE)
    scale = SCALE_RANGE[0] + u[:, 1] * (SCALE_RANGE[1] - SCALE_RANGE[0])
    mirror = torch.where(u[:, 2] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * mirror, -sin, (u[:, 3] * 2 - 1) * MAX_SHIFT * 2], 1),
                         torch.stack([sin * mirror, cos, (u[:, 4] * 2 - 1) * MAX_SHIFT * 2], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


class _Codebook:
    """kmeansK: trained codebook (and channel scales), fixed indices."""

    def __init__(self, code: CodebookCode):
        self.code = code
        self.book = nn.Parameter(torch.from_numpy(code.codebook.astype(np.float32)))
        self.scale = nn.Parameter(torch.from_numpy(code.channel_scale())) if code.per_channel else None
        self.index = torch.from_numpy(code.q.astype(np.int64))

    def parameters(self) -> list[tuple[nn.Parameter, float]]:
        """The trained tensors, each with the scale its learning rate is relative to."""
        return [(p, _rms(p)) for p in [self.book] + ([self.scale] if self.per_channel else [])]

    @property
    def per_channel(self) -> bool:
        return self.scale is not None

    def weight(self) -> torch.Tensor:
        weight = self.book[self.index]
        return weight * self.scale if self.per_channel else weight

    def encoding(self) -> CodebookCode:
        scale = self.scale.detach().reshape(-1).numpy().astype(np.float16) if self.per_channel else None
        return dataclasses.replace(self.code, codebook=self.book.detach().numpy().astype(np.float16), scale=scale)


class _Grid:
    """uintN: latent float weights rounded onto the fixed grid ``offset + step * q`` (straight through)."""

    def __init__(self, code: MinMaxCode):
        self.code = code
        per_row = (-1,) + (1,) * (code.q.ndim - 1) if np.ndim(code.offset) else ()
        self.offset = torch.from_numpy(np.asarray(code.offset, np.float32).reshape(per_row))
        step = np.asarray(code.step, np.float32)
        self.step = torch.from_numpy(step.reshape(per_row))
        self.divisor = torch.from_numpy(np.where(step > 0, step, 1).astype(np.float32).reshape(per_row))
        self.latent = nn.Parameter(torch.from_numpy(code.decode()))

    def parameters(self) -> list[tuple[nn.Parameter, float]]:
        return [(self.latent, float(self.step.mean()) or _rms(self.latent))]

    def codes(self) -> torch.Tensor:
        return torch.clamp(torch.round((self.latent - self.offset) / self.divisor), 0, self.code.levels)

    def weight(self) -> torch.Tensor:
        rounded = self.offset + self.codes() * self.step
        return self.latent + (rounded - self.latent).detach()

    def encoding(self) -> MinMaxCode:
        return dataclasses.replace(self.code, q=self.codes().detach().numpy().astype(np.uint8))


class _Fixed:
    """fp16 (or fp32) layers: kept as they are."""

    def __init__(self, code: FloatWeight):
        self.code = code
        self.value = torch.from_numpy(code.decode())

    def parameters(self) -> list[tuple[nn.Parameter, float]]:
        return []

    def weight(self) -> torch.Tensor:
        return self.value

    def encoding(self) -> FloatWeight:
        return self.code


def _rms(values: torch.Tensor) -> float:
    return max(float(values.detach().square().mean().sqrt()), 1e-8)


TRAINABLE = {CodebookCode: _Codebook, MinMaxCode: _Grid, FloatWeight: _Fixed}


def trainable(encoding):
    """The trained form of one layer's weight encoding (ValueError for a format that has none)."""
    kind = TRAINABLE.get(type(encoding))
    if kind is None:
        raise ValueError(f"--train-epochs cannot train {type(encoding).__name__} weights")
    return kind(encoding)


def train_quantized(model: nn.Module, encodings: dict, teacher: nn.Module, images: np.ndarray, epochs: int,
                    lr: float = 3e-4, batch: int = 16, seed: int = 0, progress: bool = True) -> dict:
    """Fine-tune what ``model`` (a folded model holding its decoded weights, `edge.export.calibrate`)
    stores so its logits match ``teacher``'s on function-matching inputs made from ``images``
    (unlabelled, preprocessed NCHW); ``epochs`` passes over them, Adam with a cosine schedule, seeded;
    ``lr`` is relative to each tensor's scale.

    ``model`` ends holding the trained weights and fp16-rounded biases; -> the trained encodings."""
    from torch.func import functional_call
    from tqdm import tqdm

    from edge.export.calibrate import set_weights
    from edge.models.fold import model_layers

    torch.manual_seed(seed)  # mixup's pairing and weights
    generator = torch.Generator().manual_seed(seed)
    model.requires_grad_(False)
    teacher.eval().requires_grad_(False)
    layers = model_layers(model)
    weights = {layer.name: trainable(encodings[layer.name]) for layer in layers}
    biases = {layer.name: nn.Parameter(torch.from_numpy(layer.bias.copy())) for layer in layers}
    data = torch.from_numpy(np.ascontiguousarray(images))
    tensors = [pair for w in weights.values() for pair in w.parameters()] + [(b, _rms(b)) for b in biases.values()]
    optimizer = torch.optim.Adam([{"params": [p], "lr": lr * scale} for p, scale in tensors])
    steps_per_epoch = -(-len(data) // batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)

    def forward(x):
        state = {f"{n}.weight": w.weight() for n, w in weights.items()} | {f"{n}.bias": b for n, b in biases.items()}
        return functional_call(model, state, (x,))

    bar = tqdm(range(epochs), desc="trained quantization (KD)", unit="epoch", disable=not progress)
    with torch.enable_grad():  # callers export under no_grad
        for _ in bar:
            bar.set_postfix(kd=f"{_epoch(forward, teacher, data, batch, optimizer, schedule, generator):.4f}")
    trained = {name: w.encoding() for name, w in weights.items()}
    for layer in layers:
        set_weights(model, layer.name, trained[layer.name].decode(),
                    biases[layer.name].detach().numpy().astype(np.float16).astype(np.float32))
    return trained


def _epoch(forward, teacher: nn.Module, data: torch.Tensor, batch: int, optimizer, schedule,
           generator: torch.Generator) -> float:
    """One pass of trained quantization over ``data`` in shuffled batches; -> the mean KD loss."""
    from edge.train.distill import kd_loss

    order, total = torch.randperm(len(data), generator=generator), 0.0
    for start in range(0, len(data), batch):
        inputs = matching_inputs(data[order[start:start + batch]], generator)
        with torch.no_grad():
            target = teacher(inputs)
        loss = kd_loss(forward(inputs), target, None, 1.0, 1.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        total += loss.item() * len(inputs)
    return total / len(data)

