"""Read an ONNX file's bytes without the onnx package (the runtime path imports neither torch nor
onnx): a minimal protobuf walk (`fields`, also used by `edge.codec.entropy` to expand entropy-coded
files), and the non-finite weights it finds over the graph's initializers and constant tensors
(``Constant`` nodes, subgraphs included), reading only float tensors' data.

A NaN or inf weight does not always show in the logits (ReLU6 clips an infinite bias to 6), so
the runtime asks this before it runs a file. `oversized_outputs` finds the nodes whose output a constant
shape makes huge (a ``ConstantOfShape`` of 2^29 floats in a 190-byte file took 2.1 GB when ONNX Runtime
folded it at load). Bytes it cannot parse are left to ONNX Runtime.
"""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np

# TensorProto.DataType -> numpy type of its raw little-endian data (bfloat16: the top half of a float32)
_FLOAT_TYPES = {1: np.dtype("<f4"), 10: np.dtype("<f2"), 11: np.dtype("<f8"), 16: np.dtype("<u2")}
_BFLOAT16 = 16
_GRAPH, _NODE, _INITIALIZER, _NODE_ATTRIBUTE = 7, 1, 5, 5  # ModelProto.graph, GraphProto.node/.initializer
_ATTRIBUTE_TENSORS, _ATTRIBUTE_GRAPHS = (5, 10), (6, 11)  # AttributeProto t/tensors, g/graphs
_TYPE, _NAME, _RAW = 2, 8, 9  # TensorProto.data_type, .name, .raw_data
_TYPED_FIELDS = {4: 1, 10: 11, 5: None}  # float_data (FLOAT), double_data (DOUBLE), int32_data (FLOAT16/BFLOAT16)
_NODE_INPUT, _NODE_OUTPUT, _NODE_OP = 1, 2, 4  # NodeProto.input, .output, .op_type
_INT_TYPES = {6: np.dtype("<i4"), 7: np.dtype("<i8")}  # TensorProto INT32, INT64
_INT32_DATA, _INT64_DATA = 5, 7
_METADATA_PROPS = 14  # ModelProto.metadata_props: StringStringEntryProto (key 1, value 2)
# ops whose output has at least the product of one constant input's values as elements: (op, input index)
SHAPED_BY = {"ConstantOfShape": 0, "Expand": 1, "Tile": 1, "Resize": 3}
MAX_OUTPUT_ELEMENTS = 1 << 26  # 256 MB of float32: far above any constant an edge classifier folds


class Unparsable(Exception):
    """Not protobuf as ONNX writes it: ONNX Runtime will say what is wrong."""


def scan_file(path: str | Path, scan) -> list[str]:
    """``scan`` (`nonfinite_tensors`, `oversized_outputs`) of the file at ``path``, read through a memory map
    (no copy of the file)."""
    with open(path, "rb") as f:
        if Path(path).stat().st_size == 0:
            return []
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as data:
            return scan(data)


def nonfinite_tensors(data: bytes | memoryview) -> list[str]:
    """Names of the float tensors holding NaN or inf in a serialized ModelProto ([] when none, or when
    the bytes are not a model this walk can read)."""
    data, found = memoryview(data), []
    try:
        for number, value in _fields(data, 0, len(data)):
            if number == _GRAPH and isinstance(value, tuple):
                _graph(data, value, found)
    except (Unparsable, RecursionError):  # RecursionError: subgraphs nested past Python's limit
        return found
    return found


def _graph(data: memoryview, span: tuple[int, int], found: list[str]) -> None:
    for number, value in _fields(data, *span):
        if number == _INITIALIZER and isinstance(value, tuple):
            _tensor(data, value, found)
        elif number == _NODE and isinstance(value, tuple):
            for field, attribute in _fields(data, *value):
                if field == _NODE_ATTRIBUTE and isinstance(attribute, tuple):
                    _attribute(data, attribute, found)


