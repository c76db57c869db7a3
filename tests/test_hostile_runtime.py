"""Third pass of hostile inputs, on the runtime side (predict / info / convert / bench): files that
go INTO edge's ONNX runtime. Each class of input that once gave a traceback, a silent answer, an
unbounded allocation or a clobbered file is here, refused with one line naming the file and exit 2:
entropy-coded streams that lie (sizes, widths, names, bombs), model cards that lie (types, ranges,
non-finite normalisation), non-finite weights, non-regular files named like models or images, and
an output path inside the input folder. All on tiny seeded models: no ../shared needed.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper, numpy_helper

from edge.bench.command import _read_previous
from edge.io.checkpoints import load_checkpoint
from edge.cli import main
from edge.core.config import ConfigError, ModelCard, Preprocess
from edge.data.folders import read_labels
from edge.codec.entropy import EntropyError, decode_stream, encode_stream, write_plain
from edge.export.exporter import export_onnx
from edge.export.quantize import QuantSpec
from edge.core.files import InputError
from edge.codec.metadata import MetadataError, read_metadata, read_net
from edge.data.preprocess import ImageError, read_image
from edge.codec.quant import pack_codes
from edge.inference.runtime import ModelError, OnnxClassifier
from synthetic import save_sealed


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in result.output and result.exit_code in (0, 2), result.output
    return result


def refused(result, *words: str) -> None:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert all(w in errors[0] for w in words), (words, errors[0])


@pytest.fixture(scope="module")
def coded(synthetic_student, tmp_path_factory) -> Path:
    """A uint4 entropy-coded file of the synthetic student (every layer coded: fp16_below 0)."""
    path = tmp_path_factory.mktemp("coded") / "coded.onnx"
    export_onnx(load_checkpoint(synthetic_student), path, QuantSpec("uint4", method="minmax", fp16_below=0, entropy=True))
    return path


def _stream_node(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.domain == "edge.entropy")


def _attribute(node, name: str):
    return next(a for a in node.attribute if a.name == name)


def _bomb(model):
    """A deflate stream of 64 MiB of zeros (64 KiB in the file) where 1 KiB of codes belongs."""
    node = _stream_node(model)
    coder = zlib.compressobj(9)
    _attribute(node, "data").s = b"".join(coder.compress(bytes(1 << 20)) for _ in range(64)) + coder.flush()
    _attribute(node, "codec").s, _attribute(node, "layout").s = b"deflate", b"packed"


def _retype_bits(model):
    node = _stream_node(model)
    node.attribute.remove(_attribute(node, "bits"))
    node.attribute.append(helper.make_attribute("bits", "four"))


def _twice(model):
    model.graph.node.insert(0, onnx.NodeProto())
    model.graph.node[0].CopyFrom(_stream_node(model))


def _shorter_stream(model):
    """A consistent stream (node and data agree) that is half of what the graph reads."""
    node = _stream_node(model)
    half = np.zeros(_attribute(node, "bytes").i // 2, np.uint8)
    codec, layout, data = encode_stream(half, _attribute(node, "bits").i)
    for key, value in (("codec", codec.encode()), ("layout", layout.encode()), ("data", data)):
        _attribute(node, key).s = value
    _attribute(node, "bytes").i = len(half)


STREAM_DAMAGE = {  # what once gave a traceback, a bomb or a silently accepted file -> the words of its refusal
    "width 0": (lambda m: setattr(_attribute(_stream_node(m), "bits"), "i", 0), "not the stream of 0-bit codes"),
    "width mistyped": (_retype_bits, "attribute bits missing or not int"),
    "no output": (lambda m: _stream_node(m).ClearField("output"), "0 outputs, not 1"),
    "an input": (lambda m: _stream_node(m).input.append("input"), "it has inputs"),
    "codec not ascii": (lambda m: setattr(_attribute(_stream_node(m), "codec"), "s", b"\xff"), "not a name"),
    "defined twice": (_twice, "defined twice"),
    "billions of codes": (lambda m: setattr(_attribute(_stream_node(m), "bytes"), "i", 10 ** 10), "graph reads"),
    "shorter than the graph reads": (_shorter_stream, "graph reads"),
    "decompression bomb": (_bomb, "decodes to more than"),
    "truncated": (lambda m: setattr(_attribute(_stream_node(m), "data"), "s", _attribute(_stream_node(m), "data").s[:40]),
                  "ends early"),
}


@pytest.mark.parametrize("damage", sorted(STREAM_DAMAGE))
def test_lying_entropy_streams_are_refused_by_the_runtime_and_by_convert(coded, tmp_path, damage):
    mutate, words = STREAM_DAMAGE[damage]
    model = onnx.load(coded)
    mutate(model)
    path = tmp_path / "damaged.onnx"
    save_sealed(model, path)
    with pytest.raises(ModelError, match=words):
        OnnxClassifier(path)
    with pytest.raises(EntropyError, match=words):
        write_plain(path, tmp_path / "plain.onnx")
    assert not (tmp_path / "plain.onnx").exists()


def test_an_8_bit_stream_must_hold_what_its_split_reads(synthetic_student, tmp_path):
    path = tmp_path / "coded8.onnx"
    export_onnx(load_checkpoint(synthetic_student), path, QuantSpec("uint8", method="minmax", fp16_below=0, entropy=True))
    model = onnx.load(path)
    assert _attribute(_stream_node(model), "bits").i == 8
    _shorter_stream(model)
    save_sealed(model, path)
    with pytest.raises(ModelError, match=r"codes8: its node declares \d+ bytes but the graph reads \d+"):
        OnnxClassifier(path)


def test_convert_refuses_a_damaged_stream_with_one_line_and_writes_nothing(coded, tmp_path):
    model = onnx.load(coded)
    _retype_bits(model)
    save_sealed(model, tmp_path / "d.onnx")
    refused(invoke("convert", tmp_path / "d.onnx", "--to", "onnx", "-o", tmp_path / "p.onnx"), "d.onnx", "bits")
    assert not (tmp_path / "p.onnx").exists()


def test_convert_to_onnx_names_a_checkpoint_given_in_place_of_an_onnx_file(synthetic_student, tmp_path):
    """It said only protobuf's "Wire format was corrupt"."""
    refused(invoke("convert", synthetic_student, "--to", "onnx", "-o", tmp_path / "p.onnx"), "a torch file",
            "edge export")


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_every_codec_and_layout_decodes_through_the_bounded_decoders(bits):
    from edge.codec.entropy import CODECS, LAYOUTS
    from edge.codec.quant import unpack_codes

    packed = pack_codes(np.random.default_rng(bits).integers(0, 2 ** bits, 3000).astype(np.uint8), bits)
    laid_out = {"symbols": unpack_codes(packed, bits, (len(packed) * 8 // bits,)).tobytes(), "packed": packed.tobytes()}
    for codec, (compress, _) in CODECS.items():
        for layout in LAYOUTS:
            decoded = decode_stream(codec, layout, compress(laid_out[layout]), bits, len(packed))
            np.testing.assert_array_equal(decoded, packed, err_msg=f"{codec}/{layout}")


def test_a_bomb_costs_no_more_memory_than_an_honest_stream():
    coder = zlib.compressobj(9)
    bomb = b"".join(coder.compress(bytes(1 << 20)) for _ in range(64)) + coder.flush()
    tracemalloc.start()
    try:
        with pytest.raises(EntropyError, match="more than the 1000 bytes"):
            decode_stream("deflate", "packed", bomb, 4, 1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # 64 MiB if it were decoded whole
    packed = pack_codes(np.arange(300, dtype=np.uint8) % 16, 4)
    codec, layout, data = encode_stream(packed, 4)
    with pytest.raises(EntropyError, match="bytes follow its end"):
        decode_stream(codec, layout, data + b"junk", 4, len(packed))


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_device_named_like_a_model_is_refused_unread(tmp_path):
    os.symlink("/dev/zero", tmp_path / "zero.onnx")
    refused(invoke("convert", tmp_path / "zero.onnx", "--to", "onnx", "-o", tmp_path / "p.onnx"), "not a regular file")
    refused(invoke("convert", tmp_path / "gone.onnx", "--to", "onnx", "-o", tmp_path / "p.onnx"), "gone.onnx: not an ONNX")
    assert not (tmp_path / "p.onnx").exists()


# ---------------------------------------------------------------- model cards that lie

def _card(**changes) -> dict:
    card = ModelCard().to_dict()
    for path, value in changes.items():
        section, _, key = path.rpartition("__")
        (card[section] if section else card)[key] = value
    return card


@pytest.mark.parametrize("card,words", [
    (_card(classes="abcdefghijk"), "classes must be a list of names"),
    (_card(classes=list(range(11))), "classes must be a list of names"),
    (_card(preprocess__std=[0, 1, 1]), "std must be in"),
    (_card(preprocess__std=[1e-320, 1, 1]), "std must be in"),
    (_card(preprocess__mean="012"), "mean must be a list of numbers"),
    (_card(preprocess__crop="256"), "crop must be a whole number"),
    (_card(preprocess__crop=True), "crop must be a whole number"),
    (_card(preprocess__crop=10 ** 6, config__input_size=10 ** 6), "outside 1..2048"),
    (_card(preprocess__resize=10 ** 6), "resize 1000000 is outside"),
    (_card(preprocess__exif_transpose="no"), "exif_transpose must be true or false"),
    (_card(config__widths=[16.5]), "widths must be a whole number"),
])
def test_cards_with_wrong_types_or_ranges_are_refused(card, words):
    with pytest.raises(MetadataError, match=words):
        read_metadata({"edge.card": json.dumps(card)}, "m.onnx")


def test_non_finite_normalisation_in_json_is_refused_and_a_whole_float_is_read_as_an_int():
    text = json.dumps(_card()).replace('"std": [1.0, 1.0, 1.0]', '"std": [NaN, 1.0, 1.0]')
    with pytest.raises(MetadataError, match="std must hold finite numbers"):
        read_metadata({"edge.card": text}, "m.onnx")
    card, _ = read_metadata({"edge.card": json.dumps(_card(preprocess__crop=256.0))}, "m.onnx")
    assert card.preprocess.crop == 256 and type(card.preprocess.crop) is int
    with pytest.raises(ConfigError):
        ModelCard.from_dict(_card(classes=[["nested"]] * 11))


@pytest.mark.parametrize("props,words", [
    ({"edge.quant": "[1]"}, "'edge.quant' metadata (a JSON object expected, not list)"),
    ({"edge.format": "99"}, "this edge reads layouts 1, 2"),
    ({"edge.net": "[1]"}, "'edge.net' metadata (a JSON object expected"),
    ({"edge.net": '{"arch": "cnn", "groups": 1, "parameters": 5}'}, "it needs arch, groups, parameters and flops"),
])
def test_other_metadata_that_lies_is_refused(props, words):
    with pytest.raises(MetadataError, match=re.escape(words)):
        everything = {"edge.card": ModelCard().to_json(), **props}
        read_metadata(everything, "m.onnx")
        read_net(everything, "m.onnx")


def test_a_card_with_zero_std_is_refused_before_predicting(coded, synthetic_photos, tmp_path):
    model = onnx.load(coded)
    entry = next(p for p in model.metadata_props if p.key == "edge.card")
    card = json.loads(entry.value)
    card["preprocess"]["std"] = [0.0, 1.0, 1.0]
    entry.value = json.dumps(card)
    save_sealed(model, tmp_path / "zero_std.onnx")
    for command in (("info",), ("predict", synthetic_photos, "-o", tmp_path / "p.csv", "--quiet")):
        refused(invoke(command[0], tmp_path / "zero_std.onnx", *command[1:]), "zero_std.onnx", "std must be in")
    assert not (tmp_path / "p.csv").exists()


def test_nan_weights_are_refused_when_the_file_is_opened_not_only_when_it_answers(coded, tmp_path):
    model = onnx.load(coded)
    tensor = next(t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16 and np.prod(t.dims) > 4)
    array = numpy_helper.to_array(tensor).copy()
    array.flat[1] = np.nan
    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))
    save_sealed(model, tmp_path / "nan.onnx")
    refused(invoke("info", tmp_path / "nan.onnx"), "nan.onnx", "NaN or inf")


def test_an_infinite_bias_is_refused_even_where_relu6_would_hide_it(tmp_path):
    model = onnx.load(Path(__file__).parent.parent / "models" / "food11_student_uint8.onnx")
    bias = next(t for t in model.graph.initializer if t.name == "cnn.0.0.bias.float16")  # clipped by ReLU6
    array = numpy_helper.to_array(bias).copy()
    array.flat[1] = np.inf
    bias.CopyFrom(numpy_helper.from_array(array, bias.name))
    save_sealed(model, tmp_path / "inf_bias.onnx")
    refused(invoke("info", tmp_path / "inf_bias.onnx"), "inf_bias.onnx", "non-finite weights (NaN or inf) in cnn.0.0.bias.float16")


def test_the_scan_reads_every_way_onnx_stores_floats_without_the_onnx_package():
    from edge.codec.onnx_scan import nonfinite_tensors

    nan, inf = float("nan"), float("inf")
    graph = helper.make_graph([helper.make_node("Constant", [], ["c"], value=helper.make_tensor(
        "constant", onnx.TensorProto.FLOAT, [1], [inf]))], "g", [], [], initializer=[
        helper.make_tensor("float_data", onnx.TensorProto.FLOAT, [2], [1.0, nan]),
        helper.make_tensor("double_data", onnx.TensorProto.DOUBLE, [1], [-inf]),
        helper.make_tensor("fp16_bits", onnx.TensorProto.FLOAT16, [2], np.array([1, inf], np.float16)),
        helper.make_tensor("bfloat16", onnx.TensorProto.BFLOAT16, [1], [nan]),
        numpy_helper.from_array(np.array([1, nan], np.float32), "raw"),
        numpy_helper.from_array(np.array([1, 2], np.float16), "finite"),
        numpy_helper.from_array(np.array([255], np.uint8), "codes8"),
    ])
    model = helper.make_model(graph).SerializeToString()
    assert nonfinite_tensors(model) == ["constant", "float_data", "double_data", "fp16_bits", "bfloat16", "raw"]
    assert nonfinite_tensors(model[: len(model) // 2]) == nonfinite_tensors(b"\x08junk") == []


# ---------------------------------------------------------------- images and outputs

def test_pipes_and_devices_named_like_images_are_listed_not_silently_left_out(synthetic_student_onnx, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    from synthetic import write_photos

    write_photos(folder, ["1.jpg"])
    os.mkfifo(folder / "2.jpg")
    (folder / "3.jpg").write_text("not an image\n")
    refused(invoke("predict", synthetic_student_onnx, folder, "-o", tmp_path / "p.csv", "--quiet"), "2 image(s)")
    result = invoke("predict", synthetic_student_onnx, folder, "-o", tmp_path / "p.csv", "--quiet", "--skip-bad")
    assert result.exit_code == 0 and "2.jpg: cannot read image: not a regular file" in result.stderr
    assert "3.jpg: not an image" in result.stderr
    assert (tmp_path / "p.csv").read_text().splitlines()[1:] and len((tmp_path / "p.csv").read_text().splitlines()) == 2


@pytest.fixture
def fifo(tmp_path):
    """A named pipe; should a reader open it (the bug under test), a writer comes after 3 s and
    closes it, so the test fails instead of hanging."""
    path = tmp_path / "pipe"
    os.mkfifo(path)

    def rescue():
        time.sleep(3)
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # nobody is reading: nothing to rescue
            pass

    threading.Thread(target=rescue, daemon=True).start()
    return path


@pytest.mark.parametrize("reader,error", [
    (lambda path: read_labels(path), InputError),
    (lambda path: read_image(path, Preprocess()), ImageError),
    (lambda path: _read_previous(path), ConfigError),
    (lambda path: OnnxClassifier(path), ModelError),
], ids=["labels", "image", "bench --compare", "onnx model"])
def test_every_runtime_input_reader_refuses_a_pipe_without_opening_it(fifo, reader, error):
    with pytest.raises(error, match="not a regular file"):
        reader(fifo)


def test_labels_that_match_no_image_say_so(synthetic_student_onnx, synthetic_photos, tmp_path):
    (tmp_path / "labels.csv").write_text("Id,label\nnot_an_image,1\n")
    result = invoke("predict", synthetic_student_onnx, synthetic_photos, "-o", tmp_path / "p.csv", "--quiet",
                    "--labels", tmp_path / "labels.csv")
    assert result.exit_code == 0 and "no image id" in result.stderr and "no accuracy" in result.stderr


def test_an_output_inside_the_input_folder_never_replaces_an_image(synthetic_student_onnx, synthetic_photos):
    image = sorted(synthetic_photos.iterdir())[0]
    before = image.read_bytes()
    refused(invoke("predict", synthetic_student_onnx, synthetic_photos, "-o", image), "an image of the input folder")
    assert image.read_bytes() == before


@pytest.mark.parametrize("option,words", [(["--quant", "kmeans16"], "drop --quant"), (["--pools", "0,1"], "--pools")])
def test_bench_refuses_options_that_an_onnx_file_would_ignore(coded, option, words):
    result = invoke("bench", coded, "--provider", "cpu", *option, "--quiet")
    assert result.exit_code == 2 and words in result.stderr


def test_predict_and_info_refuse_pools_for_an_onnx_file(synthetic_student_onnx, synthetic_photos, tmp_path):
    """The graph fixes the pools: --pools was silently ignored."""
    refused(invoke("predict", synthetic_student_onnx, synthetic_photos, "-o", tmp_path / "p.csv", "--pools", "0,1"),
            "--pools", "ONNX file")
    assert not (tmp_path / "p.csv").exists()
    result = invoke("info", synthetic_student_onnx, "--pools", "0,1")
    assert result.exit_code == 2 and "--pools" in result.stderr and "ONNX file" in result.stderr


def test_a_folder_of_hidden_images_is_not_called_empty(tmp_path):
    from edge.data.folders import DatasetError, list_samples

    (tmp_path / ".0.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(DatasetError, match="holds only hidden entries"):
        list_samples(tmp_path)


@pytest.mark.parametrize("command", [["predict", "m.onnx", "d", "-o", "p.csv", "--threads"],
                                     ["predict", "m.onnx", "d", "-o", "p.csv", "--workers"],
                                     ["bench", "m.onnx", "--threads"], ["train", "d", "-o", "r.pt", "--threads"],
                                     ["distill", "d", "-o", "r.pt", "--threads"],
                                     ["compress", "m.pt", "d", "-o", "c.onnx", "--threads"],
                                     ["attack", "m.onnx", "d", "--threads"]],
                         ids=["predict threads", "workers", "bench", "train", "distill", "compress", "attack"])
def test_thread_counts_that_would_start_hundreds_of_thousands_of_threads_are_refused(command):
    result = invoke(*command, "100000")
    assert result.exit_code == 2 and ("--threads" in result.stderr or "--workers" in result.stderr)
    assert re.search(r"100000 is not in the range 1<=x<=256|must be <= 256, got 100000", result.stderr)


@pytest.mark.parametrize("as_constant_node", [False, True])
def test_a_constant_shape_that_would_build_a_huge_tensor_is_refused_before_loading(as_constant_node, tmp_path):
    """A 190-byte graph whose ConstantOfShape asks for 2^29 floats made ONNX Runtime's constant folding take
    2.1 GB at load; the shape is read from the file's bytes and refused first (initializer or Constant node)."""
    from onnx import TensorProto, helper

    from edge.inference.runtime import ModelError, OnnxClassifier

    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [1 << 29])
    nodes = [helper.make_node("ConstantOfShape", ["shape"], ["big"]), helper.make_node("ReduceSum", ["big"], ["logits"])]
    if as_constant_node:
        nodes.insert(0, helper.make_node("Constant", [], ["shape"], value=shape))
    graph = helper.make_graph(nodes, "bomb", [], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [])],
                              initializer=[] if as_constant_node else [shape])
    path = tmp_path / "bomb.onnx"
    path.write_bytes(helper.make_model(graph).SerializeToString())
    assert path.stat().st_size < 300
    with pytest.raises(ModelError, match=r"bomb.onnx: refused: ConstantOfShape big would build a tensor of more than"):
        OnnxClassifier(path)
