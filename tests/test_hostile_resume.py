"""``edge compress --resume``: the record is evidence, not instructions. Every tampered record is refused
in one line naming state.json and the field, before anything is written (the output never appears and
the work folder is unchanged); a candidate is identified by the SHA-256 recorded when it was written and
must open as the weight format it claims."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edge.cli import main
from edge.core.config import ConfigError, ModelCard, Preprocess, StudentConfig, default_classes
from edge.io.checkpoints import save_checkpoint
from edge.workflows.compress_state import chosen_bytes, read_state
from synthetic import trained_like

CONFIG = StudentConfig(widths=(8, 16, 32), pools=(0, 1), input_size=16, num_classes=3)


SOURCE: list[Path] = []  # the folder holding tiny.pt and photos/ (a search records their paths)


def _compress(work: Path, out: Path, *extra) -> object:
    """A quick search in ``work``: the target fits uint8 as it is, so no slimming round is trained."""
    return CliRunner().invoke(main, ["compress", str(SOURCE[0] / "tiny.pt"), "--images", str(SOURCE[0] / "photos"),
                                     "--target-bytes", "6000", "-o", str(out), "--report", str(work),
                                     "--threads", "1", "--quiet", *map(str, extra)])


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """A finished search in root/work (its state.json and candidates) and its output root/first.onnx."""
    root = tmp_path_factory.mktemp("resume")
    (root / "photos").mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / "photos" / f"{i}.png")
    save_checkpoint(root / "tiny.pt", ModelCard(CONFIG, Preprocess(crop=16), default_classes(3)), trained_like(CONFIG))
    SOURCE[:] = [root]
    done = _compress(root / "work", root / "first.onnx")
    assert done.exit_code == 0, done.output
    assert "\r" not in done.output and "it/s" not in done.output, done.output  # --quiet: no progress bars
    return root


@pytest.fixture
def record(searched, tmp_path) -> tuple[Path, dict]:
    """A copy of the finished search's work folder (state.json, candidates) to tamper with."""
    work = tmp_path / "work"
    work.mkdir()
    for path in (searched / "work").iterdir():
        (work / path.name).write_bytes(path.read_bytes())
    return work, json.loads((work / "state.json").read_text())


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}


def _refused(work: Path, *words: str) -> None:
    before = _snapshot(work)
    result = _compress(work, work.parent / "resumed.onnx", "--resume")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.count("\n") == 1 and str(work / "state.json") in result.output, result.output
    for word in words:
        assert word in result.output, result.output
    assert not (work.parent / "resumed.onnx").exists() and _snapshot(work) == before


def _uint8(state: dict) -> dict:
    return next(p for p in state["points"] if p["format"] == "uint8")


def _write(work: Path, state) -> None:
    (work / "state.json").write_text(state if isinstance(state, str) else json.dumps(state))


def test_an_untouched_record_resumes_to_the_same_file(searched, record):
    work, _ = record
    result = _compress(work, work.parent / "resumed.onnx", "--resume")
    assert result.exit_code == 0, result.output
    assert (work.parent / "resumed.onnx").read_bytes() == (searched / "first.onnx").read_bytes()


def test_an_edit_within_every_fields_range_is_refused_by_the_seal(record):
    from edge.core.json_text import sealed_text

    work, state = record
    point = max((p for p in state["points"] if "views_kl" in p), key=lambda p: p["views_kl"])
    point["views_kl"] = 0.0  # a well-typed value that would steer the choice
    _write(work, state)
    _refused(work, "seal does not match its content")
    _write(work, sealed_text(state))  # resealed (by edge itself): the fields are checked again, and pass
    read_state(work / "state.json")
    del state["seal"]
    _write(work, state)
    _refused(work, "no seal")  # an older record, or a seal stripped off


