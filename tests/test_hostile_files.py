"""Model files that try to run code: every pickle protocol, payloads with and without dots in them,
.pkl/.bin/.pt names, a torch zip whose data.pkl is hostile and an old-format (non-zip) torch file
with a hostile payload, through the readers and through every command that opens a model.

Each payload, when unpickled, creates a marker file; the marker must never appear, the command
must exit 2 with one ``error:`` line naming the file, and no traceback.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edge.core.errors import CheckpointError
from edge.io.checkpoints import load_checkpoint, save_checkpoint
from edge.io.torch_files import read_torch
from edge.core.config import StudentConfig
from edge.core.formats import TORCH_LEGACY_MAGIC, sniff
from edge.io.checkpoints import init_checkpoint
from edge.io.checkpoints import load_net

REPO = Path(__file__).resolve().parents[1]
SUFFIXES = (".pkl", ".bin", ".pt")


class RunsCode:
    """Unpickling this calls open(marker, "w"): the marker appears if a loader runs code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def _legacy_torch(payload) -> bytes:
    """An old (non-zip) torch.save file: magic, protocol, sys info, then the hostile object."""
    info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return b"".join(pickle.dumps(part, protocol=2) for part in (TORCH_LEGACY_MAGIC, 1001, info, payload))


def hostile_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    """name -> (hostile file, the marker it would create)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for protocol in range(6):
        for dotted in (False, True):
            marker = folder / (f"marker_p{protocol}.txt" if dotted else f"marker_p{protocol}")
            payload = RunsCode(marker) if dotted else {"cnn.0.0.weight": RunsCode(marker)}
            name = f"p{protocol}{'_dot' if dotted else ''}{SUFFIXES[(protocol + dotted) % 3]}"
            (folder / name).write_bytes(pickle.dumps(payload, protocol=protocol))
            files[name] = folder / name, marker
    for suffix in SUFFIXES:
        marker = folder / f"marker_zip{suffix}"
        torch.save({"cnn.0.0.weight": RunsCode(marker)}, folder / f"zip{suffix}")
        files[f"zip{suffix}"] = folder / f"zip{suffix}", marker
        marker = folder / f"marker_legacy{suffix.replace('.', '_')}"
        (folder / f"legacy{suffix}").write_bytes(_legacy_torch(RunsCode(marker)))
        files[f"legacy{suffix}"] = folder / f"legacy{suffix}", marker
    return files


@pytest.fixture(scope="module")
def hostile(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    return hostile_files(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Two tiny labelled images in class subfolders (the data is never the point here)."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for label in ("0", "1"):
        (root / label).mkdir()
        Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / label / f"{label}.png")
    return root


@pytest.fixture(scope="module")
def good_student(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("good") / "tiny.pt"
    tiny = init_checkpoint(StudentConfig(widths=(4, 8), pools=(0,), input_size=32))
    save_checkpoint(path, tiny.card, tiny.state)
    return path


def _markers(hostile) -> list[Path]:
    return [marker for _, marker in hostile.values() if marker.exists()]


def test_the_sniffer_names_each_format_without_running_it(hostile):
    for name, (path, _) in hostile.items():
        kind = sniff(path.read_bytes()[:64])
        assert kind == ("torch-zip" if name.startswith("zip") else "torch-legacy" if name.startswith("legacy")
                        else "pickle"), name
    assert not _markers(hostile)


@pytest.mark.parametrize("reader", [load_checkpoint, load_net, read_torch])
def test_every_reader_refuses_every_hostile_file(hostile, reader):
    for name, (path, _) in hostile.items():
        expected = "refused|not a readable torch file" if reader is read_torch else "refused"  # a plain pickle
        with pytest.raises(CheckpointError, match=expected) as caught:
            reader(path)
        assert str(path) in str(caught.value) and "weights_only" not in str(caught.value), name
    assert not _markers(hostile)


def _commands(evil: Path, good: Path, images: Path, out: Path) -> dict[str, list[str]]:
    return {
        "info": ["info", evil],
        "predict": ["predict", evil, images, "-o", out / "p.csv", "--quiet"],
        "export": ["export", evil, "-o", out / "m.onnx"],
        "convert": ["convert", evil, "--to", "edge", "-o", out / "c.pt"],
        "bench": ["bench", evil, "--provider", "cpu", "--quant", "fp32", "--repeats", "1", "--quiet"],
        "sensitivity": ["sensitivity", evil, "--images", images],
        "distill --teacher": ["distill", images, "--teacher", evil, "-o", out / "d.pt", "--quiet"],
        "distill --student": ["distill", images, "--teacher", good, "--student", evil, "-o", out / "s.pt",
                              "--quiet"],
        "train --resume": ["train", images, "-o", evil, "--resume", "--input-size", "32", "--quiet"],
        "distill --resume": ["distill", images, "--teacher", good, "--student", good, "-o", evil, "--resume",
                             "--quiet"],
        "slim": ["slim", evil, images, "--val", images, "-o", out / "slim", "--quiet"],
    }


@pytest.mark.parametrize("command", list(_commands(Path(), Path(), Path(), Path())))
def test_every_command_refuses_every_hostile_file(command, hostile, good_student, images, tmp_path):
    from edge.cli import main

    for name, (evil, _) in hostile.items():
        args = [str(a) for a in _commands(evil, good_student, images, tmp_path)[command]]
        result = CliRunner().invoke(main, args)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.exit_code == 2, (name, result.output, result.exception)
        assert "Traceback" not in result.output and len(errors) == 1 and str(evil) in errors[0], (name, result.output)
    assert not _markers(hostile)
    assert not [p for p in tmp_path.iterdir()], "nothing may be written for a refused model"


def test_hw7_test_sh_refuses_hostile_models(hostile, images, tmp_path):
    root = tmp_path / "food-11"
    (root / "testing").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "testing" / "0.jpg")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    for name in ("p2.pt", "legacy.bin"):
        evil, _ = hostile[name]
        done = subprocess.run(["bash", str(REPO / "hw7_test.sh"), str(root), str(tmp_path / "pred.csv")],
                              capture_output=True, text=True, env={**env, "EDGE_MODEL": str(evil)}, timeout=120)
        assert done.returncode == 2 and str(evil) in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not _markers(hostile) and not (tmp_path / "pred.csv").exists()


def test_a_genuine_old_format_torch_file_still_loads(tmp_path):
    tiny = init_checkpoint(StudentConfig(widths=(4, 8), pools=(0,), input_size=32))
    path = tmp_path / "old.bin"
    torch.save({k: torch.as_tensor(v) for k, v in tiny.state.items()}, path, _use_new_zipfile_serialization=False)
    assert sniff(path.read_bytes()) == "torch-legacy"
    loaded = load_checkpoint(path, input_size=32, pools=(0,))
    assert all(np.array_equal(loaded.state[k], v) for k, v in tiny.state.items())
