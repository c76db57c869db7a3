"""Network slimming (Liu et al. 2017) of a StudentNet: channels out, for real.

Channel ``c`` of width ``i`` (the output of stage ``i``, i < depth - 1) is gated by the BatchNorm
that follows the next stage's depthwise conv, ``cnn.{i+1}.1``; its importance is ``|gamma|``
there (push gammas to zero while training with ``--sparsity``, `edge.train.loop.bn_l1_subgradient`).
Pruning removes the channel from the conv that makes it (and stage 0's BatchNorm), from the
depthwise conv and BatchNorm of the next stage, and from the next pointwise conv's inputs: the
result is a smaller `StudentConfig` with plain weights, not a mask. The last stage's width has
no gate and is kept.

Exactness: a pruned channel's gate outputs ``beta`` whatever its input once ``gamma = 0``, so it
feeds the next pointwise conv the constant ``relu6(beta)``, which is folded into that conv's
bias. Hence, in eval mode, ``prune(state, keep)`` computes exactly what ``zero_pruned_gates(state,
keep)`` computes with every channel kept (tests check it).

`slim_curve` iterates: each round removes ``rate`` of the channels left (per stage, or by one
global threshold; never a whole layer), fine-tunes with knowledge distillation from the unpruned
model (or a given teacher), keeps the round's best epoch by validation accuracy, exports it as
uint8 ONNX, and records parameters, bytes and accuracies; `plot_curves` draws every rate on one
figure. A curve is resumable: the rounds already recorded are not redone (the next one starts
from the last recorded round's best file, found by its place in the output folder, not by a path the record
names), and the round in progress continues its own run file (`edge.train.loop.fit`'s resume), so a resumed
curve ends exactly where an uninterrupted one does. The record (``curve.json``) is sealed (`write_curves`);
`curves_problem` says what makes one read back unfit to resume.
Under ``torchrun`` every rank fine-tunes (`edge.train.loop.fit` in DDP); rank 0 alone measures,
exports and records, and the other ranks take each round's best file from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from edge.core.config import ConfigError, StudentConfig
from edge.train.distributed import group
from edge.core.files import atomic_write
from edge.core.json_text import is_number, seal_problem, sealed_text
from edge.io.netfile import NetFile
from edge.models.registry import NetSpec

BN_PARTS = ("weight", "bias", "running_mean", "running_var")
SCOPES = ("stage", "global")
CALIBRATION = 64  # validation images that calibrate a gptq export


def gate_name(width: int) -> str:
    """The BatchNorm whose gamma gates the channels of width ``width``."""
    return f"cnn.{width + 1}.1"


def importance(config: StudentConfig, state: dict[str, np.ndarray]) -> list[np.ndarray]:
    """|gamma| of each prunable width's gate (widths 0 .. depth-2)."""
    return [np.abs(np.asarray(state[f"{gate_name(i)}.weight"], np.float64)) for i in range(config.depth - 1)]


def select_channels(scores: list[np.ndarray], rate: float, scope: str = "stage") -> list[np.ndarray]:
    """Indices to keep per width, after removing ``rate`` of the channels with the smallest score:
    within each stage (``stage``) or below one threshold for all (``global``); >= 1 per layer."""
    if not 0 <= rate < 1:
        raise ConfigError(f"rate must be in [0, 1), got {rate}")
    if scope not in SCOPES:
        raise ConfigError(f"scope must be one of {SCOPES}, got {scope!r}")
    if scope == "stage":
        removed = [set(np.argsort(s, kind="stable")[:min(math.floor(rate * len(s)), len(s) - 1)].tolist())
                   for s in scores]
    else:
        removed = [set() for _ in scores]
        order = sorted((float(v), stage, c) for stage, s in enumerate(scores) for c, v in enumerate(s))
        budget = math.floor(rate * len(order))
        for _, stage, c in order:
            if budget == 0:
                break
            if len(removed[stage]) < len(scores[stage]) - 1:
                removed[stage].add(c)
                budget -= 1
    return [np.array([c for c in range(len(s)) if c not in gone], np.int64) for s, gone in zip(scores, removed)]


