"""Damage is noticed: a torch zip whose entry fails its CRC or whose header lies, and every single-bit flip
in a file edge wrote (ONNX: plain uint8, entropy-coded uint4; a checkpoint, sealed by its zip comment; a
homework pickle, sealed after its end), is refused at load in one line; files without a checksum (older
files, the shipped models, other tools' files) still load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from edge.cli import main
from edge.codec.entropy import write_plain
from edge.codec.checksum import CHECKSUM_KEY, check_seal
from edge.core.config import StudentConfig
from edge.core.errors import CheckpointError, EdgeError
from edge.export.exporter import export_onnx
from edge.export.quantize import QuantSpec
from edge.inference.runtime import ModelError, OnnxClassifier
from edge.io.checkpoints import init_checkpoint
from edge.io.torch_files import read_torch

REPO = Path(__file__).resolve().parents[1]


def _accepted_flips(data: bytes, flipped, flips, load, refusal) -> list[tuple[int, int]]:
    """Write ``data`` with each (offset, bit) of ``flips`` flipped to ``flipped`` and ``load`` it: -> the flips
    it accepted. Every refusal must be ``refusal`` in one line naming the file."""
    accepted = []
    for offset, bit in flips:
        damaged = bytearray(data)
        damaged[offset] ^= 1 << bit
        flipped.write_bytes(bytes(damaged))
        try:
            load(flipped)
        except refusal as err:
            assert flipped.name in str(err) and "\n" not in str(err), str(err)
        else:
            accepted.append((offset, bit))
    return accepted


def test_a_torch_zip_with_a_flipped_weight_byte_is_refused(tmp_path):
    path = tmp_path / "state.pt"
    torch.save({"fc.weight": torch.arange(100, dtype=torch.float32)}, path)
    data = bytearray(path.read_bytes())
    data[data.index(np.float32(50).tobytes()) + 3] ^= 1
    (tmp_path / "flipped.pt").write_bytes(bytes(data))
    assert read_torch(path)["fc.weight"][50] == 50
    with pytest.raises(CheckpointError, match=r"flipped.pt: damaged torch file: entry .*data/0 fails its CRC"):
        read_torch(tmp_path / "flipped.pt")
    with pytest.raises(CheckpointError, match="CRC"):
        read_torch(tmp_path / "flipped.pt", bytes(data))


def test_a_torch_zip_whose_local_header_lies_is_refused(tmp_path):
    """A flipped name length in a local header made torch read a tensor from the wrong offset (the entries'
    CRCs were never reached: zipfile's refusal was taken for "not a zip")."""
    path = tmp_path / "state.pt"
    torch.save({"a": torch.arange(64, dtype=torch.float32), "b": torch.ones(64)}, path)
    data = bytearray(path.read_bytes())
    data[data.index(b"state/data/1") - 4] ^= 0x80  # entry data/1's local name length: 12 -> 140
    (tmp_path / "shifted.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="shifted.pt: damaged torch file: its zip headers do not read"):
        read_torch(tmp_path / "shifted.pt")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A small checkpoint edge wrote (its zip comment is edge's checksum)."""
    from edge.io.checkpoints import save_checkpoint

    tiny = init_checkpoint(StudentConfig(widths=(8, 16), pools=(0,), input_size=16, num_classes=3))
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.pt"
    save_checkpoint(path, tiny.card, tiny.state)
    return path


def test_every_single_bit_flip_in_a_checkpoint_edge_wrote_is_refused(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    assert data.endswith(f"{CHECKSUM_KEY}=".encode() + data[-8:]) and read_torch(checkpoint)
    tail = len(data) - 41  # the end-of-directory record and the comment: every bit; elsewhere a sample
    flips = [(offset, bit) for offset in range(0, tail, max(1, tail // 64)) for bit in (0, 7)]
    flips += [(offset, bit) for offset in range(tail, len(data)) for bit in range(8)]
    assert not _accepted_flips(data, tmp_path / "flipped.pt", flips, read_torch, CheckpointError)


@pytest.mark.parametrize("bits", [8, 16])
def test_every_single_bit_flip_in_a_homework_pickle_edge_wrote_is_refused(checkpoint, bits, tmp_path):
    import pickle

    from edge.io.checkpoints import load_checkpoint, save_homework_pickle

    path = tmp_path / f"tiny_{bits}bit.pkl"
    save_homework_pickle(path, load_checkpoint(checkpoint).state, bits=bits)
    data = path.read_bytes()
    assert isinstance(pickle.loads(data), dict)  # the homework's decoder (pickle.load) stops before the seal
    load_checkpoint(path)
    offsets = sorted({*range(0, len(data), max(1, len(data) // 96)), *range(len(data) - 24, len(data))})
    flips = [(offset, bit) for offset in offsets for bit in (0, 3, 7)]
    assert not _accepted_flips(data, tmp_path / "flipped.pkl", flips, load_checkpoint, CheckpointError)


def test_a_pickle_with_bytes_after_its_end_is_refused(checkpoint, tmp_path):
    import pickle

    from edge.io.checkpoints import load_checkpoint

    state = load_checkpoint(checkpoint).state
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps(state))  # another tool's pickle: no seal, still read
    assert load_checkpoint(tmp_path / "plain.pkl", pools=(0,)).state.keys() == state.keys()
    (tmp_path / "padded.pkl").write_bytes(pickle.dumps(state) + b"more")
    with pytest.raises(CheckpointError, match="padded.pkl: damaged pickle: 4 bytes follow the pickle's end"):
        load_checkpoint(tmp_path / "padded.pkl", pools=(0,))


def test_torch_zips_without_edge_s_checksum_still_load(tmp_path):
    import zipfile

    path = tmp_path / "plain.pt"
    torch.save({"w": torch.ones(3)}, path)  # an older checkpoint, a homework .bin
    assert read_torch(path)["w"].sum() == 3
    with zipfile.ZipFile(path, "a") as archive:
        archive.comment = b"another tool's comment"
    assert read_torch(path)["w"].sum() == 3


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> dict[str, Path]:
    """Small files edge wrote: plain uint8 and entropy-coded per-channel uint4 (a code stream to damage)."""
    folder = tmp_path_factory.mktemp("written")
    tiny = init_checkpoint(StudentConfig(widths=(8, 16), pools=(0,), input_size=16, num_classes=3))
    files = {}
    for name, spec in {"uint8": QuantSpec("uint8"),
                       "uint4-entropy": QuantSpec("uint4", per_channel=True, method="minmax", entropy=True)}.items():
        files[name] = folder / f"{name}.onnx"
        export_onnx(tiny, files[name], spec)
    return files


def _positions(size: int, entry: int) -> list[int]:
    """A sample of byte offsets across a file of ``size`` bytes, every byte of the checksum entry at ``entry``
    (its key, lengths and value) among them."""
    return sorted({*range(0, size, max(1, size // 48)), *range(entry - 4, min(size, entry + 20)), size - 1})


@pytest.mark.parametrize("name", ["uint8", "uint4-entropy"])
def test_every_single_bit_flip_is_refused_at_load(written, name, tmp_path):
    data = written[name].read_bytes()
    OnnxClassifier(written[name])  # the intact file loads
    entry = data.index(CHECKSUM_KEY.encode())
    flips = [(offset, bit) for offset in _positions(len(data), entry) for bit in range(8)]
    assert not _accepted_flips(data, tmp_path / "flipped.onnx", flips, OnnxClassifier, EdgeError)


def test_the_commands_refuse_a_flipped_file_in_one_line(written, tmp_path):
    data = bytearray(written["uint4-entropy"].read_bytes())
    data[len(data) // 3] ^= 0x10
    (tmp_path / "flipped.onnx").write_bytes(bytes(data))
    for command in (["info"], ["convert", "--to", "onnx", "-o", tmp_path / "plain.onnx"]):
        result = CliRunner().invoke(main, [command[0], str(tmp_path / "flipped.onnx"), *map(str, command[1:])])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert "flipped.onnx: damaged: its bytes do not match their edge.crc32 checksum" in result.output
    assert not (tmp_path / "plain.onnx").exists()


def test_a_converted_file_carries_its_own_checksum(written, tmp_path):
    assert write_plain(written["uint4-entropy"], tmp_path / "plain.onnx") > 0
    assert check_seal(tmp_path / "plain.onnx") and OnnxClassifier(tmp_path / "plain.onnx").card.config.num_classes == 3


def test_files_without_a_checksum_still_load(written, tmp_path):
    """Layout 1 (older files, the shipped models) carries no checksum; only layout 2 requires it."""
    for shipped in sorted((REPO / "models").glob("*.onnx")):
        assert not check_seal(shipped) and OnnxClassifier(shipped).card
    model = onnx.load(written["uint8"])
    kept = [p for p in model.metadata_props if p.key != CHECKSUM_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    next(p for p in model.metadata_props if p.key == "edge.format").value = "1"
    onnx.save(model, tmp_path / "old.onnx")
    assert OnnxClassifier(tmp_path / "old.onnx").card
    next(p for p in model.metadata_props if p.key == "edge.format").value = "2"
    onnx.save(model, tmp_path / "unsealed.onnx")
    with pytest.raises(ModelError, match=r"unsealed.onnx: damaged: its 'edge.crc32' checksum entry is missing"):
        OnnxClassifier(tmp_path / "unsealed.onnx")


@pytest.mark.parametrize("options", [["--quant", "uint1", "--method", "minmax"], ["--quant", "fp32", "--low-rank", "0.5"]])
def test_an_export_whose_parity_collapses_is_refused_not_written(options, tmp_path):
    """Both exited 0 after printing 0.00% top-1 agreement, leaving the useless file."""
    result = CliRunner().invoke(main, ["export", *options, "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "m.onnx: removed: its top-1 agreement with torch fp32 is 0.00%" in result.output
    assert "below 50%" in result.output and not (tmp_path / "m.onnx").exists()
    assert list(tmp_path.iterdir()) == []  # no draft left beside it


def test_a_refused_export_keeps_the_file_it_would_have_replaced(tmp_path):
    """--overwrite replaces an output only with a file that passed its parity check."""
    earlier = (Path(__file__).resolve().parents[1] / "models" / "food11_student_uint8.onnx").read_bytes()
    (tmp_path / "m.onnx").write_bytes(earlier)
    result = CliRunner().invoke(main, ["export", "--quant", "uint1", "--method", "minmax", "-o", str(tmp_path / "m.onnx"),
                                       "--overwrite"])
    assert result.exit_code == 2 and "below 50%" in result.output
    assert (tmp_path / "m.onnx").read_bytes() == earlier and len(list(tmp_path.iterdir())) == 1


def test_a_damaged_decoded_image_cache_is_rebuilt_not_trained_on(synthetic_photos, tmp_path):
    from edge.core.config import Preprocess
    from edge.data.datasets import decode_image_set

    spec = Preprocess(resize=40, crop=32)
    fresh = decode_image_set(f"{synthetic_photos}@:4", spec, cache_dir=tmp_path)
    (cache,) = tmp_path.iterdir()
    data = bytearray(cache.read_bytes())
    data[len(data) // 2] ^= 1  # one pixel byte of the stored tensor
    cache.write_bytes(bytes(data))
    again = decode_image_set(f"{synthetic_photos}@:4", spec, cache_dir=tmp_path)
    assert torch.equal(again.pixels, fresh.pixels)
    assert cache.read_bytes() != bytes(data)  # rewritten, sealed again
