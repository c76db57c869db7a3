"""Hostile inputs, fifth pass: JSON nested past what Python's reader recurses into (a model's metadata, a
bench --compare file) is one line naming the file, never a RecursionError; images that declare many pixels
in few bytes (memory per pixel, one large image decoding at a time); a homework pickle whose frame length
is flipped; --padding larger than the input; a pipe or a symbolic link to itself given as a model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.codec.checksum import CHECKSUM_KEY
from edge.core.json_text import MAX_DEPTH, loads

DEEP = "[" * 200_000  # 200 kB


def test_json_nested_past_the_bound_is_a_value_error_never_a_recursion_error():
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)[0]  # as deep as allowed: read
    for text in (DEEP, "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), '{"a":' * 900 + "1" + "}" * 900):
        with pytest.raises(ValueError, match=f"nested deeper than {MAX_DEPTH} levels"):
            loads(text)


@pytest.mark.parametrize("key", ["edge.card", "edge.quant"])
def test_an_onnx_file_whose_metadata_nests_too_deep_is_refused_in_one_line(synthetic_student_onnx, key, tmp_path):
    model = onnx.load(synthetic_student_onnx)
    props = [p for p in model.metadata_props if p.key != CHECKSUM_KEY]  # layout 1: no checksum to forge
    for prop in props:
        prop.value = "1" if prop.key == "edge.format" else DEEP if prop.key == key else prop.value
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    onnx.save(model, tmp_path / "deep.onnx")
    for command in (["info"], ["predict", "-o", tmp_path / "p.csv"]):
        args = [command[0], tmp_path / "deep.onnx", *([tmp_path] if command[0] == "predict" else []), *command[1:]]
        result = CliRunner().invoke(main, list(map(str, args)))
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.output.count("\n") == 1 and f"deep.onnx: damaged '{key}' metadata (nested deeper" \
            in result.output, result.output


def test_a_bench_compare_file_nested_too_deep_is_refused_in_one_line(synthetic_student_onnx, tmp_path):
    (tmp_path / "deep.json").write_text(DEEP)
    result = CliRunner().invoke(main, ["bench", str(synthetic_student_onnx), "--compare", str(tmp_path / "deep.json")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output == f"error: --compare: {tmp_path / 'deep.json'} is not an `edge bench --json` file\n"


def _whole_image_8bit(pixels: np.ndarray, mode: str) -> np.ndarray:
    """The 8-bit pixels of a wide image as edge computed them before (the whole image at once)."""
    if mode == "I" and pixels.max(initial=0) <= 255:
        return np.clip(pixels, 0, 255).astype(np.uint8)
    return (np.clip(pixels, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)


@pytest.mark.parametrize("mode, low, high", [("I;16", 0, 65535), ("I;16B", 0, 65535), ("I", -70000, 140000),
                                             ("I", 0, 255)])
def test_wide_images_scale_to_8_bits_band_by_band_to_the_same_pixels(mode, low, high, tmp_path):
    from PIL import Image

    from edge.core.config import Preprocess
    from edge.data import preprocess

    rng = np.random.default_rng(0)
    pixels = rng.integers(low, high + 1, (preprocess._BAND_ROWS * 2 + 37, 41)).astype(np.int32)
    image = Image.new(mode, (41, len(pixels)))
    image.putdata(pixels.ravel().tolist())
    stored = np.asarray(image).astype(np.int64)  # what the mode holds (I;16 keeps 0..65535)
    for name in ("w.tif", "w.png") if mode == "I;16" else ("w.tif",):  # PNG holds no I;16B or I
        image.save(tmp_path / name)
        read = np.asarray(Image.open(tmp_path / name)).astype(np.int64)
        decoded, _ = preprocess.read_image(tmp_path / name, Preprocess(crop=32, mean=(0.0,), std=(1.0,), color="L"))
        assert np.array_equal(decoded[..., 0], _whole_image_8bit(read, mode)), name
    assert stored.shape == pixels.shape


def test_a_16_bit_image_costs_a_few_bytes_a_pixel_not_a_dozen(tmp_path):
    """A 9,400 x 9,400 16-bit PNG of 200 kB made `edge predict` reach 1.1 GB (4 whole-image copies as
    32-bit integers); numpy's share, traced here on a smaller one, fell from 10 bytes a pixel to 6."""
    import tracemalloc

    from PIL import Image

    from edge.core.config import Preprocess
    from edge.data.preprocess import read_image

    Image.new("I;16", (2000, 1500), 30000).save(tmp_path / "wide.png")
    tracemalloc.start()
    try:
        pixels, _ = read_image(tmp_path / "wide.png", Preprocess(crop=32))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pixels.shape == (1500, 2000, 3) and pixels[0, 0, 0] == 30000 >> 8
    assert peak < 8 * 2000 * 1500, peak  # was 10 bytes a pixel


