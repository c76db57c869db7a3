"""edge.bench.plot: the bench PNG labels each point by backend and format, and by model when a run holds
several; its KB axis reads in plain numbers and no text leaves the figure."""

from __future__ import annotations

from edge.bench.plot import bench_figure, row_label
from synthetic import shown_tick_labels, text_outside_figure


def _row(model: str, backend: str, fmt: str, size: int, accuracy: float) -> dict:
    return {"model": model, "backend": backend, "format": fmt, "status": "ok", "bytes": size,
            "predict": {"accuracy": [accuracy, 497]}, "latency_batch": 1,
            "p50_ms": {"median": 8.0, "min": 7.0, "max": 9.0}}


def _doc(models: list[str]) -> dict:
    rows = [_row(m, backend, fmt, size // (i + 1), 0.83 - 0.01 * i)
            for i, m in enumerate(models)
            for backend, fmt, size in (("ort-cpu", "fp32", 1_040_000), ("ort-cpu", "uint8", 267_000),
                                       ("torch-cpu", "fp32", 1_047_000))]
    return {"rows": rows, "models": [{"name": m} for m in models], "machine": {"cpu": {"model": "AMD EPYC"}}}


def test_one_model_points_say_backend_and_format_on_a_plain_kb_axis():
    fig = bench_figure(_doc(["student.bin"]))
    size_panel = fig.axes[0]
    assert sorted(t.get_text() for t in size_panel.texts) == ["ort-cpu fp32", "ort-cpu uint8", "torch-cpu fp32"]
    assert [t.get_text() for t in shown_tick_labels(size_panel.xaxis)] == ["300", "500", "1,000"]
    assert text_outside_figure(fig) == []


def test_several_models_label_every_point_and_bar_with_its_model():
    models = ["student.bin", "student_uint8.onnx"]
    fig = bench_figure(_doc(models))
    size_panel, latency_panel = fig.axes
    legend = sorted(t.get_text() for t in size_panel.get_legend().get_texts())
    assert legend == sorted(row_label(r, True) for r in _doc(models)["rows"])
    assert all(any(m in label for m in models) for label in legend)
    bars = [t.get_text() for t in latency_panel.get_xticklabels()]
    assert [b.split(" ")[0] for b in bars] == [m for m in models for _ in range(3)]
    assert row_label(_doc(models)["rows"][0], False) == "ort-cpu fp32"
