"""Mistakes a user can make, each refused with one clear line and exit 2 (never a traceback, never
a silently wrong result): non-finite weights in every model kind, non-finite or empty options,
options that would do nothing, providers that do not fit the file, data layouts edge would misread,
images edge would decode wrongly, files under the wrong name, training that diverges.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import numpy_helper
from PIL import Image

from edge.core.errors import CheckpointError
from edge.io.checkpoints import load_checkpoint, save_checkpoint
from edge.cli import main
from edge.core.config import Preprocess, StudentConfig
from edge.data.folders import DatasetError, list_samples
from edge.io.checkpoints import init_checkpoint
from edge.io.netfile import NetFile, save_net
from edge.models.registry import NetSpec, build_net
from edge.io.checkpoints import load_net
from edge.data.preprocess import MAX_FILE_BYTES, ImageError, read_image
from synthetic import save_sealed

TINY = StudentConfig(widths=(4, 8), pools=(0,), input_size=32)


def invoke(*args) -> object:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output and not isinstance(result.exception, (AssertionError, TypeError)), \
        result.output
    return result


def refused(result, *words: str) -> None:
    """Exit 2 with one error line (ours or click's) holding every word."""
    errors = [line for line in result.stderr.splitlines() if line.lower().startswith("error")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert all(w in errors[0] for w in words), (words, errors[0])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    ckpt = init_checkpoint(TINY)
    save_checkpoint(root / "tiny.pt", ckpt.card, ckpt.state)
    assert invoke("export", root / "tiny.pt", "-o", root / "tiny.onnx").exit_code == 0
    images = root / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((36, 36, 3), 40 * i, np.uint8)).save(images / f"{i}.png")
    return {"root": root, "ckpt": root / "tiny.pt", "onnx": root / "tiny.onnx", "images": images}


# ---------------------------------------------------------------- non-finite weights

def _poisoned_state(value: float) -> dict[str, np.ndarray]:
    state = {k: v.copy() for k, v in init_checkpoint(TINY).state.items()}
    state["cnn.1.3.weight"].flat[3] = value
    return state


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["edge", "state dict", "homework 16-bit", "homework 8-bit", "net file (cnn)"])
def test_non_finite_weights_are_refused_at_load_in_every_model_kind(kind, value, tmp_path):
    path, state = tmp_path / "model.bin", _poisoned_state(value)
    if kind == "edge":
        save_checkpoint(path, init_checkpoint(TINY).card, state)
    elif kind == "state dict":
        torch.save({k: torch.as_tensor(v) for k, v in state.items()}, path)
    elif kind == "homework 16-bit":
        path.write_bytes(pickle.dumps({k: np.float16(v) for k, v in state.items()}))
    elif kind == "homework 8-bit":
        path.write_bytes(pickle.dumps({k: (np.float64(0), np.float64(value), np.zeros(v.shape, np.uint8))
                                       for k, v in state.items()}))
    else:
        spec = NetSpec("cnn", StudentConfig(widths=(4, 8), pools=(0,), input_size=32))
        weights = build_net(spec).state_dict()
        weights[next(k for k in weights if k.endswith("weight"))].view(-1)[0] = float(value)
        save_net(path, NetFile(spec, Preprocess(crop=32), tuple("abcdefghijk"), weights))
        with pytest.raises(CheckpointError, match=f"non-finite weights in {path}: tensor"):
            load_net(path)
        refused(invoke("export", path, "-o", tmp_path / "m.onnx"), "non-finite weights", str(path))
        return
    with pytest.raises(CheckpointError, match=f"non-finite weights in {path}: tensor"):
        load_checkpoint(path, pools=(0,), input_size=32)
    for command in (["info", path, "--pools", "0"], ["export", path, "--pools", "0", "-o", tmp_path / "m.onnx"],
                    ["predict", path, tmp_path, "--pools", "0", "-o", tmp_path / "p.csv"]):
        refused(invoke(*command), "non-finite weights", str(path))
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "p.csv").exists()


def test_an_onnx_file_with_nan_weights_does_not_answer_class_0(tiny, tmp_path):
    model = onnx.load(tiny["onnx"])
    weight = next(i for i in model.graph.initializer if i.name.startswith("fc.0.w"))
    array = numpy_helper.to_array(weight).copy()
    array[:] = np.nan
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    save_sealed(model, tmp_path / "nan.onnx")
    result = invoke("predict", tmp_path / "nan.onnx", tiny["images"], "-o", tmp_path / "p.csv", "--quiet")
    refused(result, "non-finite", "nan.onnx")
    assert not (tmp_path / "p.csv").exists()


