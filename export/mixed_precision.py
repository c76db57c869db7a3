"""Mixed precision under a byte budget: which layers get more bits than the file's format.

A 4-bit file of the homework's student leaves bytes unused under a target; they buy the most
fidelity where a layer is most sensitive per byte. Each layer's sensitivity is measured alone, on
unlabelled calibration images: the KL divergence of the model's outputs from its float outputs when
only that layer is rounded (per-channel min-max, `edge.codec.quant.minmax_encode`) at each candidate bit
width while every other layer stays float. Upgrading a layer from ``b`` to ``b'`` bits is worth the
drop in its KL and costs about ``weights * (b' - b) / 8`` bytes (one more code bit per weight, also
under entropy coding), plus the decoding nodes of a code width the file did not hold yet
(``stream_bytes``, ~0.5 KB); `allocate` spends the budget greedily on the best KL drop per byte (the
knapsack heuristic of mixed-precision search, e.g. HAWQ-V3's bit allocation by a measured
sensitivity). Layers a calibrated format keeps fp16 (fewer than ``fp16_below`` weights) are not
candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

WIDER_BITS = (4, 5, 6, 8)  # the bit widths a layer may be raised to (those above the file's own)
STREAM_BYTES = 512  # about what a file's first layer of another code width adds besides its codes (the unpacking nodes)


@dataclass(frozen=True)
class Upgrade:
    """Layer ``name`` (``weights`` weights) at ``bits``: its KL from the float model when alone quantized."""

    name: str
    weights: int
    bits: int
    kl: float


def kl_from(reference: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL(softmax(reference) || softmax(logits)) over images (temperature 1)."""
    target = F.log_softmax(torch.from_numpy(reference).double(), dim=1)
    return float(F.kl_div(F.log_softmax(torch.from_numpy(logits).double(), dim=1), target,
                          log_target=True, reduction="batchmean"))


def layer_sensitivity(model: torch.nn.Module, images: np.ndarray, bits: tuple[int, ...], min_weights: int = 0,
                      progress: bool = True, keep_going=lambda: True) -> list[Upgrade]:
    """For every conv and linear layer of ``model`` (float, eval) with at least ``min_weights`` weights
    and every width in ``bits``: the KL of the outputs on ``images`` when that layer alone is rounded.
    ``keep_going()`` is asked before each layer: False raises `TimeoutError` (a caller's time budget)."""
    from edge.export.calibrate import set_weights
    from edge.export.sensitivity import logits
    from edge.models.fold import fold_model, model_layers
    from edge.codec.quant import minmax_encode

    folded = fold_model(model)
    reference = logits(folded, images)
    layers = [layer for layer in model_layers(folded) if layer.weight.size >= min_weights]
    rows = []
    for layer in tqdm(layers, desc="mixed precision: layer sensitivity", unit="layer", disable=not progress):
        if not keep_going():
            raise TimeoutError(f"layer sensitivity stopped before {layer.name}")
        for width in bits:
            set_weights(folded, layer.name, minmax_encode(layer.weight, width, per_channel=True,
                                                          range_dtype=np.float16).decode())
            rows.append(Upgrade(layer.name, layer.weight.size, width, kl_from(reference, logits(folded, images))))
        set_weights(folded, layer.name, layer.weight)
    return rows


def allocate(rows: list[Upgrade], base_bits: int, budget_bytes: float, stream_bytes: float = 0) -> dict[str, int]:
    """{layer: bits} raising layers above ``base_bits`` within ``budget_bytes`` extra bytes, greedily by KL
    drop per byte (a layer's next step may skip widths: 4 -> 6 when 5 buys little); the first layer of
    each new width also pays ``stream_bytes``."""
    by_layer: dict[str, list[Upgrade]] = {}
    for row in rows:
        by_layer.setdefault(row.name, []).append(row)
    current = {name: next((r for r in options if r.bits == base_bits), None) for name, options in by_layer.items()}
    chosen: dict[str, int] = {}
    used, left = {base_bits}, float(budget_bytes)
    while True:
        best, best_rate = None, 0.0
        for name, options in by_layer.items():
            now = current[name]
            if now is None:
                continue
            for row in options:
                cost = row.weights * (row.bits - now.bits) / 8 + stream_bytes * (row.bits not in used)
                if row.bits > now.bits and cost <= left and (now.kl - row.kl) / cost > best_rate:
                    best, best_rate = row, (now.kl - row.kl) / cost
        if best is None:
            return chosen
        left -= best.weights * (best.bits - current[best.name].bits) / 8 + stream_bytes * (best.bits not in used)
        current[best.name], chosen[best.name] = best, best.bits
        used.add(best.bits)
