"""Hostile inputs, fifth pass: JSON nested past what Python's reader recurses into (a model's metadata, a
bench --compare file) is one line naming the file, never a RecursionError traceback."""

from __future__ import annotations

import onnx
import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.codec.checksum import CHECKSUM_KEY
from edge.core.json_text import MAX_DEPTH, loads

DEEP = "[" * 200_000  # 200 kB


def test_json_nested_past_the_bound_is_a_value_error_never_a_recursion_error():
    assert loads("[" * MAX_DEPTH + "]" * MAX_DEPTH)[0]  # as deep as allowed: read
    for text in (DEEP, "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), '{"a":' * 900 + "1" + "}" * 900):
        with pytest.raises(ValueError, match=f"nested deeper than {MAX_DEPTH} levels"):
            loads(text)


@pytest.mark.parametrize("key", ["edge.card", "edge.quant"])
def test_an_onnx_file_whose_metadata_nests_too_deep_is_refused_in_one_line(synthetic_student_onnx, key, tmp_path):
    model = onnx.load(synthetic_student_onnx)
    props = [p for p in model.metadata_props if p.key != CHECKSUM_KEY]  # layout 1: no checksum to forge
    for prop in props:
        prop.value = "1" if prop.key == "edge.format" else DEEP if prop.key == key else prop.value
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    onnx.save(model, tmp_path / "deep.onnx")
    for command in (["info"], ["predict", "-o", tmp_path / "p.csv"]):
        args = [command[0], tmp_path / "deep.onnx", *([tmp_path] if command[0] == "predict" else []), *command[1:]]
        result = CliRunner().invoke(main, list(map(str, args)))
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.output.count("\n") == 1 and f"deep.onnx: damaged '{key}' metadata (nested deeper" \
            in result.output, result.output


def test_a_bench_compare_file_nested_too_deep_is_refused_in_one_line(synthetic_student_onnx, tmp_path):
    (tmp_path / "deep.json").write_text(DEEP)
    result = CliRunner().invoke(main, ["bench", str(synthetic_student_onnx), "--compare", str(tmp_path / "deep.json")])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output == f"error: --compare: {tmp_path / 'deep.json'} is not an `edge bench --json` file\n"
