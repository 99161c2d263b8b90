"""The head: what the decoder step graph computes from its own logits, so the loop reads a few numbers.

Greedy decoding needs per row only argmax(logits + bias) and its log-probability; beam search needs per
source only the 2 x beam best continuations of log_softmax(logits) + bias + each row's running score (Hugging
Face's order: bans and the minimum length act on log-probabilities). Computing them inside the step graph
saves the loop its numpy work over (rows, vocabulary) arrays, and on CUDA keeps the logits in device memory.

ONNX Runtime runs every node of a graph whatever outputs are asked for, so the head is an `If` on the
`head_mode` input: 0 computes nothing (the loop reads the logits: sampling, penalties), 1 greedy, 2 beam.
The logits output stays for the strategies and processors that need it.

Inputs:  head_mode () int64; head_bias (V,) float32 (-inf at banned ids, 0 elsewhere; never > 0); beam_scores
         (sources, beams) float32 (beam mode: each row's running score; any (0, 0) array otherwise).
Outputs: head_scores (A, k) float32, head_ids (A, k) int64. Greedy: (rows, 1), the argmax of logits + bias
         and its log-probability. Beam: (sources, 2 * beams), best first (ties: the lower index), ids
         indexing beam * V + token. Mode 0: (0, 0) arrays.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeseq.bundle import DecoderSpec, GraphSpec, HeadSpec, TensorSpec

MODE, BIAS, BEAM, SCORES, IDS = "head_mode", "head_bias", "beam_scores", "head_scores", "head_ids"
NAMES = HeadSpec(MODE, BIAS, BEAM, SCORES, IDS)
NONE, GREEDY, BEAM_MODE = 0, 1, 2


class _Nodes:
    """Builds a subgraph's nodes with names unique in the model."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.nodes, self.count = prefix, [], 0

    def op(self, op_type: str, inputs: list[str], **attrs) -> str:
        self.count += 1
        out = f"head.{self.prefix}.{op_type.lower()}{self.count}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def const(self, array: np.ndarray) -> str:
        self.count += 1
        out = f"head.{self.prefix}.c{self.count}"
        self.nodes.append(
            helper.make_node("Constant", [], [out], name=out, value=numpy_helper.from_array(array, out + ".v"))
        )
        return out


def _axes(b: _Nodes) -> str:
    return b.const(np.array([-1], dtype=np.int64))


def _branch(b: _Nodes, scores: str, ids: str) -> onnx.GraphProto:
    b.nodes.append(helper.make_node("Identity", [scores], [f"head.{b.prefix}.scores"], name=f"head.{b.prefix}.scores"))
    b.nodes.append(helper.make_node("Identity", [ids], [f"head.{b.prefix}.ids"], name=f"head.{b.prefix}.ids"))
    return helper.make_graph(
        b.nodes,
        f"head_{b.prefix}",
        [],
        [
            helper.make_tensor_value_info(f"head.{b.prefix}.scores", TensorProto.FLOAT, None),
            helper.make_tensor_value_info(f"head.{b.prefix}.ids", TensorProto.INT64, None),
        ],
    )


def _greedy(logits: str) -> onnx.GraphProto:
    """The argmax and its log-probability. One TopK(1) gives both the max and its index (the lower index on
    ties, as ArgMax): one pass over (rows, V) fewer than ArgMax + ReduceMax, the same bits."""
    b = _Nodes("greedy")
    biased = b.op("Add", [logits, BIAS])
    k = b.const(np.array([1], dtype=np.int64))
    b.count += 1
    top, ids = f"head.greedy.top{b.count}", f"head.greedy.ids{b.count}"  # (rows, 1) each
    b.nodes.append(helper.make_node("TopK", [biased, k], [top, ids], name=top, axis=-1, largest=1, sorted=1))
    total = b.op("ReduceSum", [b.op("Exp", [b.op("Sub", [biased, top])]), _axes(b)], keepdims=1)
    scores = b.op("Neg", [b.op("Log", [total])])  # the argmax's log-probability: 0 - logsumexp(biased - top)
    return _branch(b, scores, ids)


