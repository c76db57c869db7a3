"""The report of an `edge compress` search: report.json, report.md and frontier.png in its folder.

Every measured point is one ONNX file: bytes against validation agreement with the model (and
test accuracy when a test set was scored), in series: quantization only (the model as it is, one
format for every layer), mixed precision (more bits for some layers), quantization-aware (codes trained
against the teacher at their bit widths), and the same for slimmed models (slimming only: float formats);
the byte target is a vertical line and the chosen file is circled. Formats
skipped because their weight count alone exceeds the target are listed with that bound.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from edge.bench.plot import plain_log_ticks
from edge.core.weight_formats import parse_format
from edge.core.files import atomic_write


SERIES = {"quantization only": "s", "mixed precision": "D", "quantization-aware": "X", "slimming only": "^",
          "slimming + quantization": "o", "slimming + mixed precision": "P", "slimming + quantization-aware": "*"}
STAGE_SERIES = {"quantization": "quantization only", "mixed": "mixed precision", "qat": "quantization-aware"}


def series(point: dict) -> str:
    """The point's series (`SERIES`, in the plot's order)."""
    if point["stage"] in STAGE_SERIES:
        return ("slimming + " if point["keep"] < 1 else "") + STAGE_SERIES[point["stage"]]
    coded = parse_format(point["format"].split()[0])[0].sizes is not None  # uintN / kmeansK (edge.core.weight_formats)
    return "slimming + quantization" if coded else "slimming only"


def write_report(folder: Path, state: dict) -> None:
    text = json.dumps(state, indent=2)
    atomic_write(folder / "report.json", lambda f: f.write(text), binary=False)
    markdown = markdown_report(state)
    atomic_write(folder / "report.md", lambda f: f.write(markdown), binary=False)
    plot_frontier(folder / "frontier.png", state)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _kl(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _views(point: dict) -> str:
    return "-" if "views_kl" not in point else f"{point['views_kl']:.4f} ± {point['views_kl_noise']:.4f}"


def _fitting_text(keep: float | None, unprobed: bool) -> str:
    if unprobed:
        return "not found within the time budget"
    return "below the --min-keep" if keep is None else f"{keep:.3f}"


def _machine_text(machine: dict | None) -> str:
    if not machine:
        return ""
    wide = [f for f in machine["simd"] if f.startswith(("avx512", "amx")) or f == "avx2"]
    threads, load = machine["threads"], machine["load_average"]
    return (f" on {machine['cpu']}, {machine['cores']} cores ({', '.join(wide) or 'no AVX2'}); torch {machine['torch']} "
            f"on {threads} thread{'s' * (threads > 1)} with {machine['kernels']} kernels"
            + (f"; load average {load[0]:.1f} at the end" if load else ""))


def markdown_report(state: dict) -> str:
    target = state["settings"]["target_bytes"]
    has_val_acc = any("val_accuracy" in p for p in state["points"])
    has_test = any("test_accuracy" in p for p in state["points"])
    lines = [f"# edge compress: {Path(state['about']['model']).name} to <= {target:,} B", ""]
    if state.get("command"):
        lines += ["Command:", "", f"```\n{state['command']}\n```", ""]
    chosen = state.get("chosen")
    if chosen:
        lines += [f"Chosen: {chosen['stage']} keep {chosen['keep']:.3f}, {chosen['format']}, {chosen['bytes']:,} B, "
                  f"widths {chosen['widths']}, validation agreement with the model {_pct(chosen['val_agreement'])}"
                  + (f", test accuracy {_pct(chosen.get('test_accuracy'))}" if has_test else "") + ".", ""]
    else:
        lines += ["Nothing fits the target: no file was written.", ""]
    has_views = any("views_kl" in p for p in state["points"])
    head = ["series", "keep", "format", "bytes", "fits", "parameters", "val agreement", "val KL"]
    head += ["views KL (± s.e.)", "views agreement"] if has_views else []
    head += ["val accuracy"] if has_val_acc else []
    head += ["test accuracy", "test agreement"] if has_test else []
    lines += ["Every file holds the exact classifier merge (`edge export` merges a StudentNet's last pointwise conv, "
              "global pool and classifier into one conv; parameters: the merged model's). Quantization only: the model "
              "as it is; mixed precision: with more bits for the layers named (`edge.export.mixed_precision`); the "
              "slimming series prune the widths after the last max-pool to the keep fraction. Val KL: mean KL "
              "divergence of the file's answers from the model's on the validation photos; views KL: the same over "
              f"{state['settings'].get('views', 0)} augmented views of each (fitting files only; ± its bootstrap standard "
              "error over photos), what fitting files are ranked by.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in sorted(state["points"], key=lambda p: (series(p), -p["keep"], p["bytes"])):
        row = [series(p), f"{p['keep']:.3f}", p["format"], f"{p['bytes']:,}", "yes" if p["bytes"] <= target else "no",
               f"{p['parameters']:,}", _pct(p["val_agreement"]), _kl(p.get("val_kl"))]
        row += [_views(p), _pct(p.get("views_agreement"))] if has_views else []
        row += [_pct(p.get("val_accuracy"))] if has_val_acc else []
        row += [_pct(p.get("test_accuracy")), _pct(p.get("test_agreement"))] if has_test else []
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Slimming rounds (least-squares reconstruction, then function-matching KD):", "",
              "| round | keep | widths | val agreement before fine-tuning | after (best epoch) | kept | seconds per epoch | "
              "round seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in state["rounds"]:
        per_epoch = sum(r["epoch_seconds"]) / max(len(r["epoch_seconds"]), 1)
        lines.append(f"| {r['round']} | {r['keep']:.3f} | {r['widths']} | {_pct(r['val_before_finetune'])} | "
                     f"{_pct(r['val_after_finetune'])} | {'fine-tuned' if r['best_epoch'] else 'reconstruction alone'} | "
                     f"{per_epoch:.0f} | {r['seconds']:.0f} |")
    fitting, unprobed = state.get("fitting_keep", {}), state.get("unprobed", [])
    if fitting:
        lines += ["", "Keep fraction at which each integer format fits the target (entropy-coded ones aim 1% under it): " + ", ".join(
            f"{k} {_fitting_text(v, k in unprobed)}" for k, v in fitting.items()) + "."]
    skipped = state.get("skipped", [])
    if skipped:
        lines += ["", "Never exported (their weights alone take more than the target): " + ", ".join(
            f"{s['format']} at keep {s['keep']:.3f} (at least {s['least_bytes']:,} B)" for s in skipped) + "."]
    if state.get("stopped"):
        lines += ["", f"Stopped early: {state['stopped']}."]
    lines += ["", f"Search wall time: {state['seconds']:.0f} s{_machine_text(state.get('machine'))}.", ""]
    return "\n".join(lines)


@dataclass(frozen=True)
class Panel:
    """One panel of the frontier, drawn where points have ``key``: ``noise`` names its error bars' key."""

    key: str
    label: str
    scale: float = 100.0
    log: bool = False
    noise: str | None = None

    def errors(self, points: list[dict]):
        return [self.scale * p[self.noise] for p in points] if self.noise else None


