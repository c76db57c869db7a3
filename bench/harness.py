"""Plan and run `edge bench`: models x backends x weight formats, repeats interleaved round-robin.

A MODEL is a checkpoint (exported on the fly to every asked format in a temporary folder) or
an .onnx file (run as it is); with none, a freshly initialised homework StudentNet. Backends
that cannot run here get a row saying why. Each runnable row gets a worker process
(`edge.bench.worker`); every repeat visits all rows in turn (starting one further along each time),
so machine noise lands on all rows alike. With a data folder every row then predicts it the
way `edge predict` does, for accuracy, agreement with torch fp32 and end-to-end images/s.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge.bench import machine
from edge.bench.rows import AUTO_AGREEMENT, REFERENCE, Row
from edge.core.backends import NAMES, resolve, unavailable
from edge.bench.worker import RowProcess, Target
from edge.inference.openers import CHANNELS_LAST, COMPUTE_MARK, compute_of, with_compute
from edge.core.weight_formats import BENCH_FORMATS, data_free, parse_choice
from edge.codec.metadata import model_size

DEFAULT_NAME = "default StudentNet (initialised, seed 0)"


@dataclass(frozen=True, kw_only=True)
class Settings:
    providers: tuple[str, ...] = NAMES  # canonical names of `edge.core.backends.BACKENDS`
    quants: tuple[str, ...] = BENCH_FORMATS
    computes: tuple[str, ...] = ("fp32",)  # compute precisions of the ONNX backends that run them
    calib: Path | None = None  # int8's calibration photos; agreement on them decides `auto_choice`
    batches: tuple[int, ...] = (1, 32)
    threads: int | None = None
    repeats: int = 3
    min_seconds: float = 0.5
    min_calls: int = 3
    data: Path | None = None
    labels: Path | None = None
    pools: tuple[int, ...] | None = None
    predict_batch: int | None = None  # the end-to-end pass: None = `edge predict`'s default batch
    workers: int | None = None  # and decoding threads


@dataclass
class Subject:
    """One model under test and the files its rows run."""

    key: int  # position on the command line: names the files made for it
    name: str
    card: object  # edge.core.config.ModelCard
    checkpoint: object = None  # edge.io.checkpoints.Checkpoint when torch can run it
    checkpoint_path: Path | None = None
    onnx: dict[str, Path] = field(default_factory=dict)
    weights: dict[str, dict] = field(default_factory=dict)  # format -> how the file stores its weights
    inputs: Path | None = None
    net: dict | None = None  # parameters and flops: a model file's, or a baseline's ONNX metadata (edge.codec.metadata.read_net)

    def formats(self, backend: str, settings: Settings) -> list[str]:
        spec = resolve(backend)
        if spec.is_onnx:
            files = list(self.onnx) if self.checkpoint is None else list(settings.quants)
            computes = [c for c in settings.computes if c in spec.computes]
            return [with_compute(fmt, compute) for compute in computes for fmt in files]
        gpu = spec.device == "cuda"  # torch on a GPU also runs fp16 and channels_last
        precisions = ["fp32"] + (["fp16"] if gpu and "fp16" in settings.quants else [])
        layouts = ["", CHANNELS_LAST] if gpu else [""]
        return [p + layout for p in precisions for layout in layouts]

    def file_for(self, backend: str, fmt: str, workdir: Path, progress: bool) -> Path:
        """The file a row opens: the checkpoint for torch, the ONNX export (made on first use) for ORT and
        OpenVINO (a compute precision runs the file of its weight format)."""
        if not resolve(backend).is_onnx:
            return self.checkpoint_path
        fmt = fmt.partition(COMPUTE_MARK)[0]
        if fmt not in self.onnx:
            from edge.export.exporter import export_onnx

            if progress:
                print(f"exporting {self.name} to {fmt} ...", file=sys.stderr, flush=True)
            self.onnx[fmt] = workdir / f"model{self.key}-{fmt.replace(':', '-')}.onnx"
            self.weights[fmt] = export_onnx(self.checkpoint, self.onnx[fmt], quant_spec(fmt))[1]
        return self.onnx[fmt]

    def row(self, backend: str, fmt: str, path: Path | None) -> Row:
        return Row(self.name, backend, fmt, path.stat().st_size if path else None, *model_size(self.card, self.net),
                   weights=self.weights.get(fmt.partition(COMPUTE_MARK)[0]) if resolve(backend).is_onnx else None,
                   compute=compute_of(fmt) if resolve(backend).is_onnx else "fp32")


def quant_spec(fmt: str):
    """A --quant entry, ``FORMAT[:METHOD]`` (``uint8``, ``uint8:minmax``; `edge.core.weight_formats.parse_choice`) ->
    the exporter's `QuantSpec`."""
    from edge.export.quantize import QuantSpec

    weights, options = parse_choice(fmt)
    return QuantSpec(weights, **options)


