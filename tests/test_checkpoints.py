"""Homework interop: every real checkpoint loads and predicts exactly as the homework's own
decoder + model would; our writers are read back by the homework's decoder; loading never runs code."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from edge.core.errors import CheckpointError
from edge.io.checkpoints import load_checkpoint, save_checkpoint, save_homework_pickle
from edge.core.config import Preprocess, StudentConfig
from edge.data.folders import list_samples
from edge.data.preprocess import load_image
from edge.inference.torch_backend import TorchClassifier
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


# ---------------------------------------------------------------- one reader for every model file (synthetic)
SMALL = StudentConfig(widths=(4, 8, 8), pools=(0, 1), input_size=32, num_classes=10, in_channels=1)
GREY = Preprocess(crop=32, mean=(0.0,), std=(1.0,), color="L")


def _write(kind: str, path, model: torch.nn.Module) -> None:
    """``model``'s weights written as one of the model-file kinds edge reads."""
    from edge.core.config import ModelCard, default_classes
    from edge.models.student import state_to_numpy
    from edge.io.netfile import NetFile, save_net

    state = state_to_numpy(model)
    if kind == "homework state dict":
        torch.save(model.state_dict(), path)
    elif kind == "homework 16-bit pickle":
        save_homework_pickle(path, state, bits=16)
    elif kind == "edge checkpoint":
        save_checkpoint(path, ModelCard(SMALL, GREY, default_classes(10)), state)
    else:
        save_net(path, NetFile(_spec(kind), GREY, default_classes(10), model.state_dict()))


def _spec(kind: str):
    from edge.models.registry import NetSpec

    arch = kind.removeprefix("edge train ")
    return NetSpec(arch, SMALL, groups=2 if arch == "group" else 1)


MODEL_KINDS = {  # kind -> (what load_model returns, its source)
    "homework state dict": ("Checkpoint", "state-dict"),
    "homework 16-bit pickle": ("Checkpoint", "homework-16bit"),
    "edge checkpoint": ("Checkpoint", "edge"),
    "edge train dw": ("Checkpoint", "edge"),
    "edge train cnn": ("NetFile", "edge cnn"),
    "edge train group": ("NetFile", "edge group"),
    "edge train mobilenet_v3_small": ("NetFile", "edge mobilenet_v3_small"),
}


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
def test_load_model_reads_every_kind_and_builds_its_weights(tmp_path, kind):
    from edge.models.baselines import convnet_flops
    from edge.io.checkpoints import ModelFile, load_model
    from edge.models.registry import build_net, count_parameters

    torch.manual_seed(0)
    arch = kind.removeprefix("edge train ") if kind.startswith("edge train") else "dw"
    original = build_net(_spec(f"edge train {arch}")).eval()
    for module in original.modules():  # trained-looking BatchNorm statistics, so that folding them matters
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "model.bin"
    _write(kind, path, original)

    loaded = load_model(path, pools=SMALL.pools if kind.startswith("homework") else None,
                        input_size=32 if kind.startswith("homework") else None)
    assert isinstance(loaded, ModelFile)
    assert (type(loaded).__name__, loaded.source) == MODEL_KINDS[kind]
    config = loaded.card.config
    assert (config.in_channels, config.input_size, config.num_classes) == (1, 32, 10)
    assert loaded.parameters == count_parameters(original)
    built = loaded.build()
    assert not built.training
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        tolerance = 2e-2 if "16-bit" in kind else 0  # float16 weights
        torch.testing.assert_close(built(x), original(x), rtol=0, atol=tolerance)
    expected_flops = {"dw": SMALL.flops(), "cnn": convnet_flops(SMALL), "group": convnet_flops(SMALL, 2)}
    if arch in expected_flops:  # the hook count agrees with the closed forms
        assert loaded.flops == expected_flops[arch]
    else:
        assert loaded.flops > 0
    assert (arch if arch != "dw" else "StudentNet widths [4, 8, 8]") in loaded.describe()


def test_student_only_reader_names_the_architecture_it_refuses(tmp_path):
    from edge.io.checkpoints import load_model
    from edge.models.registry import build_net

    model = build_net(_spec("edge train mobilenet_v3_small"))
    _write("edge train mobilenet_v3_small", tmp_path / "mnv3.pt", model)
    with pytest.raises(CheckpointError, match="arch 'mobilenet_v3_small', not a StudentNet"):
        load_checkpoint(tmp_path / "mnv3.pt")
    with pytest.raises(CheckpointError, match="records its own shape"):
        load_model(tmp_path / "mnv3.pt", pools=(0,))
    assert load_model(tmp_path / "mnv3.pt").state.keys() == model.state_dict().keys()


def test_a_model_file_whose_weights_do_not_fit_its_architecture_is_refused_at_load(tmp_path):
    from edge.io.checkpoints import load_model
    from edge.io.netfile import NetFile, save_net
    from edge.models.registry import build_net

    spec = _spec("edge train cnn")
    state = build_net(spec).state_dict()
    first = next(iter(state))
    save_net(tmp_path / "missing.pt", NetFile(spec, GREY, tuple("abcdefghij"), {k: v for k, v in state.items()
                                                                                if k != first}))
    with pytest.raises(CheckpointError, match=f"missing.pt: weights do not fit.*missing \\['{first}'\\]"):
        load_model(tmp_path / "missing.pt")
    state[first] = torch.zeros(3, 3)
    save_net(tmp_path / "misshapen.pt", NetFile(spec, GREY, tuple("abcdefghij"), state))
    with pytest.raises(CheckpointError, match="misshapen"):
        load_model(tmp_path / "misshapen.pt")


@pytest.mark.parametrize("arch, classes, channels", [("resnet18", 5, 3), ("mobilenet_v3_small", 11, 1)])
def test_a_plain_torchvision_state_dict_is_recognised_from_its_tensors(tmp_path, arch, classes, channels):
    from edge.io.checkpoints import load_model
    from edge.models.classifiers import torchvision_classifier

    torch.manual_seed(0)
    model = torchvision_classifier(arch, classes, channels).eval()
    torch.save(model.state_dict(), tmp_path / "plain.bin")
    loaded = load_model(tmp_path / "plain.bin", input_size=64)
    assert (loaded.spec.arch, loaded.card.config.num_classes, len(loaded.card.preprocess.color)) == (arch, classes,
                                                                                                       channels)
    assert loaded.source == f"state-dict {arch}" and loaded.card.preprocess.crop == 64
    x = torch.rand(2, channels, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.build()(x), model(x))


def test_a_plain_state_dict_of_no_known_classifier_is_refused_in_one_line(tmp_path):
    from edge.io.checkpoints import load_model

    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2)).state_dict(),
               tmp_path / "other.bin")
    with pytest.raises(CheckpointError, match="other.bin: .*not a StudentNet.*nor a torchvision classifier"):
        load_model(tmp_path / "other.bin")
