"""Predict a folder of images -> the Kaggle CSV (``Id,label``), with accuracy when labels are known.

The images are cut into batches and a pool of threads works on them: each thread decodes a
whole batch (libjpeg-turbo and Pillow release the GIL) and then runs the model on it. On ONNX
Runtime's CPU provider the session is single-threaded and up to ``lanes`` batches run through
it at once, one per core, so no core waits for another inside an operator and decoding fills
the gaps; other models (CUDA, torch) get one call at a time. Results are taken in order, so
the CSV does not depend on thread counts, and only the batches in flight are held in memory.
"""

from __future__ import annotations

import csv
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.core import extras
from edge.core.backends import LIBRARIES, ONNXRUNTIME, TORCH, BackendError, ProviderUnavailable, resolve, unavailable
from edge.core.config import Preprocess
from edge.data.folders import Sample
from edge.core.errors import EdgeError
from edge.core.files import atomic_write
from edge.data.preprocess import ImageError, read_image, to_array
from edge.core.cpu import cpu_cores
from edge.inference.openers import backend_handler, with_compute


@dataclass
class Predictions:
    samples: list[Sample]
    labels: np.ndarray
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    decode_cpu_s: float = 0.0  # CPU seconds spent reading, decoding and preprocessing images
    infer_cpu_s: float = 0.0  # CPU seconds of the threads that called the model (not torch's own pool)

    def accuracy(self, truth: dict[str, int] | None = None) -> tuple[float, int] | None:
        """(accuracy, count) over samples with a known label (from ``truth`` or file names)."""
        pairs = [(p, truth.get(s.id) if truth is not None else s.label) for s, p in zip(self.samples, self.labels)]
        pairs = [(p, t) for p, t in pairs if t is not None]
        if not pairs:
            return None
        return float(np.mean([p == t for p, t in pairs])), len(pairs)


class BadImages(EdgeError, ValueError):
    def __init__(self, problems: list[str], all_bad: bool = False):
        hint = ("(none could be read, so nothing was written)" if all_bad
                else "(use --skip-bad to predict the others and list these)")
        super().__init__(f"{len(problems)} image(s) could not be read:\n  " + "\n  ".join(problems) + "\n" + hint)
        self.problems = problems


class NonFiniteOutput(EdgeError):
    """The model answered NaN or inf: a damaged model, not an answer."""


def open_model(path: str | Path, provider: str = "cpu", threads: int | None = None,
               pools: tuple[int, ...] | str | None = None, images_from: str | Path | None = None,
               compute: str = "fp32", calib: str | Path | None = None):
    """-> (classifier, lanes): an ONNX file (by name or content) runs on ONNX Runtime (`OnnxClassifier`, no
    torch), any other model file edge reads (`edge.io.checkpoints.load_model`) on torch (`TorchClassifier`),
    each opened by its backend kind's handler (`edge.inference.openers`). ``lanes`` is how many model calls
    may run at once: on ONNX Runtime's CPU provider, ``threads`` (default: all cores) single-threaded calls;
    otherwise 1. A StudentNet whose pools were assumed is checked on the first photos of ``images_from`` (the
    folder to predict), and ``pools="auto"`` takes the best-matching placement (`edge.inference.pools`).
    ``compute``: the precision an ONNX backend computes in (int8 calibrated on the photos of ``calib``)."""
    from edge.core.formats import is_onnx

    path = Path(path)
    onnx_file = is_onnx(path)
    if onnx_file and pools is not None:
        from edge.inference.runtime import ModelError

        raise ModelError(f"{path}: an ONNX file, whose graph fixes its max-pools: --pools describes a homework "
                         "checkpoint's")
    kind = ONNXRUNTIME if onnx_file else TORCH
    backend = _backend(path, provider, kind)
    handler = backend_handler(backend.kind)
    call_threads, lanes = handler.lanes(backend, threads)
    variant = with_compute("", compute)
    return handler.open(path, backend, call_threads, pools, variant, images_from, calib), lanes


def _backend(path: Path, provider: str, kind: str):
    """--provider for this file's kind (`edge.core.backends`), checked to run here; what to do otherwise."""
    try:
        backend = resolve(provider, kind)
    except BackendError as err:
        library = LIBRARIES[kind]
        raise BackendError(f"--provider {err}; {path} is {library.a_file}: use --provider cpu or cuda"
                           + library.advice) from None
    if backend.library.extra:
        extras.require(backend.library.extra)
    reason = unavailable(backend)
    if reason:
        raise ProviderUnavailable(f"--provider {provider} (for {path}): {reason}; or use --provider cpu")
    return backend