def parse_quants(text: str) -> tuple[str, ...]:
    """``"fp32,uint8:minmax"`` -> the --quant entries, each once, each checked against the format table
    (`edge.core.weight_formats.parse_choice`, no torch: a runtime-only install benches ONNX files; ValueError)."""
    names = tuple(dict.fromkeys(q.strip() for q in text.split(",") if q.strip()))
    for name in names or ("",):
        parse_choice(name)
    return names


def default_quants(models: list[Path]) -> str:
    """`edge.core.weight_formats.BENCH_FORMATS`; without MODEL data-free (an initialised model has nothing to calibrate)."""
    return ",".join(BENCH_FORMATS if models else map(data_free, BENCH_FORMATS))


def load_subjects(models: list[Path], settings: Settings, workdir: Path) -> list[Subject]:
    """Read every MODEL (or make the default one); fails early on a file edge cannot use."""
    if not models:
        return [_default_subject(workdir)]
    names = [m.name for m in models]
    return [_subject(i, m, m.name if names.count(m.name) == 1 else str(m), settings) for i, m in enumerate(models)]


def _default_subject(workdir: Path) -> Subject:
    from edge.io.checkpoints import save_checkpoint
    from edge.io.checkpoints import init_checkpoint

    checkpoint = init_checkpoint()
    path = workdir / "default-studentnet.pt"
    save_checkpoint(path, checkpoint.card, checkpoint.state)
    return Subject(0, DEFAULT_NAME, checkpoint.card, checkpoint, path)


def _subject(key: int, path: Path, name: str, settings: Settings) -> Subject:
    if path.suffix.lower() == ".onnx":
        from edge.inference.runtime import OnnxClassifier

        model = OnnxClassifier(path)
        fmt = model.quant.get("weights", "fp32")
        return Subject(key, name, model.card, onnx={fmt: path}, weights={fmt: model.quant}, net=model.net)
    from edge.io.checkpoints import load_model

    checkpoint = load_model(path, pools=settings.pools)
    size = {"parameters": checkpoint.parameters, "flops": checkpoint.flops}
    return Subject(key, name, checkpoint.card, checkpoint, path, net=size)


@dataclass
class Job:
    row: Row
    subject: Subject
    target: Target | None = None
    process: RowProcess | None = None


def plan(subjects: list[Subject], settings: Settings, workdir: Path, progress: bool = False) -> list[Job]:
    """One job per row; backends that cannot run get a single unavailable row per model."""
    jobs = []
    reasons = {backend: unavailable(resolve(backend)) for backend in settings.providers}
    for subject in subjects:
        for backend in settings.providers:
            formats = subject.formats(backend, settings)
            reason = reasons[backend]
            if not resolve(backend).is_onnx and subject.checkpoint is None:
                reason = "MODEL is an ONNX file: torch runs checkpoints (pass the checkpoint it came from)"
            if reason:
                row = subject.row(backend, ",".join(formats) or "-", None)
                row.fail("unavailable", reason)
                jobs.append(Job(row, subject))
                continue
            for fmt in formats:
                path = subject.file_for(backend, fmt, workdir, progress)
                jobs.append(Job(subject.row(backend, fmt, path), subject,
                                Target(backend, fmt, str(path), settings.threads, settings.pools,
                                       str(settings.calib) if settings.calib else None)))
    return jobs


