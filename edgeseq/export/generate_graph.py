"""generate.onnx: the whole decoding loop as one standard ONNX graph, composed from the bundle's own graphs.

The encoder and attention graphs run once; then an ONNX `Loop` runs the decoder step, its states carried
from one iteration to the next by the manifest's state pairs (reordered along their batch axes for beam
search). Small models have a Loop for each of greedy decoding of one source, of a batch, and beam search
(those not asked run no iteration); larger ones one Loop choosing by an `If` on `beam_size` (decode()). All
follow the Python runtime's rules exactly (runtime/search.py): the same bans and minimum length (-inf at
banned ids and, before `min_new_tokens`, at </s>), forced BOS/EOS tokens scoring 0, rows with no allowed
token ending with </s> and a score of -inf, and Hugging Face's beam search (2 x beam candidates, finished
hypotheses among the top `beam`, scores divided by length ** length_penalty, early stopping or the
attainable-score test). The operators are standard ONNX (the bundle's own graphs aside), so every ONNX
Runtime build runs it, onnxruntime-web included. Weights are read from the bundle's weights.bin, as by the
other graphs.

Inputs (`defaults` gives the values a bundle decodes with when a caller has no others):
    src_ids (batch, src_len) int64, src_mask (batch, src_len): framed, padded sources, as the encoder takes
    max_new_tokens () int64; min_new_tokens () int64; beam_size () int64 (1: greedy)
    length_penalty () float32; early_stopping () int64 (0 or 1; beam search)
    banned_ids (n,) int64 (never generated); forced_eos () int64 (0 or 1); forced_bos_token () int64 (-1: none)
    (flags are int64, not bool: some ONNX Runtime bindings, onnxruntime-objc before 2026, have no bool tensors)
Outputs (hypotheses best first; greedy has one per source, beam search beam_size):
    tokens (batch, hyps, len) int64, without </s>, padded with the target <pad> (or </s>)
    lengths (batch, hyps) int64; scores (batch, hyps) float32 (a slot beam search did not fill: length -1,
    score -inf)

Not in the graph: sampling, repetition penalty, no-repeat n-grams, alignments (the Python loop has them).
Sources are decoded as one batch: for a model whose results change with padding (manifest masked_padding
false), give sources of equal length only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper

from edgeseq.bundle import GraphSpec, Manifest, TensorSpec
from edgeseq.errors import BundleError
from edgeseq.export.compose import Initializers, Nodes, elem_type, lift_initializers, opset_imports, value
from edgeseq.export.generate_beam import beam_carry, beam_outputs, beam_select
from edgeseq.export.generate_fold import fold_rnn_input
from edgeseq.export.generate_loops import (
    BOOL,
    INT,
    Loop,
    Parts,
    context_type,
    first_dim,
    greedy_carry,
    greedy_fixed,
    greedy_outputs,
    greedy_select,
    greedy_single,
    shared_values,
    single_carry,
    single_outputs,
    zeros_state,
)

FILE, GRAPH = "generate.onnx", "generate"
# weights up to which each strategy gets its own Loop (faster per token; the decoder's weights are repacked
# once per Loop, so at most this much more memory): see decode()
SEPARATE_LOOPS_WEIGHTS = 16 << 20
SOURCE = ("src_ids", "src_mask")


def input_specs(m: Manifest) -> tuple[TensorSpec, ...]:
    enc = m.graphs["encoder"]
    ids = enc.input("src_ids")
    # a model that takes no padding mask (manifest masked_padding false) still gets the input, unread: every
    # bundle's generate.onnx has the same inputs
    taken = {t.name for t in enc.inputs}
    mask = enc.input("src_mask") if "src_mask" in taken else TensorSpec("src_mask", "int64", ids.shape)
    src = (ids, mask)
    return (
        *src,
        TensorSpec("max_new_tokens", "int64", ()),
        TensorSpec("min_new_tokens", "int64", ()),
        TensorSpec("beam_size", "int64", ()),
        TensorSpec("length_penalty", "float32", ()),
        TensorSpec("early_stopping", "int64", ()),
        TensorSpec("banned_ids", "int64", ("banned",)),
        TensorSpec("forced_eos", "int64", ()),
        TensorSpec("forced_bos_token", "int64", ()),
    )


OUTPUTS = (
    TensorSpec("tokens", "int64", ("batch", "hyps", "tokens_len")),
    TensorSpec("lengths", "int64", ("batch", "hyps")),
    TensorSpec("scores", "float32", ("batch", "hyps")),
)


def defaults(m: Manifest) -> dict[str, np.ndarray]:
    """The values the optional inputs take when a caller does not feed them (from the manifest)."""
    g = m.generation
    return {
        "max_new_tokens": np.array(int(g.get("max_new_tokens", m.max_new_tokens)), np.int64),
        "min_new_tokens": np.array(int(g.get("min_new_tokens", 0)), np.int64),
        "beam_size": np.array(int(g.get("beam_size", 1)), np.int64),
        "length_penalty": np.array(float(g.get("length_penalty", 1.0)), np.float32),
        "early_stopping": np.array(int(bool(g.get("early_stopping", False))), np.int64),
        "banned_ids": np.array(list(m.banned_tokens), np.int64),
        "forced_eos": np.array(int(bool(g.get("forced_eos", False))), np.int64),
        "forced_bos_token": np.array(-1 if g.get("forced_bos_token") is None else int(g["forced_bos_token"]), np.int64),
    }


def build_generate(folder: Path, m: Manifest) -> GraphSpec:
    """Write `folder`/generate.onnx from the bundle's graphs and manifest; return its GraphSpec (no sha256)."""
    models = {k: onnx.load(str(folder / g.file), load_external_data=False) for k, g in m.loop_graphs.items()}
    # (14 at least: Reshape's allowzero, for tensors of zero tokens at the first step)
    opset = max(14, *(o.version for o in models["decoder_step"].opset_import if o.domain in ("", "ai.onnx")))
    # every weight an initializer of the main graph, read by the Loop body from the outer scope (as
    # initializers of the body, onnxruntime-web cannot resolve their external data, and ONNX Runtime's memory
    # is no lower)
    store = Initializers()
    main = Nodes("main/", opset)
    context = [
        (name, models[name].graph, lift_initializers(models[name].graph, f"{name}/", store))
        for name in ("encoder", "attention")
        if name in models
    ]
    axes = {n: 0 for n in SOURCE}
    for name, _, _ in context:
        axes |= {t.name: t.shape.index("batch") for t in m.graphs[name].outputs if "batch" in t.shape}
    step = models["decoder_step"].graph
    special = m.special_tokens
    parts = Parts(
        m,
        step,
        lift_initializers(step, "decoder_step/", store),
        tuple(context),
        (*SOURCE, *(t.name for name, _, _ in context for t in m.graphs[name].outputs)),
        axes,
        m.target_vocab_size,
        special["eos"],
        special.get("pad", special["eos"]),
        special["decoder_start"],
        opset,
    )
    _check_step_inputs(parts)
    shared = shared_values(main, parts)
    is_beam = main.op("Greater", ["beam_size", main.const(1, np.int64)])
    shared["beam"] = main.op("Max", ["beam_size", main.const(1, np.int64)])  # beams per source (1: greedy)
    ctx = parts.encode(main)
    if _weights_bytes(store) <= SEPARATE_LOOPS_WEIGHTS:
        # a Loop per strategy, and one for greedy decoding of a single source; the others run no iteration
        none, limit, greedy_s = main.const(0, np.int64), shared["limit"], {**shared, "beam": main.const(1, np.int64)}
        single = main.op("Equal", [main.op("Squeeze", [first_dim(main, "src_ids")]), main.const(1, np.int64)])
        alone = main.op("And", [single, main.op("Not", [is_beam])])
        trips = lambda take: main.op("Where", [take, limit, none])  # noqa: E731
        one = decode(parts, greedy_s, main, ctx, ("greedy",), trips(alone), single=True)
        greedy = decode(
            parts, greedy_s, main, ctx, ("greedy",), trips(main.op("Not", [main.op("Or", [is_beam, single])]))
        )
        beam = decode(parts, shared, main, ctx, ("beam",), trips(is_beam))
        greedy_branch = _pick(
            main,
            "greedy",
            lambda b: b.op(
                "If",
                [single],
                len(OUTPUTS),
                then_branch=_pick(b, "one", lambda c: single_outputs(c, parts, one)),
                else_branch=_pick(b, "many", lambda c: greedy_outputs(c, greedy)),
            ),
        )
    else:
        greedy = beam = decode(parts, shared, main, ctx, ("greedy", "beam"), shared["limit"], is_beam)
        greedy_branch = _pick(main, "greedy", lambda b: greedy_outputs(b, greedy))
    main.op(
        "If",
        [is_beam],
        [t.name for t in OUTPUTS],
        then_branch=_pick(main, "beam", lambda b: beam_outputs(b, shared, beam)),
        else_branch=greedy_branch,
    )
    inputs = input_specs(m)
    graph = helper.make_graph(
        main.nodes,
        "edgeseq_generate",
        [helper.make_tensor_value_info(t.name, elem_type(t.dtype), list(t.shape)) for t in inputs],
        [helper.make_tensor_value_info(t.name, elem_type(t.dtype), list(t.shape)) for t in OUTPUTS],
        initializer=store.tensors,
    )
    imports = [o if o.domain else helper.make_opsetid("", opset) for o in opset_imports(list(models.values()))]
    model = helper.make_model(graph, opset_imports=imports, producer_name="edgeseq")
    model.ir_version = max(x.ir_version for x in models.values())
    path = folder / FILE
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=False)
    return GraphSpec(FILE, inputs, OUTPUTS)


