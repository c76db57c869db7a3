"""Property-based fuzzing (hypothesis) of everything that reads untrusted bytes: the image loader,
the format sniffer, the model-file readers and the ONNX loader. Random, truncated and mutated
bytes must give a valid result or edge's own error class (an `EdgeError`, one line), never another
exception, and never run code. Examples are drawn deterministically (no flaky CI) and kept few
so the suite stays fast; ``EDGE_FUZZ_EXAMPLES=1000 pytest tests/test_fuzz.py`` searches deeper.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from edge.io.checkpoints import load_checkpoint, save_checkpoint, save_homework_pickle
from edge.core.config import Preprocess, StudentConfig
from edge.core.errors import EdgeError
from edge.core.formats import MODEL_FORMATS, sniff
from edge.io.checkpoints import init_checkpoint
from edge.io.checkpoints import load_net
from edge.data.preprocess import read_image

FUZZ = settings(max_examples=int(os.environ.get("EDGE_FUZZ_EXAMPLES", 50)), deadline=None, database=None,
                derandomize=True, suppress_health_check=[HealthCheck.too_slow])
TINY = StudentConfig(widths=(4, 8), pools=(0,), input_size=32)
_SCRATCH = tempfile.TemporaryDirectory(prefix="edge-fuzz-")  # removed at exit even when only collected
SCRATCH = Path(_SCRATCH.name)
MARKER = SCRATCH / "ran"


def _write(data: bytes, name: str) -> Path:
    path = SCRATCH / name
    path.write_bytes(data)
    return path


def _image_bytes(fmt: str) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (24, 20, 3), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _model_bytes(kind: str) -> bytes:
    ckpt = init_checkpoint(TINY)
    path = SCRATCH / f"seed-{kind}"
    if kind == "edge":
        save_checkpoint(path, ckpt.card, ckpt.state)
    elif kind == "legacy":
        torch.save({k: torch.as_tensor(v) for k, v in ckpt.state.items()}, path, _use_new_zipfile_serialization=False)
    else:
        save_homework_pickle(path, ckpt.state, bits=8 if kind == "homework8" else 16)
    return path.read_bytes()


IMAGES = {fmt: _image_bytes(fmt) for fmt in ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP")}
MODELS = {kind: _model_bytes(kind) for kind in ("edge", "legacy", "homework8", "homework16")}


@st.composite
def mutated(draw, seeds: dict[str, bytes]):
    """A seed file truncated, with bytes overwritten, or both."""
    data = bytearray(seeds[draw(st.sampled_from(sorted(seeds)))])
    for _ in range(draw(st.integers(0, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return bytes(data)


def _image_or_our_error(data: bytes) -> None:
    path = _write(data, "fuzz.img")
    try:
        pixels, _ = read_image(path, Preprocess(crop=16))
    except EdgeError as err:
        assert str(path) in str(err) and "\n" not in str(err)
        return
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3


@FUZZ
@given(st.binary(max_size=512))
def test_image_loader_on_random_bytes(data):
    _image_or_our_error(data)


@FUZZ
@given(mutated(IMAGES))
def test_image_loader_on_damaged_images(data):
    _image_or_our_error(data)


@FUZZ
@given(st.binary(max_size=256))
def test_the_sniffer_names_any_bytes(data):
    assert sniff(data) in MODEL_FORMATS | {"unknown"}


def _model_or_our_error(data: bytes, reader) -> None:
    path = _write(data, "fuzz.bin")
    try:
        result = reader(path)
    except EdgeError as err:
        assert str(path) in str(err)
        return
    finally:
        assert not MARKER.exists()
    state = result.state if hasattr(result, "card") and hasattr(result, "source") else {}
    assert all(np.isfinite(np.asarray(v, np.float64)).all() for v in state.values())


@pytest.mark.parametrize("reader", [load_checkpoint, load_net])
@FUZZ
@given(data=st.binary(max_size=512))
def test_model_readers_on_random_bytes(reader, data):
    _model_or_our_error(data, reader)


@pytest.mark.parametrize("reader", [load_checkpoint, load_net])
@FUZZ
@given(data=mutated(MODELS))
def test_model_readers_on_damaged_model_files(reader, data):
    _model_or_our_error(data, reader)


class _RunsCode:
    def __reduce__(self):
        return open, (str(MARKER), "w")


@FUZZ
@given(protocol=st.integers(0, 5), junk=st.binary(max_size=64), nested=st.booleans())
def test_hostile_pickles_with_any_surroundings_run_nothing(protocol, junk, nested):
    payload = {"cnn.0.0.weight": [_RunsCode()]} if nested else _RunsCode()
    data = pickle.dumps(payload, protocol=protocol)
    for candidate in (data, data + junk, junk[:2] + data):
        _model_or_our_error(candidate, load_checkpoint)


@pytest.fixture(scope="module")
def onnx_bytes(tmp_path_factory) -> bytes:
    from click.testing import CliRunner

    from edge.cli import main

    root = tmp_path_factory.mktemp("onnx")
    ckpt = init_checkpoint(TINY)
    save_checkpoint(root / "tiny.pt", ckpt.card, ckpt.state)
    assert CliRunner().invoke(main, ["export", str(root / "tiny.pt"), "-o", str(root / "tiny.onnx")]).exit_code == 0
    return (root / "tiny.onnx").read_bytes()


def test_onnx_loader_on_damaged_files(onnx_bytes):
    from edge.inference.runtime import OnnxClassifier

    @FUZZ
    @given(mutated({"onnx": onnx_bytes}))
    def check(data):
        path = _write(data, "fuzz.onnx")
        try:
            model = OnnxClassifier(path)
        except EdgeError as err:
            assert str(path) in str(err)
            return
        config = model.card.config
        assert model(np.zeros((1, config.in_channels, config.input_size, config.input_size), np.float32)).shape \
            == (1, config.num_classes)

    check()


def teardown_module():
    _SCRATCH.cleanup()
