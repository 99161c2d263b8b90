"""generate.onnx, one source: an RNN decoder's input projection folded into its embedding table.

A decoder step whose first RNN layer (ONNX GRU or LSTM) reads nothing but the embedding of the previous
token spends a third of that layer on X * W^T, a (1 x E) x (E x gates*H) product, at every token. For one
source it can be looked up instead: the operator adds its input bias Wb outside every gate's nonlinearity and
reset gating (ONNX's GRU and LSTM equations, either linear_before_reset), so with X * W^T zero (X a zero of
input size 1) a bias row of E[token] * W^T + Wb gives the same gates. The table of those rows,
[E * W^T + Wb, Rb] (V, 2 * gates * H), is computed in the main graph from initializers only, so ONNX Runtime
folds it to a constant when it loads the graph; each token then costs one Gather of a row (GRU of latency.py:
~30 -> ~21 us an iteration). B is one row for the whole batch, hence one source only (generate_loops'
greedy_single). Results agree with the unfolded step to float rounding (the product is summed in another
order: ~1e-7).

Only where it is plainly that: float32 initializers, a forward RNN of the default layout whose X comes from a
Gather of the tokens input through reshapes only (a model that scales the embedding, or concatenates
attention context or input feeding to it, keeps its step as it is), X, W and B read by no other node, and a
table of at most FOLD_TABLE_BYTES: vocabularies of characters or phonemes, not of subwords.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from edgeseq.export.compose import Nodes, reads

FOLD_TABLE_BYTES = 4 << 20
RELAYOUT = {"Unsqueeze", "Squeeze", "Reshape", "Transpose", "Identity", "Flatten"}
GATES = {"GRU": 3, "LSTM": 4}


@dataclass(frozen=True)
class FoldedInput:
    """What the single-source Loop wires into the step: the RNN's X, W and B (step graph names) and their
    replacements (main-graph values; B's is a row of `table` gathered by the token)."""

    x: str
    w: str
    b: str
    zero_x: str  # (1, 1, 1) zeros
    zero_w: str  # (1, gates * H, 1) zeros
    table: str  # (V, 2 * gates * H): each token's B

    def wiring(self, body: Nodes, tokens: str) -> dict[str, str]:
        """The step values to replace in a Loop body whose tokens input (1,) is `tokens`."""
        return {self.x: self.zero_x, self.w: self.zero_w, self.b: body.op("Gather", [self.table, tokens], axis=0)}


def fold_rnn_input(step: onnx.GraphProto, inits: dict[str, str], tokens: str, main: Nodes) -> FoldedInput | None:
    """The fold for the first RNN of `step` that takes it (its table built in `main`), or None. `inits` maps
    the step's initializer names to their lifted names; `tokens` is the step's tokens input."""
    tensors = {t.name: t for t in step.initializer}
    producer = {o: n for n in step.node for o in n.output}
    readers: dict[str, int] = {}  # how many nodes read each value (their subgraphs included)
    for n in step.node:
        for name in reads(n):
            readers[name] = readers.get(name, 0) + 1
    for node in step.node:
        if node.op_type not in GATES or len(node.input) < 4:
            continue
        x, w, b = node.input[0], node.input[1], node.input[3]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("direction", b"forward") not in (b"forward", "forward") or attrs.get("layout", 0) != 0:
            continue
        if any(readers.get(name) != 1 for name in (x, w, b)) or not {w, b} <= tensors.keys() & inits.keys():
            continue
        embedding = _embedding_of(x, producer, tokens)
        if embedding is None or embedding not in tensors.keys() & inits.keys():
            continue
        E, W, B = tensors[embedding], tensors[w], tensors[b]
        if any(t.data_type != onnx.TensorProto.FLOAT for t in (E, W, B)) or len(E.dims) != 2:
            continue
        vocab, size = E.dims
        width = GATES[node.op_type] * attrs.get("hidden_size", 0)
        if list(W.dims) != [1, width, size] or list(B.dims) != [1, 2 * width] or not width:
            continue
        if vocab * 2 * width * 4 > FOLD_TABLE_BYTES:
            continue
        return FoldedInput(x, w, b, *_table(main, inits[embedding], inits[w], inits[b], vocab, size, width))
    return None


def _embedding_of(x: str, producer: dict[str, onnx.NodeProto], tokens: str) -> str | None:
    """The embedding table whose Gather by `tokens` is `x` up to reshapes, or None."""
    while x in producer and producer[x].op_type in RELAYOUT:
        x = producer[x].input[0]
    gather = producer.get(x)
    if gather is None or gather.op_type != "Gather" or list(gather.input)[1:] != [tokens]:
        return None
    if any(a.name == "axis" and a.i != 0 for a in gather.attribute):
        return None
    return gather.input[0]


def _table(main: Nodes, E: str, W: str, B: str, vocab: int, size: int, width: int) -> tuple[str, str, str]:
    """(zero X, zero W, the table) in `main`: [E * W^T + Wb, Rb] from initializers alone (folded at load)."""
    i64 = lambda v: main.const(np.array(v, np.int64))  # noqa: E731
    bias = main.op("Reshape", [B, i64([2, width])])
    input_bias, recurrent_bias = (main.op("Gather", [bias, i64(k)], axis=0) for k in (0, 1))
    projected = main.op("Gemm", [E, main.op("Reshape", [W, i64([width, size])]), input_bias], transB=1)
    table = main.op("Concat", [projected, main.op("Expand", [recurrent_bias, i64([vocab, width])])], axis=1)
    return main.const(np.zeros((1, 1, 1), np.float32)), main.const(np.zeros((1, width, 1), np.float32)), table