def prepare_inputs(subject: Subject, settings: Settings, workdir: Path) -> None:
    """The timing batch (the first images of ``settings.data``, else seeded noise), saved for the workers."""
    size = max(settings.batches)
    config = subject.card.config
    if settings.data:
        images = first_images(settings.data, subject.card, size)
        images = np.resize(images, (size, *images.shape[1:]))  # repeats images when the folder is small
    else:
        shape = (size, config.in_channels, config.input_size, config.input_size)
        images = np.random.default_rng(0).random(shape, dtype=np.float32)
    subject.inputs = workdir / f"model{subject.key}-inputs.npy"
    np.save(subject.inputs, images)


def first_images(data: Path, card, count: int) -> np.ndarray:
    """Up to ``count`` preprocessed images of ``data``, in id order, skipping unreadable ones (said on stderr)."""
    from edge.data.preprocess import first_images as decode_first

    return decode_first(data, card, count, warn=lambda line: print(line, file=sys.stderr))


def _start(jobs: list[Job]) -> None:
    """Start every worker, then wait until all have loaded their libraries (none is timed meanwhile)."""
    for job in jobs:
        job.process = RowProcess(job.target)
    for job in jobs:
        status, reply = job.process.wait_ready()
        if status != "ready":
            job.row.fail(status, str(reply))


def batch_order(batches, repeat: int) -> list[int]:
    """The order a repeat times its batch sizes: smallest first in the first (its peak RSS per batch size is
    reported), then alternately largest and smallest first, so neither end always runs right after the load."""
    return sorted(batches, reverse=repeat % 2 == 1)


def _measure_rounds(jobs: list[Job], settings: Settings, bar) -> None:
    for repeat in range(settings.repeats):
        shift = repeat % len(jobs)
        for job in jobs[shift:] + jobs[:shift]:
            if job.row.ok:
                bar.set_postfix_str(f"{job.row.backend} {job.row.fmt}")
                job.row.record(*job.process.call("measure", inputs=str(job.subject.inputs),
                                                 batches=batch_order(settings.batches, repeat),
                                                 min_seconds=settings.min_seconds, min_calls=settings.min_calls))
            bar.update()


def _predict_all(jobs: list[Job], settings: Settings, bar) -> None:
    for job in jobs:
        if job.row.ok:
            bar.set_postfix_str(f"predict {job.row.backend} {job.row.fmt}")
            job.row.record_predict(*job.process.call("predict", data_dir=str(settings.data),
                                                     labels=str(settings.labels) if settings.labels else None,
                                                     batch=settings.predict_batch, workers=settings.workers))
        bar.update()


AUTO_IMAGES = 200  # calibration photos the --provider auto choice is measured on


def _agree_on_calibration(jobs: list[Job], settings: Settings, bar) -> None:
    for job in jobs:
        if job.row.ok:
            bar.set_postfix_str(f"calib {job.row.backend} {job.row.fmt}")
            status, reply = job.process.call("answers", folder=str(settings.calib), count=AUTO_IMAGES)
            if status == "ok":
                job.row.calib_answers = reply
            else:
                job.row.fail(status, str(reply))
        bar.update()


def fp32_reference(rows: list[Row]) -> Row | None:
    """The row a model's answers are compared with: torch-cpu fp32, else ONNX Runtime's fp32 compute of the
    first weight format it ran (an ONNX file's own)."""
    ok = [r for r in rows if r.ok]
    torch_row = next((r for r in ok if (r.backend, r.fmt) == REFERENCE), None)
    return torch_row or next((r for r in ok if r.backend == "ort-cpu" and r.compute == "fp32"), None)


def _compare_to_reference(rows: list[Row]) -> None:
    for model in dict.fromkeys(r.model for r in rows):
        mine = [r for r in rows if r.model == model]
        reference = fp32_reference(mine)
        for row in (r for r in mine if r.ok and reference):
            if (reference.backend, reference.fmt) == REFERENCE:
                row.compare_to(reference)
            row.compare_to_fp32(reference)


