"""`edge compress`: the smallest-bytes StudentNet that still answers like the model, from a
trained model and unlabelled photos.

The search runs over slimming depth x weight format and keeps the file closest to the model on
validation (`choose`) among the ONNX files that fit ``target_bytes``:

1. quantization only: the model itself in every weight format of `FORMATS` (`edge export` merges a
   StudentNet's last pointwise conv, global pool and classifier into one conv first: exact, and in
   every file);
2. mixed precision: each per-channel uintN file that fits spends the bytes left under the target on
   more bits for the layers where they buy the most (`edge.export.mixed_precision`);
3. a slimming path: the keep fractions at which each integer format just fits the target are found
   by exporting pruned shapes (sizes depend on shape and format only); the path descends to them
   in cuts of at most ``step``, each round pruning channels with least-squares reconstruction
   (`edge.prune.reconstruct.prune_reconstruct`) then fine-tuning by function matching
   (`edge.train.matching.FunctionMatching`, label-free) and keeping its best epoch by validation
   agreement; every round's model is measured in every format;
4. quantization-aware fine-tuning at the file's bit widths: every fitting mixed-precision file (of the model
   and of the first, lightest slimming round), and each plain per-channel uintN format of at most
   `QAT_MAX_BITS` bits on its first slimmed file that fits, against the teacher (the unslimmed model) on
   function-matching views of every training photo
   (`edge.export.quantize.Matching`); the file's metadata keeps the recipe (slimmed widths, pruning,
   fine-tuning).

Fitting files rank by the mean KL divergence from the model's answers over augmented views of the validation
photos (`edge.workflows.compress_views`), which separates files that agreement on a few dozen photos cannot.

Validation images are never trained on: ``val`` images, or every ``VAL_EVERY``-th photo of
``images`` by id. A ``test`` set is only scored. Everything lands in a work folder (the report
folder): ``state.json`` after every measured point and round, each round's resumable run file,
every candidate ONNX file; ``resume`` continues an interrupted search to the same result.

A format whose file cannot fit is never exported: its bytes are bounded from below by the weight
count and the format's bits (`least_bytes`), and the report lists it as skipped with that bound.
The time budget (`Budget`) bounds the whole run, loading included: each step (a measured file, a
size probe, mixed precision, a slimming round, each fine-tuning epoch) starts only when the time
its kind took before (or an estimate from the model's speed) still fits what is left; what was not
reached is reported. `write_report` makes the JSON, markdown and frontier PNG.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from edge.core.config import ConfigError
from edge.core.files import atomic_write, file_sha256
from edge.core.json_text import sealed_text
from edge.io.netfile import NetFile
from edge.models.registry import NetSpec
from edge.core.options import CompressOptions, SearchSettings
from edge.workflows.compress_state import chosen_bytes, read_state

VAL_EVERY = 5
STATE = "state.json"
# The weight formats measured (rows of `edge.core.weight_formats`' table), smallest file first. kmeansK is left
# out: on the TA student it lost to uint4 per-channel at the same bytes (86.7-91.7% against 96.7%
# validation agreement, bench/results/compress_ta_student_formats.md) and takes a minute per file;
# so is uint4 per-channel without --entropy (the same codes in a larger file: `edge convert --to onnx`
# writes it from the chosen file). uint3 is there for small targets: with mixed precision's wider layers and
# quantization-aware fine-tuning, the unslimmed model at 3-4 bits is a candidate beside slimmed 4-bit files
# (bench/results/slim_qat_ta_student.md).
FORMATS = (("uint3", {"per_channel": True, "entropy": True}),
           ("uint4", {"per_channel": True, "entropy": True}), ("uint6", {"per_channel": True, "entropy": True}),
           ("uint8", {}), ("uint8", {"per_channel": True}), ("fp16", {}), ("fp32", {}))
MIXED_SHARE = 0.95  # of the bytes left under the target that mixed precision plans to spend
MIXED_TRIES = 3
BUDGET_SHARE = 0.95  # of the budget that steps may fill (the rest: writing the chosen file and the report)
# An entropy-coded slimming target aims this much under the byte target: the probe's bytes come from the model's
# own first channels, a slimmed file's from its re-fitted weights (uint4 at the probed keep 0.879 came to
# 90,102 B against 90,000, bench/results/compress_90k_first_idle.md).
ENTROPY_MARGIN = 0.99
QAT_MAX_BITS = 6  # wider codes lose too little in rounding to be worth the fine-tuning's minutes
TRAIN_FORWARDS = 4  # a fine-tuning image costs about this many evaluation forwards (teacher, student + backward)


@dataclass(kw_only=True)
class Inputs:
    """The model, its teacher and the photos a search works on."""

    base: NetFile
    teacher: torch.nn.Module
    teacher_is_base: bool
    train: object  # ImageSet of canvases (augmented during fine-tuning)
    calibration: torch.Tensor  # centre crops of training photos, model input
    fit_images: torch.Tensor  # centre crops of every training photo, model input (quantization-aware fine-tuning)
    val: object  # ImageSet, centre crops, labelled with the model's answers
    val_logits: np.ndarray  # the model's logits on the val photos
    val_truth: np.ndarray | None  # labels of the val photos, when known
    test: object = None  # ImageSet with true labels, scored only
    test_reference: np.ndarray | None = None  # the model's answers on the test photos
    progress: bool = True  # progress bars (of decoding, calibrating, ...)
    forward_seconds: float = 0.0  # the model's evaluation forward, per image (the budget's estimates)
    views: object = None  # ViewSignal of the model on augmented views of the val photos (edge.workflows.compress_views)


class Budget:
    """The whole run's wall time: a step starts only when the longest step of its kind so far (or the
    estimate given for a kind not run yet) still fits in `BUDGET_SHARE` of the minutes."""

    def __init__(self, minutes: float, started: float, spent_before: float = 0.0):
        self.limit, self.started, self.spent_before = BUDGET_SHARE * 60 * minutes, started, spent_before
        self.longest: dict[str, float] = {}

    def elapsed(self) -> float:
        return self.spent_before + time.time() - self.started

    def estimate(self, kind: str, first: float = 0.0) -> float:
        return self.longest.get(kind, first)

    def affords(self, seconds: float) -> bool:
        return self.elapsed() + seconds <= self.limit

    def record(self, kind: str, began: float, count: int = 1) -> None:
        """A step of ``kind`` that began at ``began`` (``count`` steps of it, each taking an equal share) ended now."""
        self.longest[kind] = max(self.longest.get(kind, 0.0), (time.time() - began) / count)


# ---------------------------------------------------------------- measuring one candidate


def format_name(spec, layer_bits: dict | None = None) -> str:
    """``uint4 per-channel``, plus every other setting that differs from `QuantSpec`'s default
    (so formats added to the candidate table get names of their own) and the layers given other bits."""
    import dataclasses

    extra = [f"{f.name}={getattr(spec, f.name)}" for f in dataclasses.fields(spec)
             if f.name not in ("weights", "per_channel") and getattr(spec, f.name) != f.default]
    extra += [f"{name}:{bits}" for name, bits in sorted((layer_bits or {}).items())]
    return " ".join([spec.weights + (" per-channel" if spec.per_channel else "")] + extra)


def _export(net: NetFile, spec, path: Path, calibration: np.ndarray, layer_bits: dict | None = None,
            progress: bool = True, matching=None, recipe: dict | None = None) -> int:
    from edge.io.checkpoints import Checkpoint
    from edge.prune.slim import numpy_state
    from edge.export.exporter import export_onnx

    source = f"{len(calibration)} training photos" if spec.calibrated else ""
    with torch.no_grad():
        size, _ = export_onnx(Checkpoint(net.card, numpy_state(net), "edge"), path, spec,
                              calibration if spec.calibrated else None, source, layer_bits, progress=progress,
                              matching=matching, recipe=recipe)
    return size


_SCORING_BATCH = 32  # images per ONNX Runtime call when an exported file is scored


def _scorer(path: Path):
    """The exported file at ``path``, opened once to score every image set of a candidate."""
    from edge.inference.ort_memory import expect_images
    from edge.inference.runtime import OnnxClassifier

    expect_images(_SCORING_BATCH)
    return OnnxClassifier(path)


def _onnx_logits(model, images: torch.Tensor) -> np.ndarray:
    """``model`` (a `_scorer`) on preprocessed ``images``, `_SCORING_BATCH` at a time."""
    return np.concatenate([model(images[i:i + _SCORING_BATCH].numpy()) for i in range(0, len(images), _SCORING_BATCH)])


def measure(net: NetFile, spec, path: Path, inputs: Inputs, layer_bits: dict | None = None, *, matching=None,
            recipe: dict | None = None, target: int | None = None) -> dict:
    """Export ``net`` as ``spec`` (``layer_bits``: mixed precision; ``matching``: what trained quantization
    trains against; ``recipe``: how ``net`` was made, for the metadata) to ``path``; its bytes, validation
    agreement and KL divergence from the model (and accuracy), test scores; a file within ``target``
    bytes is scored on the augmented validation views too (`Inputs.views`)."""
    from edge.data.datasets import normalize
    from edge.export.mixed_precision import kl_from

    size = _export(net, spec, path, inputs.calibration[:_gptq_count(inputs)].numpy(), layer_bits, inputs.progress,
                   matching, recipe)
    from edge.models.merge import file_config

    point = {"format": format_name(spec, layer_bits), "onnx": path.name, "bytes": size,
             "parameters": file_config(net.spec.config).num_parameters(),
             "widths": list(file_config(net.spec.config).widths)}
    model = _scorer(path)
    logits = _onnx_logits(model, normalize(inputs.val.pixels, inputs.val.preprocess))
    answers = logits.argmax(1)
    point["val_agreement"] = float(np.mean(answers == inputs.val.labels.numpy()))
    point["val_kl"] = kl_from(inputs.val_logits, logits)
    if inputs.val_truth is not None:
        point["val_accuracy"] = float(np.mean(answers == inputs.val_truth))
    if inputs.views is not None and (target is None or size <= target):
        point.update(inputs.views.score(lambda x: model(x.numpy())))
    if inputs.test is not None:
        answers = _onnx_logits(model, normalize(inputs.test.pixels, inputs.test.preprocess)).argmax(1)
        point["test_accuracy"] = float(np.mean(answers == inputs.test.labels.numpy()))
        point["test_agreement"] = float(np.mean(answers == inputs.test_reference))
    return point


def _gptq_count(inputs: Inputs) -> int:
    return min(len(inputs.calibration), 64)


# ---------------------------------------------------------------- sizes of pruned shapes


def conv_weights(config) -> int:
    """Weights of a StudentNet's convolutions (no biases, no classifier): what its every file stores at least."""
    first = config.in_channels * config.widths[0] * 9
    return first + sum(c * 9 + c * d for c, d in zip(config.widths, config.widths[1:]))


