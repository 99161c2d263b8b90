"""Dynamic int8 for embeddings and the output projection tied to them: one int8 copy, read by both.

ONNX Runtime's dynamic quantizer treats the two uses of a tied embedding apart: the Gather gets a uint8
copy of the [vocabulary, d_model] table, the output projection (a Gemm reading it transposed) an int8 copy
of its transpose, for MatMulInteger takes its weight as [d_model, vocabulary]. For Marian that is 30 MB
twice. Here each embedding is quantized once, symmetric int8 with one scale per row (per token), and:

- the Gather reads it and multiplies each gathered row by its scale;
- the projection is a QGemm (ONNX Runtime's quantized Gemm, com.microsoft; in every ONNX Runtime build)
  with transB=1 over the same int8 tensor and the same scales, per output column, after the input's
  DynamicQuantizeLinear; the bias is added after.

The projection may have been split into row blocks (export/weights.py split_projections) joined by a
Concat: the blocks are recognised by their bytes (rows of the embedding) and become one QGemm again.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

MIN_ELEMENTS = 1 << 16  # smaller embeddings are left to ONNX Runtime's quantizer


def quantize_rows(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(V, D) float32 -> (V, D) int8 and (V,) float32 scales: symmetric, one scale per row."""
    scale = np.abs(table).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    return np.clip(np.round(table / scale[:, None]), -127, 127).astype(np.int8), scale


def tie_int8(model: onnx.ModelProto) -> list[str]:
    """Quantize `model`'s embeddings and the projections tied to them in place (data loaded); returns the
    names of the nodes made, which the dynamic quantizer must leave alone."""
    g = model.graph
    init = {t.name: t for t in g.initializer}
    tables = {
        n.input[0]: numpy_helper.to_array(init[n.input[0]])
        for n in g.node
        if n.op_type == "Gather"
        and n.input[0] in init
        and _axis(n) == 0
        and init[n.input[0]].data_type == onnx.TensorProto.FLOAT
        and len(init[n.input[0]].dims) == 2
        and np.prod(init[n.input[0]].dims) >= MIN_ELEMENTS
    }
    if not tables:
        return []
    made: list[str] = []
    nodes, new_nodes = list(g.node), []
    projections = _projections(nodes, init, tables)
    for name, table in tables.items():
        q, scale = quantize_rows(table)
        g.initializer.extend(
            [
                numpy_helper.from_array(q, f"{name}.int8"),
                numpy_helper.from_array(scale, f"{name}.scale"),
                numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{name}.zero"),
            ]
        )
    for i, node in enumerate(nodes):
        if node.op_type == "Gather" and node.input[0] in tables:
            new_nodes += _gather(node, node.input[0], made)
        elif i in projections:
            if projections[i] is not None:  # (None: a block of a projection replaced at its Concat)
                new_nodes += _qgemm(*projections[i], made)
        else:
            new_nodes.append(node)
    del g.node[:]
    g.node.extend(new_nodes)
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    return made


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _gather(node: onnx.NodeProto, table: str, made: list[str]) -> list[onnx.NodeProto]:
    """Gather(table, ids) -> Gather(int8 rows) * their scales (a float32 result, as before)."""
    out, ids, base = node.output[0], node.input[1], node.name or node.output[0]
    names = [f"{base}.int8", f"{base}.float", f"{base}.scale", f"{base}.scale_axis", f"{base}.scaled"]
    made += names
    return [
        helper.make_node("Gather", [f"{table}.int8", ids], [names[0]], name=names[0], axis=0),
        helper.make_node("Cast", [names[0]], [names[1]], name=names[1], to=onnx.TensorProto.FLOAT),
        helper.make_node("Gather", [f"{table}.scale", ids], [names[2]], name=names[2], axis=0),
        helper.make_node("Unsqueeze", [names[2], f"{base}.last"], [names[3]], name=names[3]),
        helper.make_node("Mul", [names[1], names[3]], [out], name=names[4]),
        helper.make_node(
            "Constant", [], [f"{base}.last"], name=f"{base}.last", value=numpy_helper.from_array(np.array([-1]))
        ),
    ]


