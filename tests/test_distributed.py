"""edge.train.distributed: `edge train` under torchrun on 2 CPU processes (gloo): batches split across
ranks as one process sees them and synchronised BatchNorm giving the single-process gradients (on
synthetic grey images everywhere, and on Fashion-MNIST), one checkpoint from rank 0 that resumes
and loads and validation over the whole set (Fashion-MNIST: the run must learn), and on synthetic
images a failure on one rank stopping every rank with a clear message and `edge slim` under
torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from click.testing import CliRunner

from edge.cli import main
from edge.core.config import Preprocess, StudentConfig
from edge.data.datasets import Augment, batches, decode_image_set
from edge.train.distributed import Group
from edge.io.checkpoints import load_net

REPO = Path(__file__).resolve().parents[1]
GREY32 = Preprocess(crop=32, mean=(0.0,), std=(1.0,), color="L")
TINY = StudentConfig(widths=(8, 16, 16), pools=(0, 1, 2), input_size=32, num_classes=10, in_channels=1)
# 3 epochs of a 4k-parameter StudentNet on 1,536 images, validated on 1,000 held-out training
# images: ~59% (from 10%) in seconds; enough to tell a run that learns from one that does not
TRAIN_ARGS = ["fashion-mnist:train@:1536", "--val", "fashion-mnist:train@58000:59000", "--widths", "16,32,64",
              "--pools", "0,1,2", "--epochs", "3", "--batch", "64", "--seed", "0", "--padding", "2", "--no-flip",
              "--lr", "5e-3", "--threads", "1", "--quiet"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m edge ARGS`` from this checkout."""
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "edge",
               *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def grey_folder(tmp_path_factory) -> str:
    """512 synthetic grey 28x28 images in class subfolders, for what does not depend on the data."""
    from synthetic import write_grey_classes

    return str(write_grey_classes(tmp_path_factory.mktemp("grey"), 512))


@pytest.fixture(scope="module", params=["synthetic", pytest.param("fashion-mnist", marks=pytest.mark.real_data)])
def grey_images(request) -> str:
    """A data spec of labelled grey 28x28 images: the synthetic folder, or Fashion-MNIST's training set."""
    if request.param == "fashion-mnist":
        request.getfixturevalue("fashion_mnist")
        return "fashion-mnist:train"
    return request.getfixturevalue("grey_folder")


def test_ranks_split_each_global_batch_and_augment_it_as_one_process_does(grey_images):
    data = decode_image_set(f"{grey_images}@:200", GREY32, Augment(32, padding=2))
    whole = list(batches(data, 64, Augment(32, padding=2), seed=4, epoch=1))
    shares = [list(batches(data, 64, Augment(32, padding=2), seed=4, epoch=1, share=Group(rank, 2).share))
              for rank in range(2)]
    assert len(whole) == len(shares[0]) == len(shares[1]) == 3  # 200 // 64: the ragged batch is dropped
    for b, (images, labels, index) in enumerate(whole):
        assert [len(s[b][2]) for s in shares] == [32, 32]
        assert torch.equal(torch.cat([s[b][2] for s in shares]), index)
        assert torch.equal(torch.cat([s[b][1] for s in shares]), labels)
        assert torch.equal(torch.cat([s[b][0] for s in shares]), images)  # same crop, flip, rotation per image


def _gradients_on_two_ranks(rank: int, port: int, sync_bn: bool, batch, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from edge.train import distributed
    from edge.models.student import StudentNet

    distributed.start(torch.device("cpu"), sync_bn)
    torch.manual_seed(0)
    model = StudentNet(TINY).double()
    trained = distributed.group().prepare(model, torch.device("cpu"))
    images, labels = (t[distributed.group().share(len(t))] for t in batch)
    F.cross_entropy(trained(images), labels).backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters()}, out)
    del trained  # DDP holds the process group: let it go before the group is left
    distributed.stop()


