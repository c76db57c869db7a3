"""edge.prune.reconstruct (exact classifier merge, least-squares channel pruning) and `edge compress` end to end
on a tiny seeded StudentNet and synthetic photos: byte target met, report written, resume = same result."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edge.bench.machine import cpu_info
from edge.cli import main
from edge.core.cpu import cpu_cores
from edge.core.config import Preprocess, StudentConfig
from edge.models.student import build_student
from edge.prune.reconstruct import consumer_statistics, obs_select, prune_reconstruct, prunable_widths, solve, target_widths
from edge.models.merge import merge_classifier
from edge.prune.slim import prune
from synthetic import trained_like

CONFIG = StudentConfig(widths=(8, 16, 48, 48, 48), pools=(0, 1), input_size=16, num_classes=3)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _images(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 3, CONFIG.input_size, CONFIG.input_size, generator=torch.Generator().manual_seed(seed))


def _logits(config, state, x):
    with torch.no_grad():
        return build_student(config, state)(x)


def test_merged_classifier_computes_the_same_logits_with_fewer_parameters():
    state = trained_like(CONFIG)
    config, merged = merge_classifier(CONFIG, state)
    assert config.widths == (8, 16, 48, 48, 3) and config.num_parameters() < CONFIG.num_parameters()
    x = _images(8, 1)
    assert torch.allclose(_logits(config, merged, x), _logits(CONFIG, state, x), atol=1e-5)


def test_reconstruction_is_exact_when_nothing_is_pruned():
    state = trained_like(CONFIG)
    model, images = build_student(CONFIG, state), _images(16, 2)
    gram, cross = consumer_statistics(model, model, 2, images)
    everything = np.arange(CONFIG.widths[2])
    assert np.array_equal(obs_select(gram, solve(gram, cross, everything), 0), everything)
    fitted = solve(gram, cross, everything)
    refit = dict(state)
    refit["cnn.3.3.weight"] = fitted[:-1].T[:, :, None, None].astype(np.float32)
    refit["cnn.3.3.bias"] = fitted[-1].astype(np.float32)
    original = _logits(CONFIG, state, images)
    assert float((_logits(CONFIG, refit, images) - original).abs().max()) < 1e-4 * float(original.abs().max())


def test_obs_removes_the_input_whose_loss_the_others_can_replace():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3))
    x[:, 2] = x[:, 0] + 0.01 * rng.normal(size=500)  # input 2 is (almost) input 0 again
    rows = np.hstack([x, np.ones((500, 1))])
    y = rows @ np.array([[1.0], [1.0], [1.0], [0.0]])
    gram, cross = rows.T @ rows, rows.T @ y
    kept = obs_select(gram, solve(gram, cross, np.arange(3)), 1)
    assert 1 in kept and len(kept) == 2  # input 1 carries what no other input can replace


def test_ridge_pulls_the_refit_towards_the_old_weights():
    rng = np.random.default_rng(1)
    rows = np.hstack([rng.normal(size=(200, 4)), np.ones((200, 1))])
    y = rows @ rng.normal(size=(5, 2))
    gram, cross, prior = rows.T @ rows, rows.T @ y, rng.normal(size=(5, 2))
    kept = np.array([0, 2, 3])
    plain, pulled = solve(gram, cross, kept), solve(gram, cross, kept, 1e6, prior)
    np.testing.assert_allclose(pulled, prior[[0, 2, 3, 4]], atol=1e-4)  # a huge ridge keeps the old weights
    loose = solve(gram, cross, kept, 1e-12, prior)
    np.testing.assert_allclose(loose, plain, atol=1e-4)  # a vanishing one is plain least squares


def test_pruned_and_reconstructed_layer_beats_pruned_only_on_held_out_images():
    state = trained_like(CONFIG)
    widths = target_widths(CONFIG, 0.5)
    assert prunable_widths(CONFIG) == [2, 3] and widths == (8, 16, 24, 24, 48)
    config, rebuilt = prune_reconstruct(CONFIG, state, widths, _images(64, 3))
    assert config.widths == widths
    # the same channels, pruned by surgery alone (the dropped channels' constant folded into the bias)
    kept = [np.arange(w) for w in CONFIG.widths[:-1]]
    for width in (2, 3):
        kept[width] = _kept_channels(state, rebuilt, width)
    _, surgery_only = prune(CONFIG, state, kept)
    held_out = _images(64, 4)
    reference = _logits(CONFIG, state, held_out)
    error_rebuilt = float((_logits(config, rebuilt, held_out) - reference).pow(2).mean())
    error_surgery = float((_logits(config, surgery_only, held_out) - reference).pow(2).mean())
    assert error_rebuilt < 0.5 * error_surgery


def _kept_channels(original: dict, pruned: dict, width: int) -> np.ndarray:
    """Which channels of ``width`` survived: match the depthwise filters of the gate."""
    before = original[f"cnn.{width + 1}.0.weight"].reshape(len(original[f"cnn.{width + 1}.0.weight"]), -1)
    after = pruned[f"cnn.{width + 1}.0.weight"].reshape(len(pruned[f"cnn.{width + 1}.0.weight"]), -1)
    return np.array([int(np.argmin(np.abs(before - row).sum(1))) for row in after])


# ---------------------------------------------------------------- edge compress end to end


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny StudentNet file and 40 synthetic photos it was never trained on."""
    from edge.core.config import ModelCard, default_classes
    from edge.io.checkpoints import save_checkpoint

    root = tmp_path_factory.mktemp("compress")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        smooth = rng.random((4, 4, 3))
        pixels = np.kron(smooth, np.ones((5, 5, 1))) * 200 + rng.random((20, 20, 3)) * 55
        Image.fromarray(pixels.astype(np.uint8)).save(photos / f"{i}.png")
    card = ModelCard(CONFIG, Preprocess(crop=16), default_classes(3))
    save_checkpoint(root / "tiny.pt", card, trained_like(CONFIG))
    return root


