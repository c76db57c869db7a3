"""Third pass of hostile inputs, the torch side: files going into export, train and compress.

Each test is one class of input that used to get through (a traceback, a silently wrong model, an
allocation of gigabytes from a small file, a file copied from outside the work folder) and is now
refused at load with one line naming the file and the tensor or field. Core tier: tiny synthetic
models and records only.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.core.errors import CheckpointError
from edge.io.checkpoints import load_model, save_checkpoint
from edge.io.torch_files import read_torch
from edge.workflows.compress_state import read_state
from edge.core.config import ConfigError, ModelCard, Preprocess, StudentConfig, default_classes
from edge.models.registry import NetSpec, check_runs
from edge.core.options import SearchSettings
from synthetic import trained_like
from test_refusals import invoke, refused

TINY = StudentConfig(widths=(4, 8), pools=(0,), input_size=32)


def _tiny_state() -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in trained_like(TINY).items()}


# ---------------------------------------------------------------- weights that are not a float model's

def _as_torch(state) -> dict:
    return {k: torch.as_tensor(v) for k, v in state.items()}


BROKEN = {"negative variance": lambda v: -v, "variance of -eps": lambda v: torch.full_like(v, -1e-5),
          "integers": lambda v: v.round().long(), "complex": lambda v: v.to(torch.complex64),
          "sparse": lambda v: v.to_sparse()}


@pytest.fixture(scope="module")
def torchvision_state() -> dict:
    from edge.models.classifiers import torchvision_classifier

    torch.manual_seed(0)
    return torchvision_classifier("mobilenet_v3_small", 3).state_dict()


KIND_WORDS = {"negative variance": "negative BatchNorm variance", "variance of -eps": "negative BatchNorm variance",
              "integers": "int64 values", "complex": "complex numbers", "sparse": "sparse"}
CONTAINERS = ("StudentNet state dict", "homework 16-bit pickle", "torchvision state dict")


@pytest.mark.parametrize("container,kind", [(c, k) for c in CONTAINERS for k in KIND_WORDS
                                           if not (c.startswith("homework") and k in ("complex", "sparse"))])
def test_weights_no_float_model_has_are_refused_naming_the_tensor(container, kind, torchvision_state, tmp_path):
    """Folding divides by sqrt(var + eps): -1 gave NaN weights (a traceback in GPTQ), -eps a file of huge
    weights whose parity was NaN; torch cast integers and dropped imaginary parts without a word; a
    sparse tensor in a torchvision state dict crashed the loader. (The homework pickles hold float16
    arrays: no complex or sparse ones.)"""
    words = KIND_WORDS[kind]
    state = dict(torchvision_state) if container.startswith("torchvision") else _as_torch(_tiny_state())
    tensor = next(k for k in state if k.endswith("running_var")) if "variance" in kind else \
        next(k for k in reversed(state) if k.endswith("weight"))
    state[tensor] = BROKEN[kind](state[tensor])
    path = tmp_path / "model.bin"
    if container == "homework 16-bit pickle":
        path.write_bytes(pickle.dumps({k: v.numpy().astype(np.float16) if v.is_floating_point() else v.numpy()
                                       for k, v in state.items()}))
    else:
        torch.save(state, path)
    if container.startswith("StudentNet") and kind in ("complex", "sparse"):
        words = "not a tensor of numbers"  # refused by the StudentNet reader already
    with pytest.raises(CheckpointError, match=f"{path}: .*{tensor}.*{words}"):
        load_model(path, pools=None if container.startswith("torchvision") else (0,), input_size=32)
    if not container.startswith("torchvision"):
        refused(invoke("export", path, "--pools", "0", "-o", tmp_path / "m.onnx"), str(path), tensor)
        assert not (tmp_path / "m.onnx").exists()


def test_weights_that_overflow_float32_when_folded_are_refused(tmp_path):
    """3e38 is finite, times gamma / sqrt(var + eps) it is not: GPTQ died in a Cholesky traceback."""
    state = _tiny_state()
    state["cnn.0.0.weight"][:] = 3e38
    torch.save(_as_torch(state), tmp_path / "big.bin")
    for quant in (["fp32"], ["uint4", "--fp16-below", "0"]):
        refused(invoke("export", tmp_path / "big.bin", "--pools", "0", "--quant", *quant, "-o", tmp_path / "m.onnx"),
                "layer cnn.0.0", "beyond float32")
    assert not (tmp_path / "m.onnx").exists()


# ---------------------------------------------------------------- sizes a file declares

def test_a_torch_zip_that_inflates_far_beyond_its_size_is_refused_unread(tmp_path):
    """torch.save stores tensors uncompressed; a re-zipped file of 64 KB that inflates to 64 MB (or 64 GB)
    made torch allocate it all."""
    plain = io.BytesIO()
    torch.save({"w": torch.zeros(1 << 24)}, plain)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(io.BytesIO(plain.getvalue())) as src, \
            zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as out:
        for name in src.namelist():
            out.writestr(name, src.read(name))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(CheckpointError, match="decompression bomb"):
        read_torch(bomb)
    with pytest.raises(CheckpointError, match="decompression bomb"):
        read_torch(bomb, bomb.read_bytes())
    assert torch.equal(read_torch(_saved(tmp_path, plain))["w"], torch.zeros(1 << 24))  # the real file loads


def _saved(folder: Path, data: io.BytesIO) -> Path:
    (folder / "plain.pt").write_bytes(data.getvalue())
    return folder / "plain.pt"


def _card(**changes) -> dict:
    card = ModelCard(TINY, Preprocess(crop=32), default_classes(11)).to_dict()
    for key, value in changes.items():
        part, _, field = key.partition("__")
        if field:
            card[part][field] = value
        else:
            card[part] = value
    return card


@pytest.mark.parametrize("changes,words", [
    ({"config__input_size": 100_000, "preprocess__crop": 100_000}, "outside 1..2048"),  # 120 GB per batch
    ({"preprocess__resize": 10 ** 9}, "outside 1..2048"),
    ({"config__input_size": 32.5}, "input_size must be a whole number"),  # a TypeError deep in torch
    ({"config__num_classes": True}, "num_classes must be a whole number"),
    ({"preprocess__resize": 0}, "resize 0 is outside 1..2048"),
    ({"preprocess__std": [0.0, 1.0, 1.0]}, "std must be in 1e-06..1e+06"),  # every image divided by 0
    ({"preprocess__mean": [float("nan"), 0.0, 0.0]}, "finite numbers"),
    ({"preprocess__crop": 48}, "preprocessing makes 3x48px inputs, its network takes 3x32px"),
    ({"classes": "abcdefghijk"}, "classes must be a list of names"),
])
def test_a_model_card_that_lies_is_refused_at_load(changes, words, tmp_path):
    """Before: a 100,000 px card allocated 120 GB in export, NaN/0 normalisation exported a model that
    answers NaN, a crop unlike the network's was only noticed after the whole export."""
    path = tmp_path / "lying.pt"
    torch.save({"edge_checkpoint": 1, "card": _card(**changes), "state_dict": _as_torch(_tiny_state())}, path)
    with pytest.raises(CheckpointError, match=str(path)) as caught:
        load_model(path)
    assert words in str(caught.value)


