"""generate.onnx's beam search (a branch of the decoding loop's body, generate_graph.decode): Hugging Face's
semantics as runtime/search.py BeamSearch has them.

Per step and source still searching: the 2K best continuations of log_softmax(logits) + bias + each beam's
running score (flat over beams x vocabulary, ties to the lower index); those among the first K that end
(</s>, or the length limit) compete for the source's K finished slots with their score / length **
length_penalty (a kept hypothesis wins a tie); the first K that do not end run on. A source is done at the
limit, with fewer than K running, or with its K slots full and early stopping or no running beam able to
beat its worst; then its rows leave the batch.
"""

from __future__ import annotations

import numpy as np

from edgeseq.export.compose import Nodes
from edgeseq.export.generate_loops import DOUBLE, FLOAT, INT, Loop, Parts, filled, first_dim
from edgeseq.export.generate_pool import best_first, offer


def beam_carry(loop: Loop, o: Nodes, s: dict[str, str], n: str) -> dict[str, str]:
    """Beam search's own carried values (beside the tokens, states and rows every strategy carries), for
    `s["beam"]` beams per source."""
    i64 = lambda b, x: b.const(x, np.int64)  # noqa: E731
    K = s["beam"]
    k1 = o.op("Reshape", [K, i64(o, [1])])
    first = o.op("Equal", [o.op("Range", [i64(o, 0), K, i64(o, 1)]), i64(o, 0)])
    start_scores = o.op("Where", [first, o.const(np.array(0.0, np.float32)), o.const(np.array(-1e9, np.float32))])
    return {
        "beam": loop.carry("beam", o.op("Expand", [start_scores, o.op("Concat", [n, k1], axis=0)]), FLOAT),  # (m, K)
        "beam_hist": loop.carry("beam_hist", filled(o, [o.op("Mul", [n, k1]), i64(o, [0])], 0, np.int64), INT),
        "sources": loop.carry("sources", o.op("Range", [i64(o, 0), o.op("Squeeze", [n]), i64(o, 1)]), INT),  # (m,)
        # each source's finished hypotheses, in insertion order (export/generate_pool.py)
        "pool_s": loop.carry("pool_s", filled(o, [n, k1], -np.inf, np.float64), DOUBLE),  # (n, K)
        "pool_l": loop.carry("pool_l", filled(o, [n, k1], 0, np.int64), INT),  # (n, K)
        "pool_t": loop.carry("pool_t", filled(o, [n, k1, i64(o, [0])], 0, np.int64), INT),  # (n, K, t)
        "pool_c": loop.carry("pool_c", filled(o, [n], 0, np.int64), INT),  # (n,) slots in use
    }