def _compress(root, out, report, *extra):
    return CliRunner().invoke(main, ["compress", str(root / "tiny.pt"), "--images", str(root / "photos"),
                                     "--target-bytes", "9000", "-o", str(out), "--report", str(report),
                                     "--epochs", "2", "--batch", "8", "--step", "0.3", "--min-keep", "0.3",
                                     "--threads", "1", "--quiet", *extra])


def test_compress_meets_the_byte_target_and_reports_the_frontier(workspace):
    out, report = workspace / "small.onnx", workspace / "report"
    result = _compress(workspace, out, report)
    assert result.exit_code == 0, result.output
    assert 0 < out.stat().st_size <= 9000
    record = json.loads((report / "report.json").read_text())
    series = {p["stage"] for p in record["points"]}
    assert series == {"quantization", "slimming", "qat"} and record["rounds"]  # slimming had to carry part of it
    assert record["chosen"]["bytes"] == out.stat().st_size
    fitting = [p for p in record["points"] if p["bytes"] <= 9000]
    assert fitting and all(p["views_kl"] >= 0 and p["views_kl_noise"] >= 0 for p in fitting)  # what ranks them
    assert record["chosen"]["views_kl"] == min(p["views_kl"] for p in fitting)
    assert min(p["bytes"] for p in record["points"] if p["stage"] == "quantization") > 9000
    assert (report / "frontier.png").stat().st_size > 10_000 and "| series |" in (report / "report.md").read_text()
    assert record["machine"]["threads"] == 1 and record["machine"]["cores"] == cpu_cores()  # what the seconds ran on
    assert f"on {cpu_info()['model']}, {cpu_cores()} cores" in (report / "report.md").read_text().splitlines()[-1]
    again = _compress(workspace, out, workspace / "report2")
    assert again.exit_code == 2 and "--overwrite" in again.output  # never clobbers a file
    busy = _compress(workspace, workspace / "other.onnx", report)
    assert busy.exit_code == 2 and "--resume" in busy.output