def decode(
    p: Parts,
    s: dict[str, str],
    o: Nodes,
    ctx: dict[str, str],
    strategies: tuple[str, ...],
    trips: str,
    is_beam: str | None = None,
    single: bool = False,
) -> dict[str, str]:
    """A decoding Loop in the main graph `o` (at most `trips` iterations): the decoder step, then the next
    tokens chosen by each of `strategies` ("greedy", "beam"; with both, the two branches of an If on
    `is_beam`). Returns the carried values after the loop.

    ONNX Runtime repacks a weight once for each node that reads it, so a Loop per strategy holds the
    decoder's repacked weights twice (+227 MB for a Marian base): build_generate gives small models one
    Loop per strategy (no If, nothing of the other strategy carried: each node and carried value costs
    about a microsecond a token) and large ones a single Loop. A Loop inside an If is not an option: ONNX
    Runtime does not repack weights there (10-30x slower steps). Every value read from inside a subgraph is
    a body input or computed in the body from the logits (never the step's own outputs): ONNX Runtime's QDQ
    propagation fails on a Dequantize output read from a subgraph.

    `single`: greedy decoding of one source (the latency case): its row never leaves, so the body gathers
    nothing and scatters nothing (generate_loops.greedy_single), ~10 fewer nodes a token, and an RNN step
    that reads only the embedding looks its input projection up (export/generate_fold.py).
    """
    d = p.manifest.decoder
    i64 = lambda x: o.const(x, np.int64)  # noqa: E731
    n = first_dim(o, "src_ids")
    K = s["beam"]
    rows = o.op("Mul", [n, o.op("Reshape", [K, i64([1])])])
    rep = o.op("Div", [o.op("Range", [i64(0), o.op("Squeeze", [rows]), i64(1)]), K])  # each row's source
    loop = Loop("_".join(strategies), o, p, s, trips)
    tok = loop.carry("tok", o.op("Expand", [i64(p.start), rows]), INT)
    states = {
        st.input: loop.carry(
            f"state:{st.input}",
            o.op("Gather", [ctx[st.init_from], rep], axis=st.batch_axis) if st.init_from else zeros_state(o, st, rows),
            elem_type(st.dtype),
        )
        for st in d.states
    }
    # the context one row per source, carried unchanged (free: the body passes it on); per step the rows
    # of the previous step each row continues (states) and each row's source (context)
    context = {k: loop.carry(f"ctx:{k}", ctx[k], context_type(p, k)) for k in p.step_context}
    carry = {"greedy": lambda: greedy_carry(loop, o, n), "beam": lambda: beam_carry(loop, o, s, n)}
    if single:
        own = single_carry(loop, o)
        fold = fold_rnn_input(p.step, p.step_inits, d.tokens_input, o)
        out = loop.step(tok, states, context, None, None, fold)
        new = greedy_single(loop.b, p, own, loop.scores(out[d.logits_output]))
        going = new.pop("going")
        new |= {f"state:{st.input}": out[st.output] for st in d.states}
        return loop.close({**new, **{f"ctx:{k}": context[k] for k in p.step_context}}, going)
    state_rows = loop.carry("rows", o.op("Range", [i64(0), o.op("Squeeze", [rows]), i64(1)]), INT)
    sources = loop.carry("src", rep, INT)
    own = {name: carry[name]() for name in strategies}
    out = loop.step(tok, states, context, state_rows, sources)
    logits, b = out[d.logits_output], loop.b
    alone = len(strategies) == 1  # the choice in the body itself, not in an If's branch
    nodes = {name: b if alone else Nodes(f"{loop.name}/{name}/", p.opset) for name in strategies}
    select = {
        "greedy": lambda: greedy_select(
            nodes["greedy"], p, own["greedy"], greedy_fixed(o, p, n), loop.scores(logits), sources
        ),
        "beam": lambda: beam_select(
            nodes["beam"], p, s, loop, own["beam"], loop.scores(b.op("LogSoftmax", [logits], axis=-1))
        ),
    }
    chosen = {name: select[name]() for name in strategies}
    if alone:
        picked = chosen[strategies[0]]
    else:
        keys = ["going", "tok", "rows", *(k for name in strategies for k in own[name])]
        types = {"going": BOOL, **loop.types}
        branches = {}
        for name, new in chosen.items():
            # the other strategy's values are left empty, not passed on: ONNX Runtime copies a value an If
            # passes through (~2 us a value and step for the demo model, 17 us in all)
            nb = nodes[name]
            outs = nb.outputs(
                [new.get(k) or _empty(nb, types[k]) for k in keys], [nb.name(f"{name}.{k}") for k in keys]
            )
            branches[name] = helper.make_graph(
                nb.nodes, f"choose_{name}", [], [value(x, types[k]) for x, k in zip(outs, keys)]
            )
        picked = dict(
            zip(keys, b.op("If", [is_beam], len(keys), then_branch=branches["beam"], else_branch=branches["greedy"]))
        )
    new = {
        **{f"state:{st.input}": out[st.output] for st in d.states},
        **{f"ctx:{k}": context[k] for k in p.step_context},
        "src": b.op("Gather", [sources, picked["rows"]], axis=0),
        **{k: v for k, v in picked.items() if k != "going"},
    }
    return loop.close(new, picked["going"])


