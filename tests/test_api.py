"""The public Python API (`edge.load_model`, `export_model`, `predict_images`, `benchmark`) end to end on a
tiny seeded StudentNet and generated images; `import edge` stays free of torch."""

from __future__ import annotations

import re
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
    """Neither the package nor its CLI imports torch, onnx, openvino or edge's export/bench packages until a command
    needs them."""
    code = (f"import sys, {module}; heavy = {{'torch', 'onnxruntime', 'onnx', 'openvino', 'numpy', 'edge.export', "
            "'edge.bench'} "
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
            "print(len(answers), 'torch' in sys.modules, 'openvino' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["5", "False", "False"]  # nor openvino unless ov-cpu is asked


def test_bench_measures_an_onnx_file_and_says_why_a_backend_cannot_run(tiny):
    path = edge.export_model(tiny / "tiny.pt", tiny / "bench.onnx", quant="fp16").path
    doc = edge.benchmark([path], providers="cpu,torch-cpu", batches=(1,), repeats=1, min_seconds=0.01, threads=1)
    rows = {r["backend"]: r for r in doc["rows"]}
    assert rows["ort-cpu"]["status"] == "ok" and rows["ort-cpu"]["format"] == "fp16"
    assert rows["torch-cpu"]["status"] == "unavailable"
    with pytest.raises(ValueError, match="unknown backend"):
        edge.benchmark([path], providers="gpu")


# ---------------------------------------------------------------- the CLI's rules, applied to every argument

@pytest.mark.parametrize("kwargs,error,words", [
    ({"batch": -1}, edge.EdgeError, "batch (--batch) must be >= 1"),
    ({"batch": 0}, edge.EdgeError, "batch (--batch) must be >= 1"),
    ({"batch": "4"}, TypeError, "batch (--batch) must be an integer"),
    ({"batch": True}, TypeError, "batch (--batch) must be an integer"),
    ({"threads": -1}, edge.EdgeError, "threads (--threads) must be >= 1"),
    ({"threads": 100_000}, edge.EdgeError, "threads (--threads) must be <= 256"),
    ({"provider": None}, TypeError, "provider (--provider) is required"),
    ({"provider": 1}, TypeError, "provider (--provider) must be a string"),
    ({"provider": "gpu"}, edge.EdgeError, "unknown backend 'gpu'"),
    ({"skip_bad": "no"}, TypeError, "skip_bad (--skip-bad) must be True or False"),
    ({"progress": "yes"}, TypeError, "progress must be True or False"),
    ({"images_dir": None}, TypeError, "images_dir (--data-dir) is required"),
    ({"images_dir": 3}, TypeError, "images_dir (--data-dir) must be a path"),
])
def test_predict_images_validates_every_argument(tiny, kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        edge.predict_images(tiny / "tiny.pt", **{"images_dir": tiny / "images", **kwargs})


@pytest.mark.parametrize("kwargs,error,words", [
    ({"entropy": "no"}, TypeError, "entropy (--entropy) must be True or False"),
    ({"per_channel": "false"}, TypeError, "per_channel (--per-channel) must be True or False"),
    ({"fp16_below": -5}, edge.EdgeError, "fp16_below (--fp16-below) must be >= 0"),
    ({"train_epochs": -1}, edge.EdgeError, "train_epochs (--train-epochs) must be >= 0"),
    ({"quant": None}, TypeError, "quant (--quant) is required"),
    ({"quant": 8}, TypeError, "quant (--quant) must be a string"),
    ({"calibration_images": "8"}, TypeError, "calibration_images (--calib-images) must be an integer"),
    ({"calibration_images": 0}, edge.EdgeError, "calibration_images (--calib-images) must be >= 1"),
    ({"low_rank": float("nan")}, edge.EdgeError, "low_rank (--low-rank) must be a finite number"),
    ({"low_rank": 1.5}, edge.EdgeError, "low_rank (--low-rank) must be <= 1"),
    ({"method": "best"}, edge.EdgeError, "method (--method): 'best' is not one of gptq, minmax"),
    ({"pools": "0,1"}, TypeError, "pools (--pools) must be a tuple of integers"),
    ({"pools": (1, 1)}, edge.EdgeError, "pools (--pools) must name each stage once"),
    ({"overwrite": 1}, TypeError, "overwrite (--overwrite) must be True or False"),
    ({"colour": True}, TypeError, "colour"),
])
def test_export_model_validates_every_argument(tiny, kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        edge.export_model(tiny / "tiny.pt", tiny / "never.onnx", **{"quant": "uint8", **kwargs})
    assert not (tiny / "never.onnx").exists()


def test_export_model_refuses_a_missing_model_path_and_an_existing_output(tiny):
    with pytest.raises(TypeError, match="model_path"):  # None would export the shipped student instead
        edge.export_model(None, tiny / "never.onnx")
    with pytest.raises(TypeError, match=re.escape("model_path (--checkpoint) must be a path")):
        edge.export_model(3, tiny / "never.onnx")
    first = edge.export_model(tiny / "tiny.pt", tiny / "twice.onnx", quant="fp16")
    with pytest.raises(edge.EdgeError, match="pass --overwrite"):
        edge.export_model(tiny / "tiny.pt", tiny / "twice.onnx", quant="fp32")
    assert (tiny / "twice.onnx").stat().st_size == first.bytes
    again = edge.export_model(tiny / "tiny.pt", tiny / "twice.onnx", quant="fp32", overwrite=True)
    assert again.bytes == (tiny / "twice.onnx").stat().st_size != first.bytes


@pytest.mark.parametrize("kwargs,error,words", [
    ({"batches": ()}, edge.EdgeError, "batches (--batch) must name at least one integer"),
    ({"batches": (0,)}, edge.EdgeError, "batches (--batch) must be >= 1"),
    ({"batches": 32}, TypeError, "batches (--batch) must be a tuple of integers"),
    ({"threads": -1}, edge.EdgeError, "threads (--threads) must be >= 1"),
    ({"repeats": "3"}, TypeError, "repeats (--repeats) must be an integer"),
    ({"min_seconds": 0}, edge.EdgeError, "min_seconds (--min-time) must be >= 0.01"),
    ({"min_seconds": "1"}, TypeError, "min_seconds (--min-time) must be a number"),
    ({"providers": None}, TypeError, "providers (--provider) is required"),
    ({"providers": "gpu"}, edge.EdgeError, "unknown backend 'gpu'"),
    ({"quants": "uint9"}, edge.EdgeError, "--quant"),
    ({"models": 3}, TypeError, "models (--models) must be a path or a list of paths"),
])
def test_benchmark_validates_every_argument(kwargs, error, words):
    with pytest.raises(error, match=re.escape(words)):
        edge.benchmark(**kwargs)


def test_benchmark_takes_one_path_string_as_one_model(tmp_path):
    with pytest.raises(edge.EdgeError, match=re.escape(str(tmp_path / "m.onnx"))):  # not iterated: "m: cannot read"
        edge.benchmark(str(tmp_path / "m.onnx"))


def test_load_model_validates_its_arguments(tiny):
    with pytest.raises(TypeError, match=re.escape("pools (--pools) must be a tuple of integers")):
        edge.load_model(tiny / "tiny.pt", pools="0")
    with pytest.raises(edge.EdgeError, match=re.escape("input_size (--input-size) must be >= 4")):
        edge.load_model(tiny / "tiny.pt", input_size=2)
    with pytest.raises(TypeError, match="path"):
        edge.load_model(None)
    with pytest.raises(edge.EdgeError, match=re.escape("pools (--pools) must name each stage once")):
        edge.load_model(tiny / "tiny.pt", pools=(0, 0))  # as the CLI's --pools 0,0 is refused, not read as 0
