"""edge.inference.shipped: the shipped student rebuilt as a checkpoint computes what its ONNX file computes,
`edge export` without a model exports it (the README's quick start, on any clone), only from the bytes
edge shipped, and no command writes in the shipped models/ folder."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge.cli import main
from edge.core.errors import CheckpointError
from edge.core.files import SHIPPED_MODELS, OutputError, atomic_write, check_output, check_output_dir
from edge.models.student import build_student
from edge.inference.runtime import OnnxClassifier
from edge.inference.shipped import SHIPPED_SHA256, SHIPPED_STUDENT, check_shipped, shipped_student


def _inputs(size: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4, 3, size, size)).astype(np.float32)


def test_the_rebuilt_shipped_student_computes_what_its_file_computes():
    checkpoint = shipped_student()
    assert checkpoint.parameters == 256_779 and checkpoint.card.classes == OnnxClassifier(SHIPPED_STUDENT).card.classes
    x = _inputs(checkpoint.card.config.input_size)
    with torch.no_grad():
        rebuilt = build_student(checkpoint.card.config, checkpoint.state)(torch.from_numpy(x)).numpy()
    shipped = OnnxClassifier(SHIPPED_STUDENT)(x)
    assert np.abs(rebuilt - shipped).max() < 1e-4 * np.abs(shipped).max()


def test_export_without_a_model_exports_the_shipped_student(tmp_path):
    out = tmp_path / "student_fp16.onnx"
    result = CliRunner().invoke(main, ["export", "--quant", "fp16", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "the shipped student" in result.output and "256,779 parameters" in result.output
    x = _inputs(OnnxClassifier(out).card.config.input_size)
    shipped, exported = OnnxClassifier(SHIPPED_STUDENT)(x), OnnxClassifier(out)(x)
    assert (shipped.argmax(1) == exported.argmax(1)).all()
    assert np.abs(shipped - exported).max() < 1e-2 * np.abs(shipped).max()  # fp16 weights


def _models_folder() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in SHIPPED_MODELS.iterdir()}


@pytest.mark.parametrize("args", [
    ["export", "--quant", "fp16", "-o", "{models}/food11_student_uint8.onnx"],  # the README's old homework command
    ["export", "--quant", "fp16", "-o", "{models}/new.onnx"],
    ["export", "--quant", "fp16", "-o", "{link}/new.onnx"],  # through a link to the folder
    ["predict", "{models}/food11_student_compressed.onnx", "{tmp}", "-o", "{models}/predictions.csv"],
    ["bench", "--json", "{models}/bench.json"],
])
def test_no_command_writes_in_the_shipped_models_folder(args, tmp_path):
    (tmp_path / "link").symlink_to(SHIPPED_MODELS)
    before = _models_folder()
    names = {"models": SHIPPED_MODELS, "link": tmp_path / "link", "tmp": tmp_path}
    result = CliRunner().invoke(main, [a.format(**names) for a in args])
    assert result.exit_code == 2 and "the models edge ships" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert _models_folder() == before


def test_a_hard_link_or_a_folder_in_the_shipped_models_is_refused(tmp_path):
    with pytest.raises(OutputError, match="the models edge ships"):
        check_output_dir(SHIPPED_MODELS / "slim-run")
    with pytest.raises(OutputError, match="the models edge ships"):
        atomic_write(SHIPPED_MODELS / "x.json", lambda f: f.write(b"{}"))
    hard = tmp_path / "student.onnx"
    try:
        os.link(SHIPPED_STUDENT, hard)
    except OSError:
        pytest.skip("the temporary folder is on another file system: no hard link to models/")
    with pytest.raises(OutputError, match="over a file of the models edge ships"):
        check_output(hard, writes_model=True)
    assert not (SHIPPED_MODELS / "slim-run").exists() and not (SHIPPED_MODELS / "x.json").exists()


def test_the_default_is_rebuilt_only_from_the_shipped_bytes(tmp_path, monkeypatch):
    import edge.inference.shipped

    check_shipped(SHIPPED_STUDENT, SHIPPED_SHA256)  # the recorded digest is the file's
    replaced = tmp_path / SHIPPED_STUDENT.name
    data = bytearray(SHIPPED_STUDENT.read_bytes())
    data[-1] ^= 1
    replaced.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not the file edge shipped"):
        check_shipped(replaced, SHIPPED_SHA256)
    monkeypatch.setattr(edge.inference.shipped, "SHIPPED_STUDENT", replaced)
    result = CliRunner().invoke(main, ["export", "--quant", "fp16", "-o", str(tmp_path / "out.onnx")])
    assert result.exit_code == 2 and "replaced by hand" in result.output and "git checkout" in result.output
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("name", ["food11_student_compressed.onnx", "food11_student_uint8.onnx"])
def test_a_flipped_bit_in_a_shipped_model_is_refused_at_load(name, tmp_path, monkeypatch):
    """The shipped files predate edge's checksums: their sha256 as shipped stands in for the seal."""
    import edge.core.files
    from edge.core.files import SHIPPED_SHA256, file_sha256, shipped_damage
    from edge.inference.runtime import ModelError

    assert file_sha256(SHIPPED_MODELS / name) == SHIPPED_SHA256[name] and shipped_damage(SHIPPED_MODELS / name) is None
    OnnxClassifier(SHIPPED_MODELS / name)  # as shipped: loads
    monkeypatch.setattr(edge.core.files, "SHIPPED_MODELS", tmp_path)  # a clone whose models/ holds a damaged copy
    data = bytearray((SHIPPED_MODELS / name).read_bytes())
    for at in (len(data) // 3, len(data) - 40):
        flipped = bytearray(data)
        flipped[at] ^= 0x10
        (tmp_path / name).write_bytes(bytes(flipped))
        with pytest.raises(ModelError, match="not the file edge shipped.*git checkout"):
            OnnxClassifier(tmp_path / name)
    elsewhere = tmp_path / "copy" / name  # a copy outside models/ is any unsealed file: its graph decides
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(bytes(data))
    assert shipped_damage(elsewhere) is None
