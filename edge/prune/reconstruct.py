"""Channel pruning repaired by least squares, from a few unlabelled images (no training data, no labels).

Two surgeries on a StudentNet, both returning a smaller `StudentConfig` with plain weights:

- `merge_classifier`: the last pointwise conv, the global average pool and the classifier are all
  linear, so ``fc(pool(pw(z))) = (W_fc W_pw) pool(z) + (W_fc b_pw + b_fc)``: the last width
  shrinks to the number of classes (the merged conv) and the classifier becomes the identity.
  Exact up to float rounding; on the homework's student it removes 62,700 of 256,779 parameters.
- `prune_reconstruct`: remove channels of the widths a data-driven rule ranks lowest and re-fit
  the next pointwise conv so it reproduces what it computed before (He et al., "Channel Pruning
  for Accelerating Very Deep Neural Networks", ICCV 2017; ThiNet, ICCV 2017). For each pruned
  width, in order: the consumer conv's inputs X on calibration images (computed by the model
  pruned so far) and its previous outputs Y give a least-squares problem ``min ||X W - Y||``
  (bias included as a constant input). Channels are chosen greedily by Optimal Brain Surgeon
  on that quadratic: removing input ``c`` and re-fitting the others costs exactly
  ``sum_j rho_j W[c, j]^2 / [H^-1]_cc`` (H = X^T X), each output weighted by how strongly the
  next BatchNorm passes it on; the survivors' weights are then solved afresh.

Channel ``c`` of width ``i`` is produced by stage ``i``, gated by ``cnn.{i+1}.1`` and consumed by
``cnn.{i+1}.3`` (`edge.prune.slim`'s surgery removes it everywhere; its re-fit consumer replaces the
constant-bias fold).
"""

from __future__ import annotations


import numpy as np
import torch

from edge.core.config import ConfigError, StudentConfig
from edge.models.fold import BN_EPS
from edge.prune.slim import prune

DAMPING = 1e-6  # relative ridge on the Gram matrix: keeps dead (always-zero) channels solvable


def head_stages(config: StudentConfig) -> int:
    """Stages computed at full resolution (up to and including the last max-pool), never pruned here:
    they hold few weights, most of the compute, and are the most sensitive."""
    return min(max(config.pools, default=-1) + 1, config.depth - 1) or 1


def prunable_widths(config: StudentConfig) -> list[int]:
    """Widths produced after the head and consumed by a pointwise conv (never the last one)."""
    return list(range(head_stages(config), config.depth - 1))


def target_widths(config: StudentConfig, keep: float) -> tuple[int, ...]:
    """``config.widths`` with every prunable width scaled by ``keep`` (at least one channel)."""
    scaled = set(prunable_widths(config))
    return tuple(max(1, round(keep * w)) if i in scaled else w for i, w in enumerate(config.widths))


# ---------------------------------------------------------------- least squares


def obs_select(gram: np.ndarray, weights: np.ndarray, remove: int, row_weights: np.ndarray | None = None,
               damping: float = DAMPING) -> np.ndarray:
    """Inputs to keep after greedily removing ``remove`` of them by Optimal Brain Surgeon.

    ``gram`` (C+1, C+1): X^T X of the inputs plus a constant last column (the bias, never removed);
    ``weights`` (C+1, D): the least-squares weights on all inputs. Each step removes the input
    whose removal (with the others re-fitted) raises the weighted squared error least."""
    inverse = np.linalg.inv(_damped(gram, damping))
    w = np.array(weights, np.float64)
    rho = np.ones(w.shape[1]) if row_weights is None else np.asarray(row_weights, np.float64)
    alive = np.ones(len(gram), bool)
    for _ in range(remove):
        cost = (w ** 2 @ rho) / np.maximum(np.diag(inverse), 1e-300)
        cost[~alive] = np.inf
        cost[-1] = np.inf
        c = int(np.argmin(cost))
        w -= np.outer(inverse[:, c], w[c]) / inverse[c, c]
        inverse -= np.outer(inverse[:, c], inverse[c]) / inverse[c, c]
        alive[c] = False
        w[c], inverse[c], inverse[:, c] = 0, 0, 0
        inverse[c, c] = 1.0  # a removed input no longer couples to anything
    return np.flatnonzero(alive[:-1])


def solve(gram: np.ndarray, cross: np.ndarray, keep: np.ndarray, damping: float = DAMPING,
          prior: np.ndarray | None = None) -> np.ndarray:
    """Least-squares weights (len(keep)+1, D) on the kept inputs and the constant (last row: bias).

    With ``prior`` (C+1, D: the layer's weights before pruning), the ridge pulls the solution
    towards them instead of towards zero (``damping`` relative to the mean of X^T X's diagonal)."""
    rows = np.append(keep, len(gram) - 1)
    sub, rhs = gram[np.ix_(rows, rows)], cross[rows]
    if prior is not None:
        rhs = rhs + damping * _scale(sub) * prior[rows]
    return np.linalg.solve(_damped(sub, damping), rhs)


def _scale(gram: np.ndarray) -> float:
    return max(float(np.mean(np.diag(gram))), 1e-12)