def least_bytes(config, spec) -> int | None:
    """A lower bound on the bytes of a StudentNet file of ``config`` (as exported: merged) in ``spec``, from
    its weight count: each conv weight takes at least the format's bits (layers kept in fp16 take more;
    biases, ranges, graph and metadata come on top). None where the size depends on the values
    (entropy coding, low rank)."""
    from edge.models.merge import file_config

    if spec.entropy or spec.low_rank is not None:
        return None
    bits = spec.bits or {"fp32": 32, "fp16": 16, "int8": 8}[spec.weights]
    return conv_weights(file_config(config)) * bits // 8


def cannot_fit(config, spec, target: int) -> bool:
    least = least_bytes(config, spec)
    return least is not None and least > target


def shaped(net: NetFile, widths: tuple[int, ...]) -> NetFile:
    """``net`` cut to ``widths`` by keeping the first channels: right shape, for measuring bytes."""
    from edge.prune.slim import numpy_state, prune

    config = net.spec.config
    keep = [np.arange(w) for w in widths[:-1]]
    return with_weights(net, *prune(config, numpy_state(net), keep))


def with_weights(like: NetFile, config, state: dict[str, np.ndarray]) -> NetFile:
    """A StudentNet file of ``config`` and numpy ``state``, with ``like``'s preprocessing and classes."""
    return NetFile(NetSpec("dw", config), like.preprocess, like.classes, {k: torch.from_numpy(v) for k, v in state.items()})