@pytest.mark.parametrize("input_size,words", [(0, "outside 1..2048"), (100_000, "outside 1..2048"), (2.5, "whole number"),
                                              (1, "too small for")])
def test_an_input_size_that_cannot_work_is_refused(input_size, words, tmp_path):
    """``load_model(path, input_size=0)`` silently meant 256 (``0 or 256``); 100,000 allocated 120 GB."""
    save_checkpoint(tmp_path / "s.pt", ModelCard(TINY, Preprocess(crop=32), default_classes(11)), _tiny_state())
    torch.save(_as_torch(_tiny_state()), tmp_path / "s.bin")
    for name in ("s.pt", "s.bin"):
        with pytest.raises(CheckpointError, match=words):
            load_model(tmp_path / name, input_size=input_size)
    assert load_model(tmp_path / "s.pt", input_size=64).card.preprocess.crop == 64  # the crop follows


def test_a_fresh_net_is_checked_to_run_and_fit_before_training():
    """train --arch vit_b_16 / inception_v3 on 32 px crashed mid-run (AssertionError, RuntimeError)."""
    for arch, size in (("vit_b_16", 32), ("inception_v3", 32)):
        with pytest.raises(ConfigError, match=f"{arch} cannot run on {size}x{size}-pixel inputs"):
            check_runs(NetSpec(arch, StudentConfig(input_size=size, num_classes=3)), f"--arch {arch}")
    for arch in ("mobilenet_v3_small", "regnet_y_400mf"):  # regnet's init cannot run on meta: not refused for it
        check_runs(NetSpec(arch, StudentConfig(input_size=16, num_classes=3, in_channels=1)), "ok")
    with pytest.raises(ConfigError, match="10,005,400,011 parameters"):  # train --widths 100000,100000: 40 GB
        check_runs(NetSpec("dw", StudentConfig(widths=(100_000, 100_000), pools=(0,), input_size=32)), "--arch dw")


def test_a_state_dict_whose_first_conv_takes_odd_channels_is_refused(tmp_path):
    from edge.models.classifiers import torchvision_classifier

    torch.save(torchvision_classifier("mobilenet_v3_small", 5, in_channels=5).state_dict(), tmp_path / "m.bin")
    with pytest.raises(CheckpointError, match="first conv takes 5 channels"):
        load_model(tmp_path / "m.bin")


