"""decoder_step.one_row.onnx: a dynamic-int8 step for one row at a time, its weight products as GEMVs.

One row (greedy decoding of one source: the latency case) makes every weight product a vector-matrix product:
the step reads all its int8 weights once per token (a Marian base: 51 MB) and does one multiply-add per
byte, so its time is memory bandwidth. ONNX Runtime's quantized GEMM (QGemm, MatMulInteger) is built for
matrices: for one row it reads its packed weights at about half the rate its GEMV kernel does, MatMulNBits
(com.microsoft; 8 bits, int8 products, accuracy_level 4). Measured on a Marian base (2 threads): the tied output
projection 1.38 -> 1.15 ms with the caches flushed, the int8 greedy step 2.7-2.9 -> 2.2-2.4 ms. For two rows
and more MatMulNBits is slower (4 rows about even, 256 rows 2x slower), so the batched step keeps its
operators and this graph is a second one, run by the loop only for steps of one row (runtime/generator.py).

The weights stay where they are: MatMulNBits takes unsigned bytes with a zero point of 128, and each one is
derived in the graph from the step's own int8 initializer (Cast to uint8, wrapping, then + 128: q + 128 for
every int8 q), with its scales, from initializers only, so ONNX Runtime folds them to constants when it loads
the graph and the bundle holds no second copy. Only this graph's session holds the unsigned copy, and it is
loaded only when a step of one row is run.

What is replaced, in the step's main graph (not in subgraphs):
- QGemm(transB=1) over an int8 [N, K] initializer with per-row (or one) scale and zero points of 0, without
  bias or output quantization (tied_int8.py's output projection), after a DynamicQuantizeLinear of x;
- MatMulInteger(DynamicQuantizeLinear(x), int8 [K, N] initializer, zero point 0) -> Cast(float) -> Mul by
  (x's scale * the weight's one scale) (ONNX Runtime's dynamic quantizer's pattern);
with K a multiple of 16. Anything else is left as it is. A product's bias Add becomes its bias input, and
products of one input (an attention's query, key and value) become one, its output split. The products agree
with the batched step's to int8 rounding (x is quantized per block of K, symmetric, instead of per tensor):
checked at quantize time and by the parity harness's batch-1 sequences (export/parity.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeseq.bundle import ONE_ROW as GRAPH
from edgeseq.bundle import GraphSpec, Manifest, file_sha256
from edgeseq.export.compose import reads
from edgeseq.export.graph_edit import topological_sort

FILE = "decoder_step.one_row.onnx"
MS = "com.microsoft"
MAX_BLOCK = 256  # block (along K) of MatMulNBits: the largest power of two dividing K, at most this


def with_one_row(folder: Path, m: Manifest) -> Manifest:
    """`m` with the one-row step graph written into `folder` beside its decoder_step, if that step has int8
    weight products to replace (else `m` as it is)."""
    step = m.graphs["decoder_step"]
    one = one_row_step(onnx.load(str(folder / step.file), load_external_data=False), str(folder))
    if one is None:
        return m
    onnx.save(one, str(folder / FILE))
    onnx.checker.check_model(str(folder / FILE), full_check=False)
    spec = GraphSpec(FILE, step.inputs, step.outputs, file_sha256(folder / FILE))
    return dataclasses.replace(m, graphs={**m.graphs, GRAPH: spec})


def check_one_row(bundle, sources: Sequence[Sequence[int]], max_new_tokens: int) -> dict:
    """Each source decoded alone (greedy) with the one-row graph and with decoder_step: the share of sources
    whose tokens are identical (int8 rounding differs between the two: near ties may part, as between
    generate.onnx and the loop, so at least generate_check's int8 share must agree)."""
    from edgeseq.export.generate_check import TOLERANCE
    from edgeseq.runtime.generator import OrtBackend
    from edgeseq.runtime.loop import decode
    from edgeseq.runtime.options import DecodingOptions

    options = DecodingOptions(max_new_tokens=max_new_tokens)
    spec = bundle.manifest.decoder
    runs = [OrtBackend(bundle, one_row=flag) for flag in (True, False)]
    one, batched = ([decode(b, spec, [s], options)[0][0].tokens for s in sources] for b in runs)
    agreed = sum(a == b for a, b in zip(one, batched))
    first = next((i for i, (a, b) in enumerate(zip(one, batched)) if a != b), None)
    return {
        "agreed": agreed,
        "sources": len(sources),
        "first_difference": None if first is None else f"source {first}: {one[first]} vs {batched[first]}",
        "ok": agreed >= TOLERANCE["int8"][0] * len(sources),
    }


def one_row_step(model: onnx.ModelProto, base_dir: str) -> onnx.ModelProto | None:
    """`model` (a dynamic-int8 step graph whose external data lie in `base_dir`, not loaded) with its int8
    weight products as MatMulNBits; None if it has none to replace."""
    g = model.graph
    init = {t.name: t for t in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for name in reads(n):
            readers.setdefault(name, []).append(n)
    small = _SmallArrays(init, base_dir)
    made: dict[int, list[onnx.NodeProto]] = {}  # index of the node replaced -> the nodes replacing it
    views: list[onnx.TensorProto] = []  # weights under the shapes the folding starts from
    for i, node in enumerate(g.node):
        new = None
        if node.op_type == "QGemm" and node.domain == MS:
            new = _from_qgemm(node, init, producer, small, views)
        elif node.op_type == "MatMulInteger":
            new = _from_matmul_integer(node, init, producer, readers, small, views)
        if new is not None:
            made[i] = new
    if not made:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(model)
    nodes = [n for i, n in enumerate(g.node) if i not in made]
    targets = {new[-1].output[0] for new in made.values()}
    nodes = [n for n in nodes if not set(n.output) & targets]  # the Mul a MatMulInteger's chain ends in
    nodes += [n for new in made.values() for n in new]
    outputs = {o.name for o in g.output}
    nodes = _side_by_side(_with_bias(nodes, init, outputs), init)
    del out.graph.node[:]
    out.graph.node.extend(_pruned(nodes, outputs))
    out.graph.initializer.extend(views)
    topological_sort(out.graph)
    if not any(o.domain == MS for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS, 1))
    return out


class _SmallArrays:
    """Initializer values for the checks (zero points, scales: small), read from external data if there."""

    def __init__(self, init: dict[str, onnx.TensorProto], base_dir: str) -> None:
        self.init, self.base_dir = init, base_dir

    def __call__(self, name: str, max_elements: int = 1 << 20) -> np.ndarray | None:
        t = self.init.get(name)
        if t is None or int(np.prod(t.dims, dtype=np.int64)) > max_elements:
            return None
        return numpy_helper.to_array(t, self.base_dir)


def _block(k: int) -> int | None:
    block = min(k & -k, MAX_BLOCK)
    return block if block >= 16 else None


def _from_qgemm(node, init, producer, small, views) -> list[onnx.NodeProto] | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    inputs = list(node.input) + [""] * (9 - len(node.input))
    if attrs.get("transB", 0) != 1 or attrs.get("transA", 0) != 0 or any(inputs[6:9]):
        return None
    if float(attrs.get("alpha", 1.0)) != 1.0:
        return None
    dql = producer.get(inputs[0])
    if dql is None or dql.op_type != "DynamicQuantizeLinear" or list(dql.output[:3]) != inputs[:3]:
        return None
    w = init.get(inputs[3])
    if w is None or w.data_type != onnx.TensorProto.INT8 or len(w.dims) != 2:
        return None
    n, k = w.dims
    scale, zero = small(inputs[4]), small(inputs[5])
    if scale is None or zero is None or scale.size not in (1, n) or np.any(zero != 0) or _block(k) is None:
        return None
    return _nbits(dql.input[0], w, False, inputs[4], scale.size, node.output[0], node.name, views)


def _from_matmul_integer(node, init, producer, readers, small, views) -> list[onnx.NodeProto] | None:
    if len(node.input) < 4:
        return None
    a, w_name, a_zero, w_zero = node.input[:4]
    dql = producer.get(a)
    w = init.get(w_name)
    if dql is None or dql.op_type != "DynamicQuantizeLinear" or dql.output[0] != a or dql.output[2] != a_zero:
        return None
    if w is None or w.data_type != onnx.TensorProto.INT8 or len(w.dims) != 2:
        return None
    zero = small(w_zero)
    if zero is None or zero.size != 1 or np.any(zero != 0):
        return None
    cast = _only_reader(node.output[0], readers)
    to = {a.name: helper.get_attribute_value(a) for a in cast.attribute}.get("to") if cast else None
    if cast is None or cast.op_type != "Cast" or to != onnx.TensorProto.FLOAT:
        return None
    mul = _only_reader(cast.output[0], readers)
    if mul is None or mul.op_type != "Mul":
        return None
    factor = mul.input[1] if mul.input[0] == cast.output[0] else mul.input[0]
    scales = producer.get(factor)  # x's scale * the weight's one scale
    if scales is None or scales.op_type != "Mul" or dql.output[1] not in scales.input:
        return None
    w_scale = scales.input[1] if scales.input[0] == dql.output[1] else scales.input[0]
    ws = small(w_scale)
    if ws is None or ws.size != 1 or _block(w.dims[0]) is None:
        return None
    return _nbits(dql.input[0], w, True, w_scale, 1, mul.output[0], node.name, views)


def _only_reader(value: str, readers) -> onnx.NodeProto | None:
    found = readers.get(value, [])
    return found[0] if len(found) == 1 else None


def _nbits(x, weight, transposed, scale, scales, out, hint, views) -> list[onnx.NodeProto]:
    """Nodes computing MatMulNBits(x, `weight` as blocks of unsigned bytes, scales) into `out`: `weight` an
    int8 [N, K] initializer, or [K, N] if `transposed`; `scale` has `scales` elements (1 or N). The weight is
    read as [N, blocks, block] ([blocks, block, N] transposed) through a view of its bytes where it lies in
    weights.bin (appended to `views`): every step of the folding is a copy ONNX Runtime may hold until the
    graph is loaded (a Marian base: 51 MB each), so there are as few as can be (Cast, Add; Transpose first
    if transposed)."""
    k, n = weight.dims if transposed else reversed(weight.dims)
    block = _block(k)
    blocks = k // block
    p = f"one_row/{hint or out}/"
    nodes: list[onnx.NodeProto] = []

    def const(name, value):
        tensor = numpy_helper.from_array(np.asarray(value), p + name)
        nodes.append(helper.make_node("Constant", [], [p + name], name=p + name, value=tensor))
        return p + name

    dims = [blocks, block, n] if transposed else [n, blocks, block]
    if weight.data_location == onnx.TensorProto.EXTERNAL:
        view = onnx.TensorProto(name=p + "w", data_type=weight.data_type, dims=dims)
        view.data_location = onnx.TensorProto.EXTERNAL
        view.external_data.extend(weight.external_data)
        views.append(view)
        rows = view.name
    else:
        rows = p + "w"
        shape = const("dims", np.array(dims, np.int64))
        nodes.append(helper.make_node("Reshape", [weight.name, shape], [rows], name=rows))
    if transposed:
        nodes.append(helper.make_node("Transpose", [rows], [p + "t"], name=p + "t", perm=[2, 0, 1]))
        rows = p + "t"
    nodes.append(helper.make_node("Cast", [rows], [p + "u"], name=p + "u", to=onnx.TensorProto.UINT8))
    nodes.append(helper.make_node("Add", [p + "u", const("128", np.uint8(128))], [p + "B"], name=p + "B"))
    # one scale per block: each row's (or the one) scale repeated
    per_row = p + "s1"
    s_shape = const("s_shape", np.array([scales, 1], np.int64))
    nodes.append(helper.make_node("Reshape", [scale, s_shape], [per_row], name=per_row))
    grid = const("grid", np.array([n, blocks], np.int64))
    nodes.append(helper.make_node("Expand", [per_row, grid], [p + "s2"], name=p + "s2"))
    flat = const("flat", np.array([-1], np.int64))
    nodes.append(helper.make_node("Reshape", [p + "s2", flat], [p + "S"], name=p + "S"))
    nodes.append(
        helper.make_node(
            "MatMulNBits",
            [x, p + "B", p + "S"],
            [out],
            name=p + "gemv",
            domain=MS,
            K=k,
            N=n,
            bits=8,
            block_size=block,
            accuracy_level=4,
        )
    )
    return nodes


def _with_bias(nodes: list[onnx.NodeProto], init, outputs: set[str]) -> list[onnx.NodeProto]:
    """Each MatMulNBits whose one reader is an Add of a float [N] initializer takes it as its bias input: a
    node less for each product (every ONNX Runtime node costs microseconds, a token has ~50 products)."""
    readers = _readers(nodes)
    dropped = set()
    for node in nodes:
        if node.op_type != "MatMulNBits" or node.output[0] in outputs:
            continue
        found = readers.get(node.output[0], [])
        add = found[0] if len(found) == 1 and found[0].op_type == "Add" else None
        if add is None:
            continue
        bias = init.get(add.input[1] if add.input[0] == node.output[0] else add.input[0])
        n = {a.name: helper.get_attribute_value(a) for a in node.attribute}["N"]
        if bias is None or bias.data_type != onnx.TensorProto.FLOAT or list(bias.dims) != [n]:
            continue
        node.input.extend(["", "", bias.name])
        node.output[0] = add.output[0]
        dropped.add(id(add))
    return [n for n in nodes if id(n) not in dropped]


def _side_by_side(nodes: list[onnx.NodeProto], init) -> list[onnx.NodeProto]:
    """MatMulNBits nodes of one input (an attention's query, key and value projections) as one, over their
    weights, scales and biases joined (in the folding) and its output split: one kernel call instead of
    three, each of which costs its threads' start."""
    groups: dict[tuple, list[onnx.NodeProto]] = {}
    for node in nodes:
        if node.op_type == "MatMulNBits" and node.name.startswith("one_row/"):
            a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
            key = (node.input[0], a["K"], a["block_size"], len(node.input) > 5)
            groups.setdefault(key, []).append(node)
    joined, made = set(), []
    for (x, k, block, biased), group in groups.items():
        if len(group) < 2:
            continue
        sizes = [{a.name: helper.get_attribute_value(a) for a in g.attribute}["N"] for g in group]
        p = f"{group[0].name}/joined/"
        parts = {"B": 1, "S": 2, **({"bias": 5} if biased else {})}  # joined along axis 0
        for name, i in parts.items():
            made.append(helper.make_node("Concat", [g.input[i] for g in group], [p + name], name=p + name, axis=0))
        inputs = [x, p + "B", p + "S"] + (["", "", p + "bias"] if biased else [])
        made.append(
            helper.make_node(
                "MatMulNBits", inputs, [p + "y"], name=p + "gemv", domain=MS,
                K=k, N=sum(sizes), bits=8, block_size=block, accuracy_level=4,
            )
        )  # fmt: skip
        split = numpy_helper.from_array(np.array(sizes, np.int64), p + "sizes")
        made.append(helper.make_node("Constant", [], [p + "sizes"], name=p + "sizes", value=split))
        outs = [g.output[0] for g in group]
        made.append(helper.make_node("Split", [p + "y", p + "sizes"], outs, name=p + "split", axis=-1))
        joined |= {id(g) for g in group}
    return [n for n in nodes if id(n) not in joined] + made


def _readers(nodes: list[onnx.NodeProto]) -> dict[str, list[onnx.NodeProto]]:
    found: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for name in reads(n):
            found.setdefault(name, []).append(n)
    return found


def _pruned(nodes: list[onnx.NodeProto], outputs: set[str]) -> list[onnx.NodeProto]:
    """`nodes` without those whose outputs nothing reads (a subgraph's reads and the graph outputs count)."""
    while True:
        needed = set(outputs)
        for n in nodes:
            needed |= reads(n)
        kept = [n for n in nodes if any(o in needed for o in n.output)]
        if len(kept) == len(nodes):
            return kept
        nodes = kept
