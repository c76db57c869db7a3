"""One benchmark row in a process of its own: open one backend, time it, predict a folder with it.

Every row runs in its own ``python -m edge.bench.worker`` process, so its peak RSS is what a deployment
of that backend alone holds, the ONNX Runtime rows never import torch, and a backend that crashes
takes only its own row down. The worker is a fresh interpreter (never a re-import of the caller's
``__main__``: a script calling `edge.benchmark` without a main guard runs once). The parent
(`edge.bench.harness`, through `RowProcess`) talks to it in JSON lines over its stdin and stdout (no
pickle): first the `Target`, then ``[command, kwargs]``; each answer is ``[status, reply]``, status
being ``ready``, ``ok``, ``unavailable`` or ``error``. Anything else the worker prints goes to stderr.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import IO

import numpy as np

from edge.core.backends import Backend, ProviderUnavailable, resolve
from edge.core.cpu import cpu_cores
from edge.core.extras import missing_extra
from edge.inference.openers import BackendHandler, backend_handler
from edge.inference.ort_memory import expect_images


@dataclass(frozen=True)
class Target:
    """What one row runs: a backend, the weights' format, the file, thread count."""

    backend: str  # a canonical name of `edge.core.backends.BACKENDS`
    fmt: str  # ONNX: the file's weight format, "@bf16"/"@int8" for the compute; torch: fp32 | fp16, "+cl" for channels_last
    path: str  # the .onnx file, or the checkpoint torch loads
    threads: int | None = None
    pools: tuple[int, ...] | None = None
    calib: str | None = None  # the photos int8 compute is calibrated on

    @classmethod
    def from_json(cls, fields: dict) -> "Target":
        pools = fields.get("pools")
        return cls(**{**fields, "pools": tuple(pools) if pools is not None else None})

    @property
    def spec(self) -> Backend:
        return resolve(self.backend)

    @property
    def is_onnx(self) -> bool:
        return self.spec.is_onnx

    @property
    def handler(self) -> BackendHandler:
        """What opens the file on this row's backend (`edge.inference.openers`)."""
        return backend_handler(self.spec.kind)


def open_backend(target: Target):
    """The classifier for ``target``, opened by its backend kind's handler: `OnnxClassifier` (no torch) or
    `TorchClassifier` (fp16, channels_last as the row's format says). An ONNX classifier on the CPU spreads a
    batch's micro-batches over its cores (``--threads``, default all), one single-threaded lane each: a batch
    then gets every core without a core waiting on another inside an operator; one image keeps the session's
    own threads."""
    model = target.handler.open(target.path, target.spec, target.threads, target.pools, target.fmt,
                                calib=target.calib)
    if target.is_onnx and target.spec.device == "cpu":
        model.spread(target.threads or cpu_cores())
    return model


def time_calls(model, x: np.ndarray, batch: int, min_calls: int, min_seconds: float) -> list[float]:
    """Seconds per ``model`` call on ``batch`` images, at least ``min_calls`` calls and ``min_seconds`` in all. The
    calls take the images of ``x`` in turn, ``batch`` at a time, so every batch size sees fresh photos: one photo
    run again and again stays in cache and flattered b=1 (by 1.5% on 1 thread; `studies/micro_batch.py`)."""
    chunks = [x[i:i + batch] for i in range(0, len(x) - batch + 1, batch)]
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_seconds:
        images = chunks[len(times) % len(chunks)]
        t0 = time.perf_counter()
        model(images)
        times.append(time.perf_counter() - t0)
    return times