def test_training_that_diverges_stops_and_saves_nothing_of_it(tiny, tmp_path):
    tree = tmp_path / "tree"
    for label in ("0", "1"):
        (tree / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (36, 36, 3), np.uint8)).save(
                tree / label / f"{i}.png")
    result = invoke("train", tree, "-o", tmp_path / "run.pt", "--input-size", "32", "--widths", "4,8", "--pools",
                    "0", "--epochs", "2", "--lr", "1e30", "--batch", "4", "--quiet", "--device", "cpu")
    refused(result, "training diverged", "--lr")
    assert not (tmp_path / "run.pt").exists() and not (tmp_path / "run.best.pt").exists()


# ---------------------------------------------------------------- options

@pytest.mark.parametrize("args,words", [
    (["train", "{images}", "-o", "{root}/r.pt", "--lr", "nan"], ["--lr", "finite"]),
    (["train", "{images}", "-o", "{root}/r.pt", "--lr", "inf"], ["--lr", "finite"]),
    (["train", "{images}", "-o", "{root}/r.pt", "--weight-decay", "nan"], ["--weight-decay", "finite"]),
    (["export", "{ckpt}", "-o", "{root}/x.onnx", "--max-drop", "nan", "--images", "{images}"], ["--max-drop"]),
    (["export", "{ckpt}", "-o", "{root}/x.onnx", "--pools", ","], ["--pools"]),
    (["export", "{ckpt}", "-o", "{root}/x.onnx", "--pools", "0,0,0"], ["--pools", "each once"]),
    (["train", "{images}", "-o", "{root}/r.pt", "--widths", ","], ["--widths"]),
    (["export", "{ckpt}", "-o", "{root}/x.onnx", "--per-channel"], ["--per-channel", "fp32"]),
    (["export", "{ckpt}", "-o", "{root}/x.onnx", "--quant", "fp16", "--calib", "{images}"], ["--calib"]),
    (["export", "{ckpt}", "-o", "{root}/x.onnx", "--labels", "{root}/l.csv"], ["--labels", "--images"]),
    (["slim", "{ckpt}", "{images}", "--val", "{images}", "-o", "{root}/s", "--quant", "nonsense"], ["--quant"]),
    (["slim", "{ckpt}", "{images}", "--val", "{images}", "-o", "{root}/s", "--rate", "0,0"], ["--rate"]),
    (["slim", "{ckpt}", "{images}", "--val", "{images}", "-o", "{root}/s", "--rate", "nan"], ["--rate"]),
    (["train", "{images}@5:9", "-o", "{root}/r.pt"], ["slice selects no images"]),
    (["predict", "{ckpt}", "{images}", "-o", "{root}/p.csv", "--provider", "ort-cuda"], ["ort-cuda", "tiny.pt"]),
    (["predict", "{ckpt}", "{images}", "-o", "{root}/p.csv", "--provider", "tensorrt"], ["tensorrt", "tiny.pt"]),
])
def test_options_that_cannot_work_are_refused_up_front(tiny, args, words):
    result = invoke(*[a.format(**tiny) for a in args])
    refused(result, *words)
    assert not any((tiny["root"] / name).exists() for name in ("r.pt", "x.onnx", "s", "p.csv"))


