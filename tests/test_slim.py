"""edge.prune.slim: exact channel surgery (on a seeded synthetic StudentNet everywhere, and on the TA's real
student), layers never emptied, smaller files that load on their own, and the Fashion-MNIST pipeline
teacher -> distil -> slim -> uint8 ONNX."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge.io.checkpoints import load_checkpoint
from edge.cli import main
from edge.core.config import Preprocess, StudentConfig
from edge.models.student import build_student
from edge.io.checkpoints import load_net
from edge.data.preprocess import load_image
from edge.prune.slim import importance, prune, select_channels, zero_pruned_gates
from synthetic import trained_like

SYNTHETIC = StudentConfig(widths=(8, 16, 32, 32, 48), pools=(0, 1, 2), input_size=32)


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


def _photos(folder, spec: Preprocess) -> torch.Tensor:
    return torch.from_numpy(np.stack([load_image(p, spec) for p in sorted(folder.iterdir())[:3]]))


@pytest.fixture(scope="module", params=["synthetic", pytest.param("ta", marks=pytest.mark.real_data)])
def student(request) -> tuple[StudentConfig, dict, torch.Tensor]:
    """(config, weights, 3 photos): a seeded StudentNet with trained-looking BatchNorm on synthetic
    photos, or the TA's student on the first real test photos."""
    if request.param == "synthetic":
        return SYNTHETIC, trained_like(SYNTHETIC), _photos(request.getfixturevalue("synthetic_photos"),
                                                             Preprocess(crop=SYNTHETIC.input_size))
    ta = load_checkpoint(request.getfixturevalue("ta_student"))
    return ta.card.config, ta.state, _photos(request.getfixturevalue("food11_test"), Preprocess())


@pytest.mark.parametrize("rate,scope", [(0.3, "stage"), (0.5, "global")])
def test_pruned_model_computes_exactly_the_original_with_pruned_gates_zeroed(student, rate, scope):
    config, state, photos = student
    keep = select_channels(importance(config, state), rate, scope)
    small_config, small = prune(config, state, keep)
    assert small_config.num_parameters() < config.num_parameters()
    assert list(small_config.widths[:-1]) == [len(k) for k in keep] and small_config.widths[-1] == config.widths[-1]
    with torch.no_grad():
        reference = build_student(config, zero_pruned_gates(config, state, keep))(photos)
        pruned = build_student(small_config, small)(photos)
        original = build_student(config, state)(photos)
    scale = float(reference.abs().max())
    assert float((pruned - reference).abs().max()) < 1e-5 * scale
    assert float((original - reference).abs().max()) > 1e-3 * scale  # zeroing the gates does change the model


def test_channels_with_the_smallest_gamma_go_first_and_no_layer_is_emptied(student):
    scores = importance(*student[:2])
    keep = select_channels(scores, 0.25, "stage")
    for s, k in zip(scores, keep):
        assert len(k) == len(s) - int(0.25 * len(s))
        assert s[k].min() >= np.delete(s, k).max()
    for scope in ("stage", "global"):
        assert all(len(k) >= 1 for k in select_channels(scores, 0.999, scope))
    everything = sum(len(s) for s in scores)
    removed = everything - sum(len(k) for k in select_channels(scores, 0.4, "global"))
    assert removed == int(0.4 * everything)
    with pytest.raises(ValueError, match="rate"):
        select_channels(scores, 1.0)


def test_bias_fold_keeps_what_a_dead_channel_fed_forward():
    config = StudentConfig(widths=(4, 6, 8), pools=(0,), input_size=16)
    torch.manual_seed(0)
    model = build_student(config)
    state = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    state["cnn.1.1.bias"][:] = [0.5, -1.0, 7.0, 2.0]  # relu6 -> 0.5, 0, 6, 2
    keep = [np.array([0, 1]), np.arange(6)]
    _, small = prune(config, state, keep)
    w = state["cnn.1.3.weight"][:, :, 0, 0]
    assert np.allclose(small["cnn.1.3.bias"], state["cnn.1.3.bias"] + w[:, 2] * 6.0 + w[:, 3] * 2.0, atol=1e-6)


