"""The bench PNG: file size vs accuracy (or agreement), and batch-1 latency per backend with its spread."""

from __future__ import annotations

from pathlib import Path

from edge.core.files import atomic_write


def _quality(row: dict) -> tuple[float | None, str]:
    """Accuracy when labels were known, else agreement with torch fp32, else nothing to plot."""
    accuracy = (row.get("predict") or {}).get("accuracy")
    if accuracy:
        return accuracy[0], "accuracy (agreement with reference labels)"
    return row.get("agreement_vs_torch_fp32"), "top-1 agreement with torch fp32"


def _size_panel(ax, rows: list[dict]) -> None:
    points = [(r["bytes"], *_quality(r), f"{r['backend']} {r['format']}") for r in rows if r["bytes"]]
    points = [p for p in points if p[1] is not None]
    if not points:
        ax.text(0.5, 0.5, "no accuracy: run with --data DIR [--labels CSV]", ha="center", va="center",
                transform=ax.transAxes)
        ax.set_axis_off()
        return
    for i, (size, quality, _, label) in enumerate(points):
        ax.scatter(size / 1e3, quality * 100)
        ax.annotate(label, (size / 1e3, quality * 100), fontsize=7, xytext=(4, 4 if i % 2 else -10),
                    textcoords="offset points")  # alternate above/below: equal-size rows would overlap
    ax.set_xscale("log")
    ax.set_xlabel("file size (kB, log)")
    ax.set_ylabel(f"{points[0][2]} (%)")
    ax.set_title("size vs accuracy")


def _latency_panel(ax, rows: list[dict], several_models: bool) -> None:
    labels = [f"{r['backend']}\n{r['format']}" + (f"\n{r['model']}" if several_models else "") for r in rows]
    medians = [r["p50_ms"]["median"] for r in rows]
    errors = [[m - r["p50_ms"]["min"] for m, r in zip(medians, rows)],
              [r["p50_ms"]["max"] - m for m, r in zip(medians, rows)]]
    ax.bar(range(len(rows)), medians, yerr=errors, capsize=3, color="tab:blue")
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylabel(f"p50 latency, batch {rows[0]['latency_batch']} (ms)")
    ax.set_title("latency per backend (median, min-max over repeats)")


def write_plot(path: Path, doc: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if r["status"] == "ok"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    _size_panel(left, rows)
    if rows:
        _latency_panel(right, rows, len(doc["models"]) > 1)
    fig.suptitle(", ".join(m["name"] for m in doc["models"]) + f" on {doc['machine']['cpu']['model']}")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, dpi=120, format="png"))
    plt.close(fig)
