"""Weight sharing: a small codebook of values per tensor (or per output channel), fitted to output error.

Deep Compression (Han et al., ICLR 2016) clusters each layer's weights with k-means and stores
indices plus the centroids. Clustering the weights themselves minimises weight error; what matters
is the layer's output on real inputs, ``||(W - Ŵ) X||²``, whose Hessian ``H = X Xᵀ`` calibration
already computes (`export.calibrate`). So, per layer:

1. k-means on the weights, each weighted by its input column's energy ``H[k, k]`` (1-D weighted
   Lloyd iterations from weighted quantiles; data-free: weights 1);
2. GPTQ-style assignment: columns are mapped to their nearest centroid one at a time and each
   rounding error is pushed onto the columns not yet assigned (`export.calibrate.gptq_codes`);
3. the centroids refitted by least squares on the full Hessian with the assignment fixed
   (minimising ``Σ_r (w_r - A_r c)ᵀ H (w_r - A_r c)`` over the codebook ``c``), then stored as fp16.
"""

from __future__ import annotations

import numpy as np
import torch

from edge.quant import CodebookCode

LLOYD_ITERATIONS = 40


def weighted_kmeans_1d(values: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Sorted centroids (at most ``k``, fewer when ``values`` has fewer distinct entries) of 1-D
    weighted k-means: Lloyd iterations started at weighted quantiles."""
    order = np.argsort(values, kind="stable")
    x, w = values[order].astype(np.float64), np.maximum(weights[order].astype(np.float64), 1e-12)
    distinct = np.unique(x)
    if len(distinct) <= k:
        return distinct
    cumulative = np.cumsum(w) / w.sum()
    centroids = np.unique(x[np.searchsorted(cumulative, (np.arange(k) + 0.5) / k).clip(0, len(x) - 1)])
    for _ in range(LLOYD_ITERATIONS):
        cluster = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, x)
        mass = np.bincount(cluster, w, len(centroids))
        updated = np.where(mass > 0, np.bincount(cluster, w * x, len(centroids)) / np.where(mass > 0, mass, 1),
                           centroids)
        if np.allclose(updated, centroids, rtol=0, atol=1e-12):
            break
        centroids = np.sort(updated)
    return centroids


def fit_codebooks(weights: np.ndarray, importance: np.ndarray, k: int, per_channel: bool) -> np.ndarray:
    """(k,) codebook for the tensor, or (out, k) per output channel (axis 0), padded by repeating the
    last centroid where a channel has fewer than ``k`` distinct weights."""
    rows = [(weights.reshape(len(weights), -1), importance.reshape(len(weights), -1))] if not per_channel else \
        [(w[None], i[None]) for w, i in zip(weights.reshape(len(weights), -1), importance.reshape(len(weights), -1))]
    books = []
    for w, i in rows:
        centroids = weighted_kmeans_1d(w.reshape(-1), i.reshape(-1), k)
        books.append(np.concatenate([centroids, np.repeat(centroids[-1:], k - len(centroids))]))
    return np.stack(books) if per_channel else books[0]


def codebook_quantizer(books: torch.Tensor):
    """``quantize(column (G, R)) -> (codes, values)``: the nearest entry of ``books`` (G, R, K), broadcast."""

    def quantize(column: torch.Tensor):
        codes = torch.argmin(torch.abs(column[..., None] - books), dim=-1)
        return codes, torch.gather(books.expand(*column.shape, books.shape[-1]), -1, codes[..., None])[..., 0]

    return quantize


def refit_codebooks(weights: torch.Tensor, hessian: torch.Tensor, codes: torch.Tensor, books: torch.Tensor,
                    per_channel: bool, damping: float = 1e-3) -> torch.Tensor:
    """Least-squares centroids for fixed ``codes``: minimise the output error through ``hessian``.

    ``weights``/``codes`` are (G, R, K_in), ``hessian`` (G, K_in, K_in), ``books`` (G, R, K) (per
    channel) or (1, 1, K). A small ridge towards the current centroids keeps empty clusters put.
    """
    onehot = torch.nn.functional.one_hot(codes, books.shape[-1]).to(weights.dtype)  # (G, R, K_in, K)
    h_onehot = torch.einsum("gij,grjl->gril", hessian, onehot)
    if per_channel:
        normal = torch.einsum("grik,gril->grkl", onehot, h_onehot)
        target = torch.einsum("gril,gri->grl", h_onehot, weights)
    else:
        normal = torch.einsum("grik,gril->kl", onehot, h_onehot)[None, None]
        target = torch.einsum("gril,gri->l", h_onehot, weights)[None, None]
    ridge = damping * torch.diagonal(normal, dim1=-2, dim2=-1).mean(-1).clamp_min(1e-12)[..., None]
    eye = torch.eye(books.shape[-1], dtype=weights.dtype)
    return torch.linalg.solve(normal + ridge[..., None] * eye, target + ridge * books)


def _half(books: torch.Tensor) -> torch.Tensor:
    return books.to(torch.float16).to(books.dtype)


def _grouped_books(layer, books: np.ndarray, per_channel: bool) -> torch.Tensor:
    from export.calibrate import grouped

    return grouped(layer, books) if per_channel else torch.from_numpy(books.astype(np.float64))[None, None]


def plain_codebook(weight: np.ndarray, k: int, per_channel: bool) -> CodebookCode:
    """Data-free weight sharing: unweighted k-means, each weight to its nearest fp16 centroid."""
    books = fit_codebooks(weight, np.ones_like(weight), k, per_channel).astype(np.float16)
    table = torch.from_numpy(books.astype(np.float64))
    flat = torch.from_numpy(weight.reshape(len(weight), -1).astype(np.float64))
    codes, _ = codebook_quantizer(table[:, None, :] if per_channel else table[None, None])(flat)
    return CodebookCode(codes.reshape(weight.shape).numpy().astype(np.uint8), books)


def calibrated_codebook(layer, hessian: torch.Tensor, k: int, per_channel: bool, refits: int = 2) -> CodebookCode:
    """Weight sharing fitted to ``layer``'s output error through its input ``hessian`` (G, K_in, K_in):
    Hessian-weighted k-means, then ``refits`` rounds of GPTQ assignment + least-squares centroids."""
    from export.calibrate import grouped, gptq_codes

    weights = grouped(layer, layer.weight)
    importance = torch.diagonal(hessian, dim1=1, dim2=2)[:, None, :].expand_as(weights)
    books = _grouped_books(layer, fit_codebooks(layer.weight, importance.reshape(layer.weight.shape).numpy(), k,
                                                per_channel), per_channel)
    books = _half(books)
    for _ in range(refits):
        codes = gptq_codes(weights, hessian, codebook_quantizer(books))
        books = _half(refit_codebooks(weights, hessian, codes, books, per_channel))
    codes = gptq_codes(weights, hessian, codebook_quantizer(books))
    table = books.reshape(len(layer.weight), k) if per_channel else books.reshape(k)
    return CodebookCode(codes.reshape(layer.weight.shape).numpy().astype(np.uint8), table.numpy().astype(np.float16))


def finetune_codebooks(layers, encodings: dict, teacher_layers, images: np.ndarray, epochs: int,
                       lr: float = 3e-4, batch: int = 16, seed: int = 0, progress: bool = True):
    """Trained quantization (Deep Compression's centroid fine-tuning) by knowledge distillation:
    the codebooks and every bias are trained, indices fixed, to match ``teacher_layers``' logits
    (MSE) on ``images`` (unlabelled). -> (layers, encodings) with fp16-rounded codebooks and biases."""
    import dataclasses

    from tqdm import tqdm

    from export.calibrate import activation, folded_forward, pre_activation

    torch.manual_seed(seed)
    targets = torch.from_numpy(folded_forward(teacher_layers, images))
    books = {n: torch.nn.Parameter(torch.from_numpy(e.codebook.astype(np.float32)))
             for n, e in encodings.items() if isinstance(e, CodebookCode)}
    indices = {n: torch.from_numpy(encodings[n].q.reshape(len(encodings[n].q), -1).astype(np.int64)
                                   if encodings[n].per_channel else encodings[n].q.astype(np.int64)) for n in books}
    biases = [torch.nn.Parameter(torch.from_numpy(layer.bias.copy())) for layer in layers]
    fixed = {layer.name: torch.from_numpy(layer.weight) for layer in layers if layer.name not in books}

    def weight(layer):
        if layer.name not in books:
            return fixed[layer.name]
        book, idx = books[layer.name], indices[layer.name]
        w = torch.gather(book, 1, idx) if book.ndim == 2 else book[idx]
        return w.reshape(layer.weight.shape)

    def forward(x):
        for layer, bias in zip(layers, biases):
            x = activation(layer, pre_activation(layer, x, weight(layer), bias))
        return x

    optimizer = torch.optim.Adam([*books.values(), *biases], lr=lr)
    data = torch.from_numpy(np.ascontiguousarray(images))
    steps = tqdm(range(epochs), desc="fine-tuning codebooks (KD)", unit="epoch", disable=not progress)
    for _ in steps:
        order = torch.randperm(len(data))
        total = 0.0
        for start in range(0, len(data), batch):
            pick = order[start:start + batch]
            loss = torch.nn.functional.mse_loss(forward(data[pick]), targets[pick])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(pick)
        steps.set_postfix(mse=f"{total / len(data):.4f}")
    tuned_layers, tuned = [], dict(encodings)
    with torch.no_grad():
        for layer, bias in zip(layers, biases):
            if layer.name in books:
                tuned[layer.name] = dataclasses.replace(encodings[layer.name],
                                                        codebook=books[layer.name].numpy().astype(np.float16))
            tuned_layers.append(dataclasses.replace(layer, weight=tuned[layer.name].decode(),
                                                    bias=bias.numpy().astype(np.float16).astype(np.float32)))
    return tuned_layers, tuned