def _biases_before_batchnorm(model: torch.nn.Module) -> set[str]:
    """Conv biases that the BatchNorm right after them subtracts again in training: their gradient is
    zero in exact arithmetic (what remains is rounding noise, not something the maths fixes)."""
    names = set()
    for prefix, module in model.named_modules():
        if isinstance(module, torch.nn.Sequential):
            for i, (layer, after) in enumerate(zip(module, list(module)[1:])):
                if isinstance(layer, torch.nn.Conv2d) and isinstance(after, torch.nn.BatchNorm2d) \
                        and layer.bias is not None:
                    names.add(f"{prefix}.{i}.bias".lstrip("."))
    return names


@pytest.mark.parametrize("sync_bn", [True, False])
def test_sync_bn_gives_the_single_process_gradients_of_the_global_batch(grey_images, tmp_path, sync_bn):
    from edge.models.student import StudentNet

    data = decode_image_set(f"{grey_images}@:128", GREY32, Augment(32, padding=2))
    images, labels, _ = next(iter(batches(data, 128, Augment(32, padding=2), seed=1)))
    images = images.double()  # float64: rounding noise (~1e-16) far below any real difference
    mp.spawn(_gradients_on_two_ranks, args=(_free_port(), sync_bn, (images, labels), tmp_path / "g.pt"), nprocs=2)
    torch.manual_seed(0)
    single = StudentNet(TINY).double()
    F.cross_entropy(single(images), labels).backward()
    ddp = torch.load(tmp_path / "g.pt", weights_only=True)
    zero = _biases_before_batchnorm(single)
    assert zero == {"cnn.0.0.bias", "cnn.1.0.bias", "cnn.2.0.bias"}
    scale = max(float(p.grad.norm()) for p in single.parameters())
    for name in zero:  # stays ~0 on both sides: rounding noise, ~1e-16 of the gradients that matter
        assert float(single.get_parameter(name).grad.norm()) < 1e-10 * scale
        assert float(ddp[name].norm()) < 1e-10 * scale
    # every other gradient, relative to its own norm: float64 sums in another order differ by ~1e-13, and
    # by 3e-9 for stage 0's BatchNorm scale, a sum of large terms that nearly cancel; 1e-6 leaves room
    error = {n: float((ddp[n] - p.grad).norm() / p.grad.norm()) for n, p in single.named_parameters()
             if n not in zero}
    if sync_bn:
        assert max(error.values()) < 1e-6, error
    else:  # each rank normalising its own half is another computation: the test can tell
        assert max(error.values()) > 1e-2, error