def _damped(gram: np.ndarray, damping: float) -> np.ndarray:
    return gram + np.eye(len(gram)) * damping * _scale(gram)


# ---------------------------------------------------------------- statistics from images


class _Capture:
    def __init__(self, module: torch.nn.Module, keep_input: bool):
        self.keep_input, self.value = keep_input, None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        self.value = inputs[0] if self.keep_input else output


@torch.no_grad()
def consumer_statistics(model: torch.nn.Module, target: torch.nn.Module, width: int, images,
                        batch: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(X^T X, X^T Y) for the consumer of ``width``: X its inputs in ``model`` (one row per image
    and position, plus a constant 1), Y its outputs in ``target``. The consumer is ``cnn.{width+1}.3``
    of a StudentNet, or stage ``width + 1``'s pointwise conv ``{width+1}.3`` of a `edge.train.matching.tail`."""
    name = f"cnn.{width + 1}.3" if hasattr(model, "cnn") else f"{width + 1}.3"
    inputs = _Capture(model.get_submodule(name), True)
    outputs = _Capture(target.get_submodule(name), False)
    gram = cross = None
    try:
        for start in range(0, len(images), batch):
            x = images[start:start + batch]
            model(x), target(x)
            rows = _rows(inputs.value)
            goal = _rows(outputs.value)[:, :-1]
            g, c = rows.T @ rows, rows.T @ goal
            gram, cross = (g, c) if gram is None else (gram + g, cross + c)
    finally:
        inputs.handle.remove(), outputs.handle.remove()
    return gram.numpy(), cross.numpy()


def _rows(x: torch.Tensor) -> torch.Tensor:
    flat = x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).double()
    return torch.cat([flat, torch.ones(len(flat), 1, dtype=flat.dtype)], 1)


def output_weights(config: StudentConfig, state: dict, width: int) -> np.ndarray:
    """How strongly each output of ``width``'s consumer reaches the next nonlinearity: the next
    depthwise filter's energy times its BatchNorm scale, squared (1 for the last stage)."""
    nxt = width + 2
    if nxt >= config.depth:
        return np.ones(config.widths[width + 1])
    kernel = np.asarray(state[f"cnn.{nxt}.0.weight"], np.float64).reshape(config.widths[width + 1], -1)
    scale = np.asarray(state[f"cnn.{nxt}.1.weight"], np.float64) / np.sqrt(
        np.asarray(state[f"cnn.{nxt}.1.running_var"], np.float64) + BN_EPS)
    return (kernel ** 2).sum(1) * scale ** 2


# ---------------------------------------------------------------- the surgery


def prune_reconstruct(config: StudentConfig, state: dict[str, np.ndarray], widths: tuple[int, ...], images,
                      progress=None, pull: float = 0.0) -> tuple[StudentConfig, dict]:
    """Shrink ``config`` to ``widths`` (only prunable widths may shrink), channel by channel as
    least-squares OBS selects, re-fitting each consumer on ``images`` (float NCHW tensor) to the
    outputs it computed before; ``pull`` > 0 ridges the re-fit towards the consumer's old weights.
    ``progress(width)`` is called as each width is done."""
    from edge.train.matching import tail
    from edge.models.student import build_student

    widths = tuple(int(w) for w in widths)
    _check_widths(config, widths)
    start = head_stages(config)
    reference = build_student(config, state)
    with torch.no_grad():  # the head is never pruned: its features are computed once
        features = torch.cat([reference.cnn[:start](images[i:i + 32]) for i in range(0, len(images), 32)])
    reference_tail = tail(reference, start)
    for width in prunable_widths(config):
        if widths[width] >= config.widths[width]:
            continue
        current = build_student(config, state)
        gram, cross = consumer_statistics(tail(current, start), reference_tail, width - start, features)
        everything = np.arange(config.widths[width])
        kept = obs_select(gram, solve(gram, cross, everything), config.widths[width] - widths[width],
                          output_weights(config, state, width))
        consumer = f"cnn.{width + 1}.3"
        prior = np.vstack([state[consumer + ".weight"][:, :, 0, 0].T, state[consumer + ".bias"][None]])
        fitted = solve(gram, cross, kept, pull, prior) if pull else solve(gram, cross, kept)
        keep = [np.arange(w) for w in config.widths[:-1]]
        keep[width] = kept
        config, state = prune(config, state, keep)
        state[consumer + ".weight"] = np.ascontiguousarray(fitted[:-1].T[:, :, None, None], dtype=np.float32)
        state[consumer + ".bias"] = fitted[-1].astype(np.float32)
        if progress:
            progress(width)
    return config, state


def _check_widths(config: StudentConfig, widths: tuple[int, ...]) -> None:
    allowed = set(prunable_widths(config))
    bad = [i for i, (a, b) in enumerate(zip(config.widths, widths)) if b != a and (i not in allowed or not 1 <= b < a)]
    if len(widths) != config.depth or bad:
        raise ConfigError(f"widths {list(widths)} cannot come from {list(config.widths)} by pruning "
                          f"(only widths {sorted(allowed)} shrink, each to at least one channel)")