@dataclass
class _Batch:
    samples: list[Sample]
    labels: np.ndarray
    problems: list[str]
    notes: list[str]
    decode_cpu_s: float
    infer_cpu_s: float


def _decode_batch(chunk: list[Sample], spec: Preprocess, channels: int):
    """Decode ``chunk`` into one float32 array; -> (array of the good ones, good samples, problems, notes)."""
    arrays = np.empty((len(chunk), channels, spec.crop, spec.crop), np.float32)
    good, problems, notes = [], [], []
    for sample in chunk:
        try:
            pixels, note = read_image(sample.path, spec)
            to_array(pixels, spec, out=arrays[len(good)])
            del pixels  # not held while the next image decodes (a large one is up to 265 MB)
        except ImageError as err:
            problems.append(str(err))
            continue
        good.append(sample)
        notes += [note] if note else []
    return arrays[:len(good)], good, problems, notes


class _Runner:
    """Decode-then-infer tasks for a thread pool; at most ``lanes`` model calls at once."""

    def __init__(self, model, lanes: int, skip_bad: bool):
        self.model, self.gate, self.skip_bad = model, threading.Semaphore(lanes), skip_bad
        self.spec, self.channels = model.card.preprocess, len(model.card.preprocess.color)
        self.failed = threading.Event()  # a bad image without --skip-bad: only decode the rest, to list them

    def __call__(self, chunk: list[Sample]) -> _Batch:
        start = time.thread_time()
        arrays, good, problems, notes = _decode_batch(chunk, self.spec, self.channels)
        decoded = time.thread_time()
        if problems:
            self.failed.set()
        labels = np.zeros(0, np.int64)
        if good and (self.skip_bad or not self.failed.is_set()):
            with self.gate:
                logits = self.model(arrays)
            if not np.isfinite(logits).all():  # argmax would quietly answer class 0
                raise NonFiniteOutput(f"{getattr(self.model, 'path', 'the model')}: gave non-finite logits for "
                                      f"{good[0].path.name}: its weights hold NaN or inf; nothing was written")
            labels = logits.argmax(axis=1)
        return _Batch(good, labels, problems, notes, decoded - start, time.thread_time() - decoded)


def _in_order(pool: ThreadPoolExecutor, task, chunks, ahead: int):
    """Run ``task`` on every chunk in ``pool``, at most ``ahead`` submitted, yielding results in order."""
    pending: deque = deque()
    for chunk in chunks:
        pending.append(pool.submit(task, chunk))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def predict_samples(model, samples: list[Sample], batch_size: int = 4, workers: int | None = None,
                    skip_bad: bool = False, progress: bool = True, lanes: int = 1) -> Predictions:
    """Run ``model`` over ``samples`` with ``max(workers, lanes)`` threads (``workers`` defaults to
    the cores) and up to ``lanes`` concurrent model calls; bad images fail the run (listed
    together) unless ``skip_bad``."""
    from tqdm import tqdm

    pool_size = max(workers or cpu_cores(), lanes)
    runner = _Runner(model, lanes, skip_bad)
    chunks = (samples[i:i + batch_size] for i in range(0, len(samples), batch_size))
    result, labels, start = Predictions([], np.zeros(0, np.int64)), [], time.perf_counter()
    pool = ThreadPoolExecutor(pool_size, thread_name_prefix="predict")
    try:
        with tqdm(total=len(samples), unit="img", disable=not progress, file=sys.stderr, desc="predict") as bar:
            for batch in _in_order(pool, runner, chunks, ahead=2 * pool_size):
                for note in batch.notes:
                    bar.write(f"warning: {note}", file=sys.stderr)
                _add(result, batch, labels)
                bar.update(len(batch.samples) + len(batch.problems))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if result.skipped and (not skip_bad or not result.samples):
        raise BadImages(result.skipped, all_bad=not result.samples)
    result.labels = np.concatenate(labels) if labels else result.labels
    result.wall_s = time.perf_counter() - start
    return result


def _add(result: Predictions, batch: _Batch, labels: list[np.ndarray]) -> None:
    result.samples += batch.samples
    labels.append(batch.labels)
    result.skipped += batch.problems
    result.warnings += batch.notes
    result.decode_cpu_s += batch.decode_cpu_s
    result.infer_cpu_s += batch.infer_cpu_s


def write_csv(path: str | Path, predictions: Predictions) -> None:
    """The Kaggle submission: ``Id,label`` in id order, written atomically (a failure leaves any
    existing file untouched and no partial file behind)."""
    def write(f):
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["Id", "label"])
        writer.writerows((s.id, int(label)) for s, label in zip(predictions.samples, predictions.labels))

    atomic_write(path, write, binary=False)