def test_fashion_mnist_teacher_distil_slim_uint8(fashion_mnist, tmp_path):
    """The whole pipeline through the CLI on a small subset, ending in smaller ONNX files that
    score on real test images as the torch models do."""
    data = ["fashion-mnist:train@:2048", "--val", "fashion-mnist:train@59000:59256", "--test", "fashion-mnist:test@:512",
            "--padding", "2", "--batch", "64", "--threads", "2", "--quiet", "--cache-dir", str(tmp_path / "cache")]
    runner = CliRunner()
    teacher = runner.invoke(main, ["train", *data, "--arch", "cnn", "--widths", "16,32,64", "--pools", "0,1,2",
                                   "--epochs", "3", "--lr", "3e-3", "-o", str(tmp_path / "teacher.pt"),
                                   "--metrics", str(tmp_path / "teacher.json")])
    assert teacher.exit_code == 0, teacher.output
    distilled = runner.invoke(main, ["distill", *data, "--teacher", str(tmp_path / "teacher.best.pt"),
                                     "--student", "dw", "--widths", "8,16,32,32", "--pools", "0,1,2", "--epochs", "2",
                                     "--lr", "3e-3", "-o", str(tmp_path / "student.pt")])
    assert distilled.exit_code == 0, distilled.output
    slimmed = runner.invoke(main, ["slim", str(tmp_path / "student.best.pt"), *data, "--rate", "0.5", "--rounds", "1",
                                   "--finetune-epochs", "1", "--lr", "1e-3", "-o", str(tmp_path / "slim")])
    assert slimmed.exit_code == 0, slimmed.output
    assert json.loads((tmp_path / "teacher.json").read_text())["test_accuracy_best"] > 0.4  # 10 classes: chance 0.1
    curve = json.loads((tmp_path / "slim" / "curve.json").read_text())["curves"][0]["points"]
    before, after = curve
    small = StudentConfig(widths=(4, 8, 16, 32), pools=(0, 1, 2), input_size=32, num_classes=10, in_channels=1)
    assert after["widths"] == [4, 8, 16, 32] and after["parameters"] == small.num_parameters()
    assert after["parameters"] < 0.55 * before["parameters"]
    assert after["onnx_bytes"] < before["onnx_bytes"] * 0.8  # a tiny model: graph and metadata are ~4 KB
    for point in curve:
        assert point["onnx_weights"]["weights"] == "uint8"
        assert abs(point["onnx_test_accuracy"] - point["test_accuracy"]) <= 0.03
        assert point["test_accuracy"] > 0.3
    assert (tmp_path / "slim" / "curve.png").stat().st_size > 10_000
    # the slimmed checkpoint stands on its own: a fresh process reads it from the file alone
    info = subprocess.run([sys.executable, "-m", "edge", "info", "--json", after["file"]], capture_output=True, text=True,
                          check=True)
    assert json.loads(info.stdout)["config"]["widths"] == [4, 8, 16, 32]
    assert load_net(after["file"]).spec.config.num_parameters() == after["parameters"]


def _run_files(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.suffix in (".pt", ".onnx")}


def _epoch_lines(output: str) -> list[str]:
    return [line.split()[1].rstrip(":") for line in output.splitlines() if line.startswith("epoch ")]


