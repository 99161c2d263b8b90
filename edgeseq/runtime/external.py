"""What the runtime reads of an ONNX file without onnx: the external-data files it refers to, and its
declared inputs and outputs, by parsing its protobuf.

ONNX Runtime opens whatever file a TensorProto's external_data "location" names. A bundle is untrusted
input, so the loader refuses a graph whose tensors point at anything but the bundle's own listed files.
This is a real protobuf parse (fields in any order, a repeated key or value read as protobuf does: the
last one wins) over a memory map, so a multi-GB file is not read into memory; every place a tensor can
sit is visited: initializers, sparse initializers, Constant and other node attributes, subgraphs (If,
Loop, Scan bodies), model-local functions and training graphs.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from edgeseq.errors import BundleError

# message kind -> {field number: kind of the embedded message}, for the fields that can lead to a tensor
_SCHEMA = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 3: "graph"},
    "function": {7: "node"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
}
MAX_NESTING = 64


class _Malformed(Exception):
    pass


def _varint(data, i: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if i >= end or shift > 63:
            raise _Malformed("truncated varint")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def _fields(data, start: int, end: int):
    """(field number, wire type, value start, value end or varint value) for each field of a message."""
    i = start
    while i < end:
        tag, i = _varint(data, i, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, i = _varint(data, i, end)
            yield number, wire, value, value
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 2:
            length, i = _varint(data, i, end)
            if i + length > end:
                raise _Malformed("a field runs past the end of its message")
            yield number, wire, i, i + length
            i += length
        else:
            raise _Malformed(f"unsupported wire type {wire}")
        if i > end:
            raise _Malformed("a field runs past the end of its message")


def locations_in(data) -> set[str]:
    """External-data locations in serialized ModelProto bytes (any buffer: bytes, mmap)."""
    found: set[str] = set()
    stack = [("model", 0, len(data), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > MAX_NESTING:
            raise _Malformed(f"messages nested more than {MAX_NESTING} deep")
        if kind == "entry":
            key = value = None
            for number, wire, a, b in _fields(data, start, end):
                if wire == 2 and number in (1, 2):
                    text = bytes(data[a:b]).decode("utf-8")
                    key, value = (text, value) if number == 1 else (key, text)
            if key == "location":
                found.add(value or "")
            continue
        children = _SCHEMA[kind]
        for number, wire, a, b in _fields(data, start, end):
            if wire == 2 and number in children:
                stack.append((children[number], a, b, depth + 1))
    return found


def external_data_locations(path: Path) -> set[str]:
    """The external-data file names an ONNX file refers to; a file that does not parse is refused."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size == 0:
                raise BundleError(f"{path}: empty file, not an ONNX graph")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return locations_in(data)
    except (_Malformed, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not a valid ONNX file ({e})") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: cannot read it ({e})") from None


_ELEM_TYPES = {
    1: "tensor(float)",
    10: "tensor(float16)",
    7: "tensor(int64)",
    6: "tensor(int32)",
    9: "tensor(bool)",
    11: "tensor(double)",
    3: "tensor(int8)",
    2: "tensor(uint8)",
}


class Declared:
    """A graph input or output as the file declares it (the fields of onnxruntime's NodeArg that check_io reads)."""

    def __init__(self, name: str, type: str, shape: list) -> None:
        self.name, self.type, self.shape = name, type, shape


def _value_info(data, start: int, end: int) -> Declared:
    name, elem, shape = "", 0, []
    for number, wire, a, b in _fields(data, start, end):
        if number == 1 and wire == 2:
            name = bytes(data[a:b]).decode("utf-8")
        elif number == 2 and wire == 2:  # TypeProto
            for n2, w2, a2, b2 in _fields(data, a, b):
                if n2 == 1 and w2 == 2:  # tensor_type
                    for n3, w3, a3, b3 in _fields(data, a2, b2):
                        if n3 == 1 and w3 == 0:
                            elem = a3
                        elif n3 == 2 and w3 == 2:  # shape
                            for n4, w4, a4, b4 in _fields(data, a3, b3):
                                if n4 == 1 and w4 == 2:  # one dimension: dim_value or dim_param
                                    dim = None
                                    for n5, w5, a5, b5 in _fields(data, a4, b4):
                                        if n5 == 1 and w5 == 0:
                                            dim = a5
                                        elif n5 == 2 and w5 == 2:
                                            dim = bytes(data[a5:b5]).decode("utf-8")
                                    shape.append(dim)
    return Declared(name, _ELEM_TYPES.get(elem, f"tensor(type {elem})"), shape)


def declared_io(path: Path) -> tuple[list[Declared], list[Declared]]:
    """An ONNX file's graph inputs (those that are not initializers) and outputs, without loading it."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            graph = next(((a, b) for n, w, a, b in _fields(data, 0, len(data)) if n == 7 and w == 2), None)
            if graph is None:
                raise _Malformed("no graph")
            inputs, outputs, initializers = [], [], set()
            for number, wire, a, b in _fields(data, *graph):
                if wire != 2:
                    continue
                if number == 11:
                    inputs.append(_value_info(data, a, b))
                elif number == 12:
                    outputs.append(_value_info(data, a, b))
                elif number == 5:  # an initializer: its name (field 8)
                    initializers |= {bytes(data[x:y]).decode("utf-8") for k, _, x, y in _fields(data, a, b) if k == 8}
            return [i for i in inputs if i.name not in initializers], outputs
    except (_Malformed, UnicodeDecodeError) as e:
        raise BundleError(f"{path}: not a valid ONNX file ({e})") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"{path}: cannot read it ({e})") from None