# ---------------------------------------------------------------- compress: the record --resume trusts

def _record(**point) -> dict:
    settings = SearchSettings(target_bytes=3000)
    good = {"stage": "quantization", "keep": 1.0, "format": "fp16", "onnx": "q.onnx", "bytes": 10,
            "parameters": 5, "widths": [4], "val_agreement": 1.0, "sha256": "0" * 64}
    return {"settings": settings.__dict__, "about": {}, "points": [{**good, **point}], "rounds": [], "seconds": 1.0}


@pytest.mark.parametrize("text,words", [
    (json.dumps(_record(onnx="../../../etc/passwd")), "points[0].onnx"),  # was copied into the output
    (json.dumps(_record(onnx="/dev/zero")), "points[0].onnx"),  # was read forever
    (json.dumps(_record(bytes="12")), "points[0].bytes"),  # TypeError
    (json.dumps(_record(keep=float("nan"))), "NaN"),
    (json.dumps(_record())[:100], "not a resumable"),
    ("[1, 2]", "JSON list"),
    (json.dumps({**_record(), "rounds": [{"x": 1}]}), "rounds[0].x: not a field edge writes"),  # KeyError
    (json.dumps({**_record(), "rounds": [{"round": 1}]}), "rounds[0].keep is missing"),
])
def test_a_damaged_compress_record_is_refused_not_followed(text, words, tmp_path):
    (tmp_path / "state.json").write_text(text)
    with pytest.raises(ConfigError, match=str(tmp_path)) as caught:
        read_state(tmp_path / "state.json")
    assert words in str(caught.value)


def test_a_compress_record_that_is_not_a_file_is_refused_without_reading(tmp_path):
    os.mkfifo(tmp_path / "state.json")  # was read forever
    with pytest.raises(ConfigError, match="not a regular file"):
        read_state(tmp_path / "state.json")
    (tmp_path / "ok.json").write_text(json.dumps(_record()))  # well-formed, but its candidate is not there
    with pytest.raises(ConfigError, match=r"points\[0\].onnx: q.onnx is missing"):
        read_state(tmp_path / "ok.json")


@pytest.mark.parametrize("option", ["lr", "temperature", "ridge", "budget_minutes", "qat_lr"])
def test_compress_settings_must_be_finite(option):
    """--lr nan ran (and wrote NaN into state.json, which no resume then matched)."""
    with pytest.raises(ConfigError, match="finite"):
        SearchSettings(target_bytes=3000, **{option: float("nan")})


# ---------------------------------------------------------------- where export writes

def test_export_never_replaces_an_input_image_or_a_file_of_another_format(tmp_path):
    """-o calib/0.jpg replaced a calibration photo with the ONNX file; -o model.pt replaced a checkpoint."""
    from edge.io.checkpoints import init_checkpoint

    ckpt = init_checkpoint(TINY)
    save_checkpoint(tmp_path / "tiny.pt", ckpt.card, ckpt.state)
    save_checkpoint(tmp_path / "other.pt", ckpt.card, ckpt.state)
    (tmp_path / "calib").mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((36, 36, 3), np.uint8)).save(tmp_path / "calib" / "0.png")
    before = {p: p.read_bytes() for p in (tmp_path / "calib" / "0.png", tmp_path / "other.pt")}
    refused(invoke("export", tmp_path / "tiny.pt", "--quant", "uint4", "--calib", tmp_path / "calib", "-o",
                   tmp_path / "calib" / "0.png"), "would replace an image of the input folder")
    refused(invoke("export", tmp_path / "tiny.pt", "-o", tmp_path / "other.pt"), "not ONNX", "torch-zip")
    assert all(p.read_bytes() == data for p, data in before.items())
    assert invoke("export", tmp_path / "tiny.pt", "-o", tmp_path / "m.onnx").exit_code == 0
    refused(invoke("export", tmp_path / "tiny.pt", "--quant", "fp16", "-o", tmp_path / "m.onnx"), "--overwrite")
    assert invoke("export", tmp_path / "tiny.pt", "--quant", "fp16", "-o", tmp_path / "m.onnx",
                  "--overwrite").exit_code == 0


# ---------------------------------------------------------------- options and what the file says

@pytest.mark.parametrize("name", ["kmeans016", "kmeans\u0661\u0666", "uint\u0668", "uint08"])
def test_weight_formats_are_read_as_written(name):
    """kmeans016 and Arabic-Indic digits were accepted and written into the metadata as the format name."""
    from edge.core.weight_formats import parse_format

    with pytest.raises(ValueError, match="unknown weight format"):
        parse_format(name)