def auto_choice(rows: list[Row]) -> dict | None:
    """What `edge predict --provider auto` picks among these rows: the fastest at the smallest batch (median
    p50) whose agreement with fp32 is at least `AUTO_AGREEMENT` on the calibration photos (on --data
    without them)."""
    def agreement(row: Row) -> tuple[float | None, str]:
        if row.calib_agreement is not None:
            return row.calib_agreement, "calib"
        return row.fp32_agreement, "data"

    keep = [r for r in rows if r.ok and r.runs and resolve(r.backend).device == "cpu"
            and (agreement(r)[0] or 0) >= AUTO_AGREEMENT]
    if not keep:
        return None
    best = min(keep, key=lambda r: r.metric("p50_ms")["median"])
    value, on = agreement(best)
    return {"model": best.model, "backend": best.backend, "format": best.fmt, "compute": best.compute,
            "p50_ms": best.metric("p50_ms")["median"], "agreement": value, "agreement_on": on,
            "rule": f"fastest p50 with agreement >= {AUTO_AGREEMENT:.1%} with fp32"}


def run_jobs(jobs: list[Job], settings: Settings, progress: bool) -> None:
    from tqdm import tqdm

    live = [job for job in jobs if job.target is not None]
    if not live:
        return
    steps = len(live) * (settings.repeats + (1 if settings.data else 0) + (1 if settings.calib else 0))
    try:
        _start(live)
        with tqdm(total=steps, desc="bench", unit="step", disable=not progress, file=sys.stderr) as bar:
            _measure_rounds(live, settings, bar)
            if settings.data:
                _predict_all(live, settings, bar)
            if settings.calib:
                _agree_on_calibration(live, settings, bar)
    finally:
        for job in live:
            if job.process:  # None when starting it failed
                job.process.close()


def noisy_note(rows: list[Row], threads: int | None) -> str | None:
    """One line when the repeats of the reference row (else the first row timed) spread beyond
    `machine.NOISY_SPREAD`: the machine was busy while it ran."""
    timed = [row for row in rows if row.ok and len(row.runs) > 1]
    row = next((r for r in timed if (r.backend, r.fmt) == REFERENCE), timed[0] if timed else None)
    p50 = row.metric("p50_ms") if row else None
    if not p50 or p50["max"] < machine.NOISY_SPREAD * p50["min"]:
        return None
    return (f"note: {row.backend} {row.fmt} p50 latency varied {p50['max'] / p50['min']:.1f}x between repeats "
            f"({p50['min']:.2f}-{p50['max']:.2f} ms): the machine was busy; {machine.steadier(threads)}")


def _say(note: str | None, notes: list[str]) -> None:
    if note:
        print(note, file=sys.stderr, flush=True)
        notes.append(note)


def run_bench(models: list[Path], settings: Settings, command: str, progress: bool = True,
              load_reading=machine.load) -> dict:
    """Run the whole benchmark and return the results document (rows + machine + settings + notes).
    ``load_reading`` says how busy the machine is (`machine.load`); a busy machine, or a reference row
    whose repeats spread widely, is said on stderr (``notes`` in the document)."""
    started, load_at_start, notes = datetime.now(timezone.utc), load_reading(), []
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        workdir = Path(tmp)
        subjects = load_subjects(models, settings, workdir)
        jobs = plan(subjects, settings, workdir, progress)
        for subject in subjects:
            if any(job.subject is subject and job.target for job in jobs):
                prepare_inputs(subject, settings, workdir)
        _say(machine.busy_note(load_at_start, machine.cpu_info()["cores"], settings.threads), notes)
        run_jobs(jobs, settings, progress)
    rows = [job.row for job in jobs]
    _compare_to_reference(rows)
    _say(noisy_note(rows, settings.threads), notes)
    seconds = (datetime.now(timezone.utc) - started).total_seconds()
    return {"command": command, "started": started.isoformat(timespec="seconds"), "seconds": seconds,
            "machine": {**machine.describe(), "load_at_start": load_at_start}, "settings": _settings_json(settings),
            "models": [_model_json(s) for s in subjects], "rows": [row.to_json() for row in rows], "notes": notes,
            "auto_choice": auto_choice(rows)}


def _model_json(subject: Subject) -> dict:
    parameters, flops = model_size(subject.card, subject.net)
    return {"name": subject.name, "parameters": parameters, "mflops_per_image": flops / 1e6,
            "input_size": subject.card.config.input_size}


def _settings_json(settings: Settings) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in settings.__dict__.items()}


