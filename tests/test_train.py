"""edge.data.datasets + edge.train.loop + `edge train`: real images in, exact pixels, seeded batches,
resumable runs that end where an uninterrupted run ends, baselines at the student's size."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge.cli import main
from edge.core.config import Preprocess, StudentConfig
from edge.data.datasets import Augment, augment_batch, batches, decode_image_set, parse_source, read_idx
from edge.io.netfile import NetFile
from edge.models.registry import NetSpec
from edge.io.checkpoints import load_net
from edge.train.loop import CrossEntropy, Recipe, Run, fit, init_model

GREY32 = Preprocess(crop=32, mean=(0.0,), std=(1.0,), color="L")
TINY = StudentConfig(widths=(8, 16, 16), pools=(0, 1, 2), input_size=32, num_classes=10, in_channels=1)


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def fm_train(fashion_mnist):
    return decode_image_set("fashion-mnist:train@:256", GREY32, Augment(32, padding=2))


@pytest.fixture(scope="module")
def fm_val(fashion_mnist):
    return decode_image_set("fashion-mnist:test@:128", GREY32)


def test_fashion_mnist_eval_set_is_the_idx_images_zero_padded(fashion_mnist, fm_val):
    raw = read_idx(fashion_mnist / "t10k-images-idx3-ubyte.gz")[:128]
    labels = np.frombuffer(gzip.decompress((fashion_mnist / "t10k-labels-idx1-ubyte.gz").read_bytes())[8:], np.uint8)
    assert fm_val.pixels.shape == (128, 1, 32, 32)
    assert np.array_equal(fm_val.pixels[:, 0, 2:30, 2:30].numpy(), raw)
    assert int(fm_val.pixels[:, :, :2].sum()) == 0 and int(fm_val.pixels[:, :, :, 30:].sum()) == 0
    assert np.array_equal(fm_val.labels.numpy(), labels[:128])
    assert fm_val.classes[9] == "Ankle boot"


def test_food11_eval_pixels_equal_the_deployed_preprocessing(food11_test, tmp_path):
    from edge.data.datasets import normalize
    from edge.data.preprocess import load_image

    spec = Preprocess()
    data = decode_image_set(f"{food11_test}@:6", spec, cache_dir=tmp_path)
    expected = np.stack([load_image(p, spec) for p in sorted(food11_test.iterdir())[:6]])
    assert np.array_equal(normalize(data.pixels, spec).numpy(), expected)
    assert not data.labelled and data.ids[:2] == ["0", "8"]
    cached = decode_image_set(f"{food11_test}@:6", spec, cache_dir=tmp_path)  # from the cache file this time
    assert len(list(tmp_path.iterdir())) == 1 and torch.equal(cached.pixels, data.pixels)


def test_training_canvas_holds_the_photo_and_random_crops_stay_inside_it(food11_test):
    from edge.data.preprocess import read_image

    aug = Augment(256)
    data = decode_image_set(f"{food11_test}@:4", Preprocess(), aug)
    assert data.pixels.shape == (4, 3, 384, 384)
    photo = read_image(sorted(food11_test.iterdir())[0], Preprocess())[0]
    top, left, h, w = data.boxes[0].tolist()
    crop_h, crop_w = min(photo.shape[0], 384), min(photo.shape[1], 384)
    assert (h, w) == (crop_h, crop_w)
    inner = photo[(photo.shape[0] - h) // 2:][:h, (photo.shape[1] - w) // 2:][:, :w].transpose(2, 0, 1)
    assert np.array_equal(data.pixels[0, :, top:top + h, left:left + w].numpy(), inner)
    plain = Augment(256, max_angle=0.0, flip=False)
    crops = augment_batch(data.pixels, data.boxes, plain, torch.Generator().manual_seed(1))
    u = torch.rand(4, 4, generator=torch.Generator().manual_seed(1))  # the draws augment_batch made
    for i, (t, l_, hh, ww) in enumerate(data.boxes.tolist()):  # each crop: a window inside the photo's box
        y, x = t + int(u[i, 0] * (max(hh - 256, 0) + 1)), l_ + int(u[i, 1] * (max(ww - 256, 0) + 1))
        assert torch.equal(crops[i].to(torch.uint8), data.pixels[i, :, y:y + 256, x:x + 256])


def test_batches_depend_on_seed_epoch_and_index_only(fm_train):
    aug = Augment(32, padding=2)
    first = [b for b in batches(fm_train, 64, aug, seed=3, epoch=1)]
    again = [b for b in batches(fm_train, 64, aug, seed=3, epoch=1, workers=2)]
    other = next(iter(batches(fm_train, 64, aug, seed=3, epoch=2)))
    assert len(first) == 4 and all(torch.equal(a[0], b[0]) and torch.equal(a[2], b[2]) for a, b in zip(first, again))
    assert not torch.equal(first[0][2], other[2])
    seen = torch.cat([b[2] for b in first])
    assert sorted(seen.tolist()) == list(range(256))  # a permutation: every image once


def test_rotation_moves_pixels_and_keeps_the_ink(fm_train):
    aug = Augment(32, padding=0, max_angle=15.0, flip=False)
    out = augment_batch(fm_train.pixels[:64], fm_train.boxes[:64], aug, torch.Generator().manual_seed(0))
    straight = augment_batch(fm_train.pixels[:64], fm_train.boxes[:64], Augment(32, 0, 0.0, False),
                             torch.Generator().manual_seed(0))
    assert out.shape == (64, 1, 32, 32) and not torch.equal(out, straight)
    ink = straight.sum((1, 2, 3))
    assert torch.allclose(out.sum((1, 2, 3)) / ink, torch.ones(64), atol=0.08)  # nearest resampling, same mass


def _run(data, val, out, epochs=2) -> Run:
    net = NetFile(NetSpec("dw", TINY), GREY32, data.classes, {})
    recipe = Recipe(epochs=epochs, batch_size=64, seed=5, sparsity=1e-4)
    return Run(net, init_model(net, seed=5), CrossEntropy(), recipe,
               data, Augment(32, padding=2), out, val, progress=False)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(fm_train, fm_val, tmp_path):
    straight = _run(fm_train, fm_val, tmp_path / "straight.pt")
    fit(straight)
    interrupted = _run(fm_train, fm_val, tmp_path / "resumed.pt")
    fit(interrupted, stop_after=1)
    assert load_net(tmp_path / "resumed.pt").extra["train"]["epoch"] == 1
    resumed = _run(fm_train, fm_val, tmp_path / "resumed.pt")  # a fresh process would build it like this
    summary = fit(resumed, resume=True)
    a, b = load_net(tmp_path / "straight.pt"), load_net(tmp_path / "resumed.pt")
    assert a.state.keys() == b.state.keys()
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert a.extra["train"]["history"][-1]["loss"] == b.extra["train"]["history"][-1]["loss"]
    assert [row["epoch"] for row in summary["history"]] == [1, 2]
    changed = _run(fm_train, fm_val, tmp_path / "resumed.pt", epochs=3)
    with pytest.raises(ValueError, match="epochs 2 != 3"):
        fit(changed, resume=True)


def test_baselines_match_the_student_parameter_count():
    from edge.models.baselines import ConvNet, sized_like
    from edge.models.registry import count_parameters

    student = StudentConfig()
    for groups in (1, 4):
        model = ConvNet(sized_like(student, groups), groups)
        assert abs(count_parameters(model) / student.num_parameters() - 1) < 0.02
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 11)


def test_teacher_reads_the_homework_state_dict_and_refuses_downloads(tmp_path, monkeypatch):
    import torchvision

    from edge.core.errors import CheckpointError
    from edge.workflows.runs import load_teacher
    from edge.io.netfile import load_classifier_weights
    from edge.models.classifiers import torchvision_classifier

    torch.manual_seed(0)
    homework = torchvision.models.resnet18(num_classes=11).eval()
    torch.save(homework.state_dict(), tmp_path / "teacher_resnet18.bin")
    teacher = load_teacher(tmp_path / "teacher_resnet18.bin", "resnet18", tuple("abcdefghijk"), Preprocess())
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(teacher(x), homework(x))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(CheckpointError, match="nothing is downloaded"):
        load_classifier_weights(torchvision_classifier("resnet18", 10, 1), "imagenet", "resnet18")
    grey = torchvision_classifier("resnet18", 10, in_channels=1)
    fresh = load_classifier_weights(grey, tmp_path / "teacher_resnet18.bin", "resnet18")
    assert fresh == ["fc.weight", "fc.bias"]
    assert torch.allclose(grey.conv1.weight, homework.conv1.weight.sum(1, keepdim=True))


def test_edge_train_cli_end_to_end_on_cpu(fashion_mnist, tmp_path):
    out = tmp_path / "student.pt"
    args = ["train", "fashion-mnist:train@:192", "--val", "fashion-mnist:test@:64", "--widths", "8,16,16",
            "--pools", "0,1,2", "--epochs", "1", "--batch", "64", "--padding", "2", "--threads", "2", "--quiet",
            "--device", "auto", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "done in" in result.output and "wrote" in result.output
    net = load_net(out)
    assert net.spec.config.widths == (8, 16, 16) and net.preprocess.color == "L"
    assert (tmp_path / "student.best.pt").exists()
    missing = CliRunner().invoke(main, ["train", "fashion-mnist:valid", "-o", str(tmp_path / "other.pt")])
    assert missing.exit_code == 2 and "splits are train, test" in missing.output


def test_rotation_option_reaches_the_augmentation_and_a_resume_must_keep_it(fashion_mnist, tmp_path):
    """`--rotation 0` is recorded with the run; resuming with another rotation is refused, naming it."""
    out = tmp_path / "student.pt"
    args = ["train", "fashion-mnist:train@:128", "--widths", "8,16", "--pools", "0,1", "--epochs", "2",
            "--stop-after", "1", "--rotation", "0", "--threads", "1", "--quiet", "-o", str(out)]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert load_net(out).extra["train"]["about"]["rotation"] == 0.0
    resumed = CliRunner().invoke(main, [a if a != "0" else "15" for a in args] + ["--resume"])
    assert resumed.exit_code == 2 and "rotation 0.0 != 15.0" in resumed.output
    too_far = CliRunner().invoke(main, [*args[:-2], "--rotation", "181", "-o", str(tmp_path / "x.pt")])
    assert too_far.exit_code == 2 and "--rotation" in too_far.output


def test_parse_source():
    assert parse_source("a/testing@:300") == ("a/testing", slice(None, 300))
    assert parse_source("fashion-mnist:train@100:") == ("fashion-mnist:train", slice(100, None))
    assert parse_source("plain") == ("plain", slice(None))


def test_a_torchvision_arch_trains_at_its_input_size_and_every_command_takes_it(tmp_path):
    """`edge train --arch mobilenet_v3_small --input-size 24` on a few synthetic photos: the size is
    recorded in the file, and predict (torch), info and bench's torch rows run it at that size;
    compress refuses it in one line."""
    import csv

    from PIL import Image

    from edge.io.checkpoints import load_model
    from edge.io.netfile import NetFile
    from edge.data.preprocess import load_image

    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    for label in range(3):
        (photos / str(label)).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 80, (20, 30, 3), np.uint8) + np.uint8(80 * label)
            Image.fromarray(pixels).save(photos / str(label) / f"{i}.png")
    out = tmp_path / "mnv3.pt"
    run = CliRunner().invoke(main, ["train", str(photos), "--arch", "mobilenet_v3_small", "--input-size", "24",
                                    "--resize", "24", "--epochs", "1", "--batch", "6", "--threads", "2", "--quiet",
                                    "-o", str(out)])
    assert run.exit_code == 0, run.output
    assert "decode" not in run.output and "\r" not in run.output  # --quiet: no decoding bar either
    model = load_model(out)
    assert isinstance(model, NetFile) and model.spec.arch == "mobilenet_v3_small"
    assert model.card.preprocess.crop == model.card.config.input_size == 24 and model.card.preprocess.resize == 24

    predicted = CliRunner().invoke(main, ["predict", str(out), str(photos), "-o", str(tmp_path / "p.csv"),
                                          "--provider", "torch-cpu", "--quiet"])
    assert predicted.exit_code == 0, predicted.output
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    paths = [photos / f"{row['Id']}.png" for row in rows]
    inputs = torch.from_numpy(np.stack([load_image(p, model.card.preprocess) for p in paths]))
    assert inputs.shape[1:] == (3, 24, 24)
    with torch.no_grad():
        assert [int(r["label"]) for r in rows] == model.build()(inputs).argmax(1).tolist()

    info = CliRunner().invoke(main, ["info", "--json", str(out)])
    assert info.exit_code == 0 and '"model": "mobilenet_v3_small' in info.output, info.output
    assert f'"parameters": {model.parameters}' in info.output

    from edge.bench.worker import Target, open_backend  # what a `edge bench` torch row opens, in this process

    bench = open_backend(Target("torch-cpu", "fp32", str(out), threads=1))
    assert bench.card == model.card and bench(inputs.numpy()).shape == (len(rows), 3)

    compress = CliRunner().invoke(main, ["compress", str(out), "--images", str(photos), "--target-bytes", "100000",
                                         "-o", str(tmp_path / "small.onnx")])
    assert compress.exit_code == 2 and "slims StudentNet channels" in compress.output
    assert len(compress.output.strip().splitlines()) == 1, compress.output


def test_precise_bn_makes_running_statistics_the_average_over_its_images():
    """After recalibration a BatchNorm holds the plain average of its batch statistics over the
    first ``precise_bn`` training images, whatever the slow average held before (the weights stay)."""
    from edge.data.datasets import ImageSet, batches
    from edge.train.loop import recalibrate_batchnorm

    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=generator)
    data = ImageSet(pixels, torch.zeros(40, dtype=torch.int64), [str(i) for i in range(40)], ("a",), GREY32)
    conv = torch.nn.Conv2d(1, 4, 3)
    model = torch.nn.Sequential(conv, torch.nn.BatchNorm2d(4, momentum=0.01))
    model[1].running_mean.fill_(5.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "batches" not in k}
    net = NetFile(NetSpec("dw", TINY), GREY32, ("a",), {})
    run = Run(net, model, CrossEntropy(), Recipe(epochs=1, batch_size=8, precise_bn=32), data, None, None,
              progress=False)
    recalibrate_batchnorm(run, epoch=0)
    with torch.no_grad():
        features = [conv(x) for x, _, _ in batches(data, 8)][:4]  # the first 32 images
    torch.testing.assert_close(model[1].running_mean, torch.stack([f.mean((0, 2, 3)) for f in features]).mean(0))
    torch.testing.assert_close(model[1].running_var,
                               torch.stack([f.transpose(0, 1).flatten(1).var(1) for f in features]).mean(0))
    assert model[1].momentum == 0.01
    assert all(torch.equal(model.state_dict()[k], v) for k, v in weights.items())



def test_one_epoch_student_runs_report_above_chance_validation_accuracy(fashion_mnist, tmp_path):
    """Precise BN is the default for StudentNets too: after one epoch on 512 images the running
    averages would still hold the first batches' statistics (val accuracy near chance, 10%)."""
    common = ["fashion-mnist:train@:512", "--val", "fashion-mnist:test@:500", "--epochs", "1", "--threads", "2",
              "--quiet"]
    for command, extra in (("train", []), ("distill", ["--teacher", str(tmp_path / "train.pt")])):
        out = tmp_path / f"{command}.pt"
        run = CliRunner().invoke(main, [command, *common, "-o", str(out), *extra])
        assert run.exit_code == 0, run.output
        saved = load_net(out).extra["train"]
        assert saved["recipe"]["precise_bn"] == 1024
        assert saved["history"][0]["val_accuracy"] > 0.25, command
