"""One weights file for all graphs of a bundle, each distinct tensor stored once.

Tracing writes every graph with its own copy of the weights it uses. A weight used by two graphs (shared
source/target embeddings, a positional table) would then be stored twice. `share_weights` moves every
large initializer (and large Constant node) of every graph into one external-data file, keyed by content,
so identical tensors are written once and each graph points at the same bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper

WEIGHTS_FILE = "weights.bin"
ALIGN = 64  # byte alignment of each tensor in the file


@dataclass(frozen=True)
class SharingStats:
    tensors: int  # initializers moved out of the graphs
    unique: int  # distinct tensors written
    bytes_written: int
    bytes_saved: int  # bytes that duplicate copies would have taken


def share_weights(bundle: Path, graph_files: list[str], min_bytes: int = 1024) -> SharingStats:
    """Rewrite `graph_files` in `bundle` to read their large tensors from one deduplicated weights file."""
    offsets: dict[str, tuple[int, int]] = {}  # content key -> (offset, length)
    moved = saved = 0
    with open(bundle / WEIGHTS_FILE, "wb") as out:
        for name in graph_files:
            path = bundle / name
            model = onnx.load(str(path))
            _constants_to_initializers(model.graph, min_bytes)
            for tensor in model.graph.initializer:
                data = numpy_helper.to_array(tensor).tobytes()
                if len(data) < min_bytes:
                    continue
                key = f"{tensor.data_type}:{list(tensor.dims)}:{hashlib.sha256(data).hexdigest()}"
                if key in offsets:
                    saved += len(data)
                else:
                    out.write(b"\0" * (-out.tell() % ALIGN))
                    offsets[key] = (out.tell(), len(data))
                    out.write(data)
                offset, length = offsets[key]
                tensor.ClearField("raw_data")
                for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    tensor.ClearField(field)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                del tensor.external_data[:]
                for k, v in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = k, v
                moved += 1
            onnx.save(model, str(path))
            onnx.checker.check_model(str(path), full_check=True)
        written = out.tell()
    return SharingStats(moved, len(offsets), written, saved)


def _constants_to_initializers(graph: onnx.GraphProto, min_bytes: int) -> None:
    """Large Constant nodes (e.g. a sinusoidal table) become initializers, so they can be shared too."""
    keep = []
    for node in graph.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and numpy_helper.to_array(value).nbytes >= min_bytes:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
        else:
            keep.append(node)
    if len(keep) != len(graph.node):
        del graph.node[:]
        graph.node.extend(keep)