def test_torchrun_trains_resumes_writes_one_checkpoint_and_validates_like_one_process(fashion_mnist, tmp_path):
    # --sync-bn: the 2 processes compute what one does (to rounding), so a short run from scratch,
    # whose accuracy still moves fast, can be compared at all
    first = _torchrun(["train", *TRAIN_ARGS, "--sync-bn", "--stop-after", "1", "-o", "ddp.pt"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = _torchrun(["train", *TRAIN_ARGS, "--sync-bn", "--resume", "-o", "ddp.pt", "--metrics", "ddp.json"],
                        tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp.best.pt", "ddp.json", "ddp.pt"]
    assert resumed.stderr.count("epoch 3/3: train loss") == 1 and resumed.stderr.count("done in") == 1  # rank 0 only
    net = load_net(tmp_path / "ddp.pt")  # in this (fresh) process
    assert net.spec.config.widths == (16, 32, 64)
    history = net.extra["train"]["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    single = CliRunner().invoke(main, ["train", *TRAIN_ARGS, "-o", str(tmp_path / "one" / "single.pt")])
    assert single.exit_code == 2 and "does not exist" in single.output  # the output is checked before training
    (tmp_path / "one").mkdir()
    single = CliRunner().invoke(main, ["train", *TRAIN_ARGS, "-o", str(tmp_path / "one" / "single.pt")])
    assert single.exit_code == 0, single.output
    one = load_net(tmp_path / "one" / "single.pt").extra["train"]["history"]
    assert history[-1]["val_accuracy"] > 0.5 and one[-1]["val_accuracy"] > 0.5
    assert abs(history[-1]["val_accuracy"] - one[-1]["val_accuracy"]) <= 0.025
    assert abs(history[-1]["loss"] - one[-1]["loss"]) < 0.02


def test_a_failure_on_one_rank_stops_every_rank_with_a_clear_message(grey_folder, tmp_path):
    began = time.time()
    args = [grey_folder, "--input-size", "32", "--epochs", "1", "--threads", "1", "--quiet"]
    result = _torchrun(["train", *args, "-o", "missing/ddp.pt"], tmp_path)  # only rank 0 checks its output
    assert result.returncode != 0
    assert "error: missing/ddp.pt: cannot write run file: folder missing does not exist" in result.stderr
    assert "error: rank 0 failed while setting up (its error is above): rank 1 stops too" in result.stderr
    assert "exitcode  : 2" in result.stderr  # a clear error's exit code (rank 1 may be stopped by torchrun first)
    assert result.stderr.count("Traceback") == 1 and "ChildFailedError" in result.stderr  # torchrun's own summary
    assert time.time() - began < 120 and not (tmp_path / "missing").exists()


def test_torchrun_slims_with_rank_0_measuring_and_recording(grey_folder, tmp_path):
    import json

    student = tmp_path / "student.pt"
    trained = CliRunner().invoke(main, ["train", f"{grey_folder}@:256", "--widths", "8,16,16", "--pools", "0,1,2",
                                        "--input-size", "32", "--epochs", "1", "--threads", "1", "--quiet", "-o",
                                        str(student)])
    assert trained.exit_code == 0, trained.output
    result = _torchrun(["slim", str(student), f"{grey_folder}@:256", "--val", f"{grey_folder}@256:384",
                        "--test", f"{grey_folder}@384:512", "--rate", "0.25", "--rounds", "1", "--finetune-epochs",
                        "1", "--threads", "1", "--quiet", "--method", "minmax", "-o", "slim"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("rate 0.25: r0:") == 1 and result.stderr.count("done in") == 1
    points = json.loads((tmp_path / "slim" / "curve.json").read_text())["curves"][0]["points"]
    assert [p["round"] for p in points] == [0, 1] and points[1]["parameters"] < points[0]["parameters"]
    assert 0 <= points[1]["onnx_test_accuracy"] <= 1
    assert load_net(tmp_path / "slim" / "rate0.25" / "round1.best.pt").spec.config.widths == (6, 12, 16)


def test_processes_checks_every_option_before_any_rank_starts(grey_folder, tmp_path, monkeypatch):
    args = ["train", grey_folder, "--input-size", "32", "--processes", "2", "-o", str(tmp_path / "ddp.pt")]
    usage = CliRunner().invoke(main, [*args, "--epochs", "0"])
    assert usage.exit_code == 2 and "'--epochs': 0 is not in the range" in usage.output
    uneven = CliRunner().invoke(main, [*args, "--batch", "63"])
    assert uneven.exit_code == 2 and uneven.output == ("error: --batch 63 is the global batch: it must divide evenly "
                                                       "among the --processes 2\n")
    monkeypatch.setenv("WORLD_SIZE", "4")
    inside = CliRunner().invoke(main, args)
    assert inside.exit_code == 2 and inside.output == ("error: --processes 2: this process is already one of "
                                                       "torchrun's 4; leave --processes out under torchrun\n")
    assert not list(tmp_path.iterdir())


def test_processes_launches_the_ranks_and_a_failure_ends_in_one_line(grey_folder, tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    args = [grey_folder, "--input-size", "32", "--epochs", "1", "--threads", "1", "--quiet", "--processes", "2"]
    result = subprocess.run([sys.executable, "-m", "edge", "train", *args, "-o", "missing/ddp.pt"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "error: missing/ddp.pt: cannot write run file: folder missing does not exist" in result.stderr
    assert result.stderr.endswith("(its error is above): every rank stopped\n")
    assert "error: --processes 2: rank " in result.stderr.splitlines()[-1] and "ChildFailedError" not in result.stderr
