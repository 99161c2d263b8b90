"""generate.onnx's decoding loop: one ONNX `Loop` over the decoder step, greedy decoding and beam search
choosing the next tokens in the two branches of an `If` inside its body (generate_graph.decode).

Each strategy mirrors its Python strategy (runtime/search.py) step by step, batch composition included: rows that
finish (greedy: </s>) and sources that are done (beam search) leave the batch at the same step as in the
Python loop, the others keep their order. So every step runs on exactly the rows the Python loop runs it on,
which matters beyond speed: a dynamically quantized (int8) graph quantizes each activation tensor with one
scale for all its rows, so a row's result depends on which rows share its batch.

Results are kept per source in full-size buffers (written with ScatterElements / ScatterND at the rows still
decoding), so nothing needs reassembling at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeseq.bundle import Manifest
from edgeseq.export.compose import Nodes, elem_type, import_graph, scalar, value

INT, FLOAT, DOUBLE, BOOL = TensorProto.INT64, TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.BOOL


@dataclass(frozen=True)
class Parts:
    """What the loops need to know of the bundle, by name."""

    manifest: Manifest
    step: onnx.GraphProto
    step_inits: dict[str, str]
    context_graphs: tuple[tuple[str, onnx.GraphProto, dict[str, str]], ...]  # encoder, attention; lifted inits
    context_names: tuple[str, ...]  # the source and the encoder/attention outputs
    axes: dict[str, int]  # batch axis of each context value
    vocab: int
    eos: int
    pad: int
    start: int
    opset: int

    @property
    def step_context(self) -> list[str]:
        """The context values the step reads (each carried by the loops, along its batch axis)."""
        inputs = {i.name for i in self.step.input}
        return [k for k in self.context_names if k in inputs]

    def encode(self, b: Nodes) -> dict[str, str]:
        """The encoder and attention graphs' nodes in `b`; every context value by name. The loops take them
        as explicit initial values (never read from inside a body: see generate_graph.py)."""
        context = {n: n for n in self.context_names[:2]}
        for name, graph, inits in self.context_graphs:
            feeds = {i.name: context[i.name] for i in graph.input if i.name not in inits}
            outs = import_graph(graph, b, f"{b.prefix}{name}/", feeds, inits)
            context |= {t.name: outs[t.name] for t in self.manifest.graphs[name].outputs}
        return context


def shared_values(g: Nodes, p: Parts) -> dict[str, str]:
    """Values both loops read, computed once: the (V,) biases and forced rows, the length limit."""
    V, eos = p.vocab, p.eos
    zeros = filled(g, [g.const([V], np.int64)], 0.0, np.float32)  # (V,), made at run time: no V floats on disk
    ninf = filled(g, [g.const([V], np.int64)], -np.inf, np.float32)
    banned = g.op("Expand", [g.const(np.array(-np.inf, np.float32)), g.op("Shape", ["banned_ids"])])
    ban = g.op("ScatterElements", [zeros, "banned_ids", banned], axis=0)
    eos_at = g.const(np.array([eos], np.int64))
    no_eos = g.op("ScatterElements", [ban, eos_at, g.const(np.array([-np.inf], np.float32))], axis=0)
    zero1 = g.const(np.array([0.0], np.float32))
    bos_at = g.op("Reshape", [g.op("Max", ["forced_bos_token", g.const(0, np.int64)]), g.const([1], np.int64)])
    limit = "max_new_tokens"
    if p.manifest.max_target_length:  # no more tokens than the decoder has positions
        limit = g.op("Min", [limit, g.const(p.manifest.max_target_length, np.int64)])
    return {
        "ban": ban,
        "no_eos": no_eos,
        "eos_row": g.op("ScatterElements", [ninf, eos_at, zero1], axis=0),
        "bos_row": g.op("ScatterElements", [ninf, bos_at, zero1], axis=0),
        "has_bos": g.op("GreaterOrEqual", ["forced_bos_token", g.const(0, np.int64)]),
        "limit": limit,
        "last_step": g.op("Sub", [limit, g.const(1, np.int64)]),
        "early_stopping": g.op("Cast", ["early_stopping"], to=BOOL),
        "forced_eos": g.op("Cast", ["forced_eos"], to=BOOL),
    }


class Loop:
    """A Loop node being built: its carried values (initial value outside, name inside) and its body."""

    def __init__(self, name: str, outer: Nodes, p: Parts, s: dict[str, str], trips: str) -> None:
        self.name, self.outer, self.p, self.s, self.trips = name, outer, p, s, trips
        self.b = Nodes(f"{name}/body/", p.opset)
        self.it, self.cond = f"{name}.it", f"{name}.cond"
        self.initial: dict[str, str] = {}
        self.types: dict[str, int] = {}

    def carry(self, key: str, initial: str, elem: int) -> str:
        """A value carried from one iteration to the next; returns its name inside the body."""
        self.initial[key], self.types[key] = initial, elem
        return self.inside(key)

    def inside(self, key: str) -> str:
        """The name of a carried value inside the body (its value at the start of the iteration)."""
        return f"{self.name}.in.{key}"

    def step(
        self, tokens: str, states: dict[str, str], context: dict[str, str], state_rows: str, context_rows: str
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The decoder step's nodes in the body, fed by step input name; returns its outputs by name and the
        context it read. `state_rows` / `context_rows` ((rows,) int64, empty: none): the previous rows each
        row continues, for the states and the context, taken before the step.

        Every value a subgraph reads here is a body input: ONNX Runtime's QDQ propagation (static int8)
        fails on a Dequantize output read from inside a subgraph. For the same reason the step's own head
        (export/head.py) is left out: the loops choose from the logits themselves.
        """
        d, p, b = self.p.manifest.decoder, self.p, self.b
        context = take_rows(
            b, "context", context_rows, {k: (v, p.axes[k], context_type(p, k)) for k, v in context.items()}
        )
        if d.reorder_input:  # the step takes its states for the new rows itself (export/reorder.py)
            feeds = {d.reorder_input: state_rows}
        else:
            types = {st.input: (st.batch_axis, elem_type(st.dtype)) for st in d.states}
            states = take_rows(b, "states", state_rows, {k: (v, *types[k]) for k, v in states.items()})
            feeds = {}
        feeds |= {d.tokens_input: tokens, **states, **context}
        if d.step_input:
            feeds[d.step_input] = self.it
        wired = {i.name: feeds[i.name] for i in p.step.input if i.name in feeds}
        wanted = [d.logits_output, *(st.output for st in d.states)]
        out = import_graph(p.step, b, f"{self.name}/step/", wired, p.step_inits, outputs=wanted)
        return out, context

    def forced(self) -> tuple[str, str, str, str]:
        """At this iteration: whether a token is forced (), whether it is </s> (), its (V,) row (0 at the token,
        -inf elsewhere), and the (V,) bias of the bans and the minimum length. Forced </s> wins."""
        b, s, it = self.b, self.s, self.it
        eos_now = b.op("And", [s["forced_eos"], b.op("Equal", [it, s["last_step"]])])
        bos_now = b.op("And", [s["has_bos"], b.op("Equal", [it, b.const(0, np.int64)])])
        now = b.op("Or", [eos_now, bos_now])
        row = b.op("Where", [eos_now, s["eos_row"], s["bos_row"]])
        bias = b.op("Where", [b.op("Less", [it, "min_new_tokens"]), s["no_eos"], s["ban"]])
        return now, eos_now, row, bias

    def close(self, new: dict[str, str], going: str) -> dict[str, str]:
        """Add the Loop node (at most `trips` iterations, while `going`); returns the final values outside."""
        b, keys = self.b, list(self.initial)
        outs = [b.identity(going, f"{self.name}.going")] + [b.identity(new[k], f"{self.name}.out.{k}") for k in keys]
        body = helper.make_graph(
            b.nodes,
            f"{self.name}_step",
            [
                scalar(self.it, INT),
                scalar(self.cond, BOOL),
                *(value(f"{self.name}.in.{k}", self.types[k]) for k in keys),
            ],
            [scalar(outs[0], BOOL), *(value(o, self.types[k]) for o, k in zip(outs[1:], keys))],
        )
        o = self.outer
        final = o.op("Loop", [self.trips, o.const(True, np.bool_), *self.initial.values()], len(keys), body=body)
        return dict(zip(keys, final if isinstance(final, list) else [final]))