def test_interrupted_slimming_resumes_to_the_same_weights_and_curve(tmp_path):
    """Stopped inside round 2 of the first rate, then inside round 1 of the second, then resumed to
    the end: every round's weights, ONNX file and the curve equal an uninterrupted run's (on
    synthetic grey images: what is checked is the resume, not what the model learns)."""
    from synthetic import write_grey_classes

    data = str(write_grey_classes(tmp_path / "grey", 640))
    common = ["--val", f"{data}@384:512", "--test", f"{data}@512:640", "--padding", "2",
              "--batch", "64", "--threads", "2", "--quiet", "--cache-dir", str(tmp_path / "cache")]
    runner = CliRunner()
    student = runner.invoke(main, ["train", f"{data}@:384", *common, "--widths", "8,16,16", "--input-size", "32",
                                   "--pools", "0,1,2", "--epochs", "1", "-o", str(tmp_path / "student.pt")])
    assert student.exit_code == 0, student.output
    out = tmp_path / "slim"
    slim = ["slim", str(tmp_path / "student.pt"), f"{data}@:384", *common, "--rate", "0.5,0.3",
            "--rounds", "2", "--finetune-epochs", "2", "-o", str(out)]
    assert runner.invoke(main, slim).exit_code == 0
    straight_curve = json.loads((out / "curve.json").read_text())
    straight = {name: (load_net(p).state if p.suffix == ".pt" else p.read_bytes()) for name, p in _run_files(out).items()}
    for path in out.rglob("*"):
        if path.is_file():
            path.unlink()

    stopped = runner.invoke(main, [*slim, "--stop-after", "3"])
    assert stopped.exit_code == 0 and "stopped after 3 fine-tuning epochs" in stopped.output
    partial = json.loads((out / "curve.json").read_text())["curves"]
    assert [[p["round"] for p in c["points"]] for c in partial] == [[0, 1]]
    assert load_net(out / "rate0.5" / "round2.pt").extra["train"]["epoch"] == 1
    first_round = (out / "rate0.5" / "round1.best.pt").stat().st_mtime_ns
    middle = runner.invoke(main, [*slim, "--resume", "--stop-after", "5"])
    assert middle.exit_code == 0 and _epoch_lines(middle.output) == ["2/2", "1/2"]  # nothing done twice
    partial = json.loads((out / "curve.json").read_text())["curves"]
    assert [[p["round"] for p in c["points"]] for c in partial] == [[0, 1, 2], [0]]
    assert load_net(out / "rate0.3" / "round1.pt").extra["train"]["epoch"] == 1
    resumed = runner.invoke(main, [*slim, "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert _epoch_lines(resumed.output) == ["2/2", "1/2", "2/2"]
    assert (out / "rate0.5" / "round1.best.pt").stat().st_mtime_ns == first_round

    curve = json.loads((out / "curve.json").read_text())
    assert {k: v for k, v in curve.items() if k not in ("seconds", "seal")} == {
        k: v for k, v in straight_curve.items() if k not in ("seconds", "seal")}
    files = _run_files(out)
    assert files.keys() == straight.keys() and len(files) == 2 * (3 + 2 * 2)  # per rate: 3 ONNX, 2 rounds x 2 .pt
    for name, path in files.items():
        if path.suffix == ".onnx":
            assert path.read_bytes() == straight[name], name
        else:
            state = load_net(path).state
            assert all(torch.equal(state[k], straight[name][k]) for k in straight[name]), name

    changed = runner.invoke(main, [*slim, "--resume", "--rounds", "3"])
    assert changed.exit_code == 2 and "rounds 2 != 3" in changed.output
    nothing = runner.invoke(main, [*slim[:-1], str(tmp_path / "elsewhere"), "--resume"])
    assert nothing.exit_code == 2 and "nothing to resume" in nothing.output


def test_the_curve_figure_labels_parameters_in_thousands_without_running_together():
    from edge.prune.slim import curves_figure, thousands
    from synthetic import shown_tick_labels, text_outside_figure

    counts = [256_234, 236_000, 214_500, 190_100, 168_800, 150_200, 131_000, 112_400, 100_000]
    points = [{"round": i, "parameters": n, "val_accuracy": 0.8 - 0.01 * i, "val_kind": "accuracy"}
              for i, n in enumerate(counts)]
    fig = curves_figure({"curves": [{"rate": 0.1, "points": points}], "title": "network slimming"})
    assert text_outside_figure(fig) == []
    labels = [t.get_text() for t in shown_tick_labels(fig.axes[0].xaxis)]
    assert 2 <= len(labels) <= 6 and all(label.endswith("K") for label in labels)
    assert (thousands(120_000), thousands(1_500_000), thousands(512)) == ("120K", "1.5M", "512")