def _projections(nodes: list, init: dict, tables: dict[str, np.ndarray]) -> dict[int, tuple | None]:
    """Gemm(x, table, bias, transB=1) nodes over a table, whole or as row blocks joined by a Concat: node
    index -> (x, table, bias array or None, output, name) for the node to replace, None for its blocks."""
    found: dict[int, tuple | None] = {}
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}

    def gemm_over(node, table):  # rows [start, stop) of `table` that this Gemm's B holds, or None
        if node.op_type != "Gemm" or node.input[1] not in init:
            return None
        a = _attrs(node)
        if a.get("transB", 0) != 1 or a.get("transA", 0) != 0 or a.get("alpha", 1.0) != 1.0:
            return None
        b = numpy_helper.to_array(init[node.input[1]])
        if b.ndim != 2 or b.shape[1] != table.shape[1]:
            return None
        start = next((i for i in _candidates(node.input[1], b, table)), None)
        return None if start is None else (start, start + b.shape[0])

    def bias_of(node):
        if len(node.input) < 3 or not node.input[2]:
            return None
        if node.input[2] not in init:
            return False
        return numpy_helper.to_array(init[node.input[2]]).astype(np.float32).reshape(-1)

    for index, node in enumerate(nodes):
        for name, table in tables.items():
            rows = gemm_over(node, table)
            if rows == (0, table.shape[0]):
                bias = bias_of(node)
                if bias is not False and (bias is None or bias.size in (1, table.shape[0])):
                    found[index] = (node.input[0], name, bias, node.output[0], node.name or node.output[0])
            if node.op_type == "Concat" and _attrs(node).get("axis") in (1, -1):
                at = [producer.get(i) for i in node.input]
                if None in at:
                    continue
                blocks = [nodes[i] for i in at]
                spans = [gemm_over(b, table) for b in blocks]
                if None in spans or len({b.input[0] for b in blocks}) != 1:
                    continue
                if [s[0] for s in spans] != [0, *(s[1] for s in spans[:-1])] or spans[-1][1] != table.shape[0]:
                    continue
                biases = [bias_of(b) for b in blocks]
                if any(x is False for x in biases) or len({x is None for x in biases}) != 1:
                    continue
                bias = None if biases[0] is None else np.concatenate(biases)
                found |= {i: None for i in at}
                found[index] = (blocks[0].input[0], name, bias, node.output[0], node.name or node.output[0])
    return found


def _candidates(name: str, b: np.ndarray, table: np.ndarray):
    """Where `b` lies in `table` as a row range: at the start its name says (a split block), or whole."""
    starts = [0]
    if ".rows" in name:
        try:
            starts.insert(0, int(name.rsplit(".rows", 1)[1]))
        except ValueError:
            pass
    for start in starts:
        stop = start + b.shape[0]
        if stop <= table.shape[0] and np.array_equal(table[start:stop], b):
            yield start


def _qgemm(x: str, table: str, bias, out: str, base: str, made: list[str]) -> list[onnx.NodeProto]:
    """y = x @ table.T (+ bias), x quantized at run time, the table's int8 rows as the weight."""
    names = [f"{base}.quantize", f"{base}.qgemm", f"{base}.bias"]
    made += names
    q = [f"{base}.x_q", f"{base}.x_scale", f"{base}.x_zero"]
    nodes = [
        helper.make_node("DynamicQuantizeLinear", [x], q, name=names[0]),
        helper.make_node(
            "QGemm",
            [*q, f"{table}.int8", f"{table}.scale", f"{table}.zero"],
            [out if bias is None else f"{base}.unbiased"],
            name=names[1],
            domain="com.microsoft",
            transB=1,
        ),
    ]
    if bias is not None:
        nodes.insert(
            0, helper.make_node("Constant", [], [f"{base}.b"], name=f"{base}.b", value=numpy_helper.from_array(bias))
        )
        nodes.append(helper.make_node("Add", [f"{base}.unbiased", f"{base}.b"], [out], name=names[2]))
    return nodes
