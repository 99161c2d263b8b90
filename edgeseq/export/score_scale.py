"""Attention's score scale folded into the query projection's weights.

Attention scales its scores: `(q @ k^T) * s`, `(q @ k^T) / c`, or `(q * s) @ k^T` with q = x @ Wq + bq.
ONNX Runtime fuses the scalar into the MatMul (FusedMatMul's alpha), and with alpha != 1 a product of ONE
query row per head (a decoder step's self-attention, and greedy decoding's cross-attention, where each source
has one row) leaves MLAS's vector kernel for its GEMM kernel: Marian small's greedy cross-attention products
131 -> 72 us (57 sources, 4 heads, 39 positions), a file of 2,000 lines 0.92x the time, beam search 0.98x,
the same output. Scaling Wq and bq instead (s (x Wq + bq) = x (s Wq) + s bq) leaves a plain product. The
scores move by roundings of the last bit (the vector kernel sums in another order; s itself is exact when
a power of two, as for head sizes 4, 16, 64 and 256).

A scale is folded only where nothing else sees the change: the chain from the projection (Gemm, or MatMul
then Add, over float32 initializers) to the scores' MatMul passes through shape-only nodes (Reshape,
Transpose, Squeeze, Unsqueeze) and the scale itself, and each of its values has that one reader. A
projection whose weights other nodes also read gets its own scaled copy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

SHAPE_ONLY = {"Reshape", "Transpose", "Squeeze", "Unsqueeze"}  # pass values on, rearranged
METADATA = {"Shape", "Size"}  # read only a value's shape: not readers of its values


class _Graph:
    """Producers, readers and constant values of one graph, for the folding below."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.graph = graph
        self.producer = {o: n for n in graph.node for o in n.output}
        self.readers: dict[str, int] = {o.name: 1 for o in graph.output}  # a graph output counts as a reader
        for n in graph.node:
            for name in [] if n.op_type in METADATA else onnx_reads(n):
                self.readers[name] = self.readers.get(name, 0) + 1
        self.init = {t.name: t for t in graph.initializer}
        self.made = 0

    def only_reader(self, name: str) -> bool:
        """Whether one node (or graph output) reads `name`'s values."""
        return self.readers.get(name, 0) == 1

    def scalar(self, name: str) -> float | None:
        """A float scalar (one element) that is an initializer or a Constant node's value, else None."""
        if name in self.init:
            tensor = self.init[name]
        else:
            node = self.producer.get(name)
            if node is None or node.op_type != "Constant" or not node.attribute or node.attribute[0].name != "value":
                return None
            tensor = node.attribute[0].t
        if tensor.data_type != onnx.TensorProto.FLOAT or int(np.prod(tensor.dims)) != 1:
            return None
        return float(numpy_helper.to_array(tensor).reshape(()))

    def weight(self, name: str) -> np.ndarray | None:
        tensor = self.init.get(name)
        if tensor is None or tensor.data_type != onnx.TensorProto.FLOAT:
            return None
        return numpy_helper.to_array(tensor)

    def scale_weight(self, node: onnx.NodeProto, index: int, factor: float) -> None:
        """node.input[index] becomes its initializer times `factor` (in place when nothing else reads it)."""
        name = node.input[index]
        weight = self.weight(name)
        scaled = (weight * np.float32(factor)).astype(np.float32)
        if np.array_equal(scaled.view(np.uint32), weight.view(np.uint32)):  # zeros (a shared zero bias)
            return
        if self.only_reader(name):
            self.init[name].CopyFrom(numpy_helper.from_array(scaled, name))
            return
        self.made += 1
        new = f"{name}.score_scaled{self.made}"
        self.graph.initializer.append(numpy_helper.from_array(scaled, new))
        self.init[new] = self.graph.initializer[-1]
        self.readers[name] -= 1
        self.readers[new] = 1
        node.input[index] = new


def onnx_reads(node: onnx.NodeProto) -> list[str]:
    """The names a node reads: its inputs and what its subgraphs read from the outer scope (all of it)."""
    names = [i for i in node.input if i]
    for a in node.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            for n in g.node:
                names += onnx_reads(n)
    return names


def _scale_of(g: _Graph, node: onnx.NodeProto, value: str) -> float | None:
    """The factor a Mul or Div node applies to `value` (one of its inputs) when the other is a scalar."""
    if node.op_type == "Mul":
        other = node.input[1] if node.input[0] == value else node.input[0]
        return g.scalar(other)
    if node.op_type == "Div" and node.input[0] == value:
        c = g.scalar(node.input[1])
        return None if not c else 1.0 / c
    return None


