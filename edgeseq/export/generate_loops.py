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
from edgeseq.export.compose import Nodes, elem_type, import_graph, reads, scalar, value
from edgeseq.export.generate_fold import FoldedInput

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
    """Values both loops read, computed once: the length limit and, per iteration, which (V,) bias row the
    step's scores get and whether a token is forced (so the body looks them up instead of deciding)."""
    V, eos = p.vocab, p.eos
    i64 = lambda x: g.const(x, np.int64)  # noqa: E731
    zeros = filled(g, [i64([V])], 0.0, np.float32)  # (V,), made at run time: no V floats on disk
    ninf = filled(g, [i64([V])], -np.inf, np.float32)
    banned = g.op("Expand", [g.const(np.array(-np.inf, np.float32)), g.op("Shape", ["banned_ids"])])
    ban = g.op("ScatterElements", [zeros, "banned_ids", banned], axis=0)
    eos_at = g.const(np.array([eos], np.int64))
    no_eos = g.op("ScatterElements", [ban, eos_at, g.const(np.array([-np.inf], np.float32))], axis=0)
    zero1 = g.const(np.array([0.0], np.float32))
    bos = g.op("Max", ["forced_bos_token", i64(0)])
    eos_row = g.op("ScatterElements", [ninf, eos_at, zero1], axis=0)
    bos_row = g.op("ScatterElements", [ninf, g.op("Reshape", [bos, i64([1])]), zero1], axis=0)
    limit = "max_new_tokens"
    if p.manifest.max_target_length:  # no more tokens than the decoder has positions
        limit = g.op("Min", [limit, i64(p.manifest.max_target_length)])
    # per iteration: the row of `rows` its scores get (0 bans, 1 bans and </s> before min_new_tokens,
    # 2 forced </s>, 3 forced BOS: 0 at the token, -inf elsewhere); forced </s> wins over BOS
    its = g.op("Range", [i64(0), limit, i64(1)])
    kind = g.op("Cast", [g.op("Less", [its, "min_new_tokens"])], to=INT)
    bos_now = g.op("And", [g.op("GreaterOrEqual", ["forced_bos_token", i64(0)]), g.op("Equal", [its, i64(0)])])
    eos_now = g.op("And", [g.op("Cast", ["forced_eos"], to=BOOL), g.op("Equal", [its, g.op("Sub", [limit, i64(1)])])])
    kind = g.op("Where", [eos_now, i64(2), g.op("Where", [bos_now, i64(3), kind])])
    rows = g.op("Concat", [g.op("Unsqueeze", [x, i64([0])]) for x in (ban, no_eos, eos_row, bos_row)], axis=0)
    return {
        "limit": limit,
        "kind": kind,  # (limit,) int64
        "rows": rows,  # (4, V)
        "forced": g.op("Or", [eos_now, bos_now]),  # (limit,)
        "early_stopping": g.op("Cast", ["early_stopping"], to=BOOL),
    }