@pytest.mark.parametrize("provider", ["cuda", "torch-cuda"])
def test_cuda_on_a_checkpoint_says_what_to_do(tiny, provider, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the provider works")
    result = invoke("predict", tiny["ckpt"], tiny["images"], "-o", tmp_path / "p.csv", "--provider", provider)
    refused(result, f"--provider {provider}", "--provider cpu")
    assert "--device" not in result.stderr


# ---------------------------------------------------------------- files under the wrong name, odd files

def test_an_onnx_file_under_another_name_is_recognised(tiny, tmp_path):
    renamed = tmp_path / "model.bin"
    renamed.write_bytes(tiny["onnx"].read_bytes())
    assert invoke("predict", renamed, tiny["images"], "-o", tmp_path / "p.csv", "--quiet").exit_code == 0
    assert json.loads(invoke("info", "--json", renamed).stdout)["weights"]["weights"] == "fp32"
    refused(invoke("convert", renamed, "--to", "edge", "-o", tmp_path / "c.pt"), "ONNX model", str(renamed))


def test_messages_name_what_the_file_holds(tmp_path):
    (tmp_path / "empty.pkl").write_bytes(pickle.dumps({}))
    refused(invoke("info", tmp_path / "empty.pkl"), "empty dict")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps([1, 2]))
    refused(invoke("info", tmp_path / "list.pkl"), "found a list")
    (tmp_path / "text.pkl").write_bytes(pickle.dumps({"cnn.0.0.weight": "abc"}))
    refused(invoke("info", tmp_path / "text.pkl"), "'cnn.0.0.weight'", "not a tensor of numbers")
    spec = NetSpec("cnn", StudentConfig(widths=(4, 8), pools=(0,), input_size=32))
    save_net(tmp_path / "cnn.pt", NetFile(spec, Preprocess(crop=32), tuple("abcdefghijk"), build_net(spec).state_dict()))
    refused(invoke("convert", tmp_path / "cnn.pt", "--to", "edge", "-o", tmp_path / "c.pt"), "arch 'cnn'")
    (tmp_path / "noise.bin").write_bytes(bytes(range(7, 200)))
    refused(invoke("info", tmp_path / "noise.bin"), "not a weights file", "noise.bin")


def test_onnx_metadata_that_disagrees_with_its_graph_is_refused(tiny, tmp_path):
    model = onnx.load(tiny["onnx"])
    prop = next(p for p in model.metadata_props if p.key == "edge.card")
    card = json.loads(prop.value)
    card["preprocess"]["crop"] = 24
    prop.value = json.dumps(card)
    save_sealed(model, tmp_path / "bad.onnx")
    result = invoke("predict", tmp_path / "bad.onnx", tiny["images"], "-o", tmp_path / "p.csv", "--quiet")
    refused(result, "bad.onnx", "metadata")


# ---------------------------------------------------------------- data layouts and images

def _image(path: Path, pixels=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((36, 36, 3), np.uint8) if pixels is None else pixels).save(path)


def test_images_edge_would_not_look_at_are_an_error(tmp_path):
    _image(tmp_path / "nested" / "a" / "b" / "x.jpg")
    with pytest.raises(DatasetError, match="nested in a/b"):
        list_samples(tmp_path / "nested")
    _image(tmp_path / "mixed" / "1.jpg")
    _image(tmp_path / "mixed" / "more" / "2.jpg")
    with pytest.raises(DatasetError, match="holds images itself and in more/"):
        list_samples(tmp_path / "mixed")


def test_folder_names_that_are_not_classes_give_no_accuracy(tiny, tmp_path):
    _image(tmp_path / "photos" / "vacation" / "x.jpg")
    result = invoke("predict", tiny["onnx"], tmp_path / "photos", "-o", tmp_path / "p.csv", "--quiet")
    assert result.exit_code == 0 and "accuracy" not in result.stderr, result.output
    assert list_samples(tmp_path / "photos", ("a", "b"), strict_classes=True)[0].label is None
    assert list_samples(tmp_path / "photos")[0].label == 0  # training from scratch: sorted order


def test_names_with_a_class_the_model_lacks_are_not_labels(tiny, tmp_path):
    _image(tmp_path / "photos" / "1_0.jpg")
    _image(tmp_path / "photos" / "2023_5.jpg")
    result = invoke("predict", tiny["onnx"], tmp_path / "photos", "-o", tmp_path / "p.csv", "--quiet")
    assert result.exit_code == 0 and "accuracy" not in result.stderr, result.output