def _attribute(data: memoryview, span: tuple[int, int], found: list[str]) -> None:
    for number, value in _fields(data, *span):
        if number in _ATTRIBUTE_TENSORS and isinstance(value, tuple):
            _tensor(data, value, found)
        elif number in _ATTRIBUTE_GRAPHS and isinstance(value, tuple):
            _graph(data, value, found)


def _tensor_fields(data: memoryview, span: tuple[int, int]) -> tuple[int, str, list]:
    """(data type, name, [(field number, value)] of its data fields) of a serialized TensorProto."""
    dtype, name, parts = 0, "", []
    for number, value in _fields(data, *span):
        if number == _TYPE and isinstance(value, int):
            dtype = value
        elif number == _NAME and isinstance(value, tuple):
            name = bytes(data[value[0]:value[1]]).decode("utf-8", "replace")
        elif number in (_RAW, _INT64_DATA, *_TYPED_FIELDS):
            parts.append((number, value))
    return dtype, name, parts


def _tensor(data: memoryview, span: tuple[int, int], found: list[str]) -> None:
    dtype, name, parts = _tensor_fields(data, span)
    parts = [(number, value) for number, value in parts if number == _RAW or number in _TYPED_FIELDS]
    if dtype in _FLOAT_TYPES and any(not np.isfinite(_values(data, number, value, dtype)).all()
                                     for number, value in parts):
        found.append(name)


def _values(data: memoryview, number: int, value, dtype: int) -> np.ndarray:
    """The floats of one data field of a tensor of ``dtype`` (empty when the field does not hold them)."""
    if number == 5:  # int32_data: fp16/bf16 bit patterns as varints
        if dtype not in (10, _BFLOAT16):
            return np.zeros(0)
        words = np.array(list(varints(data, value)) if isinstance(value, tuple) else [value], np.uint32)
        bits = words.astype(np.uint16)
    elif number == _RAW or _TYPED_FIELDS[number] == dtype:
        kind = _FLOAT_TYPES[dtype] if number == _RAW else _FLOAT_TYPES[_TYPED_FIELDS[number]]
        raw = data[value[0]:value[1]] if isinstance(value, tuple) else b""
        if not isinstance(value, tuple) or len(raw) % kind.itemsize:
            return np.zeros(0)
        bits = np.frombuffer(raw, kind)
    else:
        return np.zeros(0)
    if dtype == _BFLOAT16:
        return (bits.astype(np.uint32) << 16).view(np.float32)
    return bits.view(np.float16) if dtype == 10 and bits.dtype == np.uint16 else bits


def oversized_outputs(data: bytes | memoryview) -> list[str]:
    """``op output`` of each node of `SHAPED_BY` whose shape input is a constant (an initializer or a
    ``Constant`` node, subgraphs included) asking for more than `MAX_OUTPUT_ELEMENTS` elements."""
    data, found = memoryview(data), []
    try:
        for number, value in _fields(data, 0, len(data)):
            if number == _GRAPH and isinstance(value, tuple):
                _oversized_in(data, value, found)
    except (Unparsable, RecursionError):
        return found
    return found


def _oversized_in(data: memoryview, span: tuple[int, int], found: list[str]) -> None:
    constants, nodes = {}, []
    for number, value in _fields(data, *span):
        if number == _INITIALIZER and isinstance(value, tuple):
            constants.update(_small_ints(data, value))
        elif number == _NODE and isinstance(value, tuple):
            nodes.append(_node(data, value, found))
    for op, inputs, outputs, tensor in nodes:
        if op == "Constant" and tensor and outputs:
            constants[outputs[0]] = next(iter(tensor.values()))
    for op, inputs, outputs, _ in nodes:
        index = SHAPED_BY.get(op)
        shape = constants.get(inputs[index]) if index is not None and index < len(inputs) else None
        if shape is not None and np.prod(np.maximum(shape, 1).astype(float)) > MAX_OUTPUT_ELEMENTS:
            found.append(f"{op} {outputs[0] if outputs else '?'}")


