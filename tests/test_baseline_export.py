"""One export path for every model (edge.export.exporter): tiny seeded StudentNet, group baseline (channel
shuffles) and torchvision classifiers (mobilenet_v3_small, resnet18) go through torch.onnx.export and the
graph-level weight formats; the files compute what torch computes, decode their weights at load (same
runtime graph as fp32), carry their NetSpec and size in the metadata and run in `edge predict` / `edge info`.
Synthetic models and images only: runs on any clone."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edge.models.baselines import convnet_flops
from edge.io.checkpoints import Checkpoint
from edge.cli import main
from edge.core.config import ModelCard, Preprocess, StudentConfig, default_classes
from edge.models.fold import fold_model, model_layers
from edge.models.student import state_to_numpy, StudentNet
from edge.io.netfile import NetFile, save_net
from edge.models.registry import NetSpec, build_net, count_parameters
from edge.inference.runtime import OnnxClassifier
from edge.export.exporter import export_onnx, leftover_dequantization, prepare, runtime_ops
from edge.export.quantize import QuantSpec, encode_model

SMALL = StudentConfig(widths=(8, 16, 16), pools=(0, 1, 2), input_size=16, num_classes=5)  # max-pool before the fc: not merged
GREY = StudentConfig(in_channels=1, input_size=32, num_classes=10)
FORMATS = {"fp32": QuantSpec("fp32"), "fp16": QuantSpec("fp16"), "uint8": QuantSpec("uint8", method="minmax"),
           "uint4_pc": QuantSpec("uint4", per_channel=True, method="minmax"), "uint3": QuantSpec("uint3", method="minmax"),
           "kmeans16": QuantSpec("kmeans16", method="minmax"),
           "kmeans8_pc": QuantSpec("kmeans8", per_channel=True, method="minmax"),
           "fp16_low_rank": QuantSpec("fp16", low_rank=0.5)}


def _with_statistics(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics to fold, seeded."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.1)
    return model.eval()


def _student() -> Checkpoint:
    torch.manual_seed(0)
    model = _with_statistics(StudentNet(SMALL), 1)
    card = ModelCard(SMALL, Preprocess(crop=16), default_classes(5))
    return Checkpoint(card, state_to_numpy(model), "test")


def _net(arch: str, config: StudentConfig, groups: int = 1, seed: int = 0) -> NetFile:
    torch.manual_seed(seed)
    model = _with_statistics(build_net(NetSpec(arch, config, groups)), seed + 1)
    grey = config.in_channels == 1
    preprocess = Preprocess(crop=config.input_size, mean=(0.0,) * (1 if grey else 3), std=(1.0,) * (1 if grey else 3),
                            color="L" if grey else "RGB")
    return NetFile(NetSpec(arch, config, groups), preprocess, default_classes(config.num_classes), model.state_dict())


def _inputs(config: StudentConfig, count: int = 6, seed: int = 2) -> np.ndarray:
    shape = (count, config.in_channels, config.input_size, config.input_size)
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _torch(model_file, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model_file.build()(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def student_files(tmp_path_factory):
    folder, student = tmp_path_factory.mktemp("student"), _student()
    return student, {name: (spec, folder / f"{name}.onnx", export_onnx(student, folder / f"{name}.onnx", spec))
                     for name, spec in FORMATS.items()}


def test_every_format_decodes_at_load_to_its_numpy_decoding(student_files):
    """ORT's file == the folded torch model with each weight replaced by its numpy decoding; no decode op
    is left after session creation and the runtime graph is the fp32 file's."""
    student, files = student_files
    x = _inputs(SMALL)
    fp32_ops = runtime_ops(files["fp32"][1])
    for label, (spec, path, (size, described)) in files.items():
        assert path.stat().st_size == size and described["weights"] == spec.weights
        folded = prepare(student.build())[0]  # what export_onnx encodes
        layers, encodings = encode_model(folded, spec)
        bias_dtype = np.float32 if spec.weights == "fp32" else np.float16
        with torch.no_grad():
            for layer in layers:
                module = folded.get_submodule(layer.name)
                module.weight.copy_(torch.from_numpy(encodings[layer.name].decode().astype(np.float32)))
                module.bias.copy_(torch.from_numpy(layer.bias.astype(bias_dtype).astype(np.float32)))
            expected = folded(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(OnnxClassifier(path)(x), expected, rtol=1e-4, atol=1e-4, err_msg=label)
        assert leftover_dequantization(path) == {}, label
        assert runtime_ops(path) == fp32_ops, label
    assert files["uint3"][2][0] < files["uint8"][2][0] < files["fp32"][2][0] and files["fp16"][2][0] < files["fp32"][2][0]


def test_files_are_small_plain_graphs(student_files):
    """What torch.onnx.export adds that costs bytes is gone: node names, doc strings, Constant nodes,
    default attributes; the weights' initializers are replaced (one code stream per width)."""
    model = onnx.load(student_files[1]["uint8"][1])
    assert not any(node.HasField("name") or node.HasField("doc_string") for node in model.graph.node)
    assert "Constant" not in {node.op_type for node in model.graph.node}
    assert not any(a.name in ("kernel_shape", "dilations", "strides") for n in model.graph.node if n.op_type == "Conv"
                   for a in n.attribute)
    names = {t.name for t in model.graph.initializer}
    assert "codes8" in names and not any(name.endswith((".weight", ".bias")) for name in names)
    assert [i.name for i in model.graph.input] == ["image"] and [o.name for o in model.graph.output] == ["logits"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("arch", ["group", "mobilenet_v3_small"])
def test_any_classifier_exports_with_parity(arch, tmp_path):
    """The group baseline (its channel shuffles come from torch's graph) and a torchvision classifier:
    fp32 parity with torch, uint8 (and fp16) close with the fp32 runtime operators, int8 QDQ runs (on
    the small one), and the metadata carries the NetSpec, parameters and flops; a real-sized
    network's uint8 file is <= 30% of its fp32 file's bytes."""
    group = arch == "group"
    config = StudentConfig(widths=(8, 16, 16), pools=(0, 1), input_size=16, num_classes=5) if group else GREY
    net = _net(arch, config, groups=4 if group else 1)
    x = _inputs(config)
    reference = _torch(net, x)
    scale = float(np.abs(reference).max())
    specs = {"fp32": (QuantSpec("fp32"), 1e-4), "uint8": (QuantSpec("uint8", per_channel=True, method="minmax"), 0.25)}
    if group:  # fp16 and int8 on the small network only: the large one's exports take seconds each
        specs["fp16"] = (QuantSpec("fp16"), 2e-2)
    paths = {name: tmp_path / f"{arch}_{name}.onnx" for name in (*specs, "int8")}
    for name, (spec, tolerance) in specs.items():
        export_onnx(net, paths[name], spec)
        assert float(np.abs(OnnxClassifier(paths[name])(x) - reference).max()) <= tolerance * scale, name
        assert leftover_dequantization(paths[name]) == {}, name
    assert np.array_equal(OnnxClassifier(paths["fp32"])(x).argmax(1), reference.argmax(1))
    assert all(runtime_ops(paths[name]) == runtime_ops(paths["fp32"]) for name in specs)
    if group:
        export_onnx(net, paths["int8"], QuantSpec("int8"))
        assert OnnxClassifier(paths["int8"])(x).shape == reference.shape
        assert runtime_ops(paths["int8"])["QLinearConv"] == len(model_layers(fold_model(net.build()))) - 1
    else:
        assert paths["uint8"].stat().st_size <= 0.3 * paths["fp32"].stat().st_size
    meta = {p.key: p.value for p in onnx.load(paths["uint8"]).metadata_props}
    entry = json.loads(meta["edge.net"])
    assert NetSpec.from_dict(entry) == net.spec and entry["parameters"] == count_parameters(net.build())
    if group:  # the baselines' own formula counts what the export counted by running the model
        assert entry["flops"] == convnet_flops(config, 4)
    assert entry["flops"] > 2 * sum(layer.weight.size for layer in model_layers(fold_model(net.build())))


class _Tokens(torch.nn.Module):
    """A classifier whose Linear runs on 3-D inputs: torch.onnx.export writes it as a MatMul with the
    weight's transpose as its own initializer."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.head(self.bn(self.conv(x)).flatten(2).transpose(1, 2)).mean(1)


@dataclass
class _ModelFile:
    """The model-file protocol export_onnx needs: a card and build()."""

    card: ModelCard
    module: torch.nn.Module

    def build(self) -> torch.nn.Module:
        return copy.deepcopy(self.module).eval()


def test_own_module_with_a_transposed_matmul_weight(tmp_path):
    torch.manual_seed(4)
    config = StudentConfig(in_channels=1, input_size=16, num_classes=4)
    model_file = _ModelFile(ModelCard(config, Preprocess(crop=16, mean=(0.0,), std=(1.0,), color="L"), default_classes(4)),
                            _with_statistics(_Tokens(), 5))
    x = _inputs(config)
    for weights in ("fp32", "uint8"):
        export_onnx(model_file, tmp_path / f"{weights}.onnx", QuantSpec(weights, per_channel=True, method="minmax")
                    if weights == "uint8" else QuantSpec(weights))
    assert "Transpose" in {node.op_type for node in onnx.load(tmp_path / "uint8.onnx").graph.node}
    assert leftover_dequantization(tmp_path / "uint8.onnx") == {}
    assert runtime_ops(tmp_path / "uint8.onnx") == runtime_ops(tmp_path / "fp32.onnx")
    reference = _torch(model_file, x)
    np.testing.assert_allclose(OnnxClassifier(tmp_path / "fp32.onnx")(x), reference, rtol=1e-4, atol=1e-5)
    assert np.abs(OnnxClassifier(tmp_path / "uint8.onnx")(x) - reference).max() < 0.05 * np.abs(reference).max()


def _photos(folder, count: int, size: int):
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (size + 4, size + 2, 3), dtype=np.uint8)).save(folder / f"{i:04d}.png")
    return folder


def test_group_baseline_cli_export_predict_info(tmp_path):
    """`edge export` of an `edge train` file, then `edge info` counts it and `edge predict` runs it."""
    config = StudentConfig(widths=(8, 16, 16), pools=(0, 1), input_size=16, num_classes=5)
    net = _net("group", config, groups=4)
    save_net(tmp_path / "group.pt", net)
    photos = _photos(tmp_path / "photos", 4, 16)
    runner, out = CliRunner(), tmp_path / "group_uint8.onnx"
    result = runner.invoke(main, ["export", str(tmp_path / "group.pt"), "--quant", "uint8", "--method", "minmax",
                                  "--images", str(photos), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "group widths [8, 16, 16], groups 4" in result.output and "no dequantization left after load" in result.output
    info = json.loads(runner.invoke(main, ["info", "--json", str(out)]).output)
    assert info["parameters"] == count_parameters(net.build()) and info["architecture"]["arch"] == "group"
    csv = tmp_path / "predictions.csv"
    predicted = runner.invoke(main, ["predict", str(out), str(photos), "-o", str(csv), "--quiet"])
    assert predicted.exit_code == 0, predicted.output
    assert csv.read_text().splitlines()[0] == "Id,label" and len(csv.read_text().splitlines()) == 5