def _beam(logits: str, vocab: int, opset: int = 17) -> onnx.GraphProto:
    """Each row's best 2k (a source's best 2k are among its rows' best 2k), plus its running score, then the
    best 2k of the source's k * 2k: what a TopK over (sources, beams * V) gives, ties included (the lower
    index first in both TopKs: the lower beam, then the lower token), without a second (rows, V) Add.

    The bias (0, or negative: -inf bans) is added to candidates only, not to the (rows, V) log-probabilities:
    a row's best 2k of log-probabilities + bias are among its best 2k + n log-probabilities, n the ids with a
    nonzero bias (each id ranked above one of them is either unbiased, so also above it after the bias, or one
    of the n). The candidates are put back in id order before the bias so the TopK after it breaks ties by
    the lower id, as one TopK over all of them would (ids as float32: exact below 2^24). The first TopK reads
    blocks of the vocabulary where a block size divides it (_block_top_k)."""
    b = _Nodes("beam")
    logprobs = b.op("LogSoftmax", [logits], axis=-1)  # (rows, V)
    shape = b.op("Shape", [BEAM])  # (sources, beams)
    sources = b.op("Slice", [shape, b.const(np.array([0])), b.const(np.array([1]))])
    beams = b.op("Slice", [shape, b.const(np.array([1])), b.const(np.array([2]))])
    k = b.op("Mul", [beams, b.const(np.array([2], dtype=np.int64))])
    all_ids = b.const(np.array([vocab], dtype=np.int64))
    per_row = b.op("Min", [k, all_ids])  # (a vocabulary smaller than 2k)
    biased_ids = b.op("Not", [b.op("Equal", [BIAS, b.const(np.array(0, dtype=np.float32))])])
    count = b.op("ReduceSum", [b.op("Cast", [biased_ids], to=TensorProto.INT64), _axes(b)], keepdims=1)
    wide = b.op("Min", [b.op("Add", [per_row, count]), all_ids])  # (1,)
    top, top_ids = _block_top_k(b, logprobs, wide, vocab, opset)  # (rows, wide): best first
    _, order = _top_k(b, b.op("Neg", [b.op("Cast", [top_ids], to=TensorProto.FLOAT)]), wide)  # by id
    cand_ids = b.op("GatherElements", [top_ids, order], axis=1)
    cand = b.op("Add", [b.op("GatherElements", [top, order], axis=1), b.op("Gather", [BIAS, cand_ids])])
    row_scores, at_row = _top_k(b, cand, per_row)
    row_ids = b.op("GatherElements", [cand_ids, at_row], axis=1)
    running = b.op("Reshape", [BEAM, b.const(np.array([-1, 1], dtype=np.int64))])  # (rows, 1)
    width = b.op("Concat", [sources, b.op("Mul", [beams, per_row])], axis=0)
    flat = b.op("Reshape", [b.op("Add", [row_scores, running]), width])  # (sources, beams * per_row)
    scores, at = _top_k(b, flat, k)
    token = b.op("GatherElements", [b.op("Reshape", [row_ids, width]), at], axis=1)
    beam = b.op("Div", [at, per_row])  # (int64: floor for these non-negative ids)
    ids = b.op("Add", [b.op("Mul", [beam, b.const(np.array(vocab, dtype=np.int64))]), token])  # beam * V + token
    return _branch(b, scores, ids)


def _top_k(b: _Nodes, values: str, k: str) -> tuple[str, str]:
    """TopK along the last axis, largest first (ties: the lower index first)."""
    b.count += 1
    scores, at = f"head.{b.prefix}.top{b.count}", f"head.{b.prefix}.at{b.count}"
    b.nodes.append(helper.make_node("TopK", [values, k], [scores, at], name=scores, axis=-1, largest=1, sorted=1))
    return scores, at


BLOCKS = (32, 64, 16, 48, 40, 24)  # block sizes tried, in order, for _block_top_k


