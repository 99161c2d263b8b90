"""GRU nodes as matrix products, so that dynamic int8 quantization reaches their weights.

ONNX Runtime quantizes LSTM nodes dynamically (DynamicQuantizeLSTM) but has no quantized GRU, so an int8
GRU bundle kept its recurrent weights in float32. `unfold_grus` rewrites every ONNX `GRU` node whose weights
are constants into standard operators computing the same values:

- the input projection of every time step at once, X @ W^T + Wb (one MatMul on a constant weight);
- the recurrence: directly when the sequence length is statically 1 (a decoder step), else a `Scan` over
  time whose body computes h @ R^T + Rb (a MatMul on a constant weight), the gates, and keeps a row's state
  past its `sequence_lens` (outputs 0 there), as the GRU operator does; a reverse direction scans backwards.

Gate order z, r, h and `linear_before_reset=1` (what PyTorch exports); nodes with other activations, a clip,
`linear_before_reset=0` or batch-first layout are left as they are.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Builder:
    """Collects nodes and initializers under a unique prefix."""

    def __init__(self, prefix: str, graph: onnx.GraphProto) -> None:
        self.prefix, self.graph, self.nodes, self.count = prefix, graph, [], 0

    def name(self, what: str) -> str:
        self.count += 1
        return f"{self.prefix}{what}.{self.count}"

    def const(self, array: np.ndarray, what: str) -> str:
        name = self.name(what)
        self.graph.initializer.append(numpy_helper.from_array(np.array(array, order="C"), name))  # 0-d stays 0-d
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, nodes: list | None = None, **attrs) -> str:
        out = out or self.name(op_type.lower())
        (self.nodes if nodes is None else nodes).append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


def _cell(b: _Builder, nodes: list, gx: str, h: str, r_t: str, rb: str, hidden: int) -> str:
    """One GRU step (linear_before_reset=1) from gx = x W^T + Wb (B, 3H) and state h (B, H): the new state."""
    gh = b.op("Add", [b.op("MatMul", [h, r_t], nodes=nodes), rb], nodes=nodes)
    sizes = b.const(np.array([hidden] * 3, dtype=np.int64), "split")
    zx, rx, nx = (b.name(f"gx{i}") for i in range(3))
    zh, rh, nh = (b.name(f"gh{i}") for i in range(3))
    nodes.append(helper.make_node("Split", [gx, sizes], [zx, rx, nx], axis=-1))
    nodes.append(helper.make_node("Split", [gh, sizes], [zh, rh, nh], axis=-1))
    z = b.op("Sigmoid", [b.op("Add", [zx, zh], nodes=nodes)], nodes=nodes)
    r = b.op("Sigmoid", [b.op("Add", [rx, rh], nodes=nodes)], nodes=nodes)
    n = b.op("Tanh", [b.op("Add", [nx, b.op("Mul", [r, nh], nodes=nodes)], nodes=nodes)], nodes=nodes)
    return b.op("Add", [n, b.op("Mul", [z, b.op("Sub", [h, n], nodes=nodes)], nodes=nodes)], nodes=nodes)  # (1-z)n+zh


def _static_length(model: onnx.ModelProto, name: str) -> int | None:
    for v in [*model.graph.value_info, *model.graph.input]:
        if v.name == name and v.type.tensor_type.shape.dim:
            d = v.type.tensor_type.shape.dim[0]
            return d.dim_value if d.HasField("dim_value") else None
    return None


def _unfoldable(node: onnx.NodeProto, init: dict) -> bool:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    acts = [a.decode() if isinstance(a, bytes) else a for a in attrs.get("activations", [])]
    return (
        attrs.get("linear_before_reset", 0) == 1
        and attrs.get("layout", 0) == 0
        and "clip" not in attrs
        and acts in ([], ["Sigmoid", "Tanh"], ["Sigmoid", "Tanh"] * 2)
        and all(i in init for i in node.input[1:3])
        and (len(node.input) < 4 or not node.input[3] or node.input[3] in init)
    )


def unfold_grus(model: onnx.ModelProto) -> int:
    """Rewrite the GRU nodes of `model`'s main graph in place; returns how many were rewritten."""
    inferred = onnx.shape_inference.infer_shapes(model)
    init = {t.name: t for t in model.graph.initializer}
    out, changed = [], 0
    for index, node in enumerate(model.graph.node):
        if node.op_type != "GRU" or not _unfoldable(node, init):
            out.append(node)
            continue
        out.extend(_unfold(node, init, model.graph, f"gru{index}.", _static_length(inferred, node.input[0])))
        changed += 1
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(out)
        used = {i for n in model.graph.node for i in n.input} | _subgraph_inputs(model.graph)
        kept = [t for t in model.graph.initializer if t.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return changed


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for n in graph.node:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                names |= {i for m in a.g.node for i in m.input} | _subgraph_inputs(a.g)
    return names


def _unfold(node: onnx.NodeProto, init: dict, graph: onnx.GraphProto, prefix: str, length: int | None) -> list:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    hidden = int(attrs["hidden_size"])
    ins = list(node.input) + [""] * (6 - len(node.input))
    x, w_name, r_name, b_name, lengths, initial = ins[:6]
    w, r = numpy_helper.to_array(init[w_name]), numpy_helper.to_array(init[r_name])
    bias = numpy_helper.to_array(init[b_name]) if b_name else np.zeros((w.shape[0], 6 * hidden), np.float32)
    y_name = node.output[0] if len(node.output) > 0 else ""
    yh_name = node.output[1] if len(node.output) > 1 else ""
    b = _Builder(prefix, graph)
    dirs = ["reverse"] if direction == "reverse" else ["forward", "reverse"][: w.shape[0]]
    ys, hs = [], []
    for d, way in enumerate(dirs):
        w_t = b.const(w[d].T, "w")  # (I, 3H)
        r_t = b.const(r[d].T, "r")  # (H, 3H)
        wb, rb = b.const(bias[d, : 3 * hidden], "wb"), b.const(bias[d, 3 * hidden :], "rb")
        gx = b.op("Add", [b.op("MatMul", [x, w_t]), wb])  # (T, B, 3H), every step at once
        if initial:
            h0 = b.op("Gather", [initial, b.const(np.array(d, dtype=np.int64), "dir")], axis=0)  # (B, H)
        else:
            shape = b.op("Shape", [gx])
            batch = b.op("Slice", [shape, b.const(np.array([1]), "s"), b.const(np.array([2]), "e")])
            dims = b.op("Concat", [batch, b.const(np.array([hidden]), "h")], axis=0)
            h0 = b.op("ConstantOfShape", [dims], value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
        if length == 1 and not lengths:
            step = b.op("Squeeze", [gx, b.const(np.array([0]), "axis")])
            h_last = _cell(b, b.nodes, step, h0, r_t, rb, hidden)
            y = b.op("Unsqueeze", [h_last, b.const(np.array([0]), "axis")])  # (1, B, H)
        else:
            h_last, y = _scan(b, gx, h0, r_t, rb, hidden, lengths, way == "reverse")
        ys.append(b.op("Unsqueeze", [y, b.const(np.array([1]), "axis")]))  # (T, 1, B, H)
        hs.append(b.op("Unsqueeze", [h_last, b.const(np.array([0]), "axis")]))  # (1, B, H)
    if y_name:
        b.op("Concat", ys, out=y_name, axis=1) if len(ys) > 1 else b.op("Identity", ys, out=y_name)
    if yh_name:
        b.op("Concat", hs, out=yh_name, axis=0) if len(hs) > 1 else b.op("Identity", hs, out=yh_name)
    return b.nodes


def _scan(b: _Builder, gx: str, h0: str, r_t: str, rb: str, hidden: int, lengths: str, reverse: bool):
    """A Scan over time: the last state (B, H) and every step's output (T, B, H), in time order."""
    body: list = []
    h, xt, t, h_next, y_t = (b.name(n) for n in ("h", "gx_t", "t", "h_next", "y_t"))  # unique in the model
    new = _cell(b, body, xt, h, r_t, rb, hidden)
    inputs = [
        helper.make_tensor_value_info(h, TensorProto.FLOAT, None),
        helper.make_tensor_value_info(xt, TensorProto.FLOAT, None),
    ]
    scan_inputs = [gx]
    if lengths:
        # a row past its length keeps its state and outputs zeros, as the GRU operator does
        valid = b.op("Unsqueeze", [b.op("Less", [t, lengths], nodes=body), b.const(np.array([1]), "axis")], nodes=body)
        keep = b.op("Where", [valid, new, h], nodes=body)
        out = b.op("Where", [valid, new, b.const(np.zeros(1, np.float32), "zero")], nodes=body)
        inputs.append(helper.make_tensor_value_info(t, TensorProto.INT32, []))
        count = b.op("Gather", [b.op("Shape", [gx]), b.const(np.array(0, dtype=np.int64), "i")])
        scan_inputs.append(
            b.op(
                "Range",
                [
                    b.const(np.array(0, np.int32), "zero"),
                    b.op("Cast", [count], to=TensorProto.INT32),
                    b.const(np.array(1, np.int32), "one"),
                ],
            )
        )
    else:
        keep, out = new, b.op("Identity", [new], nodes=body)
    body.append(helper.make_node("Identity", [keep], [h_next]))
    body.append(helper.make_node("Identity", [out], [y_t]))
    graph = helper.make_graph(
        body,
        b.name("body"),
        inputs,
        [
            helper.make_tensor_value_info(h_next, TensorProto.FLOAT, None),
            helper.make_tensor_value_info(y_t, TensorProto.FLOAT, None),
        ],
    )
    last, ys = b.name("h_last"), b.name("y")
    directions = [1 if reverse else 0] * len(scan_inputs)
    b.nodes.append(
        helper.make_node(
            "Scan",
            [h0, *scan_inputs],
            [last, ys],
            body=graph,
            num_scan_inputs=len(scan_inputs),
            scan_input_directions=directions,
            scan_output_directions=[1 if reverse else 0],
        )
    )
    return last, ys
