"""The user's spellings work verbatim: `edge export --quant uint8`, `edge predict --provider cuda`,
`bash hw7_test.sh <data directory> <prediction file>`, and the other commands."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edge.cli import main

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = REPO / "models" / "food11_student_uint8.onnx"
HW7_MODEL = REPO / "models" / "food11_student_compressed.onnx"  # hw7_test.sh's default (issue 12: <= 120,000 B)


def _run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


def test_export_default_model_uint8(tmp_path):
    code, out = _run("export", "--quant", "uint8", "-o", tmp_path / "student.onnx")
    assert code == 0, out
    assert "no dequantization left after load" in out and "top-1 agreement" in out
    info = json.loads(_run("info", "--json", tmp_path / "student.onnx")[1])
    assert info["weights"]["weights"] == "uint8" and info["config"]["widths"][0] == 16


def test_bad_quant_and_missing_checkpoint_are_clear(tmp_path):
    code, out = _run("export", tmp_path / "absent.bin", "-o", tmp_path / "x.onnx")
    assert code == 2 and "absent.bin" in out
    code, out = _run("export", "--quant", "int3", "-o", tmp_path / "x.onnx")
    assert code == 2 and "--quant" in out
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="this machine has ORT CUDA")
def test_provider_cuda_without_onnxruntime_gpu_says_what_to_install(food11_test, tmp_path):
    code, out = _run("predict", SHIPPED_MODEL, food11_test, "-o", tmp_path / "p.csv", "--provider", "cuda")
    assert code == 2 and "onnxruntime-gpu" in out and "CUDAExecutionProvider" in out
    assert not (tmp_path / "p.csv").exists()


def test_convert_to_homework8_then_predict_from_it(ta_student, food11_test, tmp_path):
    code, out = _run("convert", ta_student, "--to", "homework8", "-o", tmp_path / "ta8.pkl")
    assert code == 0, out
    subset = tmp_path / "testing"
    subset.mkdir()
    for image in sorted(food11_test.glob("*.jpg"))[:16]:
        (subset / image.name).symlink_to(image)
    code, out = _run("predict", tmp_path / "ta8.pkl", subset, "-o", tmp_path / "p.csv", "--quiet")
    assert code == 0, out
    rows = list(csv.reader(open(tmp_path / "p.csv")))
    assert rows[0] == ["Id", "label"] and len(rows) == 17


def test_hw7_test_sh_on_the_real_photos(food11_test, reference_labels, tmp_path):
    assert HW7_MODEL.stat().st_size <= 120_000 and f"models/{HW7_MODEL.name}" in (REPO / "hw7_test.sh").read_text()
    root = tmp_path / "food-11"
    root.mkdir()
    (root / "testing").symlink_to(food11_test)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(REPO / "hw7_test.sh"), str(root), str(tmp_path / "pred.csv")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(open(tmp_path / "pred.csv")))
    truth = {r["Id"]: int(r["label"]) for r in csv.DictReader(open(reference_labels))}
    ids = [int(r["Id"]) for r in rows]
    assert ids == sorted(ids) and len(ids) == len(list(food11_test.glob("*.jpg")))
    agreement = sum(int(r["label"]) == truth[r["Id"]] for r in rows) / len(rows)
    print(f"\nhw7_test.sh: agreement with reference labels {agreement:.2%}")
    assert agreement > 0.78


def _photos(food11_test, tmp_path, count: int = 6) -> Path:
    root = tmp_path / "food-11"
    (root / "testing").mkdir(parents=True)
    for photo in sorted(food11_test.glob("*.jpg"))[:count]:
        (root / "testing" / photo.name).symlink_to(photo)
    return root


def test_hw7_test_sh_finds_the_quick_start_venv_without_activation(food11_test, tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / ".venv" / "bin").mkdir(parents=True)
    shutil.copy(REPO / "hw7_test.sh", checkout)
    (checkout / "models").symlink_to(REPO / "models")
    (checkout / ".venv" / "bin" / "edge").symlink_to(Path(sys.executable).parent / "edge")
    done = subprocess.run(["bash", str(checkout / "hw7_test.sh"), str(_photos(food11_test, tmp_path)),
                           str(tmp_path / "pred.csv")], capture_output=True, text=True,
                          env={**os.environ, "PATH": "/usr/bin:/bin"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(list(csv.DictReader(open(tmp_path / "pred.csv")))) == 6


def test_hw7_test_sh_says_when_edge_is_not_installed(food11_test, tmp_path):
    bare = {"PATH": "/usr/bin:/bin"}
    if subprocess.run(["python3", "-c", "import click, numpy, onnxruntime, PIL, tqdm"], env=bare,
                      capture_output=True).returncode == 0:
        pytest.skip("the system python3 has edge's dependencies, so hw7_test.sh would use it")
    shutil.copy(REPO / "hw7_test.sh", tmp_path)
    done = subprocess.run(["bash", str(tmp_path / "hw7_test.sh"), str(_photos(food11_test, tmp_path)),
                           str(tmp_path / "pred.csv")], capture_output=True, text=True,
                          env={**bare, "EDGE_MODEL": str(SHIPPED_MODEL)}, timeout=60)
    assert done.returncode == 2 and "edge is not installed" in done.stderr, done.stderr
    assert not (tmp_path / "pred.csv").exists()


def test_hw7_test_sh_refuses_a_model_over_the_limit(tmp_path):
    big = tmp_path / "big.onnx"
    big.write_bytes(b"\0" * 300_001)
    done = subprocess.run(["bash", str(REPO / "hw7_test.sh"), str(tmp_path), str(tmp_path / "p.csv")],
                          capture_output=True, text=True, env={**os.environ, "EDGE_MODEL": str(big)})
    assert done.returncode == 2 and "over the homework's limit" in done.stderr
