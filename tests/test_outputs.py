"""The output-path guard (`edge.core.files.check_output`) and every command behind it: an output that is
one of the command's inputs, a folder, a pipe or device, a symbolic link, a model file about to
become a CSV, a folder that does not exist, an existing run without --resume. Each is refused with
exit 2 and one line naming the path, before any work, and whatever was there is left as it was.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edge.io.checkpoints import save_checkpoint
from edge.cli import main
from edge.core.config import StudentConfig
from edge.core.files import OutputError, atomic_write, check_output, check_output_dir
from edge.io.checkpoints import init_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    """A tiny checkpoint, its ONNX export and a labelled folder of two 36-px images."""
    root = tmp_path_factory.mktemp("outputs")
    tiny = init_checkpoint(StudentConfig(widths=(4, 8), pools=(0,), input_size=32))
    save_checkpoint(root / "tiny.pt", tiny.card, tiny.state)
    result = CliRunner().invoke(main, ["export", str(root / "tiny.pt"), "-o", str(root / "tiny.onnx")])
    assert result.exit_code == 0, result.output
    rng = np.random.default_rng(0)
    for label in ("0", "1"):
        (root / "images" / label).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / "images" / label / "a.png")
    return {"ckpt": root / "tiny.pt", "onnx": root / "tiny.onnx", "images": root / "images"}


def _fingerprint(path: Path) -> tuple:
    if path.is_symlink():
        return ("link", os.readlink(path))
    if not path.exists():
        return ("absent",)
    if path.is_dir():
        return ("dir", sorted(p.name for p in path.iterdir()))
    if not path.is_file():
        return ("special", path.stat().st_mode)
    return ("file", hashlib.sha256(path.read_bytes()).hexdigest())


def _commands(setup: dict[str, Path], out: Path) -> dict[str, list]:
    ckpt, onnx, images = setup["ckpt"], setup["onnx"], setup["images"]
    return {
        "predict": ["predict", onnx, images, "-o", out, "--quiet"],
        "export": ["export", ckpt, "-o", out],
        "convert": ["convert", ckpt, "--to", "homework8", "-o", out],
        "sensitivity --json": ["sensitivity", ckpt, "--images", images, "--json", out],
        "bench --json": ["bench", onnx, "--provider", "cpu", "--json", out, "--quiet"],
        "bench --markdown": ["bench", onnx, "--provider", "cpu", "--markdown", out, "--quiet"],
        "bench --plot": ["bench", onnx, "--provider", "cpu", "--plot", out, "--quiet"],
        "train -o": ["train", images, "-o", out, "--input-size", "32", "--epochs", "1", "--quiet"],
        "train --metrics": ["train", images, "-o", images.parent / "new_run.pt", "--metrics", out, "--quiet"],
        "distill -o": ["distill", images, "--teacher", ckpt, "--student", ckpt, "-o", out, "--quiet"],
    }


def _bad_outputs(tmp_path: Path, setup: dict[str, Path]) -> dict[str, Path]:
    """name -> an output path that must be refused (made fresh in ``tmp_path``)."""
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "target.txt").write_text("keep me\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "target.txt")
    (tmp_path / "dangling.csv").symlink_to(tmp_path / "nowhere.txt")
    return {"folder": tmp_path / "folder", "fifo": tmp_path / "fifo", "symlink": tmp_path / "link.csv",
            "dangling symlink": tmp_path / "dangling.csv", "missing folder": tmp_path / "no" / "such" / "out.x"}


@pytest.mark.parametrize("command", list(_commands({"ckpt": Path(), "onnx": Path(), "images": Path()}, Path())))
def test_every_command_refuses_a_bad_output_before_any_work(command, setup, tmp_path):
    for name, out in _bad_outputs(tmp_path, setup).items():
        before = {p: _fingerprint(p) for p in tmp_path.iterdir()}
        result = CliRunner().invoke(main, [str(a) for a in _commands(setup, out)[command]])
        errors = [line for line in result.stderr.splitlines() if line.lower().startswith("error:")]  # ours or click's
        assert result.exit_code == 2 and len(errors) == 1 and str(out) in errors[0], (name, result.output)
        assert "Traceback" not in result.output and "decode" not in result.stderr, (name, result.output)
        assert {p: _fingerprint(p) for p in tmp_path.iterdir()} == before, name
        assert (tmp_path / "target.txt").read_text() == "keep me\n"


@pytest.mark.parametrize("command,key", [("predict", "onnx"), ("export", "ckpt"), ("convert", "ckpt"),
                                         ("sensitivity --json", "ckpt"), ("bench --json", "onnx"),
                                         ("distill -o", "ckpt")])
def test_an_output_that_is_an_input_is_refused(command, key, setup, tmp_path):
    files = {**setup, key: tmp_path / setup[key].name}
    files[key].write_bytes(setup[key].read_bytes())
    alias = tmp_path / f"hard_link_{key}"
    os.link(files[key], alias)  # the same file under another name
    for out in (files[key], alias):
        result = CliRunner().invoke(main, [str(a) for a in _commands(files, out)[command]])
        assert result.exit_code == 2 and "same file" in result.stderr, (out, result.output)
        assert files[key].read_bytes() == setup[key].read_bytes()


def test_a_csv_never_replaces_a_model_file(setup, tmp_path):
    model = tmp_path / "other.onnx"
    model.write_bytes(setup["onnx"].read_bytes())
    result = CliRunner().invoke(main, ["predict", str(setup["onnx"]), str(setup["images"]), "-o", str(model)])
    assert result.exit_code == 2 and "model file" in result.stderr, result.output
    assert model.read_bytes() == setup["onnx"].read_bytes()


def test_hw7_test_sh_with_swapped_arguments_keeps_the_model(setup, tmp_path):
    """bash hw7_test.sh food-11 models/food11_student_uint8.onnx: the model must survive."""
    root = tmp_path / "food-11"
    (root / "testing").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "testing" / "0.jpg")
    model = tmp_path / "food11_student_uint8.onnx"
    model.write_bytes((REPO / "models" / "food11_student_uint8.onnx").read_bytes())
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "EDGE_MODEL": str(model)}
    done = subprocess.run(["bash", str(REPO / "hw7_test.sh"), str(root), str(model)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert done.returncode == 2 and "same file" in done.stderr, done.stderr
    assert model.read_bytes() == (REPO / "models" / "food11_student_uint8.onnx").read_bytes()


def test_an_existing_run_is_not_replaced_without_resume(setup, tmp_path):
    for name in ("run.pt", "run.best.pt"):
        for old in tmp_path.iterdir():
            old.unlink()
        (tmp_path / name).write_bytes(setup["ckpt"].read_bytes())
        result = CliRunner().invoke(main, ["train", str(setup["images"]), "-o", str(tmp_path / "run.pt"),
                                           "--input-size", "32", "--quiet"])
        assert result.exit_code == 2 and "--resume" in result.stderr and name in result.stderr, result.output
        assert (tmp_path / name).read_bytes() == setup["ckpt"].read_bytes()
    result = CliRunner().invoke(main, ["train", str(setup["images"]), "-o", str(tmp_path / "none.pt"), "--resume"])
    assert result.exit_code == 2 and "nothing to resume" in result.stderr


def test_slim_refuses_a_used_output_folder(setup, tmp_path):
    (tmp_path / "slim").mkdir()
    (tmp_path / "slim" / "curve.json").write_text("{}")
    args = ["slim", str(setup["ckpt"]), str(setup["images"]), "--val", str(setup["images"]), "--quiet", "-o"]
    result = CliRunner().invoke(main, [*args, str(tmp_path / "slim")])
    assert result.exit_code == 2 and "--resume" in result.stderr, result.output
    result = CliRunner().invoke(main, [*args, str(tmp_path / "new"), "--resume"])
    assert result.exit_code == 2 and "nothing to resume" in result.stderr, result.output
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, [*args, str(tmp_path / "file")])
    assert result.exit_code == 2 and "file" in result.stderr and (tmp_path / "file").read_text() == "x"


def test_skip_bad_with_every_image_bad_keeps_the_previous_csv(setup, tmp_path):
    (tmp_path / "bad").mkdir()
    for name in ("1.jpg", "2.png"):
        (tmp_path / "bad" / name).write_bytes(b"not an image")
    previous = tmp_path / "pred.csv"
    previous.write_text("Id,label\n1,3\n")
    result = CliRunner().invoke(main, ["predict", str(setup["onnx"]), str(tmp_path / "bad"), "-o", str(previous),
                                       "--skip-bad", "--quiet", "--overwrite"])
    assert result.exit_code == 2 and "nothing was written" in result.stderr, result.output
    assert previous.read_text() == "Id,label\n1,3\n"


def test_the_guard_itself(tmp_path):
    with pytest.raises(OutputError, match="not a regular file"):
        check_output("/dev/full")
    with pytest.raises(OutputError, match="exists"):
        (tmp_path / "x").write_text("1")
        check_output(tmp_path / "x", overwrite=False)
    assert check_output(tmp_path / "x") == tmp_path / "x"
    assert check_output(tmp_path / "new.csv", inputs=(None, tmp_path / "x")) == tmp_path / "new.csv"
    with pytest.raises(OutputError, match="not a folder"):
        check_output_dir(tmp_path / "x")
    (tmp_path / "ln").symlink_to(tmp_path / "x")
    with pytest.raises(OutputError, match="symbolic link"):  # also for writers that skipped the guard
        atomic_write(tmp_path / "ln", lambda f: f.write(b"2"))
    assert (tmp_path / "x").read_text() == "1"
