"""The runtime-only install (``pip install edge-compress``, no extra): `edge predict`, `edge info` and
`edge bench` on ONNX files (entropy-coded ones included) run without torch, torchvision, onnx or
matplotlib, and a command that needs torch says which extra to install in one line (exit 2).

Each check runs the CLI in a fresh interpreter whose ``sys.modules`` blocks those packages, as an
install without them would (a fresh venv per test would take minutes)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
COMPRESSED = REPO / "models" / "food11_student_compressed.onnx"  # hw7_test.sh's model: entropy-coded
NO_TORCH = ("torch", "torchvision", "onnx", "matplotlib")
TORCH_LINE = 'error: this command needs the torch extra: pip install "edge-compress[torch]"'


def python_without(blocked: tuple[str, ...], code: str, *args) -> subprocess.CompletedProcess:
    """``python -c CODE ARGS`` in a new interpreter where importing any of ``blocked`` fails."""
    script = f"import sys\nfor name in {blocked!r}:\n    sys.modules[name] = None\n{code}\n"
    return subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def edge_without(blocked: tuple[str, ...], *args) -> subprocess.CompletedProcess:
    """`edge ARGS` in a new interpreter where importing any of ``blocked`` fails."""
    return python_without(blocked, "from edge.cli import main\nsys.argv[0] = 'edge'\nmain()", *args)


def test_predict_and_info_on_an_onnx_file_need_neither_torch_nor_onnx(synthetic_student_onnx,
                                                                            synthetic_photos, tmp_path):
    done = edge_without(NO_TORCH, "predict", synthetic_student_onnx, synthetic_photos, "-o", tmp_path / "p.csv",
                        "--quiet")
    assert done.returncode == 0, done.stderr
    rows = list(csv.reader((tmp_path / "p.csv").open()))
    assert rows[0] == ["Id", "label"] and len(rows) == 1 + len(list(synthetic_photos.glob("*.jpg")))
    done = edge_without(NO_TORCH, "info", synthetic_student_onnx, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["parameters"] > 0


def test_the_entropy_coded_homework_model_runs_without_torch_or_onnx(synthetic_photos, tmp_path):
    done = edge_without(NO_TORCH, "predict", COMPRESSED, synthetic_photos, "-o", tmp_path / "p.csv", "--quiet")
    assert done.returncode == 0, done.stderr
    assert len((tmp_path / "p.csv").read_text().splitlines()) > 1
    done = edge_without(NO_TORCH, "info", COMPRESSED, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["weights"]["entropy"], done.stderr


def test_bench_on_an_onnx_file_without_torch(synthetic_student_onnx, tmp_path):
    done = edge_without(NO_TORCH, "bench", synthetic_student_onnx, "--provider", "cpu,torch-cpu,torch-cuda",
                        "--batch", "1", "--repeats", "1", "--min-time", "0.01", "--threads", "1", "--quiet",
                        "--json", tmp_path / "r.json")
    assert done.returncode == 0, done.stderr
    rows = {row["backend"]: row for row in json.loads((tmp_path / "r.json").read_text())["rows"]}
    assert rows["ort-cpu"]["status"] == "ok" and rows["ort-cpu"]["torch_loaded"] is False
    assert rows["torch-cpu"]["status"] == rows["torch-cuda"]["status"] == "unavailable"
    done = python_without(NO_TORCH, "from edge.core.backends import resolve, unavailable\n"
                                   "print(unavailable(resolve('torch-cuda')))")
    assert done.stdout.strip() == 'torch, torchvision, onnx not installed: pip install "edge-compress[torch]"'
    done = edge_without(NO_TORCH, "bench", synthetic_student_onnx, "--plot", tmp_path / "r.png")
    assert done.returncode == 2 and done.stderr.strip() == ('error: --plot needs the plot extra: '
                                                            'pip install "edge-compress[plot]"')


@pytest.mark.parametrize("command", [
    ["export", "--quant", "fp16", "-o", "{tmp}/x.onnx"],
    ["export", "{student}", "-o", "{tmp}/x.onnx"],
    ["predict", "{student}", "{photos}", "-o", "{tmp}/p.csv"],
    ["info", "{student}"],
    ["train", "{photos}", "-o", "{tmp}/run.pt"],
    ["attack", "{student}", "{photos}"],
    ["bench"],
])
def test_a_command_that_needs_torch_names_the_extra(command, synthetic_student, synthetic_photos, tmp_path):
    names = {"tmp": tmp_path, "student": synthetic_student, "photos": synthetic_photos}
    done = edge_without(NO_TORCH, *(part.format(**names) for part in command))
    assert done.returncode == 2 and done.stderr.strip() == TORCH_LINE, done.stderr
    assert not list(tmp_path.iterdir())


def test_help_needs_no_torch():
    done = edge_without(NO_TORCH, "--help")
    assert done.returncode == 0 and "predict" in done.stdout


def test_a_torch_row_of_a_runtime_only_install_is_unavailable_not_dead():
    code = ("import io, json\nfrom edge.bench.worker import serve\nreplies = io.StringIO()\n"
            "serve(io.StringIO(json.dumps({'backend': 'torch-cpu', 'fmt': 'fp32', 'path': 'm.pt'}) + '\\n'), replies)\n"
            "print(replies.getvalue())")
    done = python_without(NO_TORCH, code)
    assert json.loads(done.stdout) == ["unavailable", 'torch-cpu needs the torch extra: pip install "edge-compress[torch]"']


def test_only_an_absent_extra_is_named():
    """Here torch is installed: an import error inside it is a broken install, reported as it is."""
    from edge.core.extras import missing_extra

    assert missing_extra(ModuleNotFoundError("no torch._x", name="torch._x")) is None
    assert missing_extra(ModuleNotFoundError("no numpy", name="numpy")) is None


def test_a_damaged_entropy_coded_file_is_refused_in_one_error(tmp_path):
    """The protobuf walk that replaced onnx.load meets truncated and bit-flipped files with an EdgeError."""
    from edge.codec.entropy import session_source
    from edge.core.errors import EdgeError

    data, path = COMPRESSED.read_bytes(), tmp_path / "damaged.onnx"
    rng = np.random.default_rng(0)
    for cut in [*rng.integers(1, len(data), 20), len(data)]:
        damaged = bytearray(data[:cut])
        if cut % 2:
            damaged[rng.integers(0, len(damaged))] ^= 0xFF
        path.write_bytes(bytes(damaged) + b"edge.entropy")  # the marker: it is parsed, not left to ONNX Runtime
        try:
            source = session_source(path)
        except EdgeError:
            continue
        assert source == str(path) or isinstance(source, bytes)
