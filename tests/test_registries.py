"""The tables everything reads agree with what uses them: weight formats (edge.core.weight_formats) and their
handlers (edge.export.formats: every row round-trips export -> load -> parity on a tiny model), backends
(edge.core.backends) and their handlers (edge.inference.openers: every row opens its model files), and the
typed options (edge.core.options) with the CLI's own parameters."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import click
import numpy as np
import onnxruntime as ort
import pytest
import torch

from edge.core import backends
from edge.cli import main, parse_options
from edge.core import weight_formats as formats
from edge.export.calibrate import synthetic_images
from edge.export.exporter import export_onnx
from edge.export.formats import families, format_handler
from edge.export.quantize import QuantSpec, candidate_specs
from edge.inference.openers import CHANNELS_LAST, backend_handler, kinds
from edge.inference.predict import open_model
from edge.io.checkpoints import load_model
from edge.core.options import (AttackOptions, BenchOptions, CompressOptions, ConvertOptions, DistillOptions, ExportOptions,
                                PredictOptions, SearchSettings, SensitivityOptions, SlimOptions, TrainOptions, flat,
                                from_click, option_names)

QUANT_FIELDS = {f.name for f in dataclasses.fields(QuantSpec)}


def _names(fmt: formats.WeightFormat) -> list[str]:
    """Every spelling of a format: its name, or the smallest and largest of its sizes."""
    if fmt.sizes is None:
        return [fmt.family]
    return [f"{fmt.family}{fmt.sizes[0]}", f"{fmt.family}{fmt.sizes[-1]}"]


def _option(command: str, name: str) -> click.Parameter:
    return next(p for p in main.commands[command].params if p.name == name)


# ---------------------------------------------------------------- weight formats

@pytest.mark.parametrize("fmt", formats.FORMATS, ids=lambda f: f.syntax)
def test_every_format_parses_round_trips_and_lists_real_options_and_methods(fmt):
    for name in _names(fmt):
        parsed, size = formats.parse_format(name)
        assert parsed is fmt and (size is None) == (fmt.sizes is None)
        assert QuantSpec(name).weights == name and QuantSpec(name).label == name
        assert formats.parse_choice(name) == (name, {})
        for method in fmt.methods:
            assert formats.parse_choice(f"{name}:{method}") == (name, {"method": method})
            assert QuantSpec(name, method=method).method == method
    assert set(fmt.options) <= QUANT_FIELDS, set(fmt.options) - QUANT_FIELDS
    assert set(fmt.methods) <= set(formats.METHODS)
    if fmt.sizes is not None:
        for outside in (fmt.sizes.start - 1, fmt.sizes.stop):
            with pytest.raises(ValueError, match="unknown weight format"):
                formats.parse_format(f"{fmt.family}{outside}")


def test_a_method_only_where_the_format_has_one():
    with pytest.raises(ValueError, match="unknown method"):
        QuantSpec("uint8", method="nearest")
    with pytest.raises(ValueError, match="fp32 has no method"):
        formats.parse_choice("fp32:minmax")
    with pytest.raises(ValueError, match="gptq, minmax"):
        formats.parse_choice("uint8:nearest")
    assert formats.data_free("uint8") == "uint8:minmax" and formats.data_free("fp16") == "fp16"


def test_candidates_and_bench_defaults_come_from_the_table():
    specs = candidate_specs()
    assert len(specs) == len(formats.CANDIDATES) > 0
    for (name, options), spec in zip(formats.CANDIDATES, specs):
        assert spec.weights == name and set(options) <= set(spec.format.options)
    assert [QuantSpec(formats.parse_choice(q)[0]).weights for q in formats.BENCH_FORMATS] == list(formats.BENCH_FORMATS)


def test_the_cli_takes_formats_and_methods_from_the_table():
    assert _option("export", "quant").metavar == formats.syntax() == _option("slim", "quant").metavar
    for command in ("export", "slim"):
        method = _option(command, "method")
        assert list(method.type.choices) == list(formats.METHODS) and method.default == formats.DEFAULT_METHOD
    assert QuantSpec("uint8").method == formats.DEFAULT_METHOD
    export_help, bench_help = _option("export", "quant").help, _option("bench", "quants").help
    for fmt in formats.FORMATS:
        assert fmt.syntax in export_help and fmt.description in export_help and fmt.syntax in bench_help
    for method in formats.METHODS:
        assert method in _option("export", "method").help and method in bench_help


# ---------------------------------------------------------------- format handlers: export -> load -> parity

# Per family, the exports each row is checked in: every option that changes what the file holds (per channel,
# each method, entropy coding, low rank), each with the bound it meets against torch fp32 on the same images:
# (largest |logit difference| over the largest |logit|, fewest top-1 answers in agreement). GPTQ runs with
# --fp16-below 0, so the tiny model's layers are coded. Measured: fp32 2e-7, fp16 1.9e-4, low rank 0.22 (lossy by
# design: 10% of the energy dropped), uint8 2.4e-4 (GPTQ per channel) / 4.4e-3 (min-max), uint4 0.036,
# kmeans16 4.4e-3 (GPTQ) / 0.038 (plain), int8 6.4e-3 / 8.3e-3; every export agreed on all 32 images.
ROUND_TRIPS = {
    "fp32": [("fp32", {}, 1e-5, 1.0), ("fp32", {"low_rank": 0.9}, 0.4, 0.9)],
    "fp16": [("fp16", {}, 1e-3, 1.0), ("fp16", {"low_rank": 0.9}, 0.4, 0.9)],
    "uint": [("uint8", {"per_channel": True, "fp16_below": 0}, 2e-3, 0.9), ("uint8", {"method": "minmax"}, 0.015, 0.9),
             ("uint4", {"per_channel": True, "method": "minmax", "entropy": True}, 0.08, 0.9)],
    "kmeans": [("kmeans16", {"fp16_below": 0}, 0.015, 0.9),
               ("kmeans16", {"per_channel": True, "method": "minmax", "entropy": True}, 0.08, 0.9)],
    "int8": [("int8", {}, 0.025, 0.9), ("int8", {"per_channel": True}, 0.025, 0.9)],
}
PARITY_IMAGES = 32


def _round_trips() -> list:
    """One case per export of `ROUND_TRIPS`, for every row of the table (a row without any fails)."""
    cases = []
    for fmt in formats.FORMATS:
        for weights, options, max_error, min_agreement in ROUND_TRIPS.get(fmt.family, [(None, {}, 0, 1)]):
            label = " ".join([weights or fmt.syntax] + [f"{k}={v}" for k, v in options.items()])
            cases.append(pytest.param(fmt, weights, options, (max_error, min_agreement), id=label))
    return cases


def test_every_format_family_has_one_handler_and_round_trips():
    table = {fmt.family for fmt in formats.FORMATS}
    assert set(families()) == table == set(ROUND_TRIPS)
    for family in table:
        assert format_handler(family).family == family
    with pytest.raises(KeyError, match="no handler"):
        format_handler("bfloat")


@pytest.fixture(scope="module")
def parity_images() -> np.ndarray:
    return synthetic_images(PARITY_IMAGES, 3, 32)


@pytest.mark.parametrize("fmt, weights, options, bound", _round_trips())
def test_every_format_round_trips_export_load_parity(fmt, weights, options, bound, synthetic_student, parity_images,
                                                     tmp_path):
    assert weights is not None, f"{fmt.syntax}: no round trip in ROUND_TRIPS"
    spec = QuantSpec(weights, **options)
    model_file = load_model(synthetic_student)
    path = tmp_path / f"{weights}.onnx"
    export_onnx(model_file, path, spec, calibration=parity_images[:8] if spec.calibrated else None)
    loaded, _ = open_model(path, threads=1)  # edge's runtime, as `edge predict` opens it
    assert loaded.quant["weights"] == weights and loaded.quant["per_channel"] == spec.per_channel
    assert loaded.quant.get("code_bits") == spec.bits and ("entropy" in loaded.quant) == spec.entropy
    with torch.inference_mode():
        reference = model_file.build()(torch.from_numpy(parity_images)).numpy()
    logits = loaded(parity_images)
    error = float(np.abs(logits - reference).max() / np.abs(reference).max())
    agreement = float(np.mean(logits.argmax(1) == reference.argmax(1)))
    max_error, min_agreement = bound
    assert error <= max_error and agreement >= min_agreement, (spec.label, error, agreement)
    assert error > 0 or fmt.family == "fp32", f"{spec.label}: identical to fp32, so not encoded"


# ---------------------------------------------------------------- backends

@pytest.mark.parametrize("backend", backends.BACKENDS, ids=lambda b: b.name)
def test_every_backend_is_consistent(backend):
    if backend.kind == backends.ONNXRUNTIME:
        assert backend.provider in ort.get_all_providers()
    else:
        assert backend.provider is None and backend.kind in (backends.TORCH, backends.OPENVINO)
    assert backend.computes[0] == "fp32" and set(backend.computes) <= set(backends.COMPUTES)
    assert backend.device in ("cpu", "cuda") and (backend.device == "cpu" or backend.install_hint)
    for spelling in backend.spellings:
        assert backends.resolve(spelling.upper()) is backend
    assert backends.resolve(backend.device, backend.kind).device == backend.device


def test_spellings_are_unique_and_device_names_follow_the_model():
    spellings = [s for b in backends.BACKENDS for s in b.spellings]
    assert len(spellings) == len(set(spellings)) == len(backends.SPELLINGS)
    assert backends.resolve("cpu").name == "ort-cpu" and backends.resolve("cpu", backends.TORCH).name == "torch-cpu"
    assert backends.resolve("cuda", backends.TORCH).name == "torch-cuda"
    with pytest.raises(backends.BackendError, match="runs .onnx files"):
        backends.resolve("tensorrt", backends.TORCH)
    with pytest.raises(backends.BackendError, match="runs checkpoints"):
        backends.resolve("torch-cpu", backends.ONNXRUNTIME)
    with pytest.raises(backends.BackendError, match="unknown backend"):
        backends.parse_list("cpu,gpu")
    assert backends.parse_list("cpu, ort-cpu,torch-cpu") == ("ort-cpu", "torch-cpu")


def test_the_cpu_backends_run_here_and_a_missing_gpu_says_what_to_install():
    assert backends.unavailable(backends.resolve("ort-cpu")) is None
    assert backends.unavailable(backends.resolve("torch-cpu")) is None
    for backend in backends.BACKENDS:
        reason = backends.unavailable(backend)
        assert reason is None or backend.install_hint in reason


def test_the_cli_takes_backends_from_the_table():
    predict = _option("predict", "provider")
    assert tuple(predict.type.choices) == (*backends.SPELLINGS, "auto")
    bench = _option("bench", "providers")
    assert bench.default == ",".join(backends.NAMES)
    for backend in backends.BACKENDS:
        assert backend.name in predict.help and backend.name in bench.help and backend.description in bench.help


# ---------------------------------------------------------------- backend handlers

def test_every_backend_kind_has_one_handler():
    assert set(kinds()) == set(backends.LIBRARIES) == {b.kind for b in backends.BACKENDS}
    for kind in kinds():
        assert backend_handler(kind).kind == kind == backends.LIBRARIES[kind].kind
    with pytest.raises(KeyError, match="no handler"):
        backend_handler("tflite")


@pytest.mark.parametrize("backend", backends.BACKENDS, ids=lambda b: b.name)
def test_every_backend_opens_its_model_files_through_its_handler(backend, synthetic_student, synthetic_student_onnx):
    files = {backends.ONNXRUNTIME: synthetic_student_onnx, backends.OPENVINO: synthetic_student_onnx,
             backends.TORCH: synthetic_student}
    assert set(files) == set(kinds())
    reason = backends.unavailable(backend)
    if reason:
        pytest.skip(reason)
    handler = backend_handler(backend.kind)
    handler.preload()
    model = handler.open(files[backend.kind], backend, threads=1)
    assert model.provider in (backend.provider, backend.name) or (
        backend.kind == backends.OPENVINO and model.provider.startswith("OpenVINO"))
    x = synthetic_images(4, 3, 32)
    with torch.inference_mode():
        reference = load_model(synthetic_student).build()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model(x), reference, rtol=1e-4, atol=1e-4)


def test_predict_opens_each_file_on_its_own_kind_and_names_the_other(synthetic_student, synthetic_student_onnx):
    from edge.inference.runtime import ModelError, OnnxClassifier
    from edge.inference.torch_backend import TorchClassifier

    onnx_model, lanes = open_model(synthetic_student_onnx, "cpu", threads=3)
    assert isinstance(onnx_model, OnnxClassifier) and lanes == 3
    torch_model, lanes = open_model(synthetic_student, "cpu", threads=1)
    assert isinstance(torch_model, TorchClassifier) and lanes == 1 and torch_model.provider == "torch-cpu"
    with pytest.raises(backends.BackendError, match="is a checkpoint, run by torch: use --provider cpu or cuda, or "
                                                    "`edge export` it first"):
        open_model(synthetic_student, "ort-cpu")
    with pytest.raises(backends.BackendError, match="is an ONNX file, run by ONNX Runtime: use --provider cpu or cuda$"):
        open_model(synthetic_student_onnx, "torch-cpu")
    with pytest.raises(ModelError, match="fixes its max-pools"):
        open_model(synthetic_student_onnx, pools=(0, 1))

def test_a_bench_rows_format_asks_torch_for_half_and_channels_last_and_onnx_runtime_for_nothing():
    torch_handler, onnx_handler = backend_handler(backends.TORCH), backend_handler(backends.ONNXRUNTIME)
    assert torch_handler.options("fp32") == {}
    assert torch_handler.options("fp16" + CHANNELS_LAST) == {"half": True, "channels_last": True}
    assert torch_handler.options("fp32" + CHANNELS_LAST) == {"channels_last": True}
    assert onnx_handler.options("fp16") == {} == onnx_handler.options("uint8")
    assert onnx_handler.lanes(backends.resolve("ort-cpu"), 3) == (1, 3)
    assert onnx_handler.lanes(backends.resolve("ort-cuda"), 3) == (3, 1) == torch_handler.lanes(
        backends.resolve("torch-cpu"), 3)


# ---------------------------------------------------------------- typed options

COMMANDS = {
    "train": (TrainOptions, ["data", "-o", "run.pt"]),
    "distill": (DistillOptions, ["data", "--teacher", "t.pt", "-o", "run.pt"]),
    "slim": (SlimOptions, ["s.pt", "data", "-o", "out"]),
    "compress": (CompressOptions, ["m.pt", "--images", "photos", "--target-bytes", "1000", "-o", "m.onnx"]),
    "export": (ExportOptions, ["-o", "m.onnx"]),
    "predict": (PredictOptions, ["m.onnx", "photos", "-o", "p.csv"]),
    "convert": (ConvertOptions, ["m.pt", "--to", "edge", "-o", "c.pt"]),
    "bench": (BenchOptions, ["m.pt", "--json", "b.json"]),
    "attack": (AttackOptions, ["m.pt", "photos", "--json", "a.json"]),
    "sensitivity": (SensitivityOptions, ["m.pt", "--images", "photos", "--json", "s.json"]),
}


def _defaults(cls) -> dict:
    """Every leaf field's default (the option groups opened up)."""
    defaults = {}
    for name, kind in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(kind):
            defaults.update(_defaults(kind))
        elif cls.__dataclass_fields__[name].default is not dataclasses.MISSING:
            defaults[name] = cls.__dataclass_fields__[name].default
    return defaults


