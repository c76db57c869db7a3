"""edge.models.fold.fold_model / model_layers: BatchNorm folding for any traceable classifier (synthetic, runs anywhere)."""

import torch
from torch import nn

from edge.core.config import StudentConfig
from edge.models.fold import fold_model, model_layers
from edge.models.student import StudentNet


def _randomise_batchnorms(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def test_fold_keeps_the_function_and_names_of_a_student():
    torch.manual_seed(0)
    model = _randomise_batchnorms(StudentNet(StudentConfig(widths=(4, 8, 8, 16))))
    folded = fold_model(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), folded(x), atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the input is not changed
    names = [layer.name for layer in model_layers(folded)]
    assert names[0] == "cnn.0.0" and names[-1] == "fc.0" and len(names) == len(set(names))


def test_layers_follow_the_forward_order_and_all_have_biases():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, groups=4, bias=False), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3, bias=False))
    layers = model_layers(fold_model(_randomise_batchnorms(model)))
    assert [(l.name, l.kind, l.groups) for l in layers] == [("0", "conv", 1), ("3", "conv", 4), ("6", "fc", 1)]
    assert all(l.bias.shape == (l.weight.shape[0],) for l in layers)
    assert not layers[2].bias.any()


def test_fold_is_computed_in_float64_and_rounded_once():
    torch.manual_seed(1)
    model = _randomise_batchnorms(nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16)))
    conv, bn = model[0], model[1]
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    weight = (conv.weight.double() * scale[:, None, None, None]).float()
    bias = ((conv.bias.double() - bn.running_mean.double()) * scale + bn.bias.double()).float()
    layer = model_layers(fold_model(model))[0]
    assert torch.equal(torch.from_numpy(layer.weight), weight.detach())  # float32 folding differs in the last bit
    assert torch.equal(torch.from_numpy(layer.bias), bias.detach())


def test_export_merges_a_student_classifier_exactly(tmp_path):
    """fp32 export of a mergeable StudentNet: the classifier folds into the last pointwise conv
    (fewer weights in the file), the logits stay the unmerged model's, the metadata says so."""
    import numpy as np
    import onnx

    from edge.io.checkpoints import Checkpoint
    from edge.core.config import ModelCard, Preprocess, default_classes
    from edge.export.exporter import export_onnx
    from edge.models.merge import merged_classifier
    from edge.export.quantize import QuantSpec
    from edge.inference.runtime import OnnxClassifier
    from synthetic import trained_like

    config = StudentConfig(widths=(8, 16, 32, 48), pools=(0, 1), input_size=32, num_classes=11)
    ckpt = Checkpoint(ModelCard(config, Preprocess(crop=32), default_classes(11)), trained_like(config), "synthetic")
    model = ckpt.build()
    merged, entry = merged_classifier(model)
    assert merged.config.widths[-1] == 11 and "classifier_merge" in entry
    path = tmp_path / "merged.onnx"
    export_onnx(ckpt, path, QuantSpec("fp32"))
    stored = sum(int(np.prod(t.dims)) for t in onnx.load(path).graph.initializer)
    assert stored < ckpt.parameters - 32 * 48  # the 48x48 pointwise conv became 11x48
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    loaded = OnnxClassifier(path)
    assert np.abs(loaded(x.numpy()) - expected).max() < 1e-4
    assert "classifier_merge" in loaded.quant and loaded.card == ckpt.card


def test_export_keeps_a_student_whose_classifier_cannot_merge():
    from edge.models.merge import merged_classifier

    model = StudentNet(StudentConfig(widths=(4, 8, 8, 16), pools=(0, 1, 2, 3))).eval()  # max-pool before the fc
    assert merged_classifier(model) == (model, {})