def merged(net: NetFile) -> NetFile:
    """``net`` with its last pointwise conv, global pool and classifier merged into one conv (exact)."""
    from edge.models.merge import merge_classifier
    from edge.prune.slim import numpy_state

    return with_weights(net, *merge_classifier(net.spec.config, numpy_state(net)))


def fitting_keep(net: NetFile, spec, target: int, min_keep: float, probe: Path,
                 calibration: np.ndarray, progress: bool = True, budget: Budget | None = None) -> float | None:
    """The largest keep fraction (to 1/256) whose file in ``spec`` fits ``target`` bytes; None below ``min_keep``.
    `TimeoutError` when ``budget`` runs out before the probes that would find it."""
    from edge.prune.reconstruct import target_widths

    config = net.spec.config

    def fits(keep: float) -> bool:
        widths = target_widths(config, keep)
        if cannot_fit(replace(config, widths=widths), spec, target):
            return False
        if budget is not None and not budget.affords(budget.estimate("probe")):
            raise TimeoutError
        began = time.time()
        size = _export(shaped(net, widths), spec, probe, calibration, progress=progress)
        if budget is not None:
            budget.record("probe", began)
        return size <= target

    if not fits(min_keep):
        return None
    low, high = min_keep, 1.0
    if fits(high):
        return high
    while high - low > 1 / 256:
        middle = (low + high) / 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return round(low, 4)


def path_of(targets: list[float], step: float) -> list[float]:
    """Keep fractions from 1 down through every target, no cut larger than ``step``; the first cut is half a step
    (the lightest slimming, whose spare bytes `Search._round` spends on mixed precision and trained codes: on
    the swapped split its file kept the answers where keep 0.9 lost them, bench/results/compress_90k_slimmed_swapped.md)."""
    path, current = [], 1.0
    wanted = sorted(set(targets), reverse=True)
    if wanted and 1.0 - wanted[0] > step / 2 + 1e-9:
        current = round(1.0 - step / 2, 4)
        path.append(current)
    for target in wanted:
        while current - target > step + 1e-9:
            current = round(current - step, 4)
            path.append(current)
        if target < current:
            current = target
            path.append(current)
    return path


# ---------------------------------------------------------------- the search