def test_a_non_utf8_file_name_is_refused_before_any_work(tiny, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(np.zeros((36, 36, 3), np.uint8)).save(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.jpg"))
    result = invoke("predict", tiny["onnx"], folder, "-o", tmp_path / "p.csv", "--quiet")
    refused(result, "not valid UTF-8", "caf")
    assert not (tmp_path / "p.csv").exists()


def test_16_bit_images_keep_their_tones(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    for name in ("g.png", "g.tif"):
        Image.fromarray(ramp).save(tmp_path / name)
        pixels, _ = read_image(tmp_path / name, Preprocess(crop=32))
        assert np.array_equal(pixels[..., 0], (ramp >> 8).astype(np.uint8)), name


def test_a_huge_file_is_refused_unread(tmp_path):
    sparse = tmp_path / "huge.jpg"
    with open(sparse, "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    with pytest.raises(ImageError, match="refused"):
        read_image(sparse, Preprocess(crop=32))


def test_a_decompression_bomb_warning_becomes_a_clear_refusal(tmp_path, monkeypatch):
    _image(tmp_path / "big.png", np.zeros((100, 100, 3), np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6000)  # 10,000 pixels: Pillow warns (between 1x and 2x)
    with pytest.raises(ImageError, match="refused"):
        read_image(tmp_path / "big.png", Preprocess(crop=32))


def test_unlabelled_data_trains_from_the_teachers_classes_or_a_labels_csv(tiny, tmp_path):
    """The README's label-free distill path with a fresh student, and --labels on a flat folder:
    neither may say "needs --labels"."""
    common = ["--widths", "4,8", "--pools", "0", "--input-size", "32", "--epochs", "1", "--quiet", "--device", "cpu"]
    result = invoke("distill", tiny["images"], "--teacher", tiny["ckpt"], "--student", "dw", "-o",
                    tmp_path / "s.pt", *common)
    assert result.exit_code == 0 and load_net(tmp_path / "s.pt").classes == load_net(tiny["ckpt"]).classes, \
        result.output
    (tmp_path / "labels.csv").write_text("Id,label\n0,1\n1,2\n2,3\n")
    result = invoke("train", tiny["images"], "--labels", tmp_path / "labels.csv", "-o", tmp_path / "t.pt", *common)
    assert result.exit_code == 0 and "--labels" not in result.stderr, result.output


def test_devices_pipes_and_expanding_pickles_are_refused_without_reading_them(tmp_path):
    os.mkfifo(tmp_path / "pipe.bin")
    for path in ("/dev/zero", tmp_path / "pipe.bin"):
        refused(invoke("info", path), "not a regular file")
    refused(invoke("distill", tmp_path, "--teacher", "/dev/zero", "-o", tmp_path / "d.pt"), "/dev/zero")
    square = [[1.0] * 1000] * 1000  # one shared row: 13 kB of pickle, 8 GB as an array
    (tmp_path / "bomb.pkl").write_bytes(pickle.dumps({"cnn.0.0.weight": [square] * 1000}))
    refused(invoke("info", tmp_path / "bomb.pkl"), "'cnn.0.0.weight'", "not a tensor of numbers")


def test_weights_beyond_fp16_are_not_exported_as_inf(tmp_path):
    ckpt = init_checkpoint(TINY)
    state = {**ckpt.state, "cnn.1.3.weight": np.full_like(ckpt.state["cnn.1.3.weight"], 1e6)}
    save_checkpoint(tmp_path / "big.pt", ckpt.card, state)
    refused(invoke("export", tmp_path / "big.pt", "--quant", "fp16", "-o", tmp_path / "big.onnx"), "non-finite",
            "cnn.1.3.weight")
    assert not (tmp_path / "big.onnx").exists()
    assert invoke("export", tmp_path / "big.pt", "--quant", "fp32", "-o", tmp_path / "big.onnx").exit_code == 0


@pytest.mark.parametrize("command", ["train", "distill"])
def test_a_fresh_models_shape_is_refused_before_any_photo_is_decoded(tmp_path, command):
    from synthetic import write_grey_classes

    data = write_grey_classes(tmp_path / "grey", 20)
    (data / "0" / "broken.png").write_bytes(b"not a photo")  # decoding would stop here first
    teacher = ["--teacher", str(tmp_path / "teacher.pt")] if command == "distill" else []
    if teacher:
        save_net(tmp_path / "teacher.pt", NetFile(NetSpec("dw", StudentConfig(widths=(4, 8, 10), pools=(0,),
                                                                             input_size=16, num_classes=10)),
                                                  Preprocess(crop=16), tuple("0123456789"), {}))
    result = CliRunner().invoke(main, [command, str(data), *teacher, "--input-size", "2048", "--widths", "8,16",
                                       "--pools", "0,1,2,3", "--epochs", "1", "-o", str(tmp_path / "m.pt"), "--quiet"])
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "pools [2, 3] name no stage (the model has stages 0..1)" in result.output
    assert not (tmp_path / "m.pt").exists()