def _node(data: memoryview, span: tuple[int, int], found: list[str]) -> tuple[str, list[str], list[str], dict]:
    """(op type, inputs, outputs, a small int tensor its attributes hold), its subgraphs searched too."""
    op, inputs, outputs, tensor = "", [], [], {}
    for number, value in _fields(data, *span):
        if not isinstance(value, tuple):
            continue
        text = bytes(data[value[0]:value[1]]).decode("utf-8", "replace")
        if number == _NODE_OP:
            op = text
        elif number == _NODE_INPUT:
            inputs.append(text)
        elif number == _NODE_OUTPUT:
            outputs.append(text)
        elif number == _NODE_ATTRIBUTE:
            for field, attribute in _fields(data, *value):
                if field in _ATTRIBUTE_TENSORS and isinstance(attribute, tuple):
                    tensor.update(_small_ints(data, attribute))
                elif field in _ATTRIBUTE_GRAPHS and isinstance(attribute, tuple):
                    _oversized_in(data, attribute, found)
    return op, inputs, outputs, tensor


def _small_ints(data: memoryview, span: tuple[int, int]) -> dict[str, np.ndarray]:
    """{name: values} of an int32/int64 tensor of at most 64 values (a shape); {} for any other tensor."""
    dtype, name, parts = _tensor_fields(data, span)
    values = [(number, value) for number, value in parts if number in (_RAW, _INT32_DATA, _INT64_DATA)]
    if dtype not in _INT_TYPES or not values:
        return {}
    ints = []
    for number, value in values:
        if number == _RAW:
            if not isinstance(value, tuple) or value[1] - value[0] > 64 * 8:
                return {}
            raw = bytes(data[value[0]:value[1]])
            if len(raw) % _INT_TYPES[dtype].itemsize:
                return {}
            ints += np.frombuffer(raw, _INT_TYPES[dtype]).tolist()
        else:
            ints += [v - (1 << 64) if v >= 1 << 63 else v
                     for v in (varints(data, value) if isinstance(value, tuple) else [value])]
    return {name: np.array(ints, np.int64)} if len(ints) <= 64 else {}


def metadata_props(data: bytes | memoryview) -> dict[str, str]:
    """The ``{key: value}`` metadata of a serialized ModelProto, read before ONNX Runtime opens it ({} when
    the bytes are not a model this walk can read)."""
    data, props = memoryview(data), {}
    try:
        for number, value in _fields(data, 0, len(data)):
            if number == _METADATA_PROPS and isinstance(value, tuple):
                entry = {field: bytes(data[text[0]:text[1]]).decode("utf-8", "replace")
                         for field, text in _fields(data, *value) if isinstance(text, tuple)}
                props[entry.get(1, "")] = entry.get(2, "")
    except Unparsable:
        return {}
    return props


def _fields(data: memoryview, start: int, end: int):
    """(field number, value) of each field in ``data[start:end]`` (`fields` without the field's span)."""
    for number, value, _ in fields(data, start, end):
        yield number, value


def fields(data: memoryview, start: int, end: int):
    """(field number, value, (first, last) byte of the whole field) of each field in ``data[start:end]``;
    the value is an int for a varint, else the (start, end) span of its bytes (fixed 32/64-bit values as
    spans too). `Unparsable` where the bytes are not protobuf."""
    position = start
    while position < end:
        first = position
        key, position = varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = varint(data, position)
        elif wire in (1, 2, 5):
            if wire == 2:
                size, position = varint(data, position)
            else:
                size = 8 if wire == 1 else 4
            value, position = (position, position + size), position + size
        else:  # groups (3, 4) are not in ONNX's schema
            raise Unparsable
        if position > end:
            raise Unparsable
        yield number, value, (first, position)


def varints(data: memoryview, span: tuple[int, int]):
    position = span[0]
    while position < span[1]:
        value, position = varint(data, position)
        yield value


def varint(data: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise Unparsable
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7