class Loop:
    """A Loop node being built: its carried values (initial value outside, name inside) and its body."""

    def __init__(self, name: str, outer: Nodes, p: Parts, s: dict[str, str], trips: str) -> None:
        self.name, self.outer, self.p, self.s, self.trips = name, outer, p, s, trips
        self.b = Nodes(f"{name}/body/", p.opset)
        self.it, self.cond = f"{name}.it", f"{name}.cond"
        self.initial: dict[str, str] = {}
        self.types: dict[str, int] = {}
        self._rules: tuple[str, str] | None = None  # this iteration's forced flag and bias row (scores)

    def carry(self, key: str, initial: str, elem: int) -> str:
        """A value carried from one iteration to the next; returns its name inside the body."""
        self.initial[key], self.types[key] = initial, elem
        return self.inside(key)

    def inside(self, key: str) -> str:
        """The name of a carried value inside the body (its value at the start of the iteration)."""
        return f"{self.name}.in.{key}"

    def step(
        self,
        tokens: str,
        states: dict[str, str],
        context: dict[str, str],
        rows: str | None,
        sources: str | None,
        fold: FoldedInput | None = None,
    ) -> dict[str, str]:
        """The decoder step's nodes in the body, fed by step input name; returns its outputs by name.

        `rows` ((rows,) int64): for each row of this step, the row of the previous step whose states it
        continues; `sources` ((rows,) int64): each row's source, the row of `context` (the encoder and
        attention outputs, one row per source) it reads. Both are gathered every step, without a condition:
        in ONNX Runtime a value passed through an If branch unchanged is copied too, at the same cost as a
        Gather, and the If and its test cost per token besides. The step gathers its states itself
        (export/reorder.py: `state_rows` is fed `rows`; in bundles made before reorder_every_step its If
        then always gathers).

        Both None: every row continues itself and reads its own row of `context` (one source, which ends
        the loop when it ends): nothing is gathered, and the step's own reorder Gathers are left out.

        Every value a subgraph reads here is a body input: ONNX Runtime's QDQ propagation (static int8)
        fails on a Dequantize output read from inside a subgraph. For the same reason the step's own head
        (export/head.py) is left out: the loops choose from the logits themselves.

        `fold`: the step's RNN takes its input projection from a table (export/generate_fold.py; one source):
        a main-graph value read from the outer scope, as the weights are (a constant once ONNX Runtime has
        folded it).
        """
        d, p, b = self.p.manifest.decoder, self.p, self.b
        if sources is None:
            feeds = dict(context)
        else:
            feeds = {k: b.op("Gather", [v, sources], axis=p.axes[k]) for k, v in context.items()}
        direct = _reorder_gathers(p.step, d, states) if rows is None else None
        if direct is not None:  # the states as they are, in place of the step's Gathers
            feeds |= direct
        elif d.reorder_input:  # the step gathers its states itself (given rows, so in either form of reorder.py)
            feeds |= {**states, d.reorder_input: b.const([0], np.int64) if rows is None else rows}
        else:
            batch_axis = {st.input: st.batch_axis for st in d.states}
            feeds |= {k: b.op("Gather", [v, rows], axis=batch_axis[k]) for k, v in states.items()}
        feeds[d.tokens_input] = tokens
        if d.step_input:
            feeds[d.step_input] = self.it
        known = {i.name for i in p.step.input} | {o for n in p.step.node for o in n.output}
        wired = {k: v for k, v in feeds.items() if k in known}
        if fold is not None:
            wired |= fold.wiring(b, tokens)
        wanted = [d.logits_output, *(st.output for st in d.states)]
        return import_graph(p.step, b, f"{self.name}/step/", wired, p.step_inits, outputs=wanted)

    def scores(self, x: str) -> str:
        """`x` (rows, V) with this iteration's rules applied, as runtime/processors.process applies them: plus
        the bans and the minimum length (-inf at </s>), or where a token is forced, 0 at that token and -inf
        elsewhere whatever `x` is (HF's ForcedBOS/ForcedEOS)."""
        b, s, it = self.b, self.s, self.it
        if self._rules is None:  # looked up once per iteration, whichever strategies read them
            row = b.op("Gather", [s["rows"], b.op("Gather", [s["kind"], it], axis=0)], axis=0)
            self._rules = (b.op("Gather", [s["forced"], it], axis=0), row)
        forced, row = self._rules
        return b.op("Where", [forced, row, b.op("Add", [x, row])])

    def close(self, new: dict[str, str], going: str) -> dict[str, str]:
        """Add the Loop node (at most `trips` iterations, while `going`); returns the final values outside."""
        b, keys = self.b, list(self.initial)
        outs = b.outputs(
            [going, *(new[k] for k in keys)], [f"{self.name}.going", *(f"{self.name}.out.{k}" for k in keys)]
        )
        body = helper.make_graph(
            b.nodes,
            f"{self.name}_step",
            [
                scalar(self.it, INT),
                scalar(self.cond, BOOL),
                *(value(f"{self.name}.in.{k}", self.types[k]) for k in keys),
            ],
            # the condition: a scalar, or (1,) where that saves a Squeeze a token (greedy_single)
            [value(outs[0], BOOL), *(value(o, self.types[k]) for o, k in zip(outs[1:], keys))],
        )
        o = self.outer
        final = o.op("Loop", [self.trips, o.const(True, np.bool_), *self.initial.values()], len(keys), body=body)
        return dict(zip(keys, final if isinstance(final, list) else [final]))


