"""Small files that declare big things: every reader checks what a file declares against what it holds
before allocating, so no file under 1 MB makes a command use more than 1 GB (measured as the peak
resident memory of a child process running the command)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge.core.safe_pickle import UnsafePickleError, safe_loads

MEMORY_LIMIT_KB = 1 << 20  # 1 GB
WRAPPER = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
           "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
           "print(done.stderr + done.stdout)")


class _Declares:
    """Unpickles as ``numpy.ndarray(shape, dtype)``: a call that allocates what it names."""

    def __init__(self, shape, dtype="f4"):
        self.shape, self.dtype = shape, dtype

    def __reduce__(self):
        return np.ndarray, (self.shape, self.dtype)


def _memo_bomb(index: int) -> bytes:
    """A 10-byte pickle storing None under memo index ``index`` (the C unpickler allocates a table that long)."""
    return b"\x80\x04N" + b"r" + index.to_bytes(4, "little") + b"."


def peak_kb(*command) -> tuple[int, int, str]:
    """(exit code, peak resident kB, output) of ``command`` run in a child process."""
    done = subprocess.run([sys.executable, "-c", WRAPPER, *map(str, command)], capture_output=True, text=True,
                          timeout=120)
    code, peak = done.stdout.split("\n", 1)[0].split()
    return int(code), int(peak), done.stdout.split("\n", 1)[1]


def test_a_40_byte_pickle_declaring_4_gb_is_refused_before_allocating():
    data = pickle.dumps({"w": _Declares((1 << 30,))}, protocol=2)
    assert len(data) < 100
    with pytest.raises(UnsafePickleError, match=r"declares 4,294,967,296 bytes.*before allocating"):
        safe_loads(data)


def test_arrays_together_may_not_declare_more_than_the_pickle_holds():
    data = pickle.dumps([_Declares((800,), "u1") for _ in range(100)], protocol=4)  # each fits, not all
    assert 800 < len(data) < 100 * 800
    with pytest.raises(UnsafePickleError, match="more than the pickle's own size allows"):
        safe_loads(data)


def test_odd_shapes_are_refused():
    for shape in ((-1,), (2.5,), ("4",)):
        with pytest.raises(UnsafePickleError, match="shape"):
            safe_loads(pickle.dumps(_Declares(shape), protocol=4))


def test_a_memo_index_does_not_size_a_table():
    assert safe_loads(_memo_bomb(1 << 26)) is None  # the dict memo holds one entry


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_numpy_weight_pickles_of_every_protocol_load(protocol):
    weights = {"a": np.arange(10, dtype=np.float32), "b": np.float32(3), "c": np.zeros((3, 4), np.uint8),
               "empty": np.zeros(0), "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3))}
    loaded = safe_loads(pickle.dumps(weights, protocol=protocol))
    assert loaded.keys() == weights.keys()
    for name, value in weights.items():
        assert np.array_equal(loaded[name], value) and np.asarray(loaded[name]).dtype == np.asarray(value).dtype


def test_protocol_helpers_admit_only_what_numpy_pickles_use():
    class CallsBytes:
        def __reduce__(self):
            return bytes, (1 << 32,)  # bytes(n) would allocate n bytes

    with pytest.raises(Exception) as caught:  # bytes() takes no argument here
        safe_loads(pickle.dumps(CallsBytes(), protocol=2))
    assert isinstance(caught.value, (UnsafePickleError, TypeError))


@pytest.mark.parametrize("name, data", [("hugearr.pkl", pickle.dumps({"w": _Declares((1 << 30,))}, protocol=2)),
                                        ("memo.pkl", _memo_bomb(1 << 28))], ids=["hugearr", "memo"])
@pytest.mark.parametrize("command", ["info", "teacher"])
def test_no_small_file_makes_a_command_use_1_gb(tmp_path, name, data, command):
    path = tmp_path / name
    path.write_bytes(data)
    args = {"info": ["info", path],
            "teacher": ["distill", tmp_path, "--teacher", path, "-o", tmp_path / "d.pt", "--quiet"]}[command]
    code, peak, output = peak_kb(sys.executable, "-m", "edge", *args)
    assert code == 2 and peak < MEMORY_LIMIT_KB, (peak, output)
    assert "Traceback" not in output and str(path) in output


def test_a_gzipped_idx_bomb_is_refused_before_it_is_inflated(tmp_path):
    import gzip

    from edge.data.datasets import read_idx
    from edge.data.folders import DatasetError

    header = b"\0\0\x08\x01" + (40 << 20).to_bytes(4, "big")
    (tmp_path / "bomb.gz").write_bytes(gzip.compress(header + bytes(40 << 20), 9))  # 40 KB -> 40 MB
    with pytest.raises(DatasetError, match="bomb.gz: refused: its gzip stream expands beyond 32 times"):
        read_idx(tmp_path / "bomb.gz")
    labels = np.arange(200, dtype=np.uint8) % 10
    (tmp_path / "labels.gz").write_bytes(gzip.compress(b"\0\0\x08\x01" + (200).to_bytes(4, "big") + labels.tobytes()))
    assert np.array_equal(read_idx(tmp_path / "labels.gz"), labels)
    (tmp_path / "cut.gz").write_bytes((tmp_path / "labels.gz").read_bytes()[:-12])
    with pytest.raises(DatasetError, match="cut.gz: cannot read IDX file"):
        read_idx(tmp_path / "cut.gz")


def _computed_bomb(student_onnx: Path, kind: str, path: Path) -> Path:
    """The student's graph plus a tensor of about 2 GB whose shape the graph computes (no literal shape for
    the constant scan to see), folded into the logits as ``+ 0 * min(tensor)``: ``fold`` at load (a
    ``Concat`` of two constants), ``shape`` from the input's shape, ``range`` up to a computed limit,
    ``outer`` an outer sum of the input with itself, twice (broadcasting)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from synthetic import save_sealed

    model = onnx.load(student_onnx)
    graph = model.graph
    image, logits = graph.input[0].name, graph.output[0].name

    def const(name, values):
        graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    node = helper.make_node
    nodes = {
        "fold": lambda: [node("Concat", [const("b.side", [1 << 14]), "b.side"], ["b.shape"], axis=0),
                 node("ConstantOfShape", ["b.shape"], ["b.big"])],
        "shape": lambda: [node("Shape", [image], ["b.s"]), node("Mul", ["b.s", const("b.k", [1 << 19, 1, 1, 1])], ["b.shape"]),
                  node("ConstantOfShape", ["b.shape"], ["b.big"])],
        "range": lambda: [node("Shape", [image], ["b.s"]), node("ReduceMax", ["b.s"], ["b.m"], keepdims=0),
                  node("Mul", ["b.m", const("b.k", 1 << 23)], ["b.limit"]),
                  node("Range", [const("b.0", 0), "b.limit", const("b.1", 1)], ["b.big"])],
        "outer": lambda: [node("Reshape", [image, const("b.col", [-1, 1])], ["b.c"]),
                  node("Reshape", [image, const("b.row", [1, -1])], ["b.r"]),
                  node("Add", ["b.c", "b.r"], ["b.sq"]), node("Reshape", ["b.sq", "b.col"], ["b.sqc"]),
                  node("Slice", ["b.r", const("b.from", [0]), const("b.to", [64]), const("b.axis", [1])], ["b.r64"]),
                  node("Add", ["b.sqc", "b.r64"], ["b.big"])],
    }[kind]()
    nodes += [node("Cast", ["b.big"], ["b.f"], to=TensorProto.FLOAT), node("ReduceMin", ["b.f"], ["b.min"], keepdims=0),
              node("Mul", ["b.min", "b.zero"], ["b.nothing"]), node("Add", [logits, "b.nothing"], ["b.logits"])]
    graph.initializer.append(numpy_helper.from_array(np.array(0, np.float32), "b.zero"))
    graph.node.extend(nodes)
    graph.output[0].name = "b.logits"
    save_sealed(model, path)
    return path