def zero_pruned_gates(config: StudentConfig, state: dict, keep: list[np.ndarray]) -> dict:
    """``state`` with gamma = 0 on every channel not in ``keep``: the model pruning reproduces."""
    out = dict(state)
    for width, kept in enumerate(keep):
        gamma = np.array(state[f"{gate_name(width)}.weight"], np.float32)
        gamma[np.setdiff1d(np.arange(len(gamma)), kept)] = 0
        out[f"{gate_name(width)}.weight"] = gamma
    return out


def prune(config: StudentConfig, state: dict[str, np.ndarray], keep: list[np.ndarray]) -> tuple[StudentConfig, dict]:
    """Remove every channel not in ``keep`` (one index array per width 0..depth-2) from the weights."""
    if len(keep) != config.depth - 1:
        raise ConfigError(f"keep lists {len(keep)} widths, the model prunes {config.depth - 1}")
    new = {k: np.asarray(v) for k, v in state.items()}
    for i, kept in enumerate(keep):
        if len(kept) < 1:
            raise ConfigError(f"width {i} would lose all its channels")
        producer = [f"cnn.0.0.{p}" for p in ("weight", "bias")] + [f"cnn.0.1.{p}" for p in BN_PARTS] if i == 0 \
            else [f"cnn.{i}.3.weight", f"cnn.{i}.3.bias"]
        gate = [f"cnn.{i + 1}.0.weight", f"cnn.{i + 1}.0.bias"] + [f"{gate_name(i)}.{p}" for p in BN_PARTS]
        consumer = f"cnn.{i + 1}.3"
        dropped = np.setdiff1d(np.arange(new[consumer + ".weight"].shape[1]), kept)
        constant = np.clip(new[f"{gate_name(i)}.bias"][dropped].astype(np.float64), 0, 6)
        weight = new[consumer + ".weight"]
        new[consumer + ".bias"] = (new[consumer + ".bias"] + weight[:, dropped, 0, 0].astype(np.float64) @ constant
                                   ).astype(np.float32)
        new[consumer + ".weight"] = weight[:, kept]
        for name in producer + gate:
            new[name] = new[name][kept]
    widths = tuple(len(k) for k in keep) + (config.widths[-1],)
    return replace(config, widths=widths), {k: np.array(v, order="C") for k, v in new.items()}


def numpy_state(net: NetFile) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in net.state.items()}


def prune_net(net: NetFile, rate: float, scope: str = "stage") -> NetFile:
    """One slimming step on a StudentNet file: remove ``rate`` of its prunable channels."""
    if net.spec.arch != "dw":
        raise ConfigError(f"slimming works on StudentNets (arch dw), not {net.spec.arch}")
    state = numpy_state(net)
    config, pruned = prune(net.spec.config, state, select_channels(importance(net.spec.config, state), rate, scope))
    return NetFile(NetSpec("dw", config), net.preprocess, net.classes,
                   {k: torch.from_numpy(v) for k, v in pruned.items()})


# ---------------------------------------------------------------- the iterative schedule


@dataclass(frozen=True, kw_only=True)
class SlimSetup:
    """What every round shares: data, teacher, fine-tuning recipe, where files go, the export format."""

    train: object  # ImageSet
    val: object  # ImageSet
    augment: object  # Augment
    teacher: torch.nn.Module
    recipe: object  # edge.train.loop.Recipe (epochs = fine-tuning epochs per round)
    out_dir: Path
    alpha: float = 1.0
    temperature: float = 20.0
    scope: str = "stage"
    test: object = None  # ImageSet, scored but never used to choose
    test_kind: str = "accuracy"
    quant: object  # edge.export.quantize.QuantSpec of each round's export (gptq calibrates on validation images)
    device: torch.device = torch.device("cpu")
    workers: int = 0
    progress: bool = True
    resume: bool = False  # continue each round's run file when there is one