class Search:
    """One resumable search in ``work`` (its state.json records every measured point and round)."""

    def __init__(self, inputs: Inputs, settings: SearchSettings, work: Path, candidates, about: dict,
                 progress: bool = True, log=lambda line: print(line, file=sys.stderr), started: float | None = None):
        self.inputs, self.settings, self.work, self.candidates = inputs, settings, work, candidates
        self.progress, self.log = progress, log
        self.state = {"settings": asdict(settings), "about": about, "points": [], "rounds": [], "seconds": 0.0}
        self.began = time.time() if started is None else started
        self.budget = Budget(settings.budget_minutes, self.began)

    # -- state

    def load(self, saved: dict) -> None:
        """Continue the search recorded in ``saved`` (`resumable`: read and checked already)."""
        self.state = saved

    def save(self) -> None:
        self.state["seconds"] = round(self.state.get("seconds_before", 0.0) + time.time() - self.began, 1)
        text = sealed_text(self.state)
        atomic_write(self.work / STATE, lambda f: f.write(text), binary=False)

    def point(self, stage: str, keep: float, net: NetFile, spec, extra: dict | None = None,
              layer_bits: dict | None = None, matching=None, recipe: dict | None = None) -> dict:
        """The measured point (from the record when this search already measured it); ``matching`` and
        ``recipe``: `measure`'s."""
        label = format_name(spec, layer_bits)
        for p in self.state["points"]:
            if p["stage"] == stage and p["keep"] == keep and p["format"] == label:
                return p
        if not layer_bits and self._skipped(stage, keep, net, spec):
            return None
        if not self.budget.affords(self.budget.estimate("measure")):
            self._stop(f"time budget ({self.settings.budget_minutes:g} min) reached before {stage} keep {keep:.3f} "
                       f"{label}")
            return None
        began = time.time()
        path = self.work / candidate_name(stage, keep, label)
        p = {"stage": stage, "keep": keep, **measure(net, spec, path, self.inputs, layer_bits, matching=matching,
                                                     recipe=recipe, target=self.settings.target_bytes),
             **(extra or {})}
        if matching is None:  # a trained file's minutes are the fine-tuning's (`_quantization_aware` records them)
            self.budget.record("measure", began)
        p["sha256"] = file_sha256(self.work / p["onnx"])  # what --resume identifies the candidate by
        self.state["points"].append(p)
        self.save()
        self.log(_point_line(p, self.settings.target_bytes))
        return p

    def _skipped(self, stage: str, keep: float, net: NetFile, spec) -> bool:
        """Whether ``spec``'s file of ``net`` cannot fit the target by its weight count (recorded, never exported)."""
        least = least_bytes(net.spec.config, spec)
        if least is None or least <= self.settings.target_bytes:
            return False
        entry = {"stage": stage, "keep": keep, "format": format_name(spec), "least_bytes": least}
        if entry not in self.state["skipped"]:
            self.state["skipped"].append(entry)
            self.log(f"{stage:<12} keep {keep:.3f} {entry['format']:<18} skipped: at least {least:,} B by its weight "
                     f"count, over the target")
        return True

    def _stop(self, reason: str) -> None:
        """Say why a step was not started (the report keeps the first reason)."""
        self.state.setdefault("stopped", reason)
        self.log(reason)

    # -- the steps

    def run(self) -> dict:
        from edge.models.merge import mergeable

        self.state["seconds_before"] = self.state.get("seconds", 0.0)
        self.budget.spent_before = self.state["seconds_before"]
        self.state["skipped"] = []  # rebuilt as every point is visited again (a resumed record's is not trusted)
        self.state.pop("stopped", None)  # this run's budget decides
        base = self.inputs.base
        for spec in self._formats("quantization only"):
            self.point("quantization", 1.0, base, spec)
        current = self._merged() if mergeable(base.spec.config) else base  # what each file computes
        self._mixed(current)
        for keep in self._path(current):
            current = self._round(current, keep)
            if current is None:
                break
        self.state["done"] = True
        self.save()
        return self.state

    def _mixed(self, net: NetFile, recorded: dict | None = None) -> None:
        """Mixed-precision points of ``net`` (the model as merged, or ``recorded``'s slimmed round): every fitting
        per-channel uintN file's spare bytes spent on the layers where they lower the KL from the model most
        per byte; when the file overshoots (entropy coding makes bytes inexact), the budget shrinks and it is
        redone. Each fitting one is then trained at its bit widths (`_quantization_aware`)."""
        target, keep = self.settings.target_bytes, recorded["keep"] if recorded else 1.0
        plain = "slimming" if recorded else "quantization"
        for spec in self.candidates:
            base = next((p for p in self.state["points"] if p["stage"] == plain and p["keep"] == keep
                         and p["format"] == format_name(spec)), None)
            if spec.bits is None or spec.codebook_size or not spec.per_channel or base is None \
                    or base["bytes"] > target:
                continue
            budget = (target - base["bytes"]) * MIXED_SHARE
            for _ in range(MIXED_TRIES):
                try:
                    layer_bits = self._allocation(net, spec, budget, keep)
                except TimeoutError:
                    self._stop(f"time budget ({self.settings.budget_minutes:g} min) reached during mixed precision's "
                               f"layer sensitivity")
                    return
                p = self.point("mixed", keep, net, spec, {"round": recorded["round"] if recorded else 0}, layer_bits,
                               recipe=self._recipe(recorded)) if layer_bits else None
                if p is None or p["bytes"] <= target:
                    break
                budget -= 1.5 * (p["bytes"] - target)
            if p is not None and p["bytes"] <= target:
                self._quantization_aware(net, keep, recorded, layer_bits)

    def _allocation(self, net: NetFile, spec, budget: float, keep: float) -> dict[str, int]:
        from edge.export.mixed_precision import STREAM_BYTES, WIDER_BITS, Upgrade, allocate, layer_sensitivity

        key = f"{spec.bits} bits, fp16 below {spec.fp16_below}" + (f", keep {keep:.4f}" if keep < 1 else "")
        sensitivity = self.state.setdefault("sensitivity", {})
        if key not in sensitivity:
            rows = layer_sensitivity(net.build(), self.inputs.calibration[:_gptq_count(self.inputs)].numpy(),
                                     (spec.bits, *(b for b in WIDER_BITS if b > spec.bits)), spec.fp16_below,
                                     self.progress, lambda: self.budget.affords(self.budget.estimate("measure")))
            sensitivity[key] = [vars(r) for r in rows]
            self.save()
        return allocate([Upgrade(**r) for r in sensitivity[key]], spec.bits, budget, STREAM_BYTES)

    def _formats(self, label: str):
        """The candidate formats, with a progress bar (exporting with GPTQ takes seconds each)."""
        from tqdm import tqdm

        return tqdm(self.candidates, desc=f"export + measure ({label})", unit="file", leave=False,
                    disable=not self.progress, file=sys.stderr)

    def _merged(self) -> NetFile:
        return merged(self.inputs.base)

    def _path(self, start: NetFile) -> list[float]:
        if "path" not in self.state:
            targets = {}
            probe = self.work / "probe.onnx"
            calibration = self.inputs.calibration[:2].numpy()
            for spec in self._formats("sizes of slimmed shapes"):
                if spec.bits is None:  # no slimming path aims at a float format's size
                    continue
                try:
                    aim = int(self.settings.target_bytes * (ENTROPY_MARGIN if spec.entropy else 1.0))
                    keep = fitting_keep(start, spec, aim, self.settings.min_keep, probe, calibration, self.progress,
                                        self.budget)
                except TimeoutError:
                    keep = None
                    self.state.setdefault("unprobed", []).append(format_name(spec))
                    self._stop(f"time budget ({self.settings.budget_minutes:g} min) reached before the keep at which "
                               f"{format_name(spec)} fits was found")
                targets[format_name(spec)] = keep
            probe.unlink(missing_ok=True)
            wanted = [k for k in targets.values() if k is not None and k < 1.0]
            self.state["fitting_keep"] = targets
            self.state["path"] = path_of(wanted, self.settings.step)
            self.save()
            self.log("keep fraction at which each format fits: " + ", ".join(
                f"{n} {'-' if k is None else f'{k:.3f}'}" for n, k in targets.items())
                + f"; slimming path {self.state['path']}")
        return self.state["path"]

    def _round(self, current: NetFile, keep: float) -> NetFile | None:
        """Prune ``current`` to ``keep``, fine-tune, measure every format; None when out of time."""
        from edge.io.checkpoints import load_net

        number = len([r for r in self.state["rounds"] if r.get("done")]) + 1
        recorded = next((r for r in self.state["rounds"] if r["keep"] == keep and r.get("done")), None)
        trained_now = recorded is None
        if trained_now:
            if not self._time_for_round():
                self._stop(f"time budget ({self.settings.budget_minutes:g} min) reached before keep {keep}")
                return None
            recorded = self._train_round(current, keep, number)
        best = load_net(self.work / recorded["model"])
        began = time.time()
        recipe = self._recipe(recorded)
        for spec in self._formats(f"keep {keep:.3f}"):
            self.point("slimming", keep, best, spec, {"round": recorded["round"]}, recipe=recipe)
        if trained_now:  # the budget judges a round by its training and its exports together
            recorded["export_seconds"] = round(time.time() - began, 1)
            self.save()
        if recorded["round"] == 1:  # the lightest slimming: its spare bytes are worth wider layers too
            self._mixed(best, recorded)
        self._quantization_aware(best, keep, recorded)
        return best

    def _recipe(self, recorded: dict | None) -> dict:
        """How a round's model (None: the model itself, merged) was made, for its files' metadata: ``widths``
        the file's (the classifier merge included), ``widths_before`` the model's."""
        from edge.models.merge import file_config

        s, config = self.settings, self.inputs.base.spec.config
        widths = list(config.widths)
        if recorded is None:
            return {"keep": 1.0, "widths": list(file_config(config).widths), "widths_before": widths, "pruning": "none"}
        tuned = f"function-matching KD from the teacher, best of {s.epochs} epochs (epoch {recorded['best_epoch']})" \
            if recorded["best_epoch"] else "none: the reconstruction alone agreed better on validation"
        return {"keep": recorded["keep"], "widths": recorded["widths"], "widths_before": widths,
                "pruning": f"least-squares channel pruning of the widths after the last max-pool (OBS choice, "
                           f"survivors re-solved, ridge {s.ridge:g}) on {len(self.inputs.calibration)} photos",
                "fine_tuning": tuned}

    def _quantization_aware(self, net: NetFile, keep: float, recorded: dict | None,
                            layer_bits: dict | None = None) -> None:
        """The `_qat_formats` of ``net``'s file at ``keep`` (``layer_bits``: its mixed precision; ``recorded``: the
        round, None at keep 1), each trained at its bit widths: its stored values fine-tuned against the teacher
        (`edge.export.quantize.Matching`) on function-matching views of every training photo, for
        ``qat_epochs`` (fewer when the budget cannot afford them)."""
        from edge.export.quantize import Matching

        s = self.settings
        stage = "mixed" if layer_bits else "slimming"
        for spec in self._qat_formats(stage, keep, layer_bits):
            epochs = self._affordable_qat_epochs()
            if not epochs:
                self._stop(f"time budget ({s.budget_minutes:g} min) reached before quantization-aware fine-tuning "
                           f"at keep {keep:.3f}")
                return
            about = "the teacher" if not self.inputs.teacher_is_base else f"the model{' before slimming' * (keep < 1)} (fp32)"
            matching = Matching(self.inputs.teacher, self.inputs.fit_images.numpy(), s.qat_lr, about)
            recipe = self._recipe(recorded) | {
                "quantization_aware": f"{epochs} epochs at {spec.bits} bits against {about}, "
                                      f"Adam lr {s.qat_lr:g} x scale, function-matching views"}
            began = time.time()
            self.point("qat", keep, net, replace(spec, train_epochs=epochs),
                       {"round": recorded["round"] if recorded else 0}, layer_bits, matching, recipe)
            self.budget.record("qat epoch", began, epochs)

    def _qat_formats(self, stage: str, keep: float, layer_bits: dict | None) -> list:
        """The per-channel uintN formats (N <= `QAT_MAX_BITS`) whose ``stage`` file at ``keep`` (with ``layer_bits``)
        fits the target and is not trained yet: every mixed one; a plain slimmed format only once (its
        first fitting keep)."""
        if not self.settings.qat_epochs:
            return []
        points = self.state["points"]
        trained = set() if layer_bits else {p["format"].split()[0] for p in points if p["stage"] == "qat"
                                            and ":" not in p["format"]}
        fitting = {p["format"] for p in points if p["stage"] == stage and p["keep"] == keep
                   and p["bytes"] <= self.settings.target_bytes}
        return [spec for spec in self.candidates if spec.bits is not None and spec.bits <= QAT_MAX_BITS
                and spec.per_channel and not spec.codebook_size and spec.weights not in trained
                and format_name(spec, layer_bits) in fitting]

    def _affordable_qat_epochs(self) -> int:
        """``qat_epochs``, or as many as the budget still affords (an epoch estimated from the model's speed)."""
        each = self.budget.estimate("qat epoch", TRAIN_FORWARDS * self.inputs.forward_seconds
                                    * len(self.inputs.fit_images))
        left = self.budget.limit - self.budget.elapsed() - self.budget.estimate("measure")
        return max(0, min(self.settings.qat_epochs, int(left // max(each, 1e-9))))

    def _time_for_round(self) -> bool:
        """Whether a round fits what is left: the longest round so far, or (for the first) reconstruction, one
        epoch and measuring every format, estimated from the model's speed."""
        done = [r["seconds"] + r.get("export_seconds", 0.0) for r in self.state["rounds"] if r.get("done")]
        first = self._epoch_estimate() + len(self.candidates) * self.budget.estimate("measure") \
            + self.inputs.forward_seconds * len(self.inputs.calibration)
        return self.budget.affords(max(done) if done else first)

    def _epoch_estimate(self) -> float:
        return self.budget.estimate("epoch", TRAIN_FORWARDS * self.inputs.forward_seconds * len(self.inputs.train))

    def _fine_tune(self, run) -> dict:
        """`fit` epoch by epoch while the next epoch and measuring the round's files fit the budget."""
        from edge.train.loop import fit

        for epoch in range(run.recipe.epochs):
            exports = len(self.candidates) * self.budget.estimate("measure")
            if epoch and not self.budget.affords(self._epoch_estimate() + exports):
                self.log(f"time budget: fine-tuning stops after epoch {epoch} of {run.recipe.epochs}")
                break
            began = time.time()
            summary = fit(run, run.out.exists(), stop_after=epoch + 1)
            self.budget.record("epoch", began)
        return summary

    def _train_round(self, current: NetFile, keep: float, number: int) -> dict:
        from edge.data.datasets import Augment
        from edge.train.matching import FunctionMatching
        from edge.io.checkpoints import load_net
        from edge.io.netfile import save_net
        from edge.prune.reconstruct import head_stages, prune_reconstruct, target_widths
        from edge.prune.slim import numpy_state
        from edge.train.loop import Recipe, Run, accuracy

        began = time.time()
        start_file = self.work / f"round{number}.start.pt"
        base_config = self.inputs.base.spec.config
        widths = target_widths(base_config, keep)[:-1] + (current.spec.config.widths[-1],)
        if start_file.exists():  # reconstructed before an interruption: deterministic, reuse it
            pruned = load_net(start_file)
        else:
            self.log(f"round {number}: keep {keep:.3f} -> widths {list(widths)}; least-squares reconstruction")
            pruned = with_weights(current, *prune_reconstruct(current.spec.config, numpy_state(current), widths,
                                                              self.inputs.calibration, pull=self.settings.ridge))
            save_net(start_file, pruned)
        before = accuracy(pruned.build(), self.inputs.val, torch.device("cpu"))
        self.log(f"round {number}: validation agreement after reconstruction, before fine-tuning: {before:.2%}")
        s = self.settings
        shared_head = head_stages(base_config) if self.inputs.teacher_is_base else 0
        objective = FunctionMatching(self.inputs.teacher, shared_head, s.temperature)
        recipe = Recipe(epochs=s.epochs, batch_size=s.batch, lr=s.lr, weight_decay=0.0, seed=s.seed + number)
        run = Run(pruned, pruned.build(), objective, recipe, self.inputs.train, Augment(pruned.preprocess.crop),
                  self.work / f"round{number}.pt", self.inputs.val, torch.device("cpu"), 0,
                  {"keep": keep, "round": number}, self.progress)
        summary = self._fine_tune(run)
        tuned = summary["best"].get("val_accuracy", -1.0)
        keep_tuned = tuned > before  # fine-tuning must beat the reconstruction alone on validation
        record = {"round": number, "keep": keep, "widths": list(widths),
                  "model": run.best_path.name if keep_tuned else start_file.name,
                  "val_before_finetune": before, "best_epoch": summary["best"].get("epoch") if keep_tuned else 0,
                  "val_after_finetune": tuned,
                  "epoch_seconds": [h["seconds"] for h in summary["history"]],
                  "seconds": round(time.time() - began, 1), "done": True}
        self.state["rounds"] = [r for r in self.state["rounds"] if r["keep"] != keep] + [record]
        self.save()
        return record


def candidate_name(stage: str, keep: float, label: str) -> str:
    """The candidate file's name: the format's words joined by ``-``, each layer's ``NAME:BITS`` as ``NAME@BITS``
    (a colon does not survive every file system)."""
    return f"{stage}-k{keep:.4f}-{label.replace(' ', '-').replace(':', '@')}.onnx"


def _point_line(p: dict, target: int) -> str:
    fits = "fits" if p["bytes"] <= target else "too big"
    acc = f", val accuracy {p['val_accuracy']:.2%}" if "val_accuracy" in p else ""
    test = f", test accuracy {p['test_accuracy']:.2%}" if "test_accuracy" in p else ""
    return (f"{p['stage']:<12} keep {p['keep']:.3f} {p['format']:<18} {p['bytes']:>9,} B ({fits}) "
            f"val agreement {p['val_agreement']:.2%}{acc}{test}")


def choose(points: list[dict], target: int) -> dict | None:
    """The best fitting point: validation accuracy first when known; then the smaller mean KL divergence from
    the model over the augmented validation views (`edge.workflows.compress_views`: it separates files that a
    few dozen validation photos cannot), then agreement, then the smaller KL on the photos themselves, then
    fewer bytes. A search without views (``--views 0``) ranks by agreement first.

    The smallest views KL wins even when a more slimmed file lies within its noise: the one-standard-error
    rule (the fewest parameters within the best's standard error) chose a keep-0.871 file that lost 2.33 pt on
    the swapped split (bench/results/compress_90k_swapped_v2.md)."""
    fitting = [p for p in points if p["bytes"] <= target]
    return max(fitting, key=_rank) if fitting else None


def _rank(p: dict) -> tuple:
    return (p.get("val_accuracy", 0.0), -p.get("views_kl", 0.0), p["val_agreement"], -p.get("val_kl", 0.0),
            -p["bytes"])


# ---------------------------------------------------------------- the whole command


def subset(data, index: np.ndarray):
    """The images of ``data`` at ``index`` (same preprocessing; canvases keep their boxes)."""
    index_t = torch.as_tensor(index, dtype=torch.long)
    return replace(data, pixels=data.pixels[index_t], labels=data.labels[index_t], ids=[data.ids[i] for i in index],
                   boxes=None if data.boxes is None else data.boxes[index_t])


def split(count: int, every: int = VAL_EVERY) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) positions: every ``every``-th photo by id is held back for validation."""
    positions = np.arange(count)
    held = positions % every == every - 1
    if count < every:
        raise ConfigError(f"{count} photos are too few to hold back one in {every} for validation: give --val")
    return positions[~held], positions[held]


def check_paths(model: Path, output: Path, work: Path, inputs: list[Path], resume: bool, overwrite: bool) -> None:
    """Fail before any work when OUTPUT or the work folder cannot be written, or would clobber something
    (`edge.core.files`' guard)."""
    from edge.core.files import OutputError, check_output, check_output_dir

    if output.suffix.lower() != ".onnx":
        raise OutputError(f"{output}: the compressed model is an ONNX file: name it .onnx")
    inputs = [p for p in [model, *inputs] if p is not None]
    check_output(output, inputs=[*inputs, work], overwrite=overwrite or resume, writes_model=True,
                 model_format="onnx", what="compressed model")
    check_output_dir(work, inputs=[*inputs, output], what="--report folder")
    if (work / STATE).exists() and not resume:
        raise OutputError(f"{work}: holds a compress run already: continue it with --resume, or choose another "
                          f"--report folder")


def open_inputs(model: Path, images: str, settings: SearchSettings, labels: Path | None = None, val: str | None = None,
                teacher: Path | None = None, teacher_arch: str = "resnet18", test: str | None = None,
                test_labels: Path | None = None, cache_dir: Path | None = None,
                log=lambda line: print(line, file=sys.stderr), progress: bool = True) -> Inputs:
    """Load the model, the teacher and the photos, and split them."""
    from edge.data.folders import read_labels
    from edge.data.datasets import Augment, decode_image_set, normalize
    from edge.io.checkpoints import load_net
    from edge.train.loop import logits_of

    base = load_net(model)
    if base.spec.arch != "dw":
        raise ConfigError(f"{model}: edge compress slims StudentNet channels (arch dw); this is a {base.spec.arch}: "
                          f"export it with `edge export --quant uint8` (or fp16, uint4) instead")
    truth = read_labels(labels, len(base.classes)) if labels else None
    common = {"cache_dir": cache_dir, "class_hint": base.classes, "progress": progress}
    crops = decode_image_set(images, base.preprocess, **common)
    canvases = decode_image_set(images, base.preprocess, Augment(base.preprocess.crop), **common)
    if val:
        train_at, val_set = np.arange(len(crops)), decode_image_set(val, base.preprocess, **common)
    else:
        train_at, val_at = split(len(crops))
        val_set = subset(crops, val_at)
    model_net = base.build()
    if teacher:
        from edge.workflows.runs import load_teacher

        teacher_model = load_teacher(teacher, teacher_arch, base.classes, base.preprocess)
    else:
        teacher_model = base.build()
    began = time.time()
    reference = logits_of(model_net, val_set, torch.device("cpu"))
    forward_seconds = (time.time() - began) / max(len(val_set), 1)
    val_truth = _truth(val_set, truth)
    test_set, test_reference = None, None
    if test:
        test_set = decode_image_set(test, base.preprocess, labels_csv=test_labels or labels, **common)
        if not test_set.labelled:
            raise ConfigError(f"--test {test}: every test photo needs a label (give --test-labels CSV covering them)")
        test_reference = logits_of(model_net, test_set, torch.device("cpu")).argmax(1).numpy()
    train = subset(canvases, train_at)
    fit_images = normalize(subset(crops, train_at).pixels, base.preprocess)
    calibration = fit_images[:4 * settings.calibration]
    views = None
    if settings.views:
        from edge.workflows.compress_views import ViewSignal

        views = ViewSignal.of(model_net, normalize(val_set.pixels, base.preprocess), settings.views)
    log(f"photos: {len(train)} to train on ({images}), {len(val_set)} held back for validation"
        + (f" ({val})" if val else f" (every {VAL_EVERY}th by id)") + (f", {len(test_set)} test" if test_set else ""))
    return Inputs(base=base, teacher=teacher_model, teacher_is_base=teacher is None, train=train,
                  calibration=calibration, fit_images=fit_images, views=views,
                  val=replace(val_set, labels=reference.argmax(1)),
                  val_logits=reference.numpy(), val_truth=val_truth, test=test_set,
                  test_reference=test_reference, progress=progress, forward_seconds=forward_seconds)


def _truth(data, truth: dict | None) -> np.ndarray | None:
    if truth is not None and all(i in truth for i in data.ids):
        return np.array([truth[i] for i in data.ids])
    return data.labels.numpy() if data.labelled else None


def compress(model: Path, images: str, output: Path, settings: SearchSettings, *, labels: Path | None = None,
             val: str | None = None, teacher: Path | None = None, teacher_arch: str = "resnet18",
             test: str | None = None, test_labels: Path | None = None, report: Path | None = None,
             resume: bool = False, overwrite: bool = False,
             cache_dir: Path | None = None, candidates=None, progress: bool = True, command: str = "",
             log=lambda line: print(line, file=sys.stderr)) -> dict:
    """Search, write the best fitting ONNX file to ``output`` and the report; -> the report's record."""
    from edge.workflows.compress_report import write_report
    from edge.export.quantize import QuantSpec

    started = time.time()
    work = report or output.with_name(output.name + ".compress")
    folders = [Path(spec.rsplit("@", 1)[0]) for spec in (images, val, test) if spec]
    sources = [teacher, labels, test_labels, cache_dir, *folders]
    check_paths(model, output, work, sources, resume, overwrite)
    about = {"model": str(model), "images": images, "val": val, "teacher": str(teacher) if teacher else None,
             "labels": str(labels) if labels else None, "test": test,
             "test_labels": str(test_labels) if test_labels else None}
    saved = resumable(work / STATE, settings, about) if resume else None  # checked before anything is written
    inputs = open_inputs(model, images, settings, labels, val, teacher, teacher_arch, test, test_labels, cache_dir, log,
                         progress)
    work.mkdir(parents=True, exist_ok=True)
    search = Search(inputs, settings, work, candidates or tuple(QuantSpec(weights, **options) for weights, options in FORMATS), about, progress, log,
                    started)
    if saved:
        search.load(saved)
    state = search.run()
    best = choose(state["points"], settings.target_bytes)
    state["command"] = command or state.get("command", "")
    state["chosen"] = best
    state["machine"] = machine()
    if best is not None:
        data = chosen_bytes(work, best)
        atomic_write(output, lambda f: f.write(data))
        log(f"wrote {output}: {best['stage']} keep {best['keep']:.3f}, {best['format']}, {best['bytes']:,} B, "
            f"val agreement {best['val_agreement']:.2%}")
    else:
        smallest = min((p["bytes"] for p in state["points"]), default=None)
        log(f"nothing fits {settings.target_bytes:,} B ("
            + ("no candidate was measured" if smallest is None else f"the smallest candidate is {smallest:,} B")
            + f"); nothing written to {output}")
    search.save()
    write_report(work, state)
    return state


def machine() -> dict:
    """What this run's seconds were measured on (the report's last line): the CPU, and torch's threads and the
    instruction set its CPU kernels use (``ATEN_CPU_CAPABILITY`` can lower it)."""
    from edge.bench.machine import summary

    return {**summary(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "kernels": torch.backends.cpu.get_cpu_capability()}


def resumable(path: Path, settings: SearchSettings, about: dict) -> dict:
    """The record at ``path`` (`read_state`: every field and candidate checked), made by a search with these
    settings and inputs."""
    saved = read_state(path)
    now = {"settings": asdict(settings), "about": about}
    differ = {k: (saved[k], now[k]) for k in now if saved[k] != now[k]}
    if differ:
        raise ConfigError(f"{path}: --resume needs the search's own settings; these differ (saved, now): "
                          + "; ".join(f"{k} {a} != {b}" for k, (a, b) in differ.items()))
    return saved


def run_command(options: CompressOptions) -> dict:
    """`edge compress` with the options the CLI built."""
    import shlex

    if options.threads:
        torch.set_num_threads(options.threads)
    state = compress(options.model, options.images, options.output, options.search, labels=options.labels,
                    val=options.val, teacher=options.teacher, teacher_arch=options.teacher_arch, test=options.test,
                    test_labels=options.test_labels, report=options.report, resume=options.resume,
                    overwrite=options.overwrite, cache_dir=options.cache_dir, progress=not options.quiet,
                    command="edge " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    if state["chosen"] is None:
        raise ConfigError(f"--target-bytes {options.search.target_bytes:,}: no candidate fits, so "
                          f"{options.output} was not written (the report lists what was tried)")
    return state