@pytest.mark.parametrize("kind", ["fold", "shape", "range", "outer"])
def test_a_graph_that_computes_a_huge_tensor_is_refused_within_1_gb(synthetic_student_onnx, kind, tmp_path):
    path = _computed_bomb(synthetic_student_onnx, kind, tmp_path / f"{kind}.onnx")
    assert path.stat().st_size < 1 << 20
    code, peak, output = peak_kb(sys.executable, "-m", "edge", "info", path)
    assert code == 2 and peak < MEMORY_LIMIT_KB, (peak, output)
    assert output.startswith(f"error: {path}: refused: it asks for more memory than the 768 MiB edge allows")
    assert len(output.strip().splitlines()) == 1, output  # ONNX Runtime's own error log stays silent


def test_the_memory_cap_grows_with_the_images_a_command_keeps_in_flight(synthetic_student_onnx):
    from edge.inference.ort_memory import MIN_BUDGET, expect_images, run_budget
    from edge.inference.runtime import OnnxClassifier

    image = 3 * 32 * 32 * 4
    assert run_budget(10_000, image) == MIN_BUDGET  # a small model, few images: the floor
    expect_images(1 << 16)
    assert run_budget(10_000, image) > MIN_BUDGET
    model = OnnxClassifier(synthetic_student_onnx)
    assert model.memory_cap == run_budget(synthetic_student_onnx.stat().st_size, image)
    assert model(np.zeros((1024, 3, 32, 32), np.float32)).shape == (1024, 11)
