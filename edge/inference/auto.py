"""Measure before choosing: `edge predict --provider auto` and ``--compute`` other than fp32 on an .onnx file.

Every installed CPU backend that runs .onnx files (`edge.core.backends`) x each compute precision it runs
is a candidate. Each is opened as `edge predict` would open it, answers the calibration photos (the first
`CALIB_IMAGES` of ``--calib``, by default of the folder to predict: agreement needs no labels) and is timed
there; its top-1 agreement with ONNX Runtime fp32 (today's answers) is measured on the same photos. Auto
takes the fastest candidate whose agreement is at least `AGREEMENT`; an explicit compute precision is
run whatever its agreement, which is reported beside it. A candidate that cannot run here (no openvino,
no bf16 instructions, no onnx for int8) says why and is left out. No torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edge.core.backends import BACKENDS, ProviderUnavailable, compute_missing, resolve, unavailable
from edge.core.errors import EdgeError
from edge.inference.openers import backend_handler, with_compute

AGREEMENT = 0.995  # the least top-1 agreement with fp32 on the calibration photos `--provider auto` accepts
CALIB_IMAGES = 200  # calibration photos the agreement and the timing are measured on
TIMED_CALLS = 20  # engine calls timed per candidate (the median is kept)


@dataclass
class Trial:
    """One candidate: its backend and compute, ms per image as predict runs it, agreement with fp32 (or why
    it could not run)."""

    backend: str
    compute: str
    ms_per_image: float | None = None
    agreement: float | None = None
    reason: str = ""

    def text(self) -> str:
        if self.reason:
            return f"{self.backend} {self.compute}: {self.reason}"
        return f"{self.backend} {self.compute}: {self.ms_per_image:.2f} ms/image, {self.agreement:.2%} agreement"

    def to_json(self) -> dict:
        return dict(self.__dict__)


def candidates() -> list[tuple[str, str]]:
    """(backend, compute) of every CPU backend that runs .onnx files, ONNX Runtime fp32 (the reference) first."""
    pairs = [(b.name, c) for b in BACKENDS if b.is_onnx and b.device == "cpu" for c in b.computes]
    return sorted(pairs, key=lambda pair: pair != ("ort-cpu", "fp32"))


def _open(path, backend_name: str, compute: str, threads, calib):
    """(classifier, lanes) as `edge predict` opens ``path`` on this backend and compute."""
    backend = resolve(backend_name)
    handler = backend_handler(backend.kind)
    call_threads, lanes = handler.lanes(backend, threads)
    return handler.open(path, backend, call_threads, variant=with_compute("", compute), calib=calib), lanes


def _ms_per_image(model, images: np.ndarray, lanes: int) -> float:
    """Median ms per image of one micro-batch call, shared among ``lanes`` calls at once."""
    batch = images[:model.micro_batch]
    model(batch)
    times = []
    for _ in range(TIMED_CALLS):
        start = time.perf_counter()
        model(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3 / len(batch) / lanes


def _why_not(backend_name: str, compute: str) -> str | None:
    backend = resolve(backend_name)
    return unavailable(backend) or compute_missing(backend, compute)


def _trial(path, backend_name, compute, threads, calib, images, reference):
    """-> (Trial, (classifier, lanes) or None)."""
    reason = _why_not(backend_name, compute)
    if reason:
        return Trial(backend_name, compute, reason=reason), None
    try:
        model, lanes = _open(path, backend_name, compute, threads, calib)
    except (EdgeError, ImportError) as err:
        return Trial(backend_name, compute, reason=str(err).splitlines()[0]), None
    answers = model(images).argmax(axis=1)
    agreement = 1.0 if reference is None else float(np.mean(answers == reference))
    return Trial(backend_name, compute, _ms_per_image(model, images, lanes), agreement), (model, lanes)


def _reference(path, threads, calib):
    """ONNX Runtime fp32's classifier, its lanes and the calibration photos."""
    from edge.data.preprocess import first_images

    model, lanes = _open(path, "ort-cpu", "fp32", threads, calib)
    return model, lanes, first_images(calib, model.card, CALIB_IMAGES)


def choose(path, calib, threads: int | None = None, only: tuple[str, str] | None = None):
    """-> (classifier, lanes, report): ``only`` = (backend, compute) measures that one candidate against fp32;
    None chooses among all (`candidates`). The report: the choice, the rule, every trial."""
    if only and _why_not(*only):
        raise ProviderUnavailable(f"--compute {only[1]} on {only[0]}: {_why_not(*only)}")
    reference, lanes, images = _reference(path, threads, calib)
    fp32 = reference(images).argmax(axis=1)
    first = Trial("ort-cpu", "fp32", _ms_per_image(reference, images, lanes), 1.0)
    trials, opened = [first], {("ort-cpu", "fp32"): (reference, lanes)}
    for backend_name, compute in [only] if only else candidates()[1:]:
        if (backend_name, compute) in opened:
            continue
        trial, model = _trial(path, backend_name, compute, threads, calib, images, fp32)
        trials.append(trial)
        if model:
            opened[(backend_name, compute)] = model
    pick = _pick(trials, only)
    model, model_lanes = opened[(pick.backend, pick.compute)] if not pick.reason else (None, 0)
    report = {"mode": "compute" if only else "auto", "backend": pick.backend, "compute": pick.compute,
              "agreement": pick.agreement, "ms_per_image": pick.ms_per_image, "images": len(images),
              "calib": str(calib), "rule": f"fastest with >= {AGREEMENT:.1%} top-1 agreement with ort-cpu fp32",
              "trials": [t.to_json() for t in trials]}
    if model is None:
        raise ProviderUnavailable(f"--compute {pick.compute} on {pick.backend}: {pick.reason}")
    return model, model_lanes, report


def _pick(trials: list[Trial], only) -> Trial:
    if only:
        return trials[-1] if tuple(only) != ("ort-cpu", "fp32") else trials[0]
    keep = [t for t in trials if not t.reason and t.agreement >= AGREEMENT]
    return min(keep, key=lambda t: t.ms_per_image)


def summary(report: dict) -> str:
    """One line for the log: what runs and what it was measured to agree."""
    chosen = f"{report['backend']} {report['compute']}"
    photos = "calibration photo" + ("" if report["images"] == 1 else "s")
    measured = (f"{report['agreement']:.2%} top-1 agreement with fp32 on {report['images']} {photos} of "
                f"{report['calib']}, {report['ms_per_image']:.2f} ms/image")
    if report["mode"] == "compute":
        return f"compute {chosen}: {measured}"
    others = "; ".join(Trial(**t).text() for t in report["trials"] if (t["backend"], t["compute"]) != (
        report["backend"], report["compute"]))
    return f"--provider auto chose {chosen} ({measured}; {report['rule']}; others: {others})"

