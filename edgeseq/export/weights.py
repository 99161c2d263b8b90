"""One weights file for all graphs of a bundle, each distinct tensor stored once.

Tracing writes every graph with its own copy of the weights it uses. A weight used by two graphs (shared
source/target embeddings, a positional table) would then be stored twice. `share_weights` moves every
large initializer (and large Constant node) of every graph into one external-data file, keyed by content,
so identical tensors are written once and each graph points at the same bytes.

The layout is chosen for ONNX Runtime's memory use. Tensors of PAGE_ALIGN_BYTES or more start on a page
boundary, so ONNX Runtime maps them from the file instead of copying them: a gathered embedding then costs
only the rows that are read. `split_projections` cuts a large output projection (a Gemm over a
[vocabulary, d_model] weight) into column blocks that point at row ranges of the same bytes: ONNX Runtime
repacks a Gemm's weight at load time, and one block at a time keeps that transient small, while the
embedding the projection is tied to stays mapped, untouched, under its own name.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import numpy_helper

WEIGHTS_FILE = "weights.bin"
ALIGN = 64  # byte alignment of each small tensor in the file
PAGE = 4096  # ...and of each large one: ONNX Runtime maps external data that starts on a page boundary
PAGE_ALIGN_BYTES = 64 * 1024
SPLIT_BYTES = 32 * 1024 * 1024  # output projections larger than this are split into blocks of at most this


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
                    out.write(b"\0" * (-out.tell() % (PAGE if len(data) >= PAGE_ALIGN_BYTES else ALIGN)))
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


def split_projections(bundle: Path, graph_files: list[str], max_bytes: int | None = None) -> int:
    """Split every Gemm(transB=1) whose external [N, K] weight exceeds `max_bytes` into column blocks.

    Each block's weight is a row range of the same bytes in the weights file (nothing is written) and its
    bias, when it is a length-N initializer, a range of the bias; a Concat joins the blocks' outputs, so the
    graph computes the same values. Returns the number of Gemms split.
    """
    max_bytes = max_bytes or SPLIT_BYTES
    split = 0
    for name in graph_files:
        path = bundle / name
        model = onnx.load(str(path), load_external_data=False)
        init = {t.name: t for t in model.graph.initializer}
        nodes, changed = [], False
        for node in model.graph.node:
            blocks = _projection_blocks(node, init, max_bytes)
            if blocks is None:
                nodes.append(node)
                continue
            nodes.extend(_split_gemm(node, init, blocks, model.graph))
            changed, split = True, split + 1
        if changed:
            del model.graph.node[:]
            model.graph.node.extend(nodes)
            used = {i for n in model.graph.node for i in n.input}
            kept = [t for t in model.graph.initializer if t.name in used]
            del model.graph.initializer[:]
            model.graph.initializer.extend(kept)
            onnx.save(model, str(path))
            onnx.checker.check_model(str(path), full_check=True)
    return split


def _external(t: onnx.TensorProto) -> dict[str, str] | None:
    if t.data_location != onnx.TensorProto.EXTERNAL:
        return None
    return {e.key: e.value for e in t.external_data}


def _projection_blocks(node: onnx.NodeProto, init: dict, max_bytes: int) -> list[tuple[int, int]] | None:
    """Row ranges [(start, stop)] for a splittable Gemm, or None."""
    if node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in init:
        return None
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    weight = init[node.input[1]]
    ext = _external(weight)
    if attrs.get("transB", 0) != 1 or attrs.get("transA", 0) != 0 or ext is None or len(weight.dims) != 2:
        return None
    rows, row_bytes = weight.dims[0], int(ext["length"]) // max(weight.dims[0], 1)
    if rows * row_bytes <= max_bytes or int(ext.get("offset", 0)) % PAGE:
        return None
    step = PAGE // math.gcd(PAGE, row_bytes)  # rows per page-aligned unit: every block starts on a page
    per_block = max(step, max_bytes // row_bytes // step * step)
    return [(r, min(rows, r + per_block)) for r in range(0, rows, per_block)]


def _split_gemm(node: onnx.NodeProto, init: dict, blocks: list[tuple[int, int]], graph: onnx.GraphProto) -> list:
    weight = init[node.input[1]]
    bias = init.get(node.input[2]) if len(node.input) > 2 else None
    if bias is not None and (list(bias.dims) != [weight.dims[0]] or _external(bias) is None):
        bias = None  # a broadcast bias (scalar, or inline) is passed to every block as it is
    outputs, nodes = [], []
    for i, (start, stop) in enumerate(blocks):
        inputs = [node.input[0], _slice(graph, weight, start, stop, f"{weight.name}.rows{start}")]
        if bias is not None:
            inputs.append(_slice(graph, bias, start, stop, f"{bias.name}.rows{start}"))
        elif len(node.input) > 2:
            inputs.append(node.input[2])
        out = f"{node.output[0]}.block{i}"
        block = onnx.NodeProto()
        block.CopyFrom(node)
        block.name = f"{node.name or node.output[0]}.block{i}"
        del block.input[:]
        block.input.extend(inputs)
        del block.output[:]
        block.output.append(out)
        nodes.append(block)
        outputs.append(out)
    nodes.append(
        onnx.helper.make_node("Concat", outputs, [node.output[0]], name=f"{node.name or node.output[0]}.join", axis=1)
    )
    return nodes


def _slice(graph: onnx.GraphProto, t: onnx.TensorProto, start: int, stop: int, name: str) -> str:
    """A new initializer `name` holding rows start:stop of external tensor `t` (same file, no copy)."""
    if any(i.name == name for i in graph.initializer):  # another Gemm on the same weight made it already
        return name
    ext = _external(t)
    row_bytes = int(ext["length"]) // t.dims[0]
    part = onnx.TensorProto()
    part.name, part.data_type, part.data_location = name, t.data_type, onnx.TensorProto.EXTERNAL
    part.dims.extend([stop - start, *t.dims[1:]])
    offset = int(ext.get("offset", 0)) + start * row_bytes
    for k, v in (("location", ext["location"]), ("offset", str(offset)), ("length", str((stop - start) * row_bytes))):
        entry = part.external_data.add()
        entry.key, entry.value = k, v
    graph.initializer.append(part)
    return name