def test_the_first_fitting_slimmed_file_is_trained_at_its_bit_width_and_says_how_it_was_made(workspace):
    from edge.inference.runtime import OnnxClassifier

    report = workspace / "qat"
    result = _compress(workspace, workspace / "qat.onnx", report, "--qat-epochs", "2")
    assert result.exit_code == 0, result.output
    record = json.loads((report / "report.json").read_text())
    trained = [p for p in record["points"] if p["stage"] == "qat" and ":" not in p["format"]]  # not mixed
    assert sorted(p["format"] for p in trained) == [f"uint{n} per-channel entropy=True train_epochs=2" for n in (3, 4)]
    for point in trained:  # each format once, on its first (largest keep) slimmed file that fits
        base = point["format"].replace(" train_epochs=2", "")
        fitting = [p for p in record["points"] if p["stage"] == "slimming" and p["format"] == base and p["bytes"] <= 9000]
        rounded = max(fitting, key=lambda p: p["keep"])
        assert point["keep"] == rounded["keep"] and point["widths"] == rounded["widths"]
        assert point["sha256"] != rounded["sha256"]  # the codes moved
    trained = [p for p in trained if p["format"].startswith("uint4")]
    rounded = next(p for p in record["points"] if p["stage"] == "slimming" and p["keep"] == trained[0]["keep"]
                   and p["format"] == "uint4 per-channel entropy=True")
    quant = OnnxClassifier(report / trained[0]["onnx"]).quant
    assert quant["recipe"]["widths"] == trained[0]["widths"] and quant["recipe"]["keep"] == trained[0]["keep"]
    assert quant["recipe"]["widths_before"] == list(CONFIG.widths)
    assert "2 epochs at 4 bits against the model before slimming" in quant["recipe"]["quantization_aware"]
    assert "the model before slimming (fp32), on 32 images" in quant["trained_against"]
    assert "least-squares" in OnnxClassifier(report / rounded["onnx"]).quant["recipe"]["pruning"]
    assert "slimming + quantization-aware" in (report / "report.md").read_text()
    none = _compress(workspace, workspace / "noqat.onnx", workspace / "noqat", "--qat-epochs", "0", "--views", "0")
    assert none.exit_code == 0, none.output
    points = json.loads((workspace / "noqat" / "report.json").read_text())["points"]
    assert {p["stage"] for p in points} == {"quantization", "slimming"} and not any("views_kl" in p for p in points)


def test_a_fitting_mixed_precision_file_is_trained_at_its_bit_widths(workspace):
    from edge.inference.runtime import OnnxClassifier

    report = workspace / "mixed-qat"
    result = _compress(workspace, workspace / "mixed-qat.onnx", report, "--target-bytes", "11500", "--qat-epochs", "1",
                       "--min-keep", "0.95")
    assert result.exit_code == 0, result.output
    points = json.loads((report / "report.json").read_text())["points"]
    trained = [p for p in points if p["stage"] == "qat"]
    assert trained and all(p["keep"] == 1.0 and "train_epochs=1 cnn." in p["format"] for p in trained)
    for point in trained:  # the mixed file it was trained from: same format, same layers raised
        mixed = next(p for p in points if p["stage"] == "mixed"
                     and p["format"] == point["format"].replace(" train_epochs=1", ""))
        assert mixed["bytes"] <= 11500 and mixed["sha256"] != point["sha256"]
        recipe = OnnxClassifier(report / point["onnx"]).quant["recipe"]
        assert recipe["pruning"] == "none" and recipe["widths"] == point["widths"] == [8, 16, 48, 48, 3]
        assert recipe["widths_before"] == list(CONFIG.widths)
        assert "1 epochs" in recipe["quantization_aware"] and "against the model (fp32)" in recipe["quantization_aware"]


def test_the_slimming_path_starts_with_half_a_step_and_cuts_at_most_a_step_down_to_every_target():
    from edge.workflows.compress import path_of

    assert path_of([0.871, 0.668], 0.1) == [0.95, 0.871, 0.771, 0.671, 0.668]
    assert path_of([0.97], 0.1) == [0.97]  # within half a step: straight there
    assert path_of([], 0.1) == [] and path_of([1.0], 0.1) == []  # nothing to slim for


def test_the_choice_is_the_smallest_views_kl_even_when_a_slimmed_file_lies_within_its_noise():
    from edge.workflows.compress import choose

    def point(keep, views_kl, noise=0.02, size=80, **extra):
        return {"keep": keep, "parameters": int(1000 * keep), "bytes": size, "views_kl": views_kl,
                "views_kl_noise": noise, "val_agreement": 0.9, **extra}

    whole, slimmed = point(1.0, 0.060), point(0.9, 0.075)
    assert choose([slimmed, whole], 100) is whole  # 0.075 is within 0.060 + 0.02, and still loses
    assert choose([whole, point(0.9, 0.05, size=120)], 100) is whole  # over the target: never chosen
    labelled = [point(1.0, 0.060, val_accuracy=0.80), point(0.9, 0.070, val_accuracy=0.85)]
    assert choose(labelled, 100) is labelled[1]  # validation accuracy, when known, comes first
    plain = [{"keep": k, "parameters": int(1000 * k), "bytes": 80, "val_agreement": a} for k, a in ((1.0, .8), (.9, .9))]
    assert choose(plain, 100) is plain[1]  # --views 0: agreement decides
    assert choose([point(1.0, 0.06, size=120)], 100) is None