def test_export_options_and_metadata_say_what_happened(tmp_path):
    from edge.api import export_model
    from edge.io.checkpoints import init_checkpoint

    ckpt = init_checkpoint(TINY)
    save_checkpoint(tmp_path / "tiny.pt", ckpt.card, ckpt.state)
    refused(invoke("export", tmp_path / "tiny.pt", "--low-rank", "nan", "-o", tmp_path / "x.onnx"), "--low-rank",
            "finite")  # was blamed on --quant
    for args in (["--quant", "uint4", "--method", "minmax"], ["--quant", "fp16"]):  # was silently ignored
        refused(invoke("export", tmp_path / "tiny.pt", *args, "--fp16-below", "5", "-o", tmp_path / "x.onnx"),
                "--fp16-below", "stores every layer alike")
    # every layer of this tiny model is under --fp16-below: the file says so instead of only "kmeans2"
    assert export_model(tmp_path / "tiny.pt", tmp_path / "k.onnx", "kmeans2").weights["fp16_layers"].startswith("4 of 4")
    assert export_model(tmp_path / "tiny.pt", tmp_path / "u.onnx", "uint4",
                        fp16_below=0).weights["fp16_layers"].startswith("0 of 4")


def test_studentnet_commands_name_a_torchvision_state_dict(torchvision_state, tmp_path):
    """compress/convert on a plain torchvision state dict said 'no cnn.<i>.0.weight stages: not a StudentNet
    (nor a torchvision classifier edge recognises)' although edge recognises it."""
    from edge.io.checkpoints import load_checkpoint

    torch.save(torchvision_state, tmp_path / "mnv3.bin")
    with pytest.raises(CheckpointError, match="a plain mobilenet_v3_small state dict, not a StudentNet"):
        load_checkpoint(tmp_path / "mnv3.bin")


@pytest.mark.parametrize("damage,words", [("misshapen", "misshapen ['features.1.block.0.0.weight (16, 1, 3, 2)"),
                                          ("0-d head", "misshapen ['classifier.3.bias () != (classes)']")])
def test_a_near_miss_of_a_torchvision_state_dict_says_what_differs(damage, words, torchvision_state, tmp_path):
    """Was: 'no consecutive cnn.<i>.0.weight stages found: not a StudentNet'."""
    state = dict(torchvision_state)
    if damage == "misshapen":
        state["features.1.block.0.0.weight"] = torch.zeros(16, 1, 3, 2)
    else:
        state["classifier.3.bias"] = torch.tensor(0.0)
    torch.save(state, tmp_path / "near.bin")
    with pytest.raises(CheckpointError, match="the tensors of a mobilenet_v3_small except") as caught:
        load_model(tmp_path / "near.bin")
    assert words in str(caught.value)


def test_export_without_a_checkpoint_never_replaces_the_shipped_student(tmp_path, monkeypatch):
    """`edge export -o models/food11_student_uint8.onnx` replaced the file it rebuilds the student from."""
    import edge.inference.shipped

    shipped, original = tmp_path / "food11_student_uint8.onnx", edge.inference.shipped.SHIPPED_STUDENT.read_bytes()
    shipped.write_bytes(original)
    monkeypatch.setattr(edge.inference.shipped, "SHIPPED_STUDENT", shipped)
    refused(invoke("export", "--quant", "fp16", "-o", shipped), "same file")
    assert shipped.read_bytes() == original


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A tiny `edge train` run stopped after epoch 1 of 2 (resumable), and the command that made it."""
    from synthetic import write_grey_classes

    root = tmp_path_factory.mktemp("run")
    args = ["train", str(write_grey_classes(root / "data", 8, classes=2, size=16)), "--widths", "4,8", "--pools", "0",
            "--input-size", "16", "--epochs", "2", "--batch", "4", "--quiet", "--device", "cpu", "-o"]
    assert invoke(*args, root / "run.pt", "--stop-after", "1").exit_code == 0
    return root / "run.pt", args


@pytest.mark.parametrize("damage,words", [
    (lambda train: ["a list"], "a list, not the run's record"),  # TypeError
    (lambda train: {**train, "epoch": "x"}, "epoch 'x' is not one of 0..2"),  # TypeError
    (lambda train: {**train, "epoch": 10 ** 9}, "epoch 1000000000"),  # 'resumed' and reported done
    (lambda train: {**train, "optimizer": {"state": 5}}, "param_groups"),  # KeyError
    (lambda train: {**train, "history": 7}, "history"),  # TypeError
])
def test_a_damaged_training_state_is_refused_on_resume(stopped_run, damage, words, tmp_path):
    run, args = stopped_run
    saved = torch.load(run, weights_only=True)
    torch.save({**saved, "train": damage(saved["train"])}, tmp_path / "run.pt")
    refused(invoke(*args, tmp_path / "run.pt", "--resume"), str(tmp_path / "run.pt"), "damaged training state", words)