def filled(b: Nodes, dims: list[str], fill, dtype) -> str:
    """A tensor of shape Concat(dims) (each a (1,) int64 value) filled with `fill`."""
    one = numpy_helper.from_array(np.full(1, fill, dtype=dtype), "fill")
    return b.op("ConstantOfShape", [b.op("Concat", dims, axis=0)], value=one)


def zeros_state(b: Nodes, state, rows: str) -> str:
    """A state that starts as zeros of its declared shape, 'batch' being `rows` (a (1,) int64 value)."""
    dims = [rows if d == "batch" else b.const([d], np.int64) for d in state.zeros_shape or ()]
    shape = b.op("Concat", dims, axis=0) if dims else b.const(np.zeros(0, np.int64))
    return b.op("ConstantOfShape", [shape], value=numpy_helper.from_array(np.zeros(1, dtype=state.dtype), "zero"))


def rows_unless(b: Nodes, same: str, rows: str) -> str:
    """`rows`, or an empty (0,) int64 where `same` (every row continues itself: nothing to take)."""
    then_b, else_b = Nodes(f"{b.prefix}none/", b.opset), Nodes(f"{b.prefix}rows/", b.opset)
    none = then_b.identity(then_b.const(np.zeros(0, np.int64)), then_b.name("none"))
    given = else_b.identity(rows, else_b.name("rows"))
    return b.op(
        "If",
        [same],
        then_branch=helper.make_graph(then_b.nodes, "no_rows", [], [value(none, INT)]),
        else_branch=helper.make_graph(else_b.nodes, "rows", [], [value(given, INT)]),
    )