def beam_select(b: Nodes, p: Parts, s: dict[str, str], loop: Loop, c: dict[str, str], scores: str) -> dict[str, str]:
    """One step of beam search in `b`, from `scores` (mK, V): log_softmax of the logits with the iteration's
    rules applied (Loop.scores: HF's order, processors after the log-softmax; a forced token scores 0).
    Returns the new carried values (beam search's own, tok, rows) and `going`."""
    V = p.vocab
    i64 = lambda b, x: b.const(x, np.int64)  # noqa: E731
    hist, sources = c["beam_hist"], c["sources"]
    pool = {"score": c["pool_s"], "length": c["pool_l"], "tokens": c["pool_t"], "count": c["pool_c"]}
    K, it = s["beam"], loop.it
    K2 = b.op("Mul", [K, i64(b, 2)])
    kk = b.op("Reshape", [K, i64(b, [1])])
    m = first_dim(b, sources)
    total = b.op("Add", [scores, b.op("Reshape", [c["beam"], i64(b, [-1, 1])])])
    flat = b.op("Reshape", [total, b.op("Concat", [m, b.op("Mul", [kk, i64(b, [V])])], axis=0)])  # (m, K * V)
    best, top = b.op("TopK", [flat, b.op("Reshape", [K2, i64(b, [1])])], 2, axis=-1, largest=1, sorted=1)
    token = b.op("Mod", [top, i64(b, V)])
    base = b.op(
        "Unsqueeze", [b.op("Mul", [b.op("Range", [i64(b, 0), b.op("Squeeze", [m]), i64(b, 1)]), K]), i64(b, [1])]
    )
    row = b.op("Add", [b.op("Div", [top, i64(b, V)]), base])  # (m, 2K): the row each candidate continues
    length = b.op("Add", [it, i64(b, 1)])
    divisor = b.op("Pow", [b.op("Cast", [length], to=DOUBLE), b.op("Cast", ["length_penalty"], to=DOUBLE)])
    last = b.op("GreaterOrEqual", [length, s["limit"]])
    is_eos = b.op("Equal", [token, i64(b, p.eos)])
    ends = b.op("Or", [is_eos, last])  # (m, 2K)

    def first_k(x: str) -> str:
        return b.op("Slice", [x, i64(b, [0]), kk, i64(b, [1])])

    # candidates among the first K that end: finished hypotheses, offered to the source's K slots in rank order
    t1 = b.op("Reshape", [it, i64(b, [1])])  # tokens so far: the width of hist
    parents = b.op("Gather", [hist, b.op("Reshape", [first_k(row), i64(b, [-1])])], axis=0)  # (mK, t)
    parents = b.op("Reshape", [parents, b.op("Concat", [m, kk, t1], axis=0)], allowzero=1)  # (m, K, t)
    eos_k = first_k(is_eos)
    last_col = b.op("Unsqueeze", [b.op("Where", [eos_k, i64(b, p.pad), first_k(token)]), i64(b, [2])])
    cand = {
        "score": b.op("Div", [b.op("Cast", [first_k(best)], to=DOUBLE), divisor]),
        "ok": first_k(ends),
        "length": b.op("Add", [it, b.op("Cast", [b.op("Not", [eos_k])], to=INT)]),
        "tokens": b.op("Concat", [parents, last_col], axis=2),  # (m, K, t + 1)
    }
    mine = {k: b.op("Gather", [pool[k], sources], axis=0) for k in pool}  # the sources still searching
    mine["tokens"] = b.op("Concat", [mine["tokens"], filled(b, [m, kk, i64(b, [1])], p.pad, np.int64)], axis=2)
    kept = offer(b, K, mine, cand)
    at = b.op("Unsqueeze", [sources, i64(b, [1])])  # (m, 1)
    n_all = first_dim(b, pool["count"])
    grown = b.op("Concat", [pool["tokens"], filled(b, [n_all, kk, i64(b, [1])], p.pad, np.int64)], axis=2)
    # the running beams: the first K candidates that do not end, in rank order
    runs_on = b.op("Not", [ends])
    rank = b.op("Cast", [b.op("Range", [i64(b, 0), K2, i64(b, 1)])], to=FLOAT)
    later = b.op("Add", [rank, b.op("Cast", [K2], to=FLOAT)])
    _, run = b.op("TopK", [b.op("Where", [runs_on, rank, later]), kk], 2, axis=1, largest=0, sorted=1)  # (m, K)
    enough = b.op("GreaterOrEqual", [b.reduce("ReduceSum", b.op("Cast", [runs_on], to=INT), [1]), K])  # (m,)
    run_scores = b.op("GatherElements", [best, run], axis=1)  # (m, K)
    # done: at the limit, fewer than K running, or K finished and no running beam can beat the worst
    full = b.op("Equal", [kept["count"], K])
    lead = b.op("Squeeze", [b.op("Slice", [run_scores, i64(b, [0]), i64(b, [1]), i64(b, [1])]), i64(b, [1])])
    lead = b.op("Div", [b.op("Cast", [lead], to=DOUBLE), divisor])
    hopeless = b.op("Or", [s["early_stopping"], b.op("LessOrEqual", [lead, b.reduce("ReduceMin", kept["score"], [1])])])
    done = b.op("Or", [b.op("Or", [last, b.op("Not", [enough])]), b.op("And", [full, hopeless])])
    stay = b.op("Reshape", [b.op("NonZero", [b.op("Not", [done])]), i64(b, [-1])])  # (m',) sources going on
    next_tok = b.op(
        "Reshape", [b.op("Gather", [b.op("GatherElements", [token, run], axis=1), stay], axis=0), i64(b, [-1])]
    )
    rows = b.op(
        "Reshape", [b.op("Gather", [b.op("GatherElements", [row, run], axis=1), stay], axis=0), i64(b, [-1])]
    )  # (m'K,): the row each new row continues
    return {
        "going": b.op("Greater", [b.op("Size", [stay]), i64(b, 0)]),
        "tok": next_tok,
        "rows": rows,
        "beam": b.op("Gather", [run_scores, stay], axis=0),
        "beam_hist": b.op(
            "Concat", [b.op("Gather", [hist, rows], axis=0), b.op("Unsqueeze", [next_tok, i64(b, [1])])], axis=1
        ),
        "sources": b.op("Gather", [sources, stay], axis=0),
        "pool_s": b.op("ScatterND", [pool["score"], at, kept["score"]]),
        "pool_l": b.op("ScatterND", [pool["length"], at, kept["length"]]),
        "pool_t": b.op("ScatterND", [grown, at, kept["tokens"]]),
        "pool_c": b.op("ScatterND", [pool["count"], at, kept["count"]]),
    }


def beam_outputs(o: Nodes, s: dict[str, str], final: dict[str, str]) -> list[str]:
    """generate.onnx's three outputs from beam search's final values: each source's hypotheses, best first."""
    finished = {
        "score": final["pool_s"],
        "length": final["pool_l"],
        "tokens": final["pool_t"],
        "count": final["pool_c"],
    }
    return list(best_first(o, s["beam"], finished))
