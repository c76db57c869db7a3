"""What `edge attack` reports and writes: the JSON document, the markdown table, the figures
(accuracy-vs-eps curves per model, and the homework's grid of original / attacked / defended
images with the model's top-3 probabilities), and the command that ties them to `edge.workflows.attack`.

JSON, one model: ``{"model", "format", "clean": {"accuracy", "defenses": {name: accuracy}},
"attacks": [{"attack", "method", "eps", "eps_text", "accuracy", "success_rate", "linf",
"defenses": {name: {"accuracy", "clean_accuracy"}}, "best_defense"}, ...], ...}``; several
models: the same per model under ``"models": {file name: ...}`` (`model_reports` reads both).
``success_rate``: of the images the model gets right when clean, the share the attack makes it
get wrong. ``linf``: the largest pixel change measured on the rounded 8-bit images.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from edge.core.config import ConfigError
from edge.core.files import OutputError, atomic_write, check_output, check_output_dir, real_path
from edge.core.options import AttackOptions
from edge.core.reports import Report
from edge.workflows.attack import Counts, Epsilon, Run, Target

CURVE_STYLES = {"white-box": "-", "transfer": "--"}


def _rate(part: int, whole: int) -> float | None:
    return round(part / whole, 6) if whole else None


def _row(kind: str, method: str, eps: Epsilon, counts: Counts, run: Run) -> dict:
    defenses = {name: {"accuracy": _rate(counts.defended[name], counts.images),
                       "clean_accuracy": _rate(counts.defended_clean[name], counts.images)}
                for name in counts.defended}
    row = {"attack": kind, "method": method, "eps": round(eps.value, 8), "eps_text": eps.text,
           "accuracy": _rate(counts.correct, counts.images),
           "success_rate": _rate(counts.flipped, counts.clean_correct),
           "linf": round(counts.max_levels / 255, 8), "linf_255": counts.max_levels, "defenses": defenses}
    if method == "ifgsm":
        row["steps"] = run.settings.steps
    if kind == "transfer":
        row["source"] = str(run.source.path)
    if defenses:
        best = max(defenses, key=lambda name: defenses[name]["accuracy"])
        row["best_defense"] = {"name": best, "accuracy": defenses[best]["accuracy"],
                               "gain": round(defenses[best]["accuracy"] - row["accuracy"], 6)}
    return row


def model_report(run: Run, target: Target) -> dict:
    clean = run.clean[target.key]
    rows = [_row(kind, method, eps, counts, run) for (key, kind, method, eps), counts in run.rows.items()
            if key == target.key]
    rows.sort(key=lambda r: (r["attack"] != "white-box", r["method"], r["eps"]))
    return {"model": str(target.path), "format": target.kind, "images": clean.images,
            "clean": {"accuracy": _rate(clean.correct, clean.images),
                      "defenses": {name: _rate(n, clean.images) for name, n in clean.defended.items()}},
            "attacks": rows}


def build_doc(run: Run, meta: dict) -> dict:
    """The JSON document: one model's report at the top level, several under ``models``."""
    reports = {t.key: model_report(run, t) for t in run.targets}
    settings = run.settings
    common = {**meta, "methods": list(settings.methods), "eps": [e.text for e in settings.budgets],
              "steps": settings.steps, "defenses": [d.name for d in settings.defenses],
              "source": str(run.source.path) if run.source else None, "adversarial_images": run.saved or None}
    return {**common, **next(iter(reports.values()))} if len(reports) == 1 else {**common, "models": reports}