def measure(net: NetFile, setup: SlimSetup, onnx_path: Path, val_kind: str, val) -> dict:
    """Size and accuracy of one model: parameters, ONNX bytes, torch val/test, ONNX test."""
    from edge.io.checkpoints import Checkpoint
    from edge.train.loop import accuracy
    from edge.data.datasets import normalize
    from edge.export.exporter import export_onnx

    model = net.build().to(setup.device)
    point = {"widths": list(net.spec.config.widths), "parameters": net.spec.config.num_parameters(),
             "mflops": round(net.spec.config.flops() / 1e6, 2), "val_accuracy": accuracy(model, val, setup.device),
             "val_kind": val_kind}
    calibration = (normalize(val.pixels[:CALIBRATION], val.preprocess).numpy(), f"{CALIBRATION} validation images") \
        if setup.quant.calibrated else (None, "")
    with torch.no_grad():  # exporting and calibrating need no gradients
        size, described = export_onnx(Checkpoint(net.card, numpy_state(net), "edge"), onnx_path, setup.quant,
                                      *calibration)
    point.update({"onnx": onnx_path.name, "onnx_bytes": size, "onnx_weights": described})
    if setup.test is not None:
        point["test_accuracy"] = accuracy(model, setup.test, setup.device)
        point["onnx_test_accuracy"] = onnx_accuracy(onnx_path, setup.test)
        point["test_kind"] = setup.test_kind
    return point


def _measure_main(net: NetFile, setup: SlimSetup, onnx_path: Path, val_kind: str, val) -> dict:
    """`measure` on rank 0, which writes the files and the record (nothing on the other ranks)."""
    return measure(net, setup, onnx_path, val_kind, val) if group().main else {}


def onnx_accuracy(path: Path, data, batch_size: int = 64) -> float:
    """Top-1 accuracy of an exported file run by ONNX Runtime on a labelled evaluation set."""
    from edge.data.datasets import normalize
    from edge.inference.ort_memory import expect_images
    from edge.inference.runtime import OnnxClassifier

    expect_images(batch_size)
    model = OnnxClassifier(path)
    predicted = [model(normalize(data.pixels[i:i + batch_size], data.preprocess).numpy()).argmax(1)
                 for i in range(0, len(data), batch_size)]
    return float(np.mean(np.concatenate(predicted) == data.labels.numpy()))


def slim_curve(base: NetFile, rate: float, rounds: int, setup: SlimSetup, base_path: str = "",
               done: list[dict] = (), stop_after: int | None = None, record=lambda points: None) -> list[dict]:
    """``rounds`` of prune-by-``rate`` + KD fine-tuning from ``base``; one point per round (0 = base).

    ``done``: the points an interrupted run of this curve recorded (kept, not redone); with
    ``setup.resume`` the next round continues its run file when there is one. ``stop_after``:
    stop once this curve has run that many fine-tuning epochs in all, counted from round 1 (the
    round's run file then holds the last epoch). ``record`` gets the points each time one is
    added. Fewer than ``rounds + 1`` points come back when it stopped early."""
    from edge.train.shared import load_shared
    from edge.train.loop import best_path, teacher_labelled

    folder = setup.out_dir / f"rate{rate:g}"
    if group().main:
        folder.mkdir(parents=True, exist_ok=True)
    val, val_kind = teacher_labelled(setup.val, setup.teacher, setup.device)
    points = list(done)
    if not points:
        points.append({"round": 0, "file": str(base_path), **_measure_main(base, setup, folder / "round0.onnx",
                                                                            val_kind, val)})
        record(points)
    current = load_shared(best_path(_run_file(folder, len(points) - 1))) if len(points) > 1 else base
    for r in range(len(points), rounds + 1):
        epochs_left = None if stop_after is None else stop_after - (r - 1) * setup.recipe.epochs
        if epochs_left is not None and epochs_left <= 0:
            break
        current, point = _slim_round(current, rate, r, setup, folder, (val_kind, val), epochs_left)
        if point is None:
            break
        points.append(point)
        record(points)
    return points


def _slim_round(current: NetFile, rate: float, r: int, setup: SlimSetup, folder: Path, val_set,
                stop_after: int | None) -> tuple[NetFile, dict | None]:
    """Round ``r``: prune ``current``, fine-tune (continuing its run file with ``setup.resume``),
    measure the best epoch. -> (that model, its point), or (``current``, None) when stopped early."""
    from edge.train.distill import Distillation
    from edge.train.shared import load_shared
    from edge.train.loop import Run, fit, init_model

    val_kind, val = val_set
    pruned = prune_net(current, rate, setup.scope)
    before = measure_val(pruned, val, setup.device) if group().main else None
    objective = Distillation(setup.teacher, setup.alpha, setup.temperature)
    run = Run(pruned, init_model(pruned, setup.recipe.seed), objective, setup.recipe, setup.train, setup.augment,
              _run_file(folder, r), setup.val, setup.device, setup.workers, {"slim_rate": rate, "round": r},
              setup.progress)
    fit(run, setup.resume and group().file_bytes(run.out) is not None, stop_after)
    if stop_after is not None and stop_after < setup.recipe.epochs:
        return current, None
    best = load_shared(run.best_path)
    point = _measure_main(best, setup, folder / f"round{r}.onnx", val_kind, val)
    return best, {"round": r, "file": str(run.best_path), "val_before_finetune": before, **point}


