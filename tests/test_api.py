"""The public Python API (`edge.load_model`, `export_model`, `predict_images`, `benchmark`) end to end on a
tiny seeded StudentNet and generated images; `import edge` stays free of torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import edge
from edge.io.checkpoints import save_checkpoint
from edge.core.config import StudentConfig
from edge.io.checkpoints import init_checkpoint

TINY = StudentConfig(widths=(4, 8), pools=(0,), input_size=32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    checkpoint = init_checkpoint(TINY)
    save_checkpoint(root / "tiny.pt", checkpoint.card, checkpoint.state)
    images = root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(images / f"{i:04d}.png")
    return root


@pytest.mark.parametrize("module", ["edge", "edge.cli"])
def test_import_edge_is_cheap(module):
    """Neither the package nor its CLI imports torch, onnx or edge's export/bench packages until a command needs them."""
    code = (f"import sys, {module}; heavy = {{'torch', 'onnxruntime', 'onnx', 'numpy', 'edge.export', 'edge.bench'}} "
            f"& set(sys.modules); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "set()"
    assert set(edge.__all__) <= set(dir(edge)) and all(getattr(edge, n).__doc__ for n in edge.__all__ if n[0] != "_")


def test_load_model_reads_the_card(tiny):
    model = edge.load_model(tiny / "tiny.pt")
    assert model.card.config == TINY and len(model.card.classes) == TINY.num_classes


@pytest.mark.parametrize("quant", ["fp32", "fp16"])
def test_export_then_predict_agrees_with_torch(tiny, quant):
    result = edge.export_model(tiny / "tiny.pt", tiny / f"tiny-{quant}.onnx", quant=quant)
    assert result.path.stat().st_size == result.bytes and result.weights["weights"] == quant
    from_onnx = edge.predict_images(result.path, tiny / "images")
    from_torch = edge.predict_images(tiny / "tiny.pt", tiny / "images", provider="torch-cpu")
    assert [p.id for p in from_onnx] == [str(i) for i in range(5)]  # ids as the Kaggle CSV writes them
    assert [p.label for p in from_onnx] == [p.label for p in from_torch]
    classes = edge.load_model(tiny / "tiny.pt").card.classes
    assert all(p.name == classes[p.label] for p in from_onnx)


def test_export_refuses_a_bad_format_and_an_existing_input(tiny):
    with pytest.raises(ValueError, match="unknown weight format"):
        edge.export_model(tiny / "tiny.pt", tiny / "bad.onnx", quant="uint9")
    with pytest.raises(ValueError, match="--entropy"):
        edge.export_model(tiny / "tiny.pt", tiny / "bad.onnx", quant="fp16", entropy=True)
    with pytest.raises(edge.EdgeError):
        edge.export_model(tiny / "tiny.pt", tiny / "tiny.pt", quant="fp16")
    with pytest.raises(ValueError, match="calibration_dir"):  # not silently ignored
        edge.export_model(tiny / "tiny.pt", tiny / "bad.onnx", quant="uint8", method="minmax",
                          calibration_dir=tiny / "images")
    assert not (tiny / "bad.onnx").exists()


def test_predict_on_onnx_never_imports_torch(tiny):
    path = edge.export_model(tiny / "tiny.pt", tiny / "no-torch.onnx", quant="fp16").path
    code = (f"import sys, edge; answers = edge.predict_images({str(path)!r}, {str(tiny / 'images')!r}); "
            "print(len(answers), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["5", "False"]


def test_bench_measures_an_onnx_file_and_says_why_a_backend_cannot_run(tiny):
    path = edge.export_model(tiny / "tiny.pt", tiny / "bench.onnx", quant="fp16").path
    doc = edge.benchmark([path], providers="cpu,torch-cpu", batches=(1,), repeats=1, min_seconds=0.01, threads=1)
    rows = {r["backend"]: r for r in doc["rows"]}
    assert rows["ort-cpu"]["status"] == "ok" and rows["ort-cpu"]["format"] == "fp16"
    assert rows["torch-cpu"]["status"] == "unavailable"
    with pytest.raises(ValueError, match="unknown backend"):
        edge.benchmark([path], providers="gpu")
