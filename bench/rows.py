"""One result row (a backend x weight format of one model) and how its repeats are summarised.

Every timed quantity is kept per repeat and reported as min / median / max over the repeats,
so two runs can be compared against their own spread. Speed-ups are paired per repeat (the
rows of one repeat ran back to back, so they shared that moment's machine noise).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

REFERENCE = ("torch-cpu", "fp32")  # the row every other row of a model is compared with (when it ran)
AUTO_AGREEMENT = 0.995  # top-1 agreement with fp32 a row needs to be `--provider auto`'s choice


def _agreement(ours: dict, theirs: dict) -> float | None:
    shared = [i for i in ours if i in theirs]
    return float(np.mean([ours[i] == theirs[i] for i in shared])) if shared else None


def spread(values: list[float]) -> dict[str, float] | None:
    """min / median / max of ``values`` (None when there are none)."""
    if not values:
        return None
    return {"min": float(np.min(values)), "median": float(np.median(values)), "max": float(np.max(values))}


def summarise_times(times: dict[int, list[float]]) -> dict:
    """One repeat's per-call seconds -> latency percentiles at the smallest batch and img/s per batch."""
    batches = sorted(times)
    first = np.asarray(times[batches[0]]) * 1e3
    return {"latency_batch": batches[0], "p50_ms": float(np.percentile(first, 50)),
            "p90_ms": float(np.percentile(first, 90)), "calls": {b: len(times[b]) for b in batches},
            "img_s": {b: b * len(times[b]) / float(np.sum(times[b])) for b in batches}}


@dataclass
class Row:
    """What one backend did with one weight format of one model, over all repeats."""

    model: str
    backend: str
    fmt: str
    bytes: int | None
    parameters: int
    flops: int
    weights: dict | None = None  # ONNX rows: the file's weight format as its metadata describes it
    compute: str = "fp32"  # the compute precision (`edge.core.backends.COMPUTES`)
    status: str = "ok"  # ok | unavailable | error
    reason: str = ""
    runs: list[dict] = field(default_factory=list)  # one summary per repeat
    rss_bytes: dict[int, int] = field(default_factory=dict)  # batch -> peak RSS once it had run (first repeat)
    providers: list[str] = field(default_factory=list)
    torch_loaded: bool | None = None
    predict: dict | None = None
    agreement: float | None = None
    speedup: dict | None = None  # torch-cpu fp32 latency / this row's, paired per repeat
    predictions: dict = field(default_factory=dict, repr=False)
    calib_answers: list = field(default_factory=list, repr=False)  # top-1 on the calibration photos
    fp32: dict | None = None  # the fp32 reference row, paired: its name, speed-up, agreement on data and calib

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def fail(self, status: str, reason: str) -> None:
        self.status, self.reason = status, reason

    def record(self, status: str, reply) -> None:
        """Add one repeat's ``measure`` reply (or turn the row into an unavailable/error row); its batch
        sizes arrive as JSON keys (strings)."""
        if status != "ok":
            return self.fail(status, str(reply))
        summary = summarise_times({int(b): t for b, t in reply["times"].items()})
        self.runs.append({"load_ms": reply["load_s"] * 1e3, **summary, "lanes_faster": reply.get("lanes_faster")})
        self.rss_bytes = self.rss_bytes or {int(b): rss for b, rss in reply["rss_bytes"].items()}  # later repeats' peaks include larger batches
        self.providers, self.torch_loaded = reply["providers"], reply["torch_loaded"]

    def record_predict(self, status: str, reply) -> None:
        if status != "ok":
            return self.fail(status, str(reply))
        self.predictions = reply.pop("predictions")
        self.predict = reply

    def metric(self, key: str) -> dict | None:
        return spread([run[key] for run in self.runs])

    def throughput(self, batch: int) -> dict | None:
        return spread([run["img_s"][batch] for run in self.runs])

    @property
    def top_batch(self) -> int | None:
        return max(self.runs[0]["img_s"]) if self.runs else None

    def gflops(self) -> dict | None:
        """Achieved GFLOP/s at the largest batch (FLOPs per image x img/s)."""
        achieved = self.throughput(self.top_batch) if self.runs else None
        return {k: v * self.flops / 1e9 for k, v in achieved.items()} if achieved else None

    def compare_to(self, reference: "Row") -> None:
        """Set ``speedup`` (reference latency / ours per repeat) and, with predictions, top-1 agreement."""
        if self.runs and len(reference.runs) == len(self.runs):
            self.speedup = spread([r["p50_ms"] / ours["p50_ms"] for r, ours in zip(reference.runs, self.runs)])
        self.agreement = _agreement(self.predictions, reference.predictions)

    def compare_to_fp32(self, reference: "Row") -> None:
        """Set ``fp32``: latency speed-up over the model's fp32 reference row (paired per repeat) and top-1
        agreement with it on --data and on the calibration photos."""
        speedup = None
        if self.runs and len(reference.runs) == len(self.runs):
            speedup = spread([r["p50_ms"] / ours["p50_ms"] for r, ours in zip(reference.runs, self.runs)])
        self.fp32 = {"reference": f"{reference.backend} {reference.fmt}", "speedup": speedup,
                     "agreement": _agreement(self.predictions, reference.predictions),
                     "calib_agreement": _agreement(dict(enumerate(self.calib_answers)),
                                                   dict(enumerate(reference.calib_answers)))}

    @property
    def fp32_agreement(self) -> float | None:
        return self.fp32["agreement"] if self.fp32 else None

    @property
    def calib_agreement(self) -> float | None:
        return self.fp32["calib_agreement"] if self.fp32 else None

    @property
    def best_batch(self) -> int | None:
        """The batch with the most images/s (median over repeats)."""
        if not self.runs:
            return None
        return max(self.runs[0]["img_s"], key=lambda b: self.throughput(b)["median"])

    def to_json(self) -> dict:
        top = self.top_batch
        first = self.runs[0] if self.runs else {}
        return {"model": self.model, "backend": self.backend, "format": self.fmt, "compute": self.compute,
                "status": self.status,
                "reason": self.reason, "weights": self.weights, "bytes": self.bytes, "parameters": self.parameters,
                "mflops_per_image": self.flops / 1e6, "providers": self.providers, "torch_loaded": self.torch_loaded,
                "load_ms": self.metric("load_ms"), "latency_batch": first.get("latency_batch"),
                "p50_ms": self.metric("p50_ms"), "p90_ms": self.metric("p90_ms"),
                "img_s": {str(b): self.throughput(b) for b in first.get("img_s", ())},
                "gflops_batch": top, "gflops": self.gflops(), "best_batch": self.best_batch,
                "peak_rss_mb": {str(b): rss / 2 ** 20 for b, rss in self.rss_bytes.items()} or None,
                "speedup_vs_torch_cpu_fp32": self.speedup, "agreement_vs_torch_fp32": self.agreement,
                "vs_fp32": self.fp32, "predict": self.predict, "repeats": self.runs}
