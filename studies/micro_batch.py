"""Issue 28, b=32 against b=1: images/s of every CPU engine x compute precision when a batch of 32 photos runs
as micro-batches of 1, 2, 4, 8, 16 or 32 images, next to b=1 on one photo run again and again (what `edge bench`
times as b=1: its input stays in cache) and b=1 over the 32 photos in turn. Engines are opened as `edge bench`
opens a row: with more than one thread a batch's micro-batches may run on single-threaded lanes, one per thread,
where its first spread batch measured them faster (`edge.inference.runtime`). Repeats are interleaved (every
variant of one engine back to back, the engines round-robin), and every figure is a ratio within the run, so
it survives a busy machine. Prints a markdown table (median img/s over repeats, min-max in brackets).

    nice -n 19 python -m studies.micro_batch MODEL --data DIR [--calib DIR] [--threads 1] [--repeats 5] [--clock cpu]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

ENGINES = (("ort-cpu", "fp32"), ("ort-cpu", "int8"), ("ov-cpu", "fp32"), ("ov-cpu", "bf16"), ("ov-cpu", "int8"))
SIZES = (1, 2, 4, 8, 16, 32)
BATCH = 32


def open_engine(path: Path, backend: str, compute: str, threads: int | None, calib: Path | None):
    """The engine as an `edge bench` row opens it (`edge.bench.worker.open_backend`: a batch spread over the
    threads, one single-threaded lane each)."""
    from edge.bench.worker import Target, open_backend
    from edge.inference.openers import with_compute

    return open_backend(Target(backend, with_compute("fp32", compute), str(path), threads,
                               calib=str(calib) if calib else None))


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}  # cpu: this process's CPU seconds (a busy machine)


def images_per_second(call, images: int, min_seconds: float, clock=time.perf_counter) -> float:
    """Calls of ``call`` (each ``images`` images) for at least ``min_seconds`` of ``clock``, after a warm-up call."""
    call()
    count, start = 0, clock()
    while count < 3 or clock() - start < min_seconds:
        call()
        count += 1
    return count * images / (clock() - start)


def variants(model, photos: np.ndarray) -> dict:
    """What is timed for one engine: name -> (call, images per call)."""
    def at_micro(size):
        def call():
            model.micro_batch = size
            return model(photos)
        return call

    cycle = iter(range(10 ** 9))
    timed = {"b=1 same photo": (lambda: model(photos[:1]), 1),
             "b=1 photos in turn": (lambda: model(photos[next(cycle) % BATCH][None]), 1)}
    timed.update({f"b=32 as {size}s": (at_micro(size), BATCH) for size in SIZES})
    return timed


def measure(engines: dict, photos: np.ndarray, repeats: int, min_seconds: float, clock) -> dict:
    results: dict = {}
    for repeat in range(repeats):
        names = list(engines)
        shift = repeat % len(names)
        for name in names[shift:] + names[:shift]:
            model = engines[name]
            default = model.micro_batch
            timed = variants(model, photos)
            labels = list(timed)
            turn = repeat % len(labels)  # the variants of an engine rotate too: no drift favours one
            for label in labels[turn:] + labels[:turn]:
                call, images = timed[label]
                results.setdefault(name, dict.fromkeys(labels, None))
                results[name][label] = (results[name][label] or []) + [images_per_second(call, images, min_seconds,
                                                                                          clock)]
            model.micro_batch = default
    return results


def table(results: dict, defaults: dict) -> str:
    labels = list(next(iter(results.values())))
    lines = ["| engine (default micro-batch) | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name, by_label in results.items():
        cells = [f"{np.median(v):.0f} ({min(v):.0f}-{max(v):.0f})" for v in by_label.values()]
        lines.append(f"| {name} ({defaults[name]}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--calib", type=Path)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.3)
    parser.add_argument("--clock", choices=CLOCKS, default="wall",
                        help="cpu: images per CPU second of this process (1 thread on a machine others load)")
    parser.add_argument("--engines", default=",".join(f"{b}:{c}" for b, c in ENGINES))
    args = parser.parse_args(argv)
    from edge.data.preprocess import first_images

    engines = {}
    for entry in args.engines.split(","):
        backend, compute = entry.split(":")
        if compute == "int8" and args.calib is None:
            continue
        engines[f"{backend} {compute}"] = open_engine(args.model, backend, compute, args.threads, args.calib)
    card = next(iter(engines.values())).card
    photos = first_images(args.data, card, BATCH)
    photos = np.ascontiguousarray(np.resize(photos, (BATCH, *photos.shape[1:])))
    defaults = {name: model.micro_batch for name, model in engines.items()}
    load = os.getloadavg()
    results = measure(engines, photos, args.repeats, args.min_seconds, CLOCKS[args.clock])
    print(f"threads {args.threads or 'all'}, {args.clock} clock, {args.repeats} interleaved repeats, load average "
          f"{load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end; images/s median (min-max)\n")
    print(table(results, defaults))


if __name__ == "__main__":
    main()
