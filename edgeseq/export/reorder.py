"""The states' reorder inside the step graph: the rows of the previous step to carry on, gathered by ONNX Runtime.

Beam search reorders every state (an RNN's h and c, a Transformer's self-attention cache) along its batch
axis at every step, and finished rows leave the batch. Done on the host, that is a copy of the whole cache
into fresh memory each step (numpy's take: ~10 ms a step for a 6-layer Marian at 64 rows, most of it page
faults); done by ONNX Runtime, it is a Gather into its own arena, on all its threads (~1.5 ms).

Input: `state_rows` (rows,) int64: for each row of this step, the row of the previous step's states it
continues, at every step (np.arange when every row continues itself). The step's other inputs (tokens,
context) already have the new rows. Every state input is replaced, for the nodes that read it, by a Gather
along the state's batch axis placed just before its first reader, so ONNX Runtime gathers each layer's
cache when that layer runs and frees it after: at most one gathered cache exists at a time besides the
step's inputs and outputs (DecoderSpec.reorder_every_step).

Bundles made before (session 4) have one If instead: `If(rows given, Gather every state, the states as they
are)`, fed an empty `state_rows` when nothing changes. That form costs as much when nothing changes (ONNX
Runtime copies a value an If branch passes through) and gathers every state at once (beam search over a
Marian held ~3.5x its cache at its peak); the runtime still drives it (DecoderSpec.reorder_every_step
False).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from edgeseq.bundle import DecoderSpec, GraphSpec, TensorSpec
from edgeseq.export.compose import reads

ROWS = "state_rows"
PREVIOUS = "previous_"  # + the model's symbol for a state input's batch axis: the rows of the previous step
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
    # a state input has the previous step's rows, not this step's: its own batch symbol, or ONNX Runtime may
    # plan the states' outputs with the inputs' row count (an fp16 step failed on the first beam step)
    by_name = {i.name: i for i in g.input}
    for st in states:
        dims = by_name[st.input].type.tensor_type.shape.dim
        if len(dims) > st.batch_axis and dims[st.batch_axis].dim_param:
            dims[st.batch_axis].dim_param = PREVIOUS + dims[st.batch_axis].dim_param
    for st in states:
        moved = f"{PREFIX}{st.input}"
        _rename_reads(g, st.input, moved)
        gather = helper.make_node(
            "Gather", [st.input, ROWS], [moved], name=f"{PREFIX}gather.{st.input}", axis=st.batch_axis
        )
        first = next(i for i, n in enumerate(g.node) if moved in reads(n))
        g.node.insert(first, gather)
    g.input.append(helper.make_tensor_value_info(ROWS, TensorProto.INT64, ["state_rows"]))
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    axis = {st.input: st.batch_axis for st in states}
    inputs = tuple(
        dataclasses.replace(
            t,
            shape=tuple(PREVIOUS + d if i == axis[t.name] and isinstance(d, str) else d for i, d in enumerate(t.shape)),
        )
        if t.name in axis
        else t
        for t in spec.inputs
    )
    spec = dataclasses.replace(spec, inputs=(*inputs, TensorSpec(ROWS, "int64", ("state_rows",))))
    return spec, dataclasses.replace(decoder, reorder_input=ROWS, reorder_every_step=True)
