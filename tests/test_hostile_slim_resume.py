"""``edge slim --resume``: curve.json is evidence, not instructions. An edited record (a number, a round, the
seal itself, its shape) is refused in one line naming curve.json, with nothing in the run folder changed; the
file a resumed curve continues from is found by its place in the folder, whatever path the record names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.core.json_text import SEAL, sealed_text
from edge.io.checkpoints import load_net


def _slim(data: Path, student: Path, out: Path, *extra: str):
    common = ["--val", f"{data}@96:128", "--padding", "2", "--batch", "32", "--threads", "1", "--quiet",
              "--cache-dir", str(out.parent / "cache")]
    return CliRunner().invoke(main, ["slim", str(student), f"{data}@:96", *common, "--rate", "0.5", "--rounds", "2",
                                     "--finetune-epochs", "1", "-o", str(out), *extra])


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(data, student, run folder): a slimming run stopped after round 1 of 2, and its straight twin in run/../done."""
    from synthetic import write_grey_classes

    root = tmp_path_factory.mktemp("slim-resume")
    data = write_grey_classes(root / "grey", 128)
    student = root / "student.pt"
    trained = CliRunner().invoke(main, ["train", f"{data}@:96", "--val", f"{data}@96:128", "--widths", "8,16,16",
                                        "--input-size", "32", "--pools", "0,1,2", "--epochs", "1", "--batch", "32",
                                        "--threads", "1", "--quiet", "-o", str(student)])
    assert trained.exit_code == 0, trained.output
    run = root / "run"
    assert _slim(data, student, run, "--stop-after", "1").exit_code == 0
    assert [p["round"] for p in json.loads((run / "curve.json").read_text())["curves"][0]["points"]] == [0, 1]
    assert _slim(data, student, root / "done").exit_code == 0
    return data, student, run


@pytest.fixture
def copy(stopped, tmp_path) -> tuple[Path, Path, Path, dict]:
    data, student, run = stopped
    shutil.copytree(run, tmp_path / "run")
    return data, student, tmp_path / "run", json.loads((tmp_path / "run" / "curve.json").read_text())


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _refused(copy, record, *words: str) -> None:
    data, student, run, _ = copy
    (run / "curve.json").write_text(record if isinstance(record, str) else json.dumps(record))
    before = _snapshot(run)
    result = _slim(data, student, run, "--resume")
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.count("\n") == 1 and f"{run / 'curve.json'}: not a resumable slimming record" in \
        result.output, result.output
    for word in words:
        assert word in result.output, result.output
    assert _snapshot(run) == before


def _point(record: dict, r: int) -> dict:
    return record["curves"][0]["points"][r]


def test_an_edited_number_is_refused_by_the_seal(copy):
    record = copy[3]
    _point(record, 1)["val_accuracy"] = 0.99
    _refused(copy, record, "its seal does not match its content")


def test_a_record_without_its_seal_is_refused(copy):
    record = {k: v for k, v in copy[3].items() if k != SEAL}
    _refused(copy, record, "no seal")


@pytest.mark.parametrize("edit, words", [
    (lambda r: _point(r, 1).update(round=2), "rate 0.5, round 1: not a point slimming records"),
    (lambda r: _point(r, 1).update(parameters="many"), "rate 0.5, round 1: not a point slimming records"),
    (lambda r: _point(r, 0).pop("val_accuracy"), "rate 0.5, round 0: not a point slimming records"),
    (lambda r: r["curves"][0].update(rate=0.3), "a curve for rate 0.5 is missing or out of order"),
    (lambda r: r["curves"][0]["points"].extend([{}] * 3), "'points' is not a list of at most 3 rounds"),
    (lambda r: r.update(curves="all of them"), "'curves' is not a list of at most 1"),
])
def test_a_resealed_record_unlike_a_runs_is_refused_by_its_fields(copy, edit, words):
    record = copy[3]
    edit(record)
    _refused(copy, sealed_text({k: v for k, v in record.items() if k != SEAL}), words)


@pytest.mark.parametrize("text", ["[1, 2]", '{"settings": 3}', "{" * 5000, "not json"])
def test_a_record_that_is_not_one_is_refused_in_one_line(copy, text):
    _refused(copy, text)


def test_the_round_a_curve_continues_from_is_found_in_the_folder_not_where_the_record_points(copy, stopped):
    data, student, run, record = copy
    _point(record, 1)["file"] = str(student)  # the unslimmed student, were the record followed
    (run / "curve.json").write_text(sealed_text({k: v for k, v in record.items() if k != SEAL}))
    resumed = _slim(data, student, run, "--resume")
    assert resumed.exit_code == 0, resumed.output
    done = stopped[2].parent / "done"
    ours, straight = load_net(run / "rate0.5" / "round2.best.pt"), load_net(done / "rate0.5" / "round2.best.pt")
    assert ours.spec.config.widths == straight.spec.config.widths  # pruned from round 1's file, not the student
    assert (run / "rate0.5" / "round2.onnx").read_bytes() == (done / "rate0.5" / "round2.onnx").read_bytes()


def test_an_oversized_record_is_refused_before_it_is_read(copy, monkeypatch):
    from edge.workflows import runs

    monkeypatch.setattr(runs, "MAX_RECORD_BYTES", 100)
    data, student, run, _ = copy
    result = _slim(data, student, run, "--resume")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert f"{run / 'curve.json'}: refused: over 100 bytes, not a slimming record" in result.output
