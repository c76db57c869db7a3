"""edge.export.generic: the cnn / group baselines exported to ONNX (BatchNorm folded, group baseline's
channel shuffles in the graph) compute what torch computes on real photos, carry their NetSpec and
size in the metadata (`edge info` counts them right), and run in `edge predict`; calibrated formats
are refused with a clear error."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from edge.baselines import sized_like
from edge.cli import main
from edge.config import FOOD11_CLASSES, Preprocess, StudentConfig
from edge.nets import NetFile, NetSpec, build_net, count_parameters, save_net
from edge.preprocess import load_image
from edge.runtime import OnnxClassifier

PHOTOS = 8


@pytest.fixture(scope="module")
def photo_dir(food11_test, tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos") / "testing"
    folder.mkdir()
    for path in sorted(food11_test.iterdir())[:PHOTOS]:
        (folder / path.name).symlink_to(path)
    return folder


def _baseline(arch: str, path) -> NetFile:
    """A baseline at the homework student's size with non-trivial BatchNorm statistics to fold."""
    groups = 4 if arch == "group" else 1
    spec = NetSpec(arch, sized_like(StudentConfig(), groups), groups)
    torch.manual_seed(0)
    model = build_net(spec)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(module.weight, 0.5, 1.5)
            torch.nn.init.uniform_(module.bias, -0.1, 0.3)
    net = NetFile(spec, Preprocess(), FOOD11_CLASSES, model.state_dict())
    save_net(path, net)
    return net


def _flops(model: torch.nn.Module, image: np.ndarray) -> int:
    """2 x multiply-accumulates of every conv and linear layer, counted while running one image."""
    counted = []

    def hook(module, inputs, output):
        per_output = module.weight[0].numel()
        counted.append(2 * output.numel() * per_output)

    for module in model.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
            module.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.from_numpy(image))
    return sum(counted)


@pytest.mark.parametrize("arch", ["cnn", "group"])
def test_baseline_onnx_matches_torch_on_real_photos_and_runs_in_predict(arch, photo_dir, tmp_path):
    net = _baseline(arch, tmp_path / f"{arch}.pt")
    images = np.stack([load_image(p, Preprocess()) for p in sorted(photo_dir.iterdir())])
    with torch.no_grad():
        reference = net.build()(torch.from_numpy(images)).numpy()
    scale = float(np.abs(reference).max())
    runner, sizes = CliRunner(), {}
    for quant, tolerance in (("fp32", 1e-5), ("fp16", 5e-3), ("uint8", 5e-2)):
        out = tmp_path / f"{arch}_{quant}.onnx"
        result = runner.invoke(main, ["export", str(tmp_path / f"{arch}.pt"), "--quant", quant, "--method", "minmax",
                                      "--images", str(photo_dir), "-o", str(out)])
        assert result.exit_code == 0, result.output
        assert "no dequantization left after load" in result.output
        logits = OnnxClassifier(out)(images)
        assert float(np.abs(logits - reference).max()) < tolerance * scale, quant
        sizes[quant] = out.stat().st_size
    assert np.array_equal(OnnxClassifier(tmp_path / f"{arch}_fp32.onnx")(images).argmax(1), reference.argmax(1))
    assert sizes["uint8"] < 0.3 * sizes["fp32"] and sizes["fp16"] < 0.55 * sizes["fp32"]
    meta = {p.key: p.value for p in onnx.load(tmp_path / f"{arch}_uint8.onnx").metadata_props}
    assert NetSpec.from_dict(json.loads(meta["edge.net"])) == net.spec
    assert json.loads(meta["edge.card"])["config"]["widths"] == list(net.spec.config.widths)

    info = json.loads(runner.invoke(main, ["info", str(tmp_path / f"{arch}_uint8.onnx")]).output)
    assert info["parameters"] == count_parameters(net.build()) and info["architecture"]["arch"] == arch
    assert info["mflops"] == round(_flops(net.build(), images[:1]) / 1e6, 1)

    csv = tmp_path / "predictions.csv"
    predicted = runner.invoke(main, ["predict", str(tmp_path / f"{arch}_uint8.onnx"), str(photo_dir), "-o", str(csv),
                                     "--quiet"])
    assert predicted.exit_code == 0, predicted.output
    rows = csv.read_text().splitlines()
    assert rows[0] == "Id,label" and len(rows) == PHOTOS + 1


def test_calibrated_formats_are_refused_for_baselines(tmp_path):
    _baseline("group", tmp_path / "group.pt")
    result = CliRunner().invoke(main, ["export", str(tmp_path / "group.pt"), "--quant", "uint8", "-o",
                                       str(tmp_path / "g.onnx")])
    assert result.exit_code == 2 and "--method minmax" in result.output
    assert not (tmp_path / "g.onnx").exists()