def test_a_point_naming_another_file_of_its_size_is_refused(record):
    work, state = record
    _uint8(state).update(onnx="frontier.png", bytes=(work / "frontier.png").stat().st_size)
    _write(work, state)
    _refused(work, "points[", ".onnx")  # frontier.png is no .onnx name
    _uint8(state).update(onnx="frontier.onnx")
    (work / "frontier.onnx").write_bytes((work / "frontier.png").read_bytes())
    _write(work, state)
    _refused(work, "frontier.onnx is changed since it was measured")
    _uint8(state).update(sha256=hashlib.sha256((work / "frontier.onnx").read_bytes()).hexdigest())
    _write(work, state)
    _refused(work, "frontier.onnx is not an ONNX file edge wrote")


def test_a_candidate_hard_linked_to_a_text_file_is_refused(record):
    work, state = record
    point = _uint8(state)
    (work / "notes.txt").write_bytes(b"x" * point["bytes"])
    (work / point["onnx"]).unlink()
    os.link(work / "notes.txt", work / point["onnx"])
    _refused(work, point["onnx"], "hard link")
    (work / point["onnx"]).unlink()
    (work / point["onnx"]).write_bytes(b"x" * point["bytes"])
    _refused(work, point["onnx"], "changed since it was measured")


@pytest.mark.parametrize("edit, words", [
    (lambda s: {**s, "path": [-1.0]}, ["(path is [-1.0]: expected a list of keep fractions in (0, 1])"]),
    (lambda s: {**s, "path": [5.0]}, ["path is [5.0]"]),
    (lambda s: {**s, "sensitivity": "garbage"}, ["sensitivity is \"garbage\""]),
    (lambda s: {**s, "sensitivity": {"4 bits": [{"name": "cnn.0", "weights": 9, "bits": 99, "kl": 0.1}]}},
     ["sensitivity['4 bits'][0].bits is 99"]),
    (lambda s: {**s, "fitting_keep": "garbage"}, ["fitting_keep is \"garbage\""]),
    (lambda s: {**s, "seconds": -5}, ["seconds is -5"]),
    (lambda s: {**s, "surprise": 1}, ["surprise: not a field edge writes"]),
    (lambda s: {**s, "points": [{**p, "keep": 0} for p in s["points"]]}, ["points[0].keep is 0"]),
    (lambda s: {**s, "points": [{**p, "widths": []} for p in s["points"]]}, ["points[0].widths is []"]),
    (lambda s: {**s, "points": [{k: v for k, v in p.items() if k != "widths"} | {"onnx": "report.md"}
                                for p in s["points"]]}, ["points[0]."]),
    (lambda s: {**s, "points": [{**p, "stage": "rm -rf"} for p in s["points"]]}, ["points[0].stage"]),
    (lambda s: {**s, "points": [{**p, "format": "uint99"} for p in s["points"]]}, ["points[0].format"]),
    (lambda s: {**s, "points": [{**p, "sha256": "00"} for p in s["points"]]}, ["points[0].sha256"]),
    (lambda s: {**s, "points": [{k: v for k, v in p.items() if k != "views_kl_noise"} for p in s["points"]]},
     ["points[0].views_kl_noise is missing (recorded with views_agreement, views_kl)"]),  # was a KeyError
    (lambda s: {**s, "rounds": [{"round": 1}]}, ["rounds[0].keep is missing"]),
    (lambda s: {**s, "about": {"a": {"b": {"c": {"d": {"e": {"f": {}}}}}}}}, ["nested deeper than"]),
    (lambda s: "[" * 500_000, ["nested deeper than"]),
    (lambda s: "{}", ["(settings is missing)"]),
])
def test_every_tampered_field_is_refused_before_anything_is_written(record, edit, words):
    work, state = record
    _write(work, edit(state))
    _refused(work, *words)


def test_the_chosen_file_must_open_as_the_format_it_claims(record):
    work, state = record
    point = _uint8(state)
    read_state(work / "state.json")
    assert chosen_bytes(work, point) == (work / point["onnx"]).read_bytes()
    with pytest.raises(ConfigError, match=r"state.json: the chosen candidate .* holds uint8 weights, not the fp16"):
        chosen_bytes(work, {**point, "format": "fp16"})