def take_rows(b: Nodes, name: str, rows: str, values: dict[str, tuple[str, int, int]]) -> dict[str, str]:
    """`values` (name: (value, batch axis, element type)) taken at `rows`; as they are if `rows` is empty."""
    if not values:
        return {}
    keys = list(values)
    given = b.op("Greater", [b.op("Size", [rows]), b.const(0, np.int64)])
    then_b, else_b = Nodes(f"{b.prefix}{name}.take/", b.opset), Nodes(f"{b.prefix}{name}.same/", b.opset)
    then_out = [then_b.op("Gather", [values[k][0], rows], axis=values[k][1]) for k in keys]
    else_out = [else_b.identity(values[k][0], else_b.name(f"same.{k}")) for k in keys]
    outs = b.op(
        "If",
        [given],
        len(keys),
        then_branch=helper.make_graph(
            then_b.nodes, f"{name}_take", [], [value(o, values[k][2]) for o, k in zip(then_out, keys)]
        ),
        else_branch=helper.make_graph(
            else_b.nodes, f"{name}_same", [], [value(o, values[k][2]) for o, k in zip(else_out, keys)]
        ),
    )
    return dict(zip(keys, outs if isinstance(outs, list) else [outs]))


def first_dim(b: Nodes, x: str) -> str:
    """(1,) int64: the size of x's first axis."""
    return b.op("Slice", [b.op("Shape", [x]), b.const([0], np.int64), b.const([1], np.int64)])


def greedy_carry(loop: Loop, o: Nodes, n: str) -> dict[str, str]:
    """Greedy decoding's own carried values (beside the tokens, states and rows every strategy carries)."""
    return {
        "alive": loop.carry(
            "alive", o.op("Range", [o.const(0, np.int64), o.op("Squeeze", [n]), o.const(1, np.int64)]), INT
        ),
        "hist": loop.carry("hist", filled(o, [n, o.const([0], np.int64)], 0, np.int64), INT),  # (n, t) tokens so far
        "score": loop.carry("score", filled(o, [n], 0.0, np.float64), DOUBLE),
        "length": loop.carry("length", filled(o, [n], 0, np.int64), INT),
    }


