"""bench/results/fashion_mnist.json (issue 27, `studies/fashion_mnist.sh`): its summary is what the raw records
in the same file give, the slimmed student was chosen on validation, and the issue's bars hold there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studies import fashion_mnist as study

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results" / "fashion_mnist.json"


@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads(RESULTS.read_text())


def test_the_summary_is_derived_from_the_runs_recorded_beside_it(committed):
    assert study.summarize(committed["runs"], committed["slimming"], committed["times"]) == committed["summary"]
    assert study.claims(committed["summary"]) == committed["claims"]


def test_every_stage_ran_on_the_full_data_under_torchrun(committed):
    for name, run in committed["runs"].items():
        assert run["processes"] == 2, name
        assert "fashion-mnist:train@:55000 --val fashion-mnist:train@55000: --test fashion-mnist:test" in run["command"]
    assert committed["runs"]["scratch"]["epochs"] == committed["runs"]["distilled"]["epochs"]
    assert {t["cpu"] for t in committed["times"].values()} and all(t["seconds"] > 0 for t in committed["times"].values())


def test_the_slimmed_student_is_chosen_on_validation_not_on_the_test_set(committed):
    base, chosen = study.choose_slimmed(committed["slimming"])
    assert chosen["parameters"] <= 0.5 * base["parameters"]
    assert chosen["val_accuracy"] >= base["val_accuracy"] - study.MAX_VAL_DROP
    smaller = [p for c in committed["slimming"]["curves"] for p in c["points"][1:] if p["parameters"] < chosen["parameters"]]
    assert all(p["val_accuracy"] < base["val_accuracy"] - study.MAX_VAL_DROP for p in smaller)


def test_the_issue_bars_hold_in_the_committed_results(committed):
    summary = committed["summary"]
    assert summary["teacher"]["test_accuracy"] >= 0.93
    assert summary["distilled"]["test_accuracy"] >= 0.92
    assert summary["distilled"]["test_accuracy"] > summary["scratch"]["test_accuracy"]
    assert summary["slimmed"]["parameters"] <= 0.5 * summary["distilled"]["parameters"]
    assert summary["slimmed"]["test_accuracy"] >= summary["distilled"]["test_accuracy"] - 0.005
    assert summary["slimmed_uint8"]["test_accuracy"] >= summary["slimmed"]["test_accuracy"] - 0.002
    assert summary["total_wall_seconds"] <= 150 * 60