def model_reports(doc: dict) -> dict[str, dict]:
    """``{name: report}`` from a document with one model or several."""
    return doc["models"] if "models" in doc else {Path(doc["model"]).name: doc}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def markdown(doc: dict) -> str:
    lines = ["# Adversarial robustness (`edge attack`)", "", f"Command: `{doc['command']}`", "",
             f"Machine: {doc['machine']['cpu'].get('model')}, {doc['machine']['cpu'].get('cores')} usable cores, "
             f"torch threads {doc['torch_threads']}; wall {doc['wall_s']:.0f} s.", "",
             f"{doc['images']} images from `{doc['data']}`; labels: {doc['labels']}. Attacks on the 8-bit "
             f"centre crop (L∞ measured after rounding)" + (f"; ifgsm: {doc['steps']} steps" if "ifgsm" in doc["methods"] else "")
             + ". Success rate: share of the "
             "images right when clean that the attack turns wrong. Defense cells: accuracy on attacked images "
             "behind the defense (its clean accuracy in brackets).", ""]
    for name, report in model_reports(doc).items():
        defenses = list(report["clean"]["defenses"])
        clean_cells = ", ".join(f"{d} {_pct(a)}" for d, a in report["clean"]["defenses"].items())
        lines += [f"## {name}: {report['format']}", "",
                  f"Clean accuracy {_pct(report['clean']['accuracy'])}" + (f"; behind defenses: {clean_cells}."
                                                                           if clean_cells else "."), "",
                  "| attack | method | eps | accuracy | success | L∞ | " + " | ".join(defenses) + " |",
                  "|---|---|---|---:|---:|---:|" + "---:|" * len(defenses)]
        for row in report["attacks"]:
            cells = [f"{_pct(row['defenses'][d]['accuracy'])} ({_pct(row['defenses'][d]['clean_accuracy'])})"
                     for d in defenses]
            kind = row["attack"] + (f" from {Path(row['source']).name}" if "source" in row else "")
            lines.append(f"| {kind} | {row['method']} | {row['eps_text']} | {_pct(row['accuracy'])} | "
                         f"{_pct(row['success_rate'])} | {row['linf_255']}/255 | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_curves(path: Path, doc: dict) -> None:
    """Accuracy vs eps, one panel per model: a line per attack and method, the best defense dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = model_reports(doc)
    fig, axes = plt.subplots(1, len(reports), figsize=(5 * len(reports), 4), squeeze=False, sharey=True)
    for ax, (name, report) in zip(axes[0], reports.items()):
        ax.axhline(100 * report["clean"]["accuracy"], color="grey", linestyle=":", label="clean")
        series = {}
        for row in report["attacks"]:
            series.setdefault((row["attack"], row["method"]), []).append(row)
        for (kind, method), rows in series.items():
            eps = [r["eps"] * 255 for r in rows]
            line, = ax.plot(eps, [100 * r["accuracy"] for r in rows], CURVE_STYLES[kind], marker="o",
                            label=f"{method} {kind}")
            if rows[0].get("best_defense"):
                ax.plot(eps, [100 * r["best_defense"]["accuracy"] for r in rows], ":", marker="s",
                        color=line.get_color(), label=f"{method} {kind}, best defense")
        ax.set(title=f"{name}\n{report['format']}", xlabel="eps (x 1/255)", xscale="log")
        ax.set_xticks(sorted({r["eps"] * 255 for r in report["attacks"]}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("accuracy (%)")
    fig.tight_layout()
    _save_figure(fig, path)


def _save_figure(fig, path: Path, photos: bool = False) -> None:
    """``fig`` as a PNG; ``photos``: in 256 colours (dithered), ~4x smaller for a grid of photos."""
    import matplotlib.pyplot as plt
    from PIL import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    image = Image.open(buffer)
    if photos:
        image = image.convert("RGB").quantize(256, dither=Image.Dither.FLOYDSTEINBERG)
    atomic_write(path, lambda f: image.save(f, format="png", optimize=True))


def _top3(target: Target, x: np.ndarray) -> list[list[tuple[str, float]]]:
    logits = target.score(np.ascontiguousarray(x, dtype=np.float32)).astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return [[(target.card.classes[i], float(p[i])) for i in np.argsort(-p)[:3]] for p in probs]


def _grid_attack(run: Run, target: Target) -> tuple | None:
    """The grid's attack: white-box when there is one, the first method, the eps nearest 2/255."""
    attacked = run.examples[target.key]["attacked"]
    if not attacked:
        return None
    kinds = {k[0] for k in attacked}
    kind = "white-box" if "white-box" in kinds else "transfer"
    method = run.settings.methods[0]
    eps = min(run.settings.budgets, key=lambda e: abs(e.value - 2 / 255))
    return kind, method, eps


def _truth_caption(target: Target, label: int, doc: dict) -> str:
    """``true label: noodles`` (or, without labels, the first model's clean answer, said so)."""
    name = target.card.classes[int(label)]
    return f"label: {name} (first model's answer)" if doc["labels"].startswith("the first model") \
        else f"true label: {name}"


def write_grid(path: Path, run: Run, doc: dict) -> None:
    """The homework's figure: per model and example, original / attacked / defended (the attack's best
    defense) with the model's top-3 probabilities under each image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reports = model_reports(doc)
    panels = []
    for target in run.targets:
        chosen = _grid_attack(run, target)
        if chosen is None:
            continue
        kind, method, eps = chosen
        clean = run.examples[target.key]["pixels"].float() / 255
        attacked = run.examples[target.key]["attacked"][chosen].float() / 255
        row = next(r for r in reports[target.key]["attacks"]
                   if (r["attack"], r["method"], r["eps_text"]) == (kind, method, eps.text))
        images = [("original", clean), (f"{method} {kind} eps {eps.text}", attacked)]
        if row.get("best_defense"):
            defense = next(d for d in run.settings.defenses if d.name == row["best_defense"]["name"])
            images.append((f"attacked + {defense.name}", defense(attacked)))
        for index in range(len(clean)):
            truth = _truth_caption(target, run.examples[target.key]["labels"][index], doc)
            panels.append([(f"{target.key}: {title}" + (f"\n{truth}" if title == "original" else ""),
                            batch[index:index + 1]) for title, batch in images])
    columns = max(len(p) for p in panels)
    fig, axes = plt.subplots(len(panels), columns, figsize=(3.2 * columns, 3.9 * len(panels)), squeeze=False)
    targets = [t for t in run.targets if _grid_attack(run, t) is not None]
    per_target = len(panels) // len(targets)
    for r, panel in enumerate(panels):
        target = targets[r // per_target]
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c >= len(panel):
                continue
            title, x = panel[c]
            top = _top3(target, x.numpy())[0]
            ax.imshow(x[0].permute(1, 2, 0).clamp(0, 1).numpy().squeeze())
            ax.set_title(title, fontsize=7)
            ax.text(0.0, -0.04, "\n".join(f"{name}: {100 * p:.1f}%" for name, p in top), transform=ax.transAxes,
                    fontsize=7, va="top", family="monospace")
    fig.tight_layout()
    _save_figure(fig, path, photos=True)


# --- output paths ---


def examples_path(plot: Path) -> Path:
    """The grid's file beside ``--plot OUT.png``: ``OUT-examples.png``."""
    return plot.with_name(f"{plot.stem}-examples{plot.suffix or '.png'}")


def check_outputs(files: list[Path | None], save_dir: Path | None, inputs: list[Path], overwrite: bool) -> None:
    """Fail before any work (`edge.core.files`' guard): an output that is an input or another output, a
    link, folder or other non-regular file, in a missing folder, or (without ``overwrite``) already
    there; a --save-adversarial folder that is not empty (without ``overwrite``) or holds the data."""
    files = [path for path in files if path]
    for path in files:
        check_output(path, inputs=[*inputs, *(other for other in files if other is not path)], overwrite=overwrite,
                     what="report file")
    if save_dir is None:
        return
    resolved = [real_path(p) for p in inputs if p.is_dir()]
    if any(real_path(save_dir).is_relative_to(p) or p.is_relative_to(real_path(save_dir)) for p in resolved):
        raise OutputError(f"{save_dir}: overlaps the data folder; choose a folder of its own")
    check_output_dir(save_dir, inputs=inputs, what="--save-adversarial folder")
    if save_dir.exists() and any(save_dir.iterdir()) and not overwrite:
        raise OutputError(f"{save_dir}: exists and is not an empty folder; pass --overwrite to write into it")


def write_outputs(run: Run, doc: dict, json_out: Path | None, markdown_out: Path | None,
                  plot_out: Path | None) -> list[Path]:
    written = []
    if json_out:
        text = json.dumps(doc, indent=2) + "\n"
        atomic_write(json_out, lambda f: f.write(text), binary=False)
        written.append(json_out)
    if markdown_out:
        text = markdown(doc)
        atomic_write(markdown_out, lambda f: f.write(text), binary=False)
        written.append(markdown_out)
    if plot_out:
        write_curves(plot_out, doc)
        write_grid(examples_path(plot_out), run, doc)
        written += [plot_out, examples_path(plot_out)]
    return written


# --- the command ---


def attack_command(options: AttackOptions, command: str = "edge.workflows.attack_report.attack_command(...)") -> Report:
    """`edge attack`: check every option and output, run, and report (the summary table, the files written)."""
    import time

    import torch

    from edge.bench.machine import describe
    from edge.workflows.attack import run_attack

    torch.set_num_threads(options.threads)
    data_dir, labels = options.data_dir, options.labels
    settings, targets, source_model, samples, (label_list, label_note) = _prepare(options)
    started = time.perf_counter()
    run = run_attack(targets, source_model, samples, label_list, settings, not options.quiet)
    meta = {"command": command, "data": str(data_dir), "labels": label_note + (f" ({labels})" if labels else ""),
            "images": len(samples), "machine": describe(), "torch_threads": torch.get_num_threads(),
            "wall_s": round(time.perf_counter() - started, 1)}
    doc = build_doc(run, meta)
    lines = [terminal(doc)]
    lines += [f"wrote {path}" for path in write_outputs(run, doc, options.json_out, options.markdown_out,
                                                         options.plot_out)]
    lines += [f"adversarial PNGs ({name}): {folder}" for name, folder in run.saved.items()]
    return Report(tuple(lines), doc)


def _prepare(options: AttackOptions):
    """(settings, targets, source model, samples, (labels, note)): every check before the attack runs."""
    from edge.data.folders import list_samples, read_labels
    from edge.inference.ort_memory import expect_images
    from edge.workflows.attack import Settings, open_target, parse_eps, parse_methods, resolve_labels
    from edge.workflows.defenses import parse_defenses

    models, labels, source = list(options.models), options.labels, options.source
    if not models:
        raise ConfigError("models: give one or more model files to attack")
    settings = Settings(parse_methods(options.methods), parse_eps(options.eps), options.steps,
                        parse_defenses(options.defenses), options.batch, options.save_dir)
    plot = options.plot_out
    files = [options.json_out, options.markdown_out, plot, examples_path(plot) if plot else None]
    check_outputs(files, options.save_dir, [*models, options.data_dir, *filter(None, [labels, source])],
                  options.overwrite)
    expect_images(options.batch)  # an ONNX target scores one batch (with each defense) at a time
    targets = [_open_target(m, options.pools, transfer_only_ok=source is not None) for m in models]
    source_model = open_target(source, options.pools) if source else None
    samples = list_samples(options.data_dir, targets[0].card.classes)[:options.limit]
    truth = read_labels(labels, len(targets[0].card.classes)) if labels else None
    return settings, targets, source_model, samples, resolve_labels(samples, truth)


def _open_target(path: Path, pools, transfer_only_ok: bool):
    """A model to attack; one whose graph torch cannot rebuild (int8 QDQ) is a transfer target when
    there is a --source, else its error stands."""
    from edge.workflows.attack import open_target
    from edge.inference.runtime import ModelError

    try:
        return open_target(path, pools)
    except ModelError as err:
        if not transfer_only_ok or "cannot rebuild" not in str(err):
            raise
        print(f"note: {err}; scoring it on the transfer attack only")
        return open_target(path, pools, white_box=False)


def terminal(doc: dict) -> str:
    """One line per model and attack: accuracy, success rate, L_inf, best defense."""
    lines = []
    for name, report in model_reports(doc).items():
        lines.append(f"{name} ({report['format']}): clean accuracy {_pct(report['clean']['accuracy'])} "
                     f"on {report['images']} images")
        for row in report["attacks"]:
            best = row.get("best_defense")
            lines.append(f"  {row['attack']:<9} {row['method']:<5} eps {row['eps_text']:<7} accuracy "
                         f"{_pct(row['accuracy']):>6}  success {_pct(row['success_rate']):>6}  "
                         f"L_inf {row['linf_255']}/255" + (f"  best defense {best['name']} {_pct(best['accuracy'])}"
                                                          if best else ""))
    return "\n".join(lines)