def _weights_bytes(store: Initializers) -> int:
    """The bytes of the initializers in `store` (external data by its recorded length)."""
    total = 0
    for t in store.tensors:
        ext = {e.key: e.value for e in t.external_data}
        total += int(ext.get("length", 0)) if t.data_location == onnx.TensorProto.EXTERNAL else len(t.raw_data)
    return total


def _check_step_inputs(p: Parts) -> None:
    d = p.manifest.decoder
    known = {d.tokens_input, d.step_input, *d.added_names(), *(s.input for s in d.states), *p.context_names}
    unknown = [i.name for i in p.step.input if i.name not in known and i.name not in p.step_inits]
    if unknown:
        raise BundleError(f"generate graph: decoder_step inputs {unknown} come from neither the loop nor the context")


def _empty(b: Nodes, elem: int) -> str:
    """A (0,) tensor of element type `elem`."""
    return b.const(np.zeros(0, helper.tensor_dtype_to_np_dtype(elem)))


def _pick(b: Nodes, name: str, outputs) -> onnx.GraphProto:
    """An If branch giving one strategy's three outputs (tokens, lengths, scores) as generate.onnx's, made
    by `outputs` (a function of the branch's Nodes) from the loop's final values."""
    picked = Nodes(f"{name}.pick/", b.opset)
    named = picked.outputs(outputs(picked), [f"{name}.{o.name}" for o in OUTPUTS])
    return helper.make_graph(
        picked.nodes,
        f"pick_{name}",
        [],
        [helper.make_tensor_value_info(x, elem_type(o.dtype), None) for x, o in zip(named, OUTPUTS)],
    )
