"""Check a StudentNet's max-pool positions against the BatchNorm statistics its file stores.

Pool positions cannot be read from tensor shapes (a homework ``.bin`` or pickle does not record
them), but each BatchNorm's running mean and variance were measured on activations of the
placement the model was trained with: a wrong placement feeds the later stages maps at another
scale, and their batch statistics on a few photos disagree with the stored ones. `check_pools`
runs a few images through the plausible placements (as many pools as assumed, after any stage
but the last, whose pool no BatchNorm sees) and scores each by how far every BatchNorm's batch
statistics are from its running ones; `resolve_pools` warns when the assumed placement is clearly
worse than the best one, or (``pools="auto"``) takes the best one.

The search is a beam over stages (stage ``i``'s statistics depend only on the pools before it),
so it costs a few passes of each stage, not one per placement. Photos must be the model's own
input (its centre crop, full size): resized or synthetic images shift the statistics of every
placement alike and cannot tell them apart.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.core.config import StudentConfig
from edge.core.errors import CheckpointError
from edge.models.student import build_student


IMAGES = 8  # photos the check runs
CROP = 96  # of each photo's model input, its centre (a crop keeps the scale, which the statistics depend on)
BEAM = 4  # placements kept after each stage
CLEARLY_WORSE = 2.0  # the assumed placement's mismatch over the best's that earns a warning


@dataclass(frozen=True)
class PoolCheck:
    """How well the assumed pool placement and the best-matching one explain the stored statistics
    (mismatch: summed over BatchNorms of the mean squared standardised mean shift plus the squared
    log variance ratio per channel; 0 = the statistics the file stores)."""

    assumed: tuple[int, ...]
    best: tuple[int, ...]
    assumed_mismatch: float
    best_mismatch: float

    @property
    def disagrees(self) -> bool:
        return self.best != self.assumed and self.assumed_mismatch > CLEARLY_WORSE * self.best_mismatch


def _mismatch(activations: torch.Tensor, norm: nn.BatchNorm2d) -> float:
    """How far a batch's per-channel statistics are from ``norm``'s running ones."""
    batch_var, batch_mean = torch.var_mean(activations, dim=(0, 2, 3))
    variance = norm.running_var + norm.eps
    shift = (batch_mean - norm.running_mean) ** 2 / variance
    spread = torch.log((batch_var + norm.eps) / variance) ** 2
    return float((shift + spread).mean())


def _stage(stage: nn.Sequential, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """One StudentNet stage without its pool: (its output, its BatchNorm's mismatch)."""
    before_norm = stage[0](x)
    return stage[1:](before_norm), _mismatch(before_norm, stage[1])


def _positions(config: StudentConfig) -> int:
    """Stages whose pool a BatchNorm sees: every one but the last."""
    return len(config.widths) - 1


def _extend(state: tuple, stage_index: int, stage: nn.Sequential, wanted: int, positions: int) -> list[tuple]:
    """Both ways a placement prefix continues into ``stage_index``: with or without a pool before it."""
    mismatch, pools, x = state
    grown = []
    for pooled in (False, True):
        count = len(pools) + pooled
        if count > wanted or wanted - count > positions - stage_index or (pooled and min(x.shape[2:]) < 2):
            continue
        y = nn.functional.max_pool2d(x, 2, 2) if pooled else x
        out, stage_mismatch = _stage(stage, y)
        grown.append((mismatch + stage_mismatch, pools + ((stage_index - 1,) if pooled else ()), out))
    return grown


@torch.no_grad()
def _search(model: nn.Module, config: StudentConfig, images: torch.Tensor, wanted: int) -> list[tuple]:
    """(mismatch, pools) of the best placements of ``wanted`` pools, best first."""
    stages = list(model.cnn)[:len(config.widths)]
    out, first = _stage(stages[0], images)
    beam = [(first, (), out)]
    for index in range(1, len(stages)):
        grown = [s for state in beam for s in _extend(state, index, stages[index], wanted, _positions(config))]
        beam = sorted(grown, key=lambda s: s[0])[:BEAM]
    return [(mismatch, pools) for mismatch, pools, _ in beam if len(pools) == wanted]


@torch.no_grad()
def _placement_mismatch(model: nn.Module, config: StudentConfig, images: torch.Tensor, pools: tuple) -> float:
    x, total = images, 0.0
    for index, stage in enumerate(list(model.cnn)[:len(config.widths)]):
        if index - 1 in pools:
            x = nn.functional.max_pool2d(x, 2, 2)
        x, mismatch = _stage(stage, x)
        total += mismatch
    return total


def check_pools(checkpoint, images: np.ndarray) -> PoolCheck:
    """Score ``checkpoint``'s (an `edge.io.checkpoints.Checkpoint`) pool placement and the best-matching plausible one on ``images`` (model
    input, N x C x crop x crop: a few of the photos it will see; their centre `CROP` pixels are run)."""
    config = checkpoint.card.config
    size = min(CROP, images.shape[-1], images.shape[-2])
    top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
    x = torch.as_tensor(np.ascontiguousarray(images[..., top:top + size, left:left + size]), dtype=torch.float32)
    unpooled = dataclasses.replace(config, pools=())
    model = build_student(unpooled, checkpoint.state)
    assumed = tuple(p for p in config.pools if p < _positions(config))
    found = _search(model, unpooled, x, len(assumed))
    assumed_mismatch = _placement_mismatch(model, unpooled, x, assumed)
    best_mismatch, best = found[0] if found and found[0][0] < assumed_mismatch else (assumed_mismatch, assumed)
    best += tuple(p for p in config.pools if p not in assumed)  # a pool after the last stage stays
    return PoolCheck(config.pools, tuple(sorted(best)), assumed_mismatch, best_mismatch)


def photos_of(folder: str | Path, preprocess, count: int = IMAGES) -> np.ndarray:
    """The first ``count`` readable photos of ``folder`` (any layout `list_samples` reads) as model input."""
    from edge.data.folders import list_samples
    from edge.data.preprocess import ImageError, load_image

    arrays = []
    for sample in list_samples(folder):
        try:
            arrays.append(load_image(sample.path, preprocess))
        except ImageError:
            continue
        if len(arrays) == count:
            break
    return np.stack(arrays) if arrays else np.zeros((0, len(preprocess.color), preprocess.crop, preprocess.crop),
                                                    np.float32)


def pools_text(pools: tuple[int, ...]) -> str:
    return ",".join(map(str, pools))


def resolve_pools(path: str | Path, model, pools, images_from: str | Path | None,
                  log=lambda line: print(line, file=sys.stderr)):
    """``model`` (read from ``path``) with its pools checked when they were assumed (not given, not in the
    file) and photos are at hand: a warning naming the better placement when the stored statistics
    clearly disagree; with ``pools == "auto"``, the best-matching placement itself."""
    auto = pools == "auto"
    if not hasattr(model, "pools_assumed"):  # not a StudentNet `edge.io.checkpoints.Checkpoint`
        if auto:
            raise CheckpointError(f"{path}: --pools describes StudentNets; this file records its own shape")
        return model
    if not (model.pools_assumed or auto):
        return model
    images = photos_of(images_from, model.card.preprocess) if images_from else None
    if images is None or not len(images):
        if auto:
            raise CheckpointError(f"{path}: --pools auto compares BatchNorm statistics on photos the model will "
                                  f"see: give images (or --pools I,J,..)")
        log(f"{path}: pools {pools_text(model.card.config.pools)} assumed (not in the file; --pools sets them)")
        return model
    check = check_pools(model, images)
    if auto:
        log(f"{path}: --pools auto: {pools_text(check.best)} (BatchNorm statistics mismatch {check.best_mismatch:.2f}; "
            f"the homework's {pools_text(check.assumed)}: {check.assumed_mismatch:.2f})")
        return model.with_pools(check.best, assumed=False)
    if check.disagrees:
        log(f"warning: {path}: pools {pools_text(check.assumed)} assumed (not in the file), but its BatchNorm "
            f"statistics fit --pools {pools_text(check.best)} far better (mismatch {check.best_mismatch:.2f} against "
            f"{check.assumed_mismatch:.2f} on {len(images)} photos): pass --pools {pools_text(check.best)}")
    else:
        log(f"{path}: pools {pools_text(check.assumed)} assumed (not in the file); its BatchNorm statistics agree")
    return model