def _run_file(folder: Path, r: int) -> Path:
    """Round ``r``'s run file in its rate's folder (its best epoch beside it: `edge.train.loop.best_path`)."""
    return folder / f"round{r}.pt"


def measure_val(net: NetFile, val, device) -> float:
    from edge.train.loop import accuracy

    return accuracy(net.build().to(device), val, device)


def write_curves(path: Path, curves: dict) -> None:
    """The record, sealed (`edge.core.json_text.sealed_text`): --resume refuses it once edited."""
    atomic_write(path, lambda f: f.write(sealed_text(curves).encode()))


POINT_NUMBERS = ("parameters", "onnx_bytes", "val_accuracy")  # what every point has, read by the figure and summary


def curves_problem(record, rates: list[float], rounds: int) -> str | None:
    """What makes ``record`` (a curve.json read back for --resume) unlike one a slimming run of these ``rates`` and
    ``rounds`` writes: its curves, one per rate in order, each with points for rounds 0, 1, ... and their numbers;
    then its seal. None when nothing does."""
    curves = record.get("curves")
    if not isinstance(curves, list) or len(curves) > len(rates):
        return f"'curves' is not a list of at most {len(rates)} (one per rate)"
    for curve, rate in zip(curves, rates):
        if not isinstance(curve, dict) or curve.get("rate") != rate:
            return f"a curve for rate {rate:g} is missing or out of order"
        points = curve.get("points")
        if not isinstance(points, list) or len(points) > rounds + 1:
            return f"rate {rate:g}: 'points' is not a list of at most {rounds + 1} rounds"
        for r, point in enumerate(points):
            if not isinstance(point, dict) or point.get("round") != r or not all(
                    is_number(point.get(key)) for key in POINT_NUMBERS):
                return f"rate {rate:g}, round {r}: not a point slimming records"
    return seal_problem(record)


def plot_curves(path: Path, curves: dict) -> None:
    """Accuracy against parameters and against rounds, one line per rate, on one figure."""
    import matplotlib.pyplot as plt

    fig = curves_figure(curves)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)


def thousands(count: float, _position=None) -> str:
    """A parameter count as an axis label: ``120K``, ``1.5M``."""
    if abs(count) >= 1e6:
        return f"{count / 1e6:g}M"
    return f"{count / 1e3:g}K" if abs(count) >= 1e3 else f"{count:g}"


def curves_figure(curves: dict):
    """`plot_curves`' figure: parameters axis in thousands (a few ticks), rounds axis in whole rounds."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_size, by_round) = plt.subplots(1, 2, figsize=(11, 4.2))
    first = curves["curves"][0]["points"][0]
    key, kind = ("test_accuracy", first["test_kind"]) if "test_accuracy" in first \
        else ("val_accuracy", first["val_kind"])
    for curve in curves["curves"]:
        points = curve["points"]
        acc = [100 * p[key] for p in points]
        line, = by_size.plot([p["parameters"] for p in points], acc, "o-", label=f"rate {curve['rate']:g}/round, torch")
        if "onnx_test_accuracy" in first:
            by_size.plot([p["parameters"] for p in points], [100 * p["onnx_test_accuracy"] for p in points], "x--",
                         color=line.get_color(),
                         label=f"rate {curve['rate']:g}/round, {first['onnx_weights']['weights']} ONNX")
        by_round.plot([p["round"] for p in points], acc, "o-", color=line.get_color(),
                      label=f"rate {curve['rate']:g}/round")
    by_size.set(xlabel="parameters", ylabel=f"{kind} (%)", title="accuracy vs size")
    by_size.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=5))
    by_size.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(thousands))
    by_round.set(xlabel="slimming round", ylabel=f"{kind} (%)", title="accuracy per round (KD fine-tuned)")
    by_round.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    for ax in (by_size, by_round):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(curves.get("title", "network slimming"))
    fig.tight_layout()
    return fig