def _block_top_k(b: _Nodes, values: str, k: str, vocab: int, opset: int) -> tuple[str, str]:
    """TopK of (rows, V) `values` (k <= V), as _top_k, ties included, reading each row through its blocks.

    A row's best k lie in its k best blocks (by block maximum, ties to the lower block): each block ranked
    above an element's block holds an element ranked above it. A maximum per block is one vectorised pass, where
    TopK over V compares element by element (Marian small, 96 rows of 8,000: 95 us against 617). Only when a
    block size of BLOCKS divides V; else one TopK. The candidates are gathered in id order, so the TopK over
    them breaks ties by the lower id."""
    size = next((n for n in BLOCKS if vocab % n == 0 and vocab // n >= 8), None)
    if size is None:
        return _top_k(b, values, k)
    count = vocab // size
    blocks = b.op("Reshape", [values, b.const(np.array([0, count, size], dtype=np.int64))])  # (rows, n, size)
    if opset >= 18:
        maxima = b.op("ReduceMax", [blocks, _axes(b)], keepdims=0)  # (rows, n)
    else:
        maxima = b.op("ReduceMax", [blocks], axes=[-1], keepdims=0)
    wanted = b.op("Min", [k, b.const(np.array([count], dtype=np.int64))])
    _, best = _top_k(b, maxima, wanted)  # (rows, kb) blocks
    _, order = _top_k(b, b.op("Neg", [b.op("Cast", [best], to=TensorProto.FLOAT)]), wanted)  # by block
    first = b.op("Mul", [b.op("GatherElements", [best, order], axis=1), b.const(np.array(size, dtype=np.int64))])
    offsets = b.const(np.arange(size, dtype=np.int64))
    ids = b.op("Add", [b.op("Unsqueeze", [first, b.const(np.array([2], dtype=np.int64))]), offsets])
    ids = b.op("Reshape", [ids, b.const(np.array([0, -1], dtype=np.int64))])  # (rows, kb * size), ascending
    top, at = _top_k(b, b.op("GatherElements", [values, ids], axis=1), k)
    return top, b.op("GatherElements", [ids, at], axis=1)


def _none() -> onnx.GraphProto:
    b = _Nodes("none")
    scores = b.const(np.zeros((0, 0), dtype=np.float32))
    ids = b.const(np.zeros((0, 0), dtype=np.int64))
    return _branch(b, scores, ids)


def add_head(path: Path, spec: GraphSpec, decoder: DecoderSpec) -> tuple[GraphSpec, DecoderSpec]:
    """Append the head to the step graph at `path`; return its GraphSpec and DecoderSpec with the head."""
    logits = spec.output(decoder.logits_output)
    vocab = logits.shape[-1]
    model = onnx.load(str(path), load_external_data=False)
    names = {v for n in model.graph.node for v in (*n.input, *n.output)} | {i.name for i in model.graph.input}
    if logits.dtype != "float32" or not isinstance(vocab, int) or names & {MODE, BIAS, BEAM, SCORES, IDS}:
        return spec, decoder  # (float32 logits of a fixed vocabulary, and free names: else no head)
    g = model.graph
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    two = numpy_helper.from_array(np.array(BEAM_MODE, dtype=np.int64), "head.mode.beam")
    one = numpy_helper.from_array(np.array(GREEDY, dtype=np.int64), "head.mode.greedy")
    g.node.extend(
        [
            helper.make_node("Constant", [], ["head.two"], name="head.two", value=two),
            helper.make_node("Constant", [], ["head.one"], name="head.one", value=one),
            helper.make_node("Equal", [MODE, "head.two"], ["head.is_beam"], name="head.is_beam"),
            helper.make_node("Equal", [MODE, "head.one"], ["head.is_greedy"], name="head.is_greedy"),
            helper.make_node(
                "If",
                ["head.is_beam"],
                [SCORES, IDS],
                name="head.if_beam",
                then_branch=_beam(decoder.logits_output, vocab, opset),
                else_branch=helper.make_graph(
                    [
                        helper.make_node(
                            "If",
                            ["head.is_greedy"],
                            ["head.g.scores", "head.g.ids"],
                            name="head.if_greedy",
                            then_branch=_greedy(decoder.logits_output),
                            else_branch=_none(),
                        )
                    ],
                    "head_not_beam",
                    [],
                    [
                        helper.make_tensor_value_info("head.g.scores", TensorProto.FLOAT, None),
                        helper.make_tensor_value_info("head.g.ids", TensorProto.INT64, None),
                    ],
                ),
            ),
        ]
    )
    g.input.extend(
        [
            helper.make_tensor_value_info(MODE, TensorProto.INT64, []),
            helper.make_tensor_value_info(BIAS, TensorProto.FLOAT, [vocab]),
            helper.make_tensor_value_info(BEAM, TensorProto.FLOAT, ["head_sources", "head_beams"]),
        ]
    )
    g.output.extend(
        [
            helper.make_tensor_value_info(SCORES, TensorProto.FLOAT, ["head_rows", "head_k"]),
            helper.make_tensor_value_info(IDS, TensorProto.INT64, ["head_rows", "head_k"]),
        ]
    )
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    spec = dataclasses.replace(
        spec,
        inputs=(
            *spec.inputs,
            TensorSpec(MODE, "int64", ()),
            TensorSpec(BIAS, "float32", (vocab,)),
            TensorSpec(BEAM, "float32", ("head_sources", "head_beams")),
        ),
        outputs=(
            *spec.outputs,
            TensorSpec(SCORES, "float32", ("head_rows", "head_k")),
            TensorSpec(IDS, "int64", ("head_rows", "head_k")),
        ),
    )
    return spec, dataclasses.replace(decoder, head=NAMES)


def without_head(spec: GraphSpec, decoder: DecoderSpec) -> GraphSpec:
    """The graph's I/O as the model declares it: what edgeseq added (the head, the reorder input) taken out,
    for comparisons."""
    from edgeseq.export.reorder import PREVIOUS

    head = set(decoder.added_names())
    axis = {st.input: st.batch_axis for st in decoder.states} if decoder.reorder_input else {}

    def declared(t: TensorSpec) -> TensorSpec:  # a state input's batch symbol as the model had it
        if t.name not in axis or len(t.shape) <= axis[t.name] or not str(t.shape[axis[t.name]]).startswith(PREVIOUS):
            return t
        shape = list(t.shape)
        shape[axis[t.name]] = shape[axis[t.name]][len(PREVIOUS) :]
        return dataclasses.replace(t, shape=tuple(shape))

    return dataclasses.replace(
        spec,
        inputs=tuple(declared(t) for t in spec.inputs if t.name not in head),
        outputs=tuple(t for t in spec.outputs if t.name not in head),
    )