def greedy_select(b: Nodes, p: Parts, c: dict[str, str], biased: str, forcing: tuple) -> dict[str, str]:
    """One greedy step in `b` (a branch of the loop body), from `biased` (rows, V): the logits plus the bans
    and the minimum length (as the head's greedy branch, export/head.py); `forcing` is Loop.forced(). A row
    that chooses </s> leaves the batch. Returns the new carried values (greedy's own, tok, rows, ctx_rows)
    and `going`."""
    forced, eos_now, _, _ = forcing
    n = first_dim(b, c["hist"])
    eos_id = b.const(p.eos, np.int64)
    alive = c["alive"]
    chosen = b.op("ArgMax", [biased], axis=-1, keepdims=0)
    top = b.reduce("ReduceMax", biased, [-1], keepdims=1)
    gain = b.op("Neg", [b.op("Log", [b.reduce("ReduceSum", b.op("Exp", [b.op("Sub", [biased, top])]), [-1])])])
    chosen = b.op("Where", [forced, b.op("Where", [eos_now, eos_id, "forced_bos_token"]), chosen])
    gain = b.op("Where", [forced, b.const(np.array(0.0, np.float32)), gain])  # a forced token scores 0
    dead = b.op("Or", [b.op("IsNaN", [gain]), b.op("IsInf", [gain])])  # no allowed token: ends, probability 0
    chosen = b.op("Where", [dead, eos_id, chosen])
    gain = b.op("Where", [dead, b.const(np.array(-np.inf, np.float32)), gain])
    emit = b.op("Not", [b.op("Equal", [chosen, eos_id])])
    pad = b.const(p.pad, np.int64)

    def at_rows(fill: str, updates: str) -> str:  # (n,): `fill` except at the rows still decoding
        return b.op("ScatterElements", [b.op("Expand", [fill, n]), alive, updates], axis=0)

    column = at_rows(pad, b.op("Where", [emit, chosen, pad]))
    gains = at_rows(b.const(np.array(0.0)), b.op("Cast", [gain], to=DOUBLE))
    kept = b.op("Reshape", [b.op("NonZero", [emit]), b.const([-1], np.int64)])  # rows that go on, in order
    rows = rows_unless(b, b.op("Equal", [b.op("Size", [kept]), b.op("Size", [chosen])]), kept)
    return {
        "going": b.op("Greater", [b.op("Size", [kept]), b.const(0, np.int64)]),
        "tok": b.op("Gather", [chosen, kept], axis=0),
        "rows": rows,
        "ctx_rows": rows,
        "alive": b.op("Gather", [alive, kept], axis=0),
        "hist": b.op("Concat", [c["hist"], b.op("Unsqueeze", [column, b.const([1], np.int64)])], axis=1),
        "score": b.op("Add", [c["score"], gains]),  # a Python float sum, in float64, as the loop's
        "length": b.op("Add", [c["length"], at_rows(b.const(0, np.int64), b.op("Cast", [emit], to=INT))]),
    }


def greedy_outputs(o: Nodes, final: dict[str, str]) -> list[str]:
    """generate.onnx's three outputs from greedy decoding's final values: one hypothesis per source."""
    one = o.const([1], np.int64)
    return [
        o.op("Unsqueeze", [final["hist"], one]),
        o.op("Unsqueeze", [final["length"], one]),
        o.op("Unsqueeze", [o.op("Cast", [final["score"]], to=FLOAT), one]),
    ]


def context_type(p: Parts, name: str) -> int:
    """The element type of a context value (the source, an encoder or attention output)."""
    for g in p.manifest.loop_graphs.values():
        for t in (*g.inputs, *g.outputs):
            if t.name == name:
                return elem_type(t.dtype)
    raise KeyError(name)


def branch(b: Nodes, name: str, outputs: list[str]) -> onnx.GraphProto:
    """An If branch with generate.onnx's three outputs (tokens, lengths, scores)."""
    named = [b.identity(x, f"{name}.{o}") for x, o in zip(outputs, ("tokens", "lengths", "scores"))]
    return helper.make_graph(b.nodes, name, [], [value(x, t) for x, t in zip(named, (INT, INT, FLOAT))])