def peak_rss_bytes() -> int:
    """This process's peak resident set size. Linux: VmHWM, which starts afresh at exec (ru_maxrss
    would keep the parent's peak from before the fork); elsewhere ru_maxrss (bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class Worker:
    """The commands a row's process answers; the model stays open between them."""

    def __init__(self, target: Target):
        self.target, self.model = target, None

    def measure(self, inputs: str, batches: list[int], min_seconds: float, min_calls: int) -> dict:
        """Open the backend afresh (timed: session creation with dequantization), then time each batch in the
        order given (the harness alternates it between repeats, so neither batch size always runs first); the
        peak RSS after each batch (in the first repeat, smallest first: what that batch size needs)."""
        x = np.load(inputs)
        expect_images(max(batches))
        self.model = None  # release the previous session before timing a new load
        t0 = time.perf_counter()
        self.model = open_backend(self.target)
        load = time.perf_counter() - t0
        times, rss = {}, {}
        for batch in batches:
            time_calls(self.model, x, batch, 1, min_seconds / 10)  # warm-up
            times[batch] = time_calls(self.model, x, batch, min_calls, min_seconds)
            rss[batch] = peak_rss_bytes()
        session = getattr(self.model, "session", None)
        return {"load_s": load, "times": times, "rss_bytes": rss, "torch_loaded": "torch" in sys.modules,
                "lanes_faster": getattr(self.model, "lanes_faster", None),
                "providers": session.get_providers() if session else [self.model.provider]}

    def predict(self, data_dir: str, labels: str | None, batch: int | None, workers: int | None) -> dict:
        """`edge predict`'s own path over a folder (its batch and decoding threads unless given): wall
        time, and its decode / inference CPU seconds."""
        from edge.data.folders import list_samples, read_labels
        from edge.inference.predict import predict_samples

        model, lanes = self._as_predict_opens_it()
        samples = list_samples(data_dir, model.card.classes, strict_classes=True)
        options = {k: v for k, v in (("batch_size", batch), ("workers", workers)) if v is not None}
        result = predict_samples(model, samples, skip_bad=True, progress=False, lanes=lanes, **options)
        truth = read_labels(labels, len(model.card.classes)) if labels else None
        return {"images": len(result.samples), "seconds": result.wall_s, "img_s": len(result.samples) / result.wall_s,
                "decode_cpu_s": result.decode_cpu_s, "infer_cpu_s": result.infer_cpu_s, "batch": batch,
                "workers": workers, "lanes": lanes, "skipped": len(result.skipped),
                "accuracy": result.accuracy(truth),
                "predictions": dict(zip((s.id for s in result.samples), result.labels.tolist()))}

    def answers(self, folder: str, count: int) -> list[int]:
        """Top-1 of the first ``count`` photos of ``folder`` (the calibration photos `--provider auto` decides on)."""
        from edge.data.preprocess import first_images

        model = self.model or open_backend(self.target)
        return model(first_images(folder, model.card, count)).argmax(axis=1).tolist()

    def _as_predict_opens_it(self):
        """(model, lanes) as `edge predict` opens this row's file (with its compute precision); the torch
        variants it has no option for (fp16, channels_last) run as this row's own classifier, one call at a time."""
        target = self.target
        options = target.handler.options(target.fmt)
        if set(options) <= {"compute"}:
            from edge.inference.predict import open_model

            return open_model(target.path, target.backend, target.threads, None if target.is_onnx else target.pools,
                              compute=options.get("compute", "fp32"), calib=target.calib)
        return self.model or open_backend(target), 1


COMMANDS = ("measure", "predict", "answers")  # the `Worker` methods the parent may call


def send(stream: IO[str], message) -> None:
    """One JSON line (numpy scalars as Python numbers)."""
    stream.write(json.dumps(message, default=lambda value: value.item()) + "\n")
    stream.flush()


def receive(stream: IO[str]):
    """The next JSON line; EOFError when the other side has closed the stream."""
    line = stream.readline()
    if not line:
        raise EOFError
    return json.loads(line)




def _answer(worker: Worker, command: str, kwargs: dict) -> list:
    if command not in COMMANDS:
        return ["error", f"unknown worker command {command!r}"]
    try:
        return ["ok", getattr(worker, command)(**kwargs)]
    except ProviderUnavailable as err:
        return ["unavailable", str(err)]
    except Exception as err:  # any backend failure becomes this row's error, never the run's
        return ["error", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"]


def serve(requests: IO[str], replies: IO[str]) -> None:
    """The worker's loop: read the target, say ready, then answer commands until ``stop`` or end of input."""
    target = Target.from_json(receive(requests))
    try:
        target.handler.preload()
    except ImportError as err:  # torch rows of a runtime-only install
        return send(replies, ["unavailable", str(missing_extra(err, target.backend) or err)])
    send(replies, ["ready", None])
    worker = Worker(target)
    while True:
        try:
            command, kwargs = receive(requests)
        except EOFError:
            return
        if command == "stop":
            return
        send(replies, _answer(worker, command, kwargs))


def main() -> None:
    """``python -m edge.bench.worker``: replies go to the original stdout; everything else printed (by
    edge or by a library's C code) to stderr, so it can never garble a reply. Ctrl-C is the parent's to
    handle: it stops its workers (and a worker whose parent is gone ends at the end of its input)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin, replies)


# a fresh interpreter that does not put the working folder first on sys.path (Python 3.11+: -P), so a
# file there named like a library cannot stand in for it
WORKER_COMMAND = [sys.executable, *(["-P"] if sys.version_info >= (3, 11) else []), "-m", "edge.bench.worker"]


class RowProcess:
    """The parent's handle on one worker process."""

    def __init__(self, target: Target):
        self.process = subprocess.Popen(WORKER_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        encoding="utf-8")
        self._send(asdict(target))

    def wait_ready(self) -> tuple[str, object]:
        return self._receive()

    def call(self, command: str, **kwargs) -> tuple[str, object]:
        return self._send([command, kwargs]) or self._receive()

    def _send(self, message) -> tuple[str, str] | None:
        """Send ``message``; the died row's answer when the worker is gone, else None."""
        try:
            send(self.process.stdin, message)
        except (BrokenPipeError, ConnectionResetError, OSError, ValueError):
            return self._died()
        return None

    def _receive(self) -> tuple[str, object]:
        try:
            status, reply = receive(self.process.stdout)
        except EOFError:
            return self._died()
        except (ValueError, TypeError):
            return "error", "the worker process sent a reply that is not [status, reply] JSON"
        return status, reply

    def _died(self) -> tuple[str, str]:
        try:
            code = self.process.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        return "error", f"the worker process died (exit code {code})"

    def close(self) -> None:
        self._send(["stop", {}])
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass


if __name__ == "__main__":
    main()