@pytest.mark.parametrize("command", COMMANDS)
def test_the_options_classes_take_exactly_the_cli_parameters_with_its_defaults(command):
    cls, args = COMMANDS[command]
    ctx = main.commands[command].make_context(command, list(args))
    options, as_json = parse_options(cls, ctx.params)
    params = {k: v for k, v in ctx.params.items() if k in option_names(cls)}
    assert not as_json and set(ctx.params) - set(params) <= {"json", "quiet", "processes"}  # processes: the launcher's
    values = flat(options)
    assert set(params) <= set(values)
    assert all(values[name] == value for name, value in params.items())
    written = values.get("output") or values["json_out"]
    assert Path(written).name == Path(args[-1]).name
    defaults = _defaults(cls)  # what a Python caller gets is what the CLI's user gets
    shared = [name for name in defaults if name in params
              and ctx.get_parameter_source(name) is click.core.ParameterSource.DEFAULT]
    assert {k: params[k] for k in shared} == {k: defaults[k] for k in shared}


def test_a_parameter_no_field_takes_is_refused():
    ctx = main.commands["train"].make_context("train", ["data", "-o", "run.pt"])
    with pytest.raises(TypeError, match="unknown_option"):
        from_click(TrainOptions, {**ctx.params, "unknown_option": 1})


def test_options_are_frozen_and_keyword_only():
    from edge.prune.slim import SlimSetup

    options, _ = parse_options(TrainOptions, main.commands["train"].make_context("train", ["d", "-o", "r.pt"]).params)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.arch = "cnn"
    for cls in (TrainOptions, SearchSettings, SlimSetup):
        with pytest.raises(TypeError):
            cls("positional")
