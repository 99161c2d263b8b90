"""Building blocks for composing a bundle's graphs into one ONNX graph (export/generate_graph.py).

`Nodes` appends nodes to one graph body with names unique in the whole model. `import_graph` copies a
graph's nodes into another graph under a prefix, its inputs wired to given values; its initializers are
lifted to the top-level graph once (so copies of one graph in several subgraphs share them, and tensors
stored in the bundle's weights.bin stay there: each initializer keeps its external-data location).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import count

import numpy as np
import onnx
from onnx import helper, numpy_helper

_ids = count()


class Nodes:
    """The nodes of one graph body; `opset` decides the form of the Reduce* operators."""

    def __init__(self, prefix: str, opset: int) -> None:
        self.prefix, self.opset, self.nodes = prefix, opset, []
        self._consts: dict[tuple, str] = {}  # one Constant per distinct value in this body

    def name(self, hint: str) -> str:
        return f"{self.prefix}{hint}.{next(_ids)}"

    def op(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1, **attrs) -> str | list[str]:
        """Append a node; returns its output name (one output) or names."""
        name = self.name(op_type.lower())
        outs = [f"{name}.{i}" for i in range(outputs)] if isinstance(outputs, int) else list(outputs)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if len(outs) == 1 else outs

    def const(self, value, dtype=None) -> str:
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            out = self._consts[key] = self.name("const")
            tensor = numpy_helper.from_array(array, out)
            self.nodes.append(helper.make_node("Constant", [], [out], name=out, value=tensor))
        return self._consts[key]

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: int = 0) -> str:
        """A Reduce* node in the form of this opset (axes as an input from 18, ReduceSum from 13)."""
        if self.opset >= 18 or (op_type == "ReduceSum" and self.opset >= 13):
            return self.op(op_type, [x, self.const(list(axes), np.int64)], keepdims=keepdims)
        return self.op(op_type, [x], axes=list(axes), keepdims=keepdims)

    def identity(self, x: str, out: str) -> str:
        self.nodes.append(helper.make_node("Identity", [x], [out], name=self.name("identity")))
        return out

    def outputs(self, values: Sequence[str], names: Sequence[str]) -> list[str]:
        """Names for `values` as this body's outputs: a value one of its nodes computes is an output as it
        is, the first time; any other (a body input, an outer value, a repeat) goes through an Identity
        named from `names`. Inside a Loop an Identity runs every iteration (about a microsecond each)."""
        made = {o for n in self.nodes for o in n.output}
        out, used = [], set()
        for x, name in zip(values, names, strict=True):
            out.append(x if x in made and x not in used else self.identity(x, name))
            used.add(out[-1])
        return out


def value(name: str, elem_type: int) -> onnx.ValueInfoProto:
    """A value of a tensor type and unknown shape (subgraph inputs and outputs)."""
    return helper.make_tensor_value_info(name, elem_type, None)


def scalar(name: str, elem_type: int) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, [])


def elem_type(dtype: str) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


class Initializers:
    """The top-level graph's initializers, one per distinct tensor (external data by location and offset)."""

    def __init__(self) -> None:
        self.tensors: list[onnx.TensorProto] = []
        self.by_key: dict[tuple, str] = {}

    def add(self, tensor: onnx.TensorProto, name: str) -> str:
        """Keep `tensor` under `name`, or return the name of the same stored tensor kept before."""
        key = None
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            key = (tensor.data_type, tuple(tensor.dims), tuple((e.key, e.value) for e in tensor.external_data))
        if key is not None and key in self.by_key:
            return self.by_key[key]
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = name
        self.tensors.append(copy)
        if key is not None:
            self.by_key[key] = name
        return name


def lift_initializers(graph: onnx.GraphProto, prefix: str, store: Initializers) -> dict[str, str]:
    """Put `graph`'s initializers into `store`; returns their names there."""
    return {t.name: store.add(t, prefix + t.name) for t in graph.initializer}


def import_graph(
    graph: onnx.GraphProto,
    into: Nodes,
    prefix: str,
    inputs: dict[str, str],
    initializers: dict[str, str],
    outputs: Sequence[str] | None = None,
) -> dict[str, str]:
    """Copy `graph`'s nodes into `into`, every name prefixed, except its inputs (wired to `inputs`) and its
    initializers (`initializers`: their lifted names). With `outputs`, only the nodes those outputs need
    are copied. `inputs` may also wire values that nodes of `graph` compute: those nodes are left out.
    Returns each graph output's name in the copy."""
    nodes = [n for n in graph.node if not set(n.output) <= inputs.keys()]
    if outputs is not None:
        nodes = _needed(nodes, outputs)
    needed = {x for n in nodes for x in reads(n)}
    missing = [i.name for i in graph.input if i.name not in inputs and i.name not in initializers and i.name in needed]
    if missing:
        raise ValueError(f"graph {graph.name}: no value for inputs {missing}")
    fixed = {**initializers, **inputs}

    def rename(name: str) -> str:
        return "" if name == "" else fixed.get(name, prefix + name)

    for node in nodes:
        into.nodes.append(_renamed(node, rename))
    return {o.name: rename(o.name) for o in graph.output}


def _needed(nodes: Sequence[onnx.NodeProto], outputs: Sequence[str]) -> list[onnx.NodeProto]:
    """The nodes that `outputs` depend on, in graph order."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    keep, todo = set(), [producer[o] for o in outputs if o in producer]
    while todo:
        i = todo.pop()
        if i in keep:
            continue
        keep.add(i)
        todo += [producer[x] for x in reads(nodes[i]) if x in producer]
    return [n for i, n in enumerate(nodes) if i in keep]


def reads(node: onnx.NodeProto) -> set[str]:
    """A node's inputs and what its subgraphs read (outer names among them)."""
    names = set(node.input)
    for a in node.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            for n in g.node:
                names |= reads(n)
    return names


def _renamed(node: onnx.NodeProto, rename: Callable[[str], str]) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    copy.name = rename(node.name or f"{node.op_type}.{next(_ids)}")
    copy.input[:] = [rename(n) for n in node.input]
    copy.output[:] = [rename(n) for n in node.output]
    for a in copy.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            _rename_subgraph(a.g, rename)
        elif a.type == onnx.AttributeProto.GRAPHS:
            for g in a.graphs:
                _rename_subgraph(g, rename)
    return copy


def _rename_subgraph(g: onnx.GraphProto, rename: Callable[[str], str]) -> None:
    """A subgraph's own names and its reads of outer names, renamed alike (names are unique in a model)."""
    for v in (*g.input, *g.output, *g.value_info):
        v.name = rename(v.name)
    for t in g.initializer:
        t.name = rename(t.name)
    nodes = [_renamed(n, rename) for n in g.node]
    del g.node[:]
    g.node.extend(nodes)


def opset_imports(models: Sequence[onnx.ModelProto]) -> list[onnx.OperatorSetIdProto]:
    """Every domain the models use, at the highest version any of them imports."""
    versions: dict[str, int] = {}
    for m in models:
        for o in m.opset_import:
            domain = "" if o.domain == "ai.onnx" else o.domain
            versions[domain] = max(versions.get(domain, 0), o.version)
    return [helper.make_opsetid(d, v) for d, v in sorted(versions.items())]