PANELS = (Panel("views_kl", "KL from the model over augmented views\n(fitting files: lower ranks first)", 1.0, True,
                "views_kl_noise"),
          Panel("val_agreement", "validation agreement with the model (%)"),
          Panel("test_accuracy", "test accuracy (%)"))


def plot_frontier(path: Path, state: dict) -> None:
    import matplotlib.pyplot as plt

    fig = frontier_figure(state)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)


def frontier_figure(state: dict):
    """Bytes against what ranks the fitting files (views KL, ± its standard error), validation agreement and test
    accuracy, one marker per series, the target and the choice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [panel for panel in PANELS if any(panel.key in p for p in state["points"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 4.8), squeeze=False)
    target = state["settings"]["target_bytes"]
    for ax, panel in zip(axes[0], panels):
        for name, marker in SERIES.items():
            points = sorted((p for p in state["points"] if series(p) == name and panel.key in p),
                            key=lambda p: p["bytes"])
            if points:
                ax.errorbar([p["bytes"] / 1000 for p in points], [panel.scale * p[panel.key] for p in points],
                            panel.errors(points), fmt=marker, label=name, alpha=0.8, capsize=2)
        chosen = state.get("chosen")
        if chosen and panel.key in chosen:
            ax.plot([chosen["bytes"] / 1000], [panel.scale * chosen[panel.key]], "o", markersize=14, fillstyle="none",
                    color="k", label="chosen")
        ax.axvline(target / 1000, color="grey", linestyle="--", label=f"target {target:,} B")
        ax.set(xscale="log", yscale="log" if panel.log else "linear", xlabel="ONNX file (KB)", ylabel=panel.label)
        for axis in (ax.xaxis, ax.yaxis) if panel.log else (ax.xaxis,):
            plain_log_ticks(axis)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"edge compress: {Path(state['about']['model']).name}\nevery point a measured ONNX file",
                 fontsize=11)
    fig.tight_layout()
    return fig