def _reorder_gathers(step: onnx.GraphProto, d, states: dict[str, str]) -> dict[str, str] | None:
    """For a step whose rows do not change, what to wire in place of its states' reorder: each reorder
    Gather's output (export/reorder.py, the form made since reorder_every_step) the state as it is, or for a
    step without a reorder the states themselves; None where the step reads its rows in any other way (then
    the rows are fed)."""
    if not d.reorder_input:
        return dict(states)
    if not d.reorder_every_step:
        return None
    readers = [n for n in step.node if d.reorder_input in reads(n)]
    if not all(n.op_type == "Gather" and list(n.input) == [n.input[0], d.reorder_input] for n in readers):
        return None
    if not all(n.input[0] in states for n in readers):
        return None
    return {n.output[0]: states[n.input[0]] for n in readers}


def filled(b: Nodes, dims: list[str], fill, dtype) -> str:
    """A tensor of shape Concat(dims) (each a (1,) int64 value) filled with `fill`."""
    one = numpy_helper.from_array(np.full(1, fill, dtype=dtype), "fill")
    return b.op("ConstantOfShape", [b.op("Concat", dims, axis=0)], value=one)


def zeros_state(b: Nodes, state, rows: str) -> str:
    """A state that starts as zeros of its declared shape, 'batch' being `rows` (a (1,) int64 value)."""
    dims = [rows if d == "batch" else b.const([d], np.int64) for d in state.zeros_shape or ()]
    shape = b.op("Concat", dims, axis=0) if dims else b.const(np.zeros(0, np.int64))
    return b.op("ConstantOfShape", [shape], value=numpy_helper.from_array(np.zeros(1, dtype=state.dtype), "zero"))


def first_dim(b: Nodes, x: str) -> str:
    """(1,) int64: the size of x's first axis."""
    return b.op("Slice", [b.op("Shape", [x]), b.const([0], np.int64), b.const([1], np.int64)])


def greedy_carry(loop: Loop, o: Nodes, n: str) -> dict[str, str]:
    """Greedy decoding's own carried values (beside the tokens, states and rows every strategy carries)."""
    return {
        "hist": loop.carry("hist", filled(o, [n, o.const([0], np.int64)], 0, np.int64), INT),  # (n, t) tokens so far
        "score": loop.carry("score", filled(o, [n], 0.0, np.float64), DOUBLE),
        "length": loop.carry("length", filled(o, [n], 0, np.int64), INT),
    }


def greedy_fixed(o: Nodes, p: Parts, n: str) -> dict[str, str]:
    """Loop-invariant values greedy decoding's steps read (computed once, before the loop): (n,) fills."""
    return {
        "pads": filled(o, [n], p.pad, np.int64),
        "zeros": filled(o, [n], 0, np.int64),
        "zeros_f": filled(o, [n], 0.0, np.float64),
    }


def greedy_choice(b: Nodes, p: Parts, scores: str, cast: bool = True) -> tuple[str, str, str]:
    """Each row's greedy choice from `scores` (rows, V), as the head's greedy branch (export/head.py): the
    argmax and its log-probability (a forced token: 0); a row with no allowed token ends with </s> and
    probability 0. Returns (the token, its log-probability as float64 (summed as a Python float, as the
    loop's; float32 as computed where not `cast`), whether it is </s>)."""
    eos_id = b.const(p.eos, np.int64)
    ninf = b.const(np.array(-np.inf, np.float32))
    chosen = b.op("ArgMax", [scores], axis=-1, keepdims=0)
    gain = b.reduce("ReduceMax", b.op("LogSoftmax", [scores], axis=-1), [-1])  # the argmax's log-probability
    dead = b.op("Not", [b.op("Greater", [gain, ninf])])  # -inf or NaN: no allowed token
    chosen = b.op("Where", [dead, eos_id, chosen])
    ends = b.op("Equal", [chosen, eos_id])
    gain = b.op("Where", [dead, ninf, gain])
    return chosen, b.op("Cast", [gain], to=DOUBLE) if cast else gain, ends


def shown(b: Nodes, p: Parts, tokens: str, ends: str) -> str:
    """Tokens as the history shows them: </s> (where `ends`) as the target pad."""
    return b.op("Where", [ends, b.const(p.pad, np.int64), tokens])