def test_interrupted_compress_resumes_to_the_same_file(workspace, monkeypatch):
    import edge.train.loop

    whole = _compress(workspace, workspace / "whole.onnx", workspace / "whole")
    assert whole.exit_code == 0, whole.output
    real_epoch, calls = edge.train.loop.train_one_epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the second round's first epoch
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(edge.train.loop, "train_one_epoch", interrupted)
    stopped = _compress(workspace, workspace / "resumed.onnx", workspace / "resumed")
    assert stopped.exit_code == 130 and not (workspace / "resumed.onnx").exists()
    monkeypatch.setattr(edge.train.loop, "train_one_epoch", real_epoch)
    resumed = _compress(workspace, workspace / "resumed.onnx", workspace / "resumed", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert (workspace / "resumed.onnx").read_bytes() == (workspace / "whole.onnx").read_bytes()
    first, second = (json.loads((workspace / d / "report.json").read_text()) for d in ("whole", "resumed"))
    strip = lambda points: [{k: v for k, v in p.items()} for p in points]  # noqa: E731
    assert strip(first["points"]) == strip(second["points"])


def test_formats_that_cannot_fit_are_never_exported_and_the_report_lists_them(workspace):
    out, report = workspace / "skips.onnx", workspace / "skips"
    result = _compress(workspace, out, report)
    assert result.exit_code == 0, result.output
    record = json.loads((report / "report.json").read_text())
    skipped = {s["format"]: s["least_bytes"] for s in record["skipped"] if s["keep"] == 1.0}
    # the merged tiny model's convs hold 4,640 weights: fp32 >= 18,560 B, fp16 >= 9,280 B, both over 9,000
    assert skipped == {"fp32": 18_560, "fp16": 9_280}
    assert not [p for p in record["points"] if p["format"] in ("fp32", "fp16") and p["keep"] == 1.0]
    assert not list(report.glob("quantization-*fp32*")) and not list(report.glob("quantization-*fp16*"))
    for s in record["skipped"]:  # slimmed shapes too: every skipped format's bound is over the target
        assert s["least_bytes"] > 9000 and not [p for p in record["points"] if (p["keep"], p["format"]) == (
            s["keep"], s["format"])]
    assert "Never exported" in (report / "report.md").read_text() and "fp32 at keep 1.000 (at least 18,560 B)" in (
        report / "report.md").read_text()
    merged = StudentConfig(widths=(8, 16, 48, 48, 3), pools=(0, 1), input_size=16, num_classes=3).num_parameters()
    assert {p["parameters"] for p in record["points"] if p["keep"] == 1.0} == {merged}  # the file's own count


def test_least_bytes_bounds_every_exported_file_from_below(tmp_path):
    from edge.export.quantize import QuantSpec
    from edge.io.checkpoints import Checkpoint
    from edge.core.config import ModelCard, default_classes
    from edge.export.exporter import export_onnx
    from edge.workflows.compress import least_bytes

    checkpoint = Checkpoint(ModelCard(CONFIG, Preprocess(crop=16), default_classes(3)), trained_like(CONFIG), "edge")
    for spec in (QuantSpec("fp32"), QuantSpec("fp16"), QuantSpec("uint8", method="minmax"),
                 QuantSpec("uint4", per_channel=True, method="minmax"), QuantSpec("kmeans16", method="minmax")):
        size, _ = export_onnx(checkpoint, tmp_path / f"{spec.weights}.onnx", spec, None, "")
        assert least_bytes(CONFIG, spec) <= size, spec
    assert least_bytes(CONFIG, QuantSpec("fp32")) > 0.8 * (tmp_path / "fp32.onnx").stat().st_size  # and close
    assert least_bytes(CONFIG, QuantSpec("uint4", per_channel=True, entropy=True)) is None


class FakeClock:
    """compress's clock: each export takes 1 s and each measured file 10 s more, everything else no time."""

    def __init__(self):
        self.now = 1000.0

    def time(self) -> float:
        return self.now


def test_the_budget_bounds_the_whole_run(workspace, monkeypatch):
    import edge.workflows.compress as compress

    clock = FakeClock()
    real_measure, real_export = compress.measure, compress._export

    def measure(*args, **kwargs):
        clock.now += 10.0
        return real_measure(*args, **kwargs)

    def export(*args, **kwargs):
        clock.now += 1.0
        return real_export(*args, **kwargs)

    monkeypatch.setattr(compress, "time", clock)
    monkeypatch.setattr(compress, "measure", measure)
    monkeypatch.setattr(compress, "_export", export)
    for minutes, fits in ((3, False), (7, True)):  # 3: stopped before any file fits; 7: the whole search
        clock.now, report = 1000.0, workspace / f"budget{minutes}"
        result = _compress(workspace, workspace / f"budget{minutes}.onnx", report, "--budget-minutes", str(minutes))
        assert result.exit_code == (0 if fits else 2), result.output
        record = json.loads((report / "report.json").read_text())
        assert clock.now - 1000.0 <= 60 * minutes and record["seconds"] <= 60 * minutes  # no step overran
        if fits:
            assert 0 < (workspace / f"budget{minutes}.onnx").stat().st_size <= 9000
        else:
            assert f"time budget ({minutes} min)" in record["stopped"] and "no candidate fits" in result.output


def test_candidate_names_keep_each_layers_bits_and_mixed_rows_have_their_own_series():
    from edge.workflows.compress import candidate_name
    from edge.workflows.compress_report import markdown_report, series

    name = candidate_name("mixed", 1.0, "uint4 per-channel entropy=True cnn.2.3:8 cnn.12.3:6")
    assert name == "mixed-k1.0000-uint4-per-channel-entropy=True-cnn.2.3@8-cnn.12.3@6.onnx"
    assert candidate_name("mixed", 1.0, "uint4 cnn.2.3:8") != candidate_name("mixed", 1.0, "uint4 cnn.2.38")
    point = {"stage": "mixed", "keep": 1.0, "format": "uint4 per-channel cnn.2.3:8", "bytes": 10, "parameters": 5,
             "val_agreement": 1.0, "widths": [1]}
    assert series(point) == "mixed precision"
    assert series({**point, "stage": "quantization", "format": "uint4 per-channel"}) == "quantization only"
    assert series({**point, "keep": 0.9}) == "slimming + mixed precision"
    assert series({**point, "stage": "qat"}) == "quantization-aware"  # trained, not slimmed
    assert series({**point, "stage": "qat", "keep": 0.9}) == "slimming + quantization-aware"
    state = {"settings": {"target_bytes": 20}, "about": {"model": "m.pt"}, "points": [point], "rounds": [],
             "seconds": 1.0}
    assert "| mixed precision | 1.000 |" in markdown_report(state)
    state.update(fitting_keep={"uint4": 0.8, "uint8": None, "fp16 x": None}, unprobed=["uint8"])
    assert "uint4 0.800, uint8 not found within the time budget, fp16 x below the --min-keep" in markdown_report(state)


def test_the_frontier_figure_keeps_its_title_and_plain_kb_ticks_inside():
    from edge.workflows.compress_report import frontier_figure
    from synthetic import shown_tick_labels, text_outside_figure

    points = [{"stage": stage, "keep": keep, "format": "uint8", "bytes": size, "parameters": 1, "val_agreement": 0.9,
               "widths": [1]}  # one panel (no test set): the narrowest figure
              for stage, keep, size in (("quantization", 1.0, 264_394), ("mixed", 1.0, 118_277),
                                        ("slimming", 0.9, 92_197), ("slimming", 0.9, 1_021_639))]
    state = {"settings": {"target_bytes": 120_000}, "about": {"model": "a_rather_long_student_file_name.bin"},
             "points": points, "chosen": points[1]}
    fig = frontier_figure(state)
    assert text_outside_figure(fig) == []
    labels = [t.get_text() for t in shown_tick_labels(fig.axes[0].xaxis)]
    assert labels == ["100", "200", "300", "500", "1,000"]  # plain KB, no 2x10^2
    near = [{**p, "bytes": size} for p, size in zip(points, (70_000, 89_031, 89_415, 150_000))]
    narrow = frontier_figure({**state, "points": near, "chosen": near[1], "settings": {"target_bytes": 90_000}})
    labels = [t.get_text() for t in shown_tick_labels(narrow.axes[0].xaxis)]
    assert labels == ["70", "80", "90", "100"] and text_outside_figure(narrow) == []  # a narrow range: every step
    ranked = [{**p, "views_kl": kl, "views_kl_noise": kl / 4} for p, kl in zip(near[:3], (0.3, 0.07, 0.12))]
    both = frontier_figure({**state, "points": ranked + near[3:], "chosen": ranked[1],
                            "settings": {"target_bytes": 90_000}})
    kl = both.axes[0]  # what ranks the fitting files comes first, on a log axis with its error bars
    assert len(both.axes) == 2 and kl.get_ylabel().startswith("KL") and kl.get_yscale() == "log"
    assert min(kl.get_ylim()) < 0.07 * 0.75 and text_outside_figure(both) == []
