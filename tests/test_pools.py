"""edge.inference.pools: pool positions a homework file does not record are checked against its BatchNorm
statistics; `edge predict` warns when the assumed ones disagree and ``--pools auto`` takes the best fit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edge.cli import main
from edge.core.config import Preprocess, StudentConfig
from edge.data.folders import list_samples
from edge.data.preprocess import load_image
from edge.inference.pools import check_pools, photos_of
from edge.io.checkpoints import load_model
from edge.models.student import StudentNet, state_to_numpy

TRUE_POOLS = (0, 1, 2, 4)  # as many pools as the homework's 0,1,2,3, one of them elsewhere
CONFIG = StudentConfig(widths=(4, 8, 8, 8, 8, 8), pools=TRUE_POOLS, input_size=256, num_classes=11)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def homework_bin(synthetic_photos, tmp_path_factory):
    """A homework-style state dict (no pools recorded) whose BatchNorm statistics were measured with
    TRUE_POOLS on the synthetic photos."""
    torch.manual_seed(0)
    model = StudentNet(CONFIG)
    photos = np.stack([load_image(s.path, Preprocess()) for s in list_samples(synthetic_photos)])
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.momentum = None  # the plain average over the pass
    with torch.no_grad():
        model.train()(torch.from_numpy(photos))
    path = tmp_path_factory.mktemp("pools") / "student.bin"
    torch.save({k: torch.as_tensor(v) for k, v in state_to_numpy(model).items()}, path)
    return path


def test_the_statistics_pick_the_placement_they_were_measured_with(homework_bin, synthetic_photos):
    assumed = load_model(homework_bin)
    assert assumed.card.config.pools == (0, 1, 2, 3) and assumed.pools_assumed
    images = photos_of(synthetic_photos, assumed.card.preprocess)
    check = check_pools(assumed, images)
    assert check.best == TRUE_POOLS and check.disagrees
    assert check.assumed_mismatch > 2 * check.best_mismatch
    right = check_pools(load_model(homework_bin, pools=TRUE_POOLS), images)
    assert right.best == TRUE_POOLS and not right.disagrees


def test_predict_warns_about_assumed_pools_and_auto_takes_the_better_ones(homework_bin, synthetic_photos, tmp_path):
    runner = CliRunner()
    outputs = {}
    for name, extra in (("assumed", []), ("auto", ["--pools", "auto"]), ("given", ["--pools", "0,1,2,4"])):
        out = tmp_path / f"{name}.csv"
        result = runner.invoke(main, ["predict", str(homework_bin), str(synthetic_photos), "-o", str(out), "--quiet",
                                      "--threads", "1", *extra])
        assert result.exit_code == 0, result.output
        outputs[name] = (result.output, out.read_text())
    warning = [line for line in outputs["assumed"][0].splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and str(homework_bin) in warning[0] and "--pools 0,1,2,4" in warning[0]
    assert "--pools auto: 0,1,2,4" in outputs["auto"][0] and outputs["auto"][1] == outputs["given"][1]
    assert "warning" not in outputs["given"][0] and "assumed" not in outputs["given"][0]


def test_info_says_the_pools_were_assumed_and_auto_needs_photos(homework_bin):
    runner = CliRunner()
    shown = json.loads(runner.invoke(main, ["info", str(homework_bin), "--json"]).output)
    assert shown["model"].endswith("pools [0, 1, 2, 3] (assumed: not in the file)")
    given = json.loads(runner.invoke(main, ["info", str(homework_bin), "--pools", "0,1,2,4", "--json"]).output)
    assert "assumed" not in given["model"]
    refused = runner.invoke(main, ["info", str(homework_bin), "--pools", "auto"])
    assert refused.exit_code == 2 and "--pools auto" in refused.output and "Traceback" not in refused.output


@pytest.mark.parametrize("name, pools, flagged", [("student_deeper_16bit.pkl", (0, 1, 2, 5), True),
                                                  ("student_custom_small.bin", (0, 1, 2, 3), False),
                                                  ("student_8bit_a.pkl", (0, 1, 2, 3), False)])
def test_homework_files_are_checked_on_a_few_real_photos(hw7, food11_test, name, pools, flagged):
    checkpoint = load_model(hw7 / name)
    check = check_pools(checkpoint, photos_of(food11_test, checkpoint.card.preprocess))
    assert check.best == pools and check.disagrees == flagged