def greedy_select(
    b: Nodes, p: Parts, c: dict[str, str], fixed: dict[str, str], scores: str, sources: str
) -> dict[str, str]:
    """One greedy step in `b`, from `scores` (rows, V): the logits with the iteration's rules applied
    (Loop.scores); `fixed` is greedy_fixed(); `sources` (rows,) each row's source (greedy decoding has one
    row per source, so these are the rows still decoding). The choice is greedy_choice's; a row that
    chooses </s> leaves the batch. Returns the new carried values (greedy's own, tok, rows) and `going`.

    Every node here runs once per token, and in ONNX Runtime each costs about a microsecond whatever its
    size, so there are few, and no If (a value an If passes through unchanged is copied)."""
    alive = sources
    chosen, gain, ends = greedy_choice(b, p, scores)
    emitted = b.op("Cast", [b.op("Not", [ends])], to=INT)
    column = b.op("ScatterElements", [fixed["pads"], alive, shown(b, p, chosen, ends)], axis=0)
    going = b.reduce("ReduceMax", emitted, [0])
    kept = b.op("Reshape", [b.op("NonZero", [emitted]), b.const([-1], np.int64)])  # the rows that go on, in order
    return {
        "going": b.op("Greater", [going, b.const(0, np.int64)]),
        "tok": b.op("Gather", [chosen, kept], axis=0),
        "rows": kept,
        "hist": b.op("Concat", [c["hist"], b.op("Unsqueeze", [column, b.const([1], np.int64)])], axis=1),
        "score": scatter_add(b, c["score"], alive, gain, fixed["zeros_f"]),
        "length": scatter_add(b, c["length"], alive, emitted, fixed["zeros"]),
    }


def single_carry(loop: Loop, o: Nodes) -> dict[str, str]:
    """greedy_single's own carried values: the tokens chosen so far (t,) (</s> as it is) and their
    log-probabilities (t,) float32, summed once after the loop (single_outputs)."""
    return {
        "hist": loop.carry("hist", o.const(np.zeros(0, np.int64)), INT),
        "gains": loop.carry("gains", o.const(np.zeros(0, np.float32)), FLOAT),
    }


def greedy_single(b: Nodes, p: Parts, c: dict[str, str], scores: str) -> dict[str, str]:
    """greedy_select for one source: its row never leaves the batch (the loop ends when it chooses </s>),
    so nothing is scattered or gathered, and what can wait for the end does (single_outputs: </s> shown as
    the pad, the length, the score summed in float64): 19 nodes a token for the GRU of latency.py, its step
    included (with its input projection looked up: export/generate_fold.py), each ~0.35-0.7 us. The
    condition stays (1,) (no Squeeze). The same choice, score and length as greedy_select."""
    chosen, gain, ends = greedy_choice(b, p, scores, cast=False)
    return {
        "going": b.op("Not", [ends]),
        "tok": chosen,
        "hist": b.op("Concat", [c["hist"], chosen], axis=0),
        "gains": b.op("Concat", [c["gains"], gain], axis=0),
    }


def single_outputs(o: Nodes, p: Parts, final: dict[str, str]) -> list[str]:
    """generate.onnx's three outputs from greedy_single's final values, as greedy_outputs gives them: the
    history with </s> shown as the pad, the length (the tokens before </s>: it can only be the last)."""
    hist = final["hist"]
    ends = o.op("Equal", [hist, o.const(p.eos, np.int64)])
    score = o.reduce("ReduceSum", o.op("Cast", [final["gains"]], to=DOUBLE), [0], keepdims=1)  # (1,)
    length = o.reduce("ReduceSum", o.op("Cast", [o.op("Not", [ends])], to=INT), [0], keepdims=1)  # (1,)
    one = o.const([1], np.int64)
    return [
        o.op("Unsqueeze", [shown(o, p, hist, ends), o.const([0, 1], np.int64)]),  # (1, 1, t)
        o.op("Unsqueeze", [length, one]),
        o.op("Unsqueeze", [o.op("Cast", [score], to=FLOAT), one]),
    ]


def scatter_add(b: Nodes, x: str, at: str, values: str, zeros: str) -> str:
    """`x` (n,) plus `values` at the (distinct) indices `at`: one ScatterElements from opset 16 (its
    reduction), before that a scatter into `zeros` (n,) and an Add."""
    if b.opset >= 16:
        return b.op("ScatterElements", [x, at, values], axis=0, reduction="add")
    return b.op("Add", [x, b.op("ScatterElements", [zeros, at, values], axis=0)])


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
