"""One CLI convention, read from the commands themselves: each click command function is a thin
wrapper (at most 25 lines: options in, one library call); every command takes -q/--quiet and --json;
every command that writes takes -o/--output (or its report paths) and refuses an existing output
unless --overwrite is given; --json prints one JSON document; export and info read well by default."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edge.cli import main

CLI = Path(__file__).resolve().parents[1] / "edge" / "cli.py"
MAX_COMMAND_LINES = 25
WRITES_OUTPUT = {"export", "predict", "convert", "train", "distill", "slim", "compress"}  # -o/--output
WRITES_REPORTS = {"bench", "attack", "sensitivity"}  # --json PATH (and --markdown/--plot)


def _command_functions(tree: ast.Module) -> list[ast.FunctionDef]:
    """Functions decorated with ``@main.command(...)``."""
    def is_command(decorator) -> bool:
        call = decorator.func if isinstance(decorator, ast.Call) else decorator
        return isinstance(call, ast.Attribute) and call.attr == "command"

    return [node for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and any(is_command(d) for d in node.decorator_list)]


def test_no_click_command_function_is_longer_than_25_lines():
    functions = _command_functions(ast.parse(CLI.read_text()))
    assert {f.name for f in functions} == set(main.commands)  # the parse finds every command
    long = {f.name: f.end_lineno - f.lineno + 1 for f in functions if f.end_lineno - f.lineno + 1 > MAX_COMMAND_LINES}
    assert not long, f"command bodies belong in the library: {long}"


def test_the_line_count_check_can_fail():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_COMMAND_LINES))
    functions = _command_functions(ast.parse(f"@main.command()\ndef long():\n{body}\n"))
    assert functions[0].end_lineno - functions[0].lineno + 1 > MAX_COMMAND_LINES


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_follows_the_convention(name):
    options = {opt for param in main.commands[name].params for opt in param.opts}
    assert {"-q", "--quiet", "--json"} <= options
    if name in WRITES_OUTPUT:
        assert {"-o", "--output", "--overwrite"} <= options
    if name in WRITES_REPORTS:
        assert "--overwrite" in options
    if name in WRITES_OUTPUT | WRITES_REPORTS:
        assert "--overwrite" in CliRunner().invoke(main, [name, "--help"]).output


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_help_shows_its_ranges_and_defaults_cleanly(name):
    text = CliRunner().invoke(main, [name, "--help"]).output
    assert not re.findall(r"\[[^\]]*None[^\]]*\]", text), text  # click's IntRange() without bounds: "[x<=None]"
    assert "FLOAT RANGE" not in text and "INTEGER RANGE" not in text


@pytest.mark.parametrize("args", [
    ["train", "d", "-o", "m.pt", "--seed", "-1"], ["train", "d", "-o", "m.pt", "--seed", str(2**63)],
    ["compress", "m.pt", "--images", "d", "--target-bytes", "9", "-o", "m.onnx", "--seed", "-1"],
    ["compress", "m.pt", "--images", "d", "--target-bytes", "9", "-o", "m.onnx", "--qat-epochs", "-1"],
    ["compress", "m.pt", "--images", "d", "--target-bytes", "9", "-o", "m.onnx", "--views", "-1"],
    ["compress", "m.pt", "--images", "d", "--target-bytes", "9", "-o", "m.onnx", "--step", "nan"],
])
def test_a_seed_torch_or_numpy_cannot_take_and_negative_counts_are_usage_errors(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and f"Invalid value for '{args[-2]}'" in result.output, result.output


def _invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def exported(synthetic_student, tmp_path_factory):
    out = tmp_path_factory.mktemp("convention") / "m.onnx"
    result = _invoke("export", synthetic_student, "--quant", "fp16", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    return out, result.output


def test_export_summary_is_a_few_readable_lines(exported):
    out, text = exported
    lines = text.splitlines()
    assert [line.split(":")[0] for line in lines if not line.startswith(" ")] == [
        "model", f"wrote {out}", "weights", "parity", "runtime graph"]
    assert lines[1].endswith(f"{out.stat().st_size:,} bytes") and lines[2] == "weights: fp16 (per tensor)"
    assert all(len(line) < 160 for line in lines)


@pytest.mark.parametrize("command", [
    lambda student, photos, out: ["export", student, "--quant", "fp16", "-o", out],
    lambda student, photos, out: ["predict", student, photos, "-o", out],
    lambda student, photos, out: ["convert", student, "--to", "edge", "-o", out],
    lambda student, photos, out: ["sensitivity", student, "--images", photos, "--limit", "2", "--json", out],
], ids=["export", "predict", "convert", "sensitivity"])
def test_an_existing_output_is_refused_unless_overwrite(command, synthetic_student, synthetic_photos, tmp_path):
    out = tmp_path / "out"
    args = command(synthetic_student, synthetic_photos, out)
    assert _invoke(*args).exit_code == 0
    before = out.read_bytes()
    result = _invoke(*args)
    assert result.exit_code == 2 and "pass --overwrite" in result.output and len(result.output.splitlines()) == 1
    assert out.read_bytes() == before
    result = _invoke(*args, "--overwrite")
    assert result.exit_code == 0, result.output


def test_train_takes_overwrite_to_start_over_and_refuses_it_with_resume(synthetic_food11, tmp_path):
    args = ["train", synthetic_food11 / "validation", "-o", tmp_path / "run.pt", "--input-size", "32", "--widths",
            "4,8", "--pools", "0", "--epochs", "1", "--batch", "8", "-q", "--device", "cpu"]
    assert _invoke(*args).exit_code == 0
    refused = _invoke(*args)
    assert refused.exit_code == 2 and "--overwrite" in refused.output and "--resume" in refused.output
    both = _invoke(*args, "--overwrite", "--resume")
    assert both.exit_code == 2 and "give one of them" in both.output
    again = _invoke(*args, "--overwrite", "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["epochs"] == 1


def test_json_prints_one_document(exported, synthetic_student, synthetic_photos, tmp_path):
    out, _ = exported
    info = json.loads(_invoke("info", out, "--json").stdout)
    assert info["weights"]["weights"] == "fp16" and info["bytes"] == out.stat().st_size
    predicted = _invoke("predict", out, synthetic_photos, "-o", tmp_path / "p.csv", "--json", "-q")
    summary = json.loads(predicted.stdout)
    assert summary["predictions"] == len(list(synthetic_photos.glob("*.jpg"))) and summary["output"].endswith("p.csv")
    exported_again = json.loads(_invoke("export", synthetic_student, "-o", tmp_path / "again.onnx", "--json").stdout)
    assert exported_again["bytes"] == (tmp_path / "again.onnx").stat().st_size
    assert exported_again["runtime_graph"] == "no dequantization left after load"


def test_info_is_an_aligned_listing_by_default(exported):
    out, _ = exported
    lines = _invoke("info", out).output.splitlines()
    assert lines[0].startswith("file:") and any(line.startswith("parameters:") for line in lines)
    assert len({line.index(":") + len(line[line.index(":") + 1:]) - len(line[line.index(":") + 1:].lstrip())
                for line in lines}) == 1  # every value starts in the same column


def test_json_alone_prints_where_json_path_writes(synthetic_student, synthetic_photos, tmp_path):
    """sensitivity (like bench and attack) keeps --json PATH; --json alone prints the document instead."""
    args = ["sensitivity", synthetic_student, "--images", synthetic_photos, "--limit", "2", "--bits", "4"]
    printed = _invoke(*args, "--json")
    assert printed.exit_code == 0, printed.output
    layers = json.loads(printed.stdout)["layers"]
    assert layers and {"name", "weights", "agreement"} <= set(layers[0])
    assert _invoke(*args, "--json", tmp_path / "rows.json").exit_code == 0
    assert json.loads((tmp_path / "rows.json").read_text()) == layers


@pytest.mark.parametrize("name", ["export", "predict", "sensitivity", "bench", "attack"])
def test_cli_numbers_are_checked_by_the_rules_the_api_applies(name):
    """One validation: each number option of these commands is checked by its options class's `Rule` (what
    `edge.export_model`, `predict_images` and `benchmark` build), not by a second copy of the range in click."""
    from edge.cli import Checked

    command = main.commands[name]
    numbers = [p for p in command.params if isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType))]
    assert not numbers, [p.name for p in numbers]
    checked = [p for p in command.params if isinstance(p.type, Checked)]
    assert checked and all(p.type.rule.check(p.type.field, p.default) == p.default for p in checked
                           if isinstance(p.default, (int, float)))


def test_a_cli_number_and_an_api_argument_get_the_same_message(tmp_path):
    import edge

    cli = _invoke("predict", tmp_path / "m.onnx", tmp_path, "-o", tmp_path / "p.csv", "--batch", "0")
    with pytest.raises(edge.EdgeError) as api:
        edge.predict_images(tmp_path / "m.onnx", tmp_path, batch=0)
    assert cli.exit_code == 2 and str(api.value) in cli.output
