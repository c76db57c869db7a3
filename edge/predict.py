"""Predict a folder of images -> the Kaggle CSV (``Id,label``), with accuracy when labels are known.

Images are decoded by a pool of threads (Pillow releases the GIL while decoding) a few
batches ahead of the model, so decoding overlaps inference and memory stays bounded.
"""

from __future__ import annotations

import csv
import sys
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.config import Preprocess
from edge.data import Sample
from edge.files import atomic_write
from edge.preprocess import ImageError, load_image

PREFETCH_BATCHES = 2


@dataclass
class Predictions:
    samples: list[Sample]
    labels: np.ndarray
    skipped: list[str] = field(default_factory=list)

    def accuracy(self, truth: dict[str, int] | None = None) -> tuple[float, int] | None:
        """(accuracy, count) over samples with a known label (from ``truth`` or file names)."""
        pairs = [(p, truth.get(s.id) if truth is not None else s.label) for s, p in zip(self.samples, self.labels)]
        pairs = [(p, t) for p, t in pairs if t is not None]
        if not pairs:
            return None
        return float(np.mean([p == t for p, t in pairs])), len(pairs)


class BadImages(ValueError):
    def __init__(self, problems: list[str]):
        super().__init__(f"{len(problems)} image(s) could not be read:\n  " + "\n  ".join(problems)
                         + "\n(use --skip-bad to predict the others and list these)")
        self.problems = problems


def open_model(path: str | Path, provider: str = "cpu", threads: int | None = None,
               pools: tuple[int, ...] | None = None):
    """An ONNX file -> `OnnxClassifier` (no torch); any checkpoint -> `TorchClassifier`."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        from edge.runtime import OnnxClassifier

        return OnnxClassifier(path, provider, threads)
    from edge.checkpoints import load_checkpoint
    from edge.torch_backend import TorchClassifier

    device = {"cpu": "cpu", "torch-cpu": "cpu", "cuda": "cuda", "torch-cuda": "cuda"}.get(provider, provider)
    return TorchClassifier(load_checkpoint(path, pools=pools), device, threads)


def _load(sample: Sample, spec: Preprocess):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            array, error = load_image(sample.path, spec), None
        except ImageError as err:
            array, error = None, str(err)
    return array, error, [str(w.message) for w in caught]


def iter_batches(samples: list[Sample], spec: Preprocess, batch_size: int, workers: int):
    """Yield (samples, arrays, errors, warnings) per batch, decoding ahead in ``workers`` threads."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        pending: deque = deque()
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            pending.append((chunk, [pool.submit(_load, s, spec) for s in chunk]))
            if len(pending) > PREFETCH_BATCHES:
                yield _collect(*pending.popleft())
        while pending:
            yield _collect(*pending.popleft())


def _collect(chunk, futures):
    results = [f.result() for f in futures]
    return chunk, [r[0] for r in results], [r[1] for r in results], [m for r in results for m in r[2]]


def predict_samples(model, samples: list[Sample], batch_size: int = 32, workers: int = 4,
                    skip_bad: bool = False, progress: bool = True) -> Predictions:
    """Run ``model`` over ``samples``; bad images fail the run (listed together) unless ``skip_bad``."""
    from tqdm import tqdm

    kept, labels, problems = [], [], []
    bar = tqdm(total=len(samples), unit="img", disable=not progress, file=sys.stderr, desc="predict")
    for chunk, arrays, errors, notes in iter_batches(samples, model.card.preprocess, batch_size, workers):
        for note in notes:
            bar.write(f"warning: {note}")
        problems += [e for e in errors if e]
        good = [(s, a) for s, a, e in zip(chunk, arrays, errors) if e is None]
        if good and (skip_bad or not problems):
            logits = model(np.stack([a for _, a in good]))
            kept += [s for s, _ in good]
            labels.append(logits.argmax(axis=1))
        bar.update(len(chunk))
    bar.close()
    if problems and not skip_bad:
        raise BadImages(problems)
    return Predictions(kept, np.concatenate(labels) if labels else np.zeros(0, np.int64), problems)


def write_csv(path: str | Path, predictions: Predictions) -> None:
    """The Kaggle submission: ``Id,label`` sorted by id, written atomically."""
    def write(f):
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Id", "label"])
        writer.writerows((s.id, int(label)) for s, label in zip(predictions.samples, predictions.labels))

    atomic_write(path, write, binary=False)