def test_large_images_decode_one_at_a_time_and_hand_back_what_they_freed(tmp_path, monkeypatch):
    import threading

    from PIL import Image

    from edge.core.config import Preprocess
    from edge.data import preprocess

    Image.new("RGB", (30, 20), (1, 2, 3)).save(tmp_path / "a.png")
    held = threading.Lock()
    monkeypatch.setattr(preprocess, "LARGE_PIXELS", 599)  # 600 pixels: large
    monkeypatch.setattr(preprocess, "_ONE_LARGE_IMAGE", held)
    given_back = []
    monkeypatch.setattr(preprocess, "_give_back_freed_memory", lambda: given_back.append(held.locked()))
    results = []
    with held:  # another large image is decoding
        worker = threading.Thread(target=lambda: results.append(preprocess.read_image(tmp_path / "a.png",
                                                                                      Preprocess(crop=8))))
        worker.start()
        worker.join(0.5)
        assert worker.is_alive() and not results
    worker.join(30)
    assert results and results[0][0].shape == (20, 30, 3) and given_back == [True]  # freed memory handed back
    monkeypatch.setattr(preprocess, "LARGE_PIXELS", 600)  # not large: no waiting
    with held:
        assert preprocess.read_image(tmp_path / "a.png", Preprocess(crop=8))[0].shape == (20, 30, 3)
    assert given_back == [True]


@pytest.mark.parametrize("color", ["RGB", "L"])
def test_a_large_image_is_copied_band_by_band_to_the_same_pixels(color, tmp_path, monkeypatch):
    from PIL import Image

    from edge.core.config import Preprocess
    from edge.data import preprocess

    rng = np.random.default_rng(1)
    shape = (preprocess._BAND_ROWS + 45, 70, 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(tmp_path / "p.png")
    spec = Preprocess(crop=32, color=color, **({} if color == "RGB" else {"mean": (0.0,), "std": (1.0,)}))
    whole, _ = preprocess.read_image(tmp_path / "p.png", spec)
    monkeypatch.setattr(preprocess, "LARGE_PIXELS", 100)
    banded, _ = preprocess.read_image(tmp_path / "p.png", spec)
    assert banded.shape == whole.shape == (shape[0], shape[1], len(color)) and np.array_equal(banded, whole)


@pytest.mark.parametrize("bits", [8, 16])
def test_a_flip_in_a_homework_pickle_s_frame_length_is_refused(bits, tmp_path):
    """Bytes 3-10 of a protocol-4 pickle declare its first frame's length: a flip there made the unpickler
    read the checksum after the pickle as part of it, and the file pass as one without a checksum."""
    from edge.core.errors import CheckpointError
    from edge.io.checkpoints import init_checkpoint, load_checkpoint, save_homework_pickle

    from edge.core.config import StudentConfig

    tiny = init_checkpoint(StudentConfig(widths=(8, 16), pools=(0,), input_size=16, num_classes=3))
    save_homework_pickle(tmp_path / "hw.pkl", tiny.state, bits=bits)
    data = (tmp_path / "hw.pkl").read_bytes()
    assert data[2] == 0x95 and load_checkpoint(tmp_path / "hw.pkl", pools=(0,))  # FRAME, then its 8-byte length
    for offset in range(3, 11):
        for bit in range(8):
            damaged = bytearray(data)
            damaged[offset] ^= 1 << bit
            (tmp_path / "flipped.pkl").write_bytes(bytes(damaged))
            with pytest.raises(CheckpointError, match=r"flipped.pkl: .*(checksum|not a weights file)"):
                load_checkpoint(tmp_path / "flipped.pkl", pools=(0,))


def test_a_padding_larger_than_the_input_is_refused_before_any_canvas_is_allocated(tmp_path):
    """``--padding 100000`` asked for a 200,016-pixel square canvas per image: a MemoryError traceback."""
    from PIL import Image

    for label in range(2):
        (tmp_path / "d" / str(label)).mkdir(parents=True)
        Image.new("L", (20, 20), 60 * label).save(tmp_path / "d" / str(label) / "0.png")
    args = ["train", str(tmp_path / "d"), "--input-size", "16", "--widths", "8,8", "--pools", "0,1", "--epochs", "1",
            "--threads", "1", "--quiet", "-o", str(tmp_path / "m.pt")]
    result = CliRunner().invoke(main, [*args, "--padding", "100000"])
    assert result.exit_code == 2 and result.output == ("error: --padding 100000 is more than the 16-pixel input: a "
                                                       "random crop could hold no image at all (use at most 16)\n")
    assert not (tmp_path / "m.pt").exists()
    assert CliRunner().invoke(main, [*args, "--padding", "16"]).exit_code == 0


@pytest.mark.parametrize("command", [
    lambda pipe, model, photos, out: ["distill", photos, "--teacher", pipe, "--student", model, "-o", out / "d.pt"],
    lambda pipe, model, photos, out: ["distill", photos, "--teacher", model, "--student", pipe, "-o", out / "d.pt"],
    lambda pipe, model, photos, out: ["slim", pipe, photos, "--val", photos, "-o", out / "s"],
    lambda pipe, model, photos, out: ["slim", model, photos, "--val", photos, "--teacher", pipe, "-o", out / "s"],
    lambda pipe, model, photos, out: ["compress", model, "--images", photos, "--target-bytes", "9000", "--teacher",
                                      pipe, "-o", out / "c.onnx"],
    lambda pipe, model, photos, out: ["train", photos, "--arch", "resnet18", "--input-size", "32", "--weights", pipe,
                                      "-o", out / "t.pt"],
], ids=["distill-teacher", "distill-student", "slim", "slim-teacher", "compress-teacher", "train-weights"])
def test_a_pipe_given_as_a_model_is_refused_at_once(command, synthetic_student, synthetic_food11, tmp_path):
    """Opening a FIFO waits for a writer: ``--teacher PIPE`` stopped `edge distill` for ever (sniffing its
    format opened it before anything checked that it is a regular file)."""
    import os
    import threading

    os.mkfifo(tmp_path / "pipe.pt")
    (tmp_path / "out").mkdir()
    args = command(tmp_path / "pipe.pt", synthetic_student, synthetic_food11 / "validation", tmp_path / "out")
    results = []
    worker = threading.Thread(target=lambda: results.append(CliRunner().invoke(main, [*map(str, args), "--quiet"])),
                              daemon=True)
    worker.start()
    worker.join(120)
    assert results, "still waiting on the pipe"
    assert results[0].exit_code == 2 and "Traceback" not in results[0].output, results[0].output
    last = results[0].output.splitlines()[-1]  # slim says what data it read first
    assert results[0].output.count("error:") == 1 and "pipe.pt" in last and "not a regular file" in last, last
    assert list((tmp_path / "out").iterdir()) == []


def test_a_pickle_given_as_a_teacher_is_refused_for_what_it_is(synthetic_student, tmp_path):
    """Not read again as a torchvision state dict, which said "not a readable torch file (Unsupported operand
    149)"; a torch file that is not an edge model still is (as the homework's teacher_resnet18.bin)."""
    import pickle

    import torch

    photos = tmp_path / "photos"
    from synthetic import write_photos

    write_photos(photos, [f"{i}.jpg" for i in range(4)])
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"w": print}))  # names builtins.print: refused unloaded
    torch.save({"fc.weight": torch.ones(3, 3)}, tmp_path / "other.bin")
    for teacher, words in ((tmp_path / "evil.pkl", "refused to load builtins.print"),
                           (tmp_path / "other.bin", "not weights of a resnet18")):
        result = CliRunner().invoke(main, ["distill", str(photos), "--teacher", str(teacher), "--student",
                                           str(synthetic_student), "--quiet", "-o", str(tmp_path / "d.pt")])
        assert result.exit_code == 2 and result.output.count("error:") == 1, result.output
        assert words in result.output.splitlines()[-1], result.output


