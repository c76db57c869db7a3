"""Messages that misled (issue 26, item 6), each now saying what is wrong: an ONNX file where weights
belong, numpy objects that are not weights, budgets above 1, near-miss state dicts (a misshapen fc, a
DataParallel ``module.`` prefix, a renamed stage), commas naming no defense."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner

from edge.cli import main
from edge.core.config import Preprocess, StudentConfig
from edge.core.errors import CheckpointError
from edge.core.safe_pickle import UnsafePickleError, safe_loads
from edge.io.checkpoints import init_checkpoint, load_checkpoint, load_model
from edge.workflows.attack import AttackError, parse_eps
from edge.workflows.defenses import DefenseError, parse_defenses
from edge.workflows.runs import load_teacher

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "models" / "food11_student_uint8.onnx"


@pytest.mark.parametrize("target", ["edge", "homework8", "homework16"])
def test_converting_an_onnx_file_to_weights_says_what_reads_it(target, tmp_path):
    result = CliRunner().invoke(main, ["convert", str(SHIPPED), "--to", target, "-o", str(tmp_path / "c.out")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "an ONNX model, not a weights file" in result.output and "name it *.onnx" not in result.output


def test_an_onnx_file_named_otherwise_is_told_to_be_named_onnx(tmp_path):
    (tmp_path / "model.bin").write_bytes(SHIPPED.read_bytes())
    with pytest.raises(CheckpointError, match=r"model.bin: this is an ONNX model .*name it \*.onnx"):
        load_checkpoint(tmp_path / "model.bin")


def test_an_onnx_teacher_is_named_as_one():
    """It was 'Unsupported operand 8' (torch.load of the ONNX bytes)."""
    with pytest.raises(CheckpointError, match="an ONNX model, not a weights file") as caught:
        load_teacher(SHIPPED, "resnet18", tuple("abc"), Preprocess())
    assert "operand" not in str(caught.value)


def test_numpy_objects_that_are_not_weights_are_not_called_code():
    with pytest.raises(UnsafePickleError, match="edge reads numpy arrays, dtypes and numbers") as caught:
        safe_loads(pickle.dumps({"w": np.random.default_rng(0)}))
    assert "run code" not in str(caught.value)
    with pytest.raises(UnsafePickleError, match="may try to run code"):
        safe_loads(pickle.dumps({"w": Path("x")}))


def test_an_eps_above_1_is_not_told_about_1_255():
    with pytest.raises(AttackError, match=r"300/255 is above 1: pixels lie in \[0, 1\]") as caught:
        parse_eps("300/255")
    assert "less than 1/255" not in str(caught.value)
    with pytest.raises(AttackError, match="below 1/255"):
        parse_eps("0.001")


def test_commas_naming_no_defense_are_refused():
    assert parse_defenses("") == () and parse_defenses(None) == ()
    for text in (",,", " , "):
        with pytest.raises(DefenseError, match="names no defense"):
            parse_defenses(text)


@pytest.fixture(scope="module")
def resnet_state() -> dict:
    return torchvision.models.resnet18(num_classes=11).state_dict()


def test_a_misshapen_fc_is_named(resnet_state, tmp_path):
    torch.save({**resnet_state, "fc.weight": torch.zeros(11, 100)}, tmp_path / "fc.pt")
    with pytest.raises(CheckpointError, match=r"resnet18 except: misshapen \['fc.weight \(11, 100\) != \(classes, 512\)'\]") \
            as caught:
        load_model(tmp_path / "fc.pt")
    assert "[]" not in str(caught.value)


def test_a_near_miss_listing_nothing_says_what_disagrees(resnet_state, tmp_path):
    torch.save({**resnet_state, "fc.bias": torch.zeros(7)}, tmp_path / "classes.pt")
    with pytest.raises(CheckpointError, match="resnet18 except: shapes that disagree") as caught:
        load_model(tmp_path / "classes.pt")
    assert "[]" not in str(caught.value)


def test_a_dataparallel_prefix_is_named_with_the_architecture(resnet_state, tmp_path):
    student = init_checkpoint(StudentConfig(widths=(4, 8, 8), pools=(0,), input_size=32))
    torch.save({"module." + k: v for k, v in resnet_state.items()}, tmp_path / "resnet.pt")
    torch.save({"module." + k: torch.from_numpy(v) for k, v in student.state.items()}, tmp_path / "student.pt")
    for name, arch in (("resnet.pt", "resnet18"), ("student.pt", "StudentNet")):
        with pytest.raises(CheckpointError, match=rf"the tensors of a {arch}, each named under 'module.'"):
            load_model(tmp_path / name)


def test_a_renamed_stage_is_named(tmp_path):
    student = init_checkpoint(StudentConfig(widths=(4, 8, 8), pools=(0,), input_size=32))
    torch.save({k.replace("cnn.1.", "cnn.one."): torch.from_numpy(v) for k, v in student.state.items()},
               tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError, match=r"stages skip cnn.1 \(cnn.<i>.0.weight found for i in \[0, 2\]\)"):
        load_checkpoint(tmp_path / "renamed.pt")


@pytest.mark.parametrize("arch", ["googlenet", "inception_v3"])
def test_architectures_with_auxiliary_heads_train_on_their_main_logits(arch):
    """googlenet's training forward returned GoogLeNetOutputs: cross_entropy raised a TypeError."""
    from edge.models.classifiers import torchvision_classifier

    model = torchvision_classifier(arch, 3).train()
    side = 80 if arch == "googlenet" else 299  # inception's auxiliary head needs its full input
    logits = model(torch.rand(2, 3, side, side))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3)
    assert any(name.startswith(("aux1", "AuxLogits")) for name in model.state_dict())  # the same weights as saved


@pytest.mark.parametrize("value", ["1_000", " 1000", "１０００"])
def test_a_whole_number_option_takes_digits_only(value):
    """Python's int() reads 1_000, padded and non-ASCII digits; an option value that is one of them is a typo."""
    result = CliRunner().invoke(main, ["compress", "m.bin", "--images", "x", "--target-bytes", value, "-o", "c.onnx"])
    assert result.exit_code == 2 and "is not a whole number (digits 0-9 only)" in result.output