def _projection(g: _Graph, value: str) -> tuple[list[onnx.NodeProto], list[tuple[onnx.NodeProto, str]], float]:
    """Walk back from a MatMul input through shape-only nodes and scalar scales to the projection.

    Returns (weight nodes to scale: a Gemm, or a MatMul and its Add; scale nodes passed (node, the value they
    scale); the product of those scales), or ([], [], 1) when the chain is not foldable."""
    passed, factor = [], 1.0
    while g.only_reader(value) and value in g.producer:
        node = g.producer[value]
        if node.op_type in SHAPE_ONLY:
            value = node.input[0]
            continue
        if node.op_type in ("Mul", "Div"):
            for x in node.input[:2]:
                s = _scale_of(g, node, x)
                if s is not None and x in g.producer:
                    passed.append((node, x))
                    factor *= s
                    value = x
                    break
            else:
                return [], [], 1.0
            continue
        if node.op_type == "Gemm" and len(node.input) >= 2:
            if all(g.weight(x) is not None for x in node.input[1:]):
                return [node], passed, factor
            return [], [], 1.0
        if node.op_type == "Add":
            for x, bias in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
                mm = g.producer.get(x)
                if g.weight(bias) is not None and mm is not None and mm.op_type == "MatMul" and g.only_reader(x):
                    if g.weight(mm.input[1]) is not None:
                        return [mm, node], passed, factor
            return [], [], 1.0
        if node.op_type == "MatMul" and g.weight(node.input[1]) is not None:
            return [node], passed, factor
        return [], [], 1.0
    return [], [], 1.0


def _bypass(g: _Graph, node: onnx.NodeProto, kept: str) -> None:
    """Remove a one-output node, its readers reading `kept` instead."""
    out = node.output[0]
    for n in g.graph.node:
        for i, x in enumerate(n.input):
            if x == out:
                n.input[i] = kept
    g.graph.node.remove(node)
    g.readers[kept] = g.readers.pop(out, 0)


def fold_score_scales(model: onnx.ModelProto) -> int:
    """Fold every foldable attention score scale of `model`'s main graph into its query projection; returns
    how many scores' MatMuls were freed of a scale."""
    g = _Graph(model.graph)
    read_before = _reads(model.graph)
    folded = 0
    outputs = {o.name for o in model.graph.output}
    for mm in [n for n in model.graph.node if n.op_type == "MatMul"]:
        after = [n for n in model.graph.node if mm.output[0] in n.input]
        scale_after = None
        if len(after) == 1 and g.only_reader(mm.output[0]) and after[0].output[0] not in outputs:
            scale_after = _scale_of(g, after[0], mm.output[0])
        for side in (0, 1):
            weights, passed, factor = _projection(g, mm.input[side])
            if not weights or (scale_after is None and not passed):
                continue
            if g.weight(mm.input[1 - side]) is not None:
                break  # a projection itself (x @ W), not scores
            total = factor * (scale_after if scale_after is not None else 1.0)
            if weights[0].op_type == "Gemm":
                for i in range(1, len(weights[0].input)):
                    if weights[0].input[i]:
                        g.scale_weight(weights[0], i, total)
            else:
                g.scale_weight(weights[0], 1, total)
                if len(weights) == 2:
                    add = weights[1]
                    g.scale_weight(add, 0 if g.weight(add.input[0]) is not None else 1, total)
            for node, kept in passed:
                _bypass(g, node, kept)
            if scale_after is not None:
                _bypass(g, after[0], mm.output[0])
            folded += 1
            break
    if folded:
        _drop_unread(g, read_before)
    return folded


def _reads(graph: onnx.GraphProto) -> set[str]:
    return {name for n in graph.node for name in onnx_reads(n)} | {o.name for o in graph.output}


def _drop_unread(g: _Graph, read_before: set[str]) -> None:
    """Remove the initializers and Constant nodes that folding left without a reader (the scales)."""
    gone = read_before - _reads(g.graph) - {i.name for i in g.graph.input}
    for node in [n for n in g.graph.node if n.op_type == "Constant" and n.output[0] in gone]:
        g.graph.node.remove(node)
    for tensor in [t for t in g.graph.initializer if t.name in gone]:
        g.graph.initializer.remove(tensor)


def fold_score_scales_in(path: Path) -> int:
    """fold_score_scales on the ONNX file at `path`, rewritten in place when anything was folded."""
    model = onnx.load(str(path))
    folded = fold_score_scales(model)
    if folded:
        onnx.checker.check_model(model)
        onnx.save(model, str(path))
    return folded