@pytest.mark.parametrize("command", [
    lambda loop, model, photos, out: ["distill", photos, "--teacher", loop, "--student", model, "-o", out / "d.pt"],
    lambda loop, model, photos, out: ["slim", loop, photos, "--val", photos, "-o", out / "s"],
    lambda loop, model, photos, out: ["compress", loop, "--images", photos, "--target-bytes", "9000", "-o",
                                      out / "c.onnx"],
    lambda loop, model, photos, out: ["bench", loop, "--json", out / "b.json"],
    lambda loop, model, photos, out: ["attack", loop, photos, "--json", out / "a.json"],
    lambda loop, model, photos, out: ["sensitivity", loop, "--images", photos, "--json", out / "s.json"],
    lambda loop, model, photos, out: ["export", loop, "-o", out / "e.onnx"],
    lambda loop, model, photos, out: ["predict", loop, photos, "-o", out / "p.csv"],
], ids=["distill", "slim", "compress", "bench", "attack", "sensitivity", "export", "predict"])
def test_a_symbolic_link_to_itself_is_refused_in_one_line(command, synthetic_student, synthetic_photos, tmp_path):
    """``ln -s loop.pt loop.pt``: `Path.resolve` raised RuntimeError("Symlink loop") in every command."""
    (tmp_path / "loop.pt").symlink_to("loop.pt")
    (tmp_path / "out").mkdir()
    args = command(tmp_path / "loop.pt", synthetic_student, synthetic_photos, tmp_path / "out")
    result = CliRunner().invoke(main, [*map(str, args), "--quiet"])
    assert result.exit_code == 2 and isinstance(result.exception, (SystemExit, type(None))), repr(result.exception)
    assert result.output.count("\n") == 1 and "loop.pt" in result.output, result.output
    assert list((tmp_path / "out").iterdir()) == []
