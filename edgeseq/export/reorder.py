"""The states' reorder inside the step graph: the rows of the previous step to carry on, gathered by ONNX Runtime.

Beam search reorders every state (an RNN's h and c, a Transformer's self-attention cache) along its batch
axis at every step, and finished rows leave the batch. Done on the host, that is a copy of the whole cache
into fresh memory each step (numpy's take: ~10 ms a step for a 6-layer Marian at 64 rows, most of it page
faults); done by ONNX Runtime, it is a Gather into its own arena, on all its threads (~1.5 ms).

Input: `state_rows` (rows,) int64: for each row of this step, the row of the previous step's states it
continues; empty: every row continues itself (no copy). The step's other inputs (tokens, context) already
have the new rows. Every state input is replaced, for the nodes that read it, by `If(rows given, Gather
along the state's batch axis, the state as it is)`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeseq.bundle import DecoderSpec, GraphSpec, TensorSpec
from edgeseq.export.graph_edit import topological_sort

ROWS = "state_rows"
PREFIX = "reorder."


def _rename_reads(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point every node that reads `old` (in subgraphs too, unless they declare it themselves) to `new`."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for a in node.attribute:
            for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                if old not in {i.name for i in g.input} | {t.name for t in g.initializer}:
                    _rename_reads(g, old, new)


def add_reorder(path: Path, spec: GraphSpec, decoder: DecoderSpec) -> tuple[GraphSpec, DecoderSpec]:
    """Give the step graph at `path` the `state_rows` input; return its GraphSpec and DecoderSpec with it.

    A graph that already has the name, or returns a state input unchanged as an output, is left as it is.
    """
    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    names = {v for n in g.node for v in (*n.input, *n.output)} | {i.name for i in g.input}
    states = [s for s in decoder.states if s.input in {i.name for i in g.input}]
    if not states or ROWS in names or {s.input for s in states} & {o.name for o in g.output}:
        return spec, decoder
    dtypes = {i.name: i.type.tensor_type.elem_type for i in g.input}
    then_nodes, else_nodes, then_out, else_out = [], [], [], []
    for s in states:
        moved = f"{PREFIX}{s.input}"
        _rename_reads(g, s.input, moved)
        t, e = f"{PREFIX}gather.{s.input}", f"{PREFIX}same.{s.input}"
        then_nodes.append(helper.make_node("Gather", [s.input, ROWS], [t], name=t, axis=s.batch_axis))
        else_nodes.append(helper.make_node("Identity", [s.input], [e], name=e))
        then_out.append(helper.make_tensor_value_info(t, dtypes[s.input], None))
        else_out.append(helper.make_tensor_value_info(e, dtypes[s.input], None))
    zero = numpy_helper.from_array(np.array(0, dtype=np.int64), f"{PREFIX}zero.value")
    g.node.extend(
        [
            helper.make_node("Size", [ROWS], [f"{PREFIX}size"], name=f"{PREFIX}size"),
            helper.make_node("Constant", [], [f"{PREFIX}zero"], name=f"{PREFIX}zero", value=zero),
            helper.make_node("Greater", [f"{PREFIX}size", f"{PREFIX}zero"], [f"{PREFIX}given"], name=f"{PREFIX}given"),
            helper.make_node(
                "If",
                [f"{PREFIX}given"],
                [f"{PREFIX}{s.input}" for s in states],
                name=f"{PREFIX}if",
                then_branch=helper.make_graph(then_nodes, "reorder_gather", [], then_out),
                else_branch=helper.make_graph(else_nodes, "reorder_same", [], else_out),
            ),
        ]
    )
    g.input.append(helper.make_tensor_value_info(ROWS, TensorProto.INT64, ["state_rows"]))
    topological_sort(g)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    spec = dataclasses.replace(spec, inputs=(*spec.inputs, TensorSpec(ROWS, "int64", ("state_rows",))))
    return spec, dataclasses.replace(decoder, reorder_input=ROWS)
