"""The bench PNG: file size vs accuracy (or agreement), and batch-1 latency per backend with its spread.
Every point and bar is labelled by backend and format, and by model when the run holds several."""

from __future__ import annotations

from pathlib import Path

from edge.core.files import atomic_write


def _quality(row: dict) -> tuple[float | None, str]:
    """Accuracy when labels were known, else agreement with torch fp32, else nothing to plot."""
    accuracy = (row.get("predict") or {}).get("accuracy")
    if accuracy:
        return accuracy[0], "accuracy (agreement with reference labels)"
    return row.get("agreement_vs_torch_fp32"), "top-1 agreement with torch fp32"


NARROW = 4.0


def plain_log_ticks(axis) -> None:
    """A log axis labelled in plain numbers (100, 200, 300, 500, 1,000), not 2x10^2; an axis spanning less than
    a factor of `NARROW` (call it once the data is plotted) gets every 1-9 step, so it shows more than one label."""
    import matplotlib.ticker as ticker

    low, high = axis.get_view_interval()
    subs = tuple(float(s) for s in range(1, 10)) if 0 < low and high < NARROW * low else (1.0, 2.0, 3.0, 5.0)
    axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    axis.set_minor_locator(ticker.NullLocator())
    axis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 1 else f"{value:g}"))


def row_label(row: dict, several_models: bool, sep: str = " ") -> str:
    """``torch fp32``, or ``student.onnx torch fp32`` when the run holds several models."""
    return sep.join(([row["model"]] if several_models else []) + [row["backend"], row["format"]])


def _size_panel(ax, rows: list[dict], several_models: bool) -> None:
    points = [(r["bytes"], *_quality(r), r) for r in rows if r["bytes"]]
    points = [p for p in points if p[1] is not None]
    if not points:
        ax.text(0.5, 0.5, "no accuracy: run with --data DIR [--labels CSV]", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    models = sorted({r["model"] for r in rows})
    for i, (size, quality, _, row) in enumerate(points):
        label = row_label(row, several_models)
        if several_models:  # long labels: a legend, one marker shape per model
            ax.scatter(size / 1e3, quality * 100, marker="os^Dv<>p"[models.index(row["model"]) % 8], label=label)
            continue
        ax.scatter(size / 1e3, quality * 100)
        ax.annotate(label, (size / 1e3, quality * 100), fontsize=7, xytext=(4, 4 if i % 2 else -10),
                    textcoords="offset points")  # alternate above/below: equal-size rows would overlap
    if several_models:
        ax.legend(fontsize=7)
    ax.set_xscale("log")
    plain_log_ticks(ax.xaxis)
    ax.set_xlabel("file size (kB, log)")
    ax.set_ylabel(f"{points[0][2]} (%)")
    ax.set_title("size vs accuracy")


def _latency_panel(ax, rows: list[dict], several_models: bool) -> None:
    labels = [row_label(r, several_models, " " if several_models else "\n") for r in rows]
    medians = [r["p50_ms"]["median"] for r in rows]
    errors = [[m - r["p50_ms"]["min"] for m, r in zip(medians, rows)],
              [r["p50_ms"]["max"] - m for m, r in zip(medians, rows)]]
    ax.bar(range(len(rows)), medians, yerr=errors, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(rows)), labels, fontsize=7, rotation=60 if several_models else 0,
                  ha="right" if several_models else "center", rotation_mode="anchor")
    ax.set_ylabel(f"p50 latency, batch {rows[0]['latency_batch']} (ms)")
    ax.set_title("latency per backend (median, min-max over repeats)")


def write_plot(path: Path, doc: dict) -> None:
    import matplotlib.pyplot as plt

    fig = bench_figure(doc)
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)


def bench_figure(doc: dict):
    """`write_plot`'s figure: size vs quality on the left, latency per backend on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if r["status"] == "ok"]
    several_models = len(doc["models"]) > 1
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    _size_panel(left, rows, several_models)
    if rows:
        _latency_panel(right, rows, several_models)
    fig.suptitle(", ".join(m["name"] for m in doc["models"]) + f" on {doc['machine']['cpu']['model']}")
    fig.tight_layout()
    return fig
