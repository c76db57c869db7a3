"""Homework interop: every real checkpoint loads and predicts exactly as the homework's own
decoder + model would; our writers are read back by the homework's decoder; loading never runs code."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from edge.checkpoints import CheckpointError, load_checkpoint, save_checkpoint, save_homework_pickle
from edge.config import Preprocess, StudentConfig
from edge.data import list_samples
from edge.preprocess import load_image
from edge.torch_backend import TorchClassifier
from homework_reference import decode8, decode16, homework_student

DEEPER = dict(widths=(16, 32, 64, 128, 128, 128, 256, 256, 256), pools=(0, 1, 2, 5))
CASES = {
    "student_custom_small.bin": (dict(), lambda p: torch.load(p, map_location="cpu", weights_only=True)),
    "student_8bit_a.pkl": (dict(), decode8),
    "student_deeper_16bit.pkl": (DEEPER, decode16),
}


@pytest.fixture(scope="module")
def photos(food11_test):
    samples = list_samples(food11_test)[:24]
    return np.stack([load_image(s.path, Preprocess()) for s in samples])


@pytest.mark.parametrize("name", sorted(CASES))
def test_homework_checkpoint_predicts_as_homework_code(hw7, photos, name):
    shape, decode = CASES[name]
    ckpt = load_checkpoint(hw7 / name, pools=shape.get("pools"))
    assert ckpt.card.config.widths == shape.get("widths", StudentConfig().widths)
    reference = homework_student(**shape)
    reference.load_state_dict(decode(hw7 / name))
    reference.eval()
    with torch.no_grad():
        expected = reference(torch.from_numpy(photos)).numpy()
    ours = TorchClassifier(ckpt)(photos)
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)
    assert (ours.argmax(1) == expected.argmax(1)).all()


def test_ta_student_shape_and_size(ta_student):
    ckpt = load_checkpoint(ta_student)
    assert ckpt.source == "state-dict"
    assert ckpt.card.config == StudentConfig()
    assert ckpt.card.config.num_parameters() == 256_779 == sum(
        v.size for k, v in ckpt.state.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))


@pytest.mark.parametrize("bits,decode", [(8, decode8), (16, decode16)])
def test_our_homework_pickles_read_by_homework_decoder(ta_student, tmp_path, bits, decode):
    ckpt = load_checkpoint(ta_student)
    out = tmp_path / f"student_{bits}.pkl"
    save_homework_pickle(out, ckpt.state, bits=bits)
    theirs = decode(out)
    ours = load_checkpoint(out).state
    assert set(theirs) == set(ckpt.state)
    for key, value in theirs.items():
        np.testing.assert_allclose(ours[key], value.numpy().astype(ours[key].dtype), rtol=0, atol=1e-6)
    if bits == 8:
        assert out.stat().st_size <= 268_471 + 200  # the homework's own 8-bit pickle of this model, + pickle framing


def test_edge_checkpoint_roundtrip_keeps_card(hw7, tmp_path):
    ckpt = load_checkpoint(hw7 / "student_deeper_16bit.pkl", pools=DEEPER["pools"])
    path = tmp_path / "deeper.pt"
    save_checkpoint(path, ckpt.card, ckpt.state)
    back = load_checkpoint(path)
    assert back.source == "edge" and back.card == ckpt.card
    assert back.card.config.pools == (0, 1, 2, 5)
    for key in ckpt.state:
        np.testing.assert_array_equal(back.state[key], ckpt.state[key])


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "student_8bit.pkl"
    evil.write_bytes(pickle.dumps({"cnn.0.0.weight": _RunsCode(marker)}))
    with pytest.raises(CheckpointError, match="refused.*may try to run code"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_malicious_torch_file_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "student.bin"
    torch.save({"cnn.0.0.weight": _RunsCode(marker)}, evil)
    with pytest.raises(CheckpointError, match="may try to run code"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_not_a_student_is_a_clear_error(tmp_path):
    state = {"cnn.0.0.weight": torch.zeros(16, 3, 3, 3), "fc.0.weight": torch.zeros(11, 16)}
    torch.save(state, tmp_path / "partial.bin")
    with pytest.raises(CheckpointError, match="partial.bin.*missing"):
        load_checkpoint(tmp_path / "partial.bin")
    (tmp_path / "junk.bin").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.bin"):
        load_checkpoint(tmp_path / "junk.bin")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "absent.bin")
