"""Each source's finished hypotheses in generate.onnx's beam search, kept exactly as runtime/search.py keeps
them: a list in insertion order, at most K long.

Candidates are offered one at a time in rank order (an inner Loop of K iterations). With the list full, a
candidate scoring no more than the worst is refused; otherwise it is appended and, past K, the first of the
worst is removed. Ties decide which hypotheses survive and their order (int8 and fp16 logits tie often),
so the list is kept in its insertion order, removals shift it left, and the final best-first order is a
stable sort (TopK keeps the lower index first among equals).
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from edgeseq.export.compose import Nodes, scalar, value
from edgeseq.export.generate_loops import BOOL, DOUBLE, INT

KEYS = ("score", "length", "tokens", "count")  # (m, K) double, (m, K) int64, (m, K, t) int64, (m,) int64


def offer(b: Nodes, K: str, pool: dict[str, str], cand: dict[str, str]) -> dict[str, str]:
    """`pool` after offering the K candidates of `cand` in order: score (m, K) double, ok (m, K) bool (an
    ending candidate of a source still searching), length (m, K), tokens (m, K, t): as wide as the pool's."""
    inner = Nodes(f"{b.prefix}offer/", b.opset)
    j, cond = inner.name("j"), inner.name("cond")
    v = {k: inner.name(f"in.{k}") for k in KEYS}

    def pick(x: str) -> str:  # candidate j of each source: (m,), or (m, t) for tokens
        return inner.op("Gather", [x, j], axis=1)

    score, ok, length, tokens = (pick(cand[k]) for k in ("score", "ok", "length", "tokens"))
    slots = inner.op(
        "Unsqueeze",
        [inner.op("Range", [inner.const(0, np.int64), K, inner.const(1, np.int64)]), inner.const([0], np.int64)],
    )  # (1, K)
    count = inner.op("Unsqueeze", [v["count"], inner.const([1], np.int64)])  # (m, 1)
    kept = inner.op("Less", [slots, count])  # (m, K): the slots in use
    masked = inner.op("Where", [kept, v["score"], inner.const(np.array(np.inf))])
    worst = inner.reduce("ReduceMin", masked, [1])  # (m,)
    first_worst = inner.op("Unsqueeze", [inner.op("ArgMin", [masked], axis=1, keepdims=0), inner.const([1], np.int64)])
    full = inner.op("Equal", [v["count"], K])
    take = inner.op("And", [ok, inner.op("Or", [inner.op("Not", [full]), inner.op("Greater", [score, worst])])])
    shifted = inner.op(
        "Where", [inner.op("Less", [slots, first_worst]), slots, inner.op("Add", [slots, inner.const(1, np.int64)])]
    )  # the worst removed, j last
    appended = inner.op("Where", [inner.op("Equal", [slots, count]), K, slots])  # j into the first free slot
    full2 = inner.op("Unsqueeze", [full, inner.const([1], np.int64)])
    take2 = inner.op("Unsqueeze", [take, inner.const([1], np.int64)])
    order = inner.op("Where", [take2, inner.op("Where", [full2, shifted, appended]), slots])  # (m, K) into K + 1
    order = inner.op("Expand", [order, inner.op("Shape", [v["score"]])])
    new = {
        "score": inner.op(
            "GatherElements",
            [
                inner.op("Concat", [v["score"], inner.op("Unsqueeze", [score, inner.const([1], np.int64)])], axis=1),
                order,
            ],
            axis=1,
        ),
        "length": inner.op(
            "GatherElements",
            [
                inner.op("Concat", [v["length"], inner.op("Unsqueeze", [length, inner.const([1], np.int64)])], axis=1),
                order,
            ],
            axis=1,
        ),
        "count": inner.op(
            "Add", [v["count"], inner.op("Cast", [inner.op("And", [take, inner.op("Not", [full])])], to=INT)]
        ),
    }
    union_t = inner.op("Concat", [v["tokens"], inner.op("Unsqueeze", [tokens, inner.const([1], np.int64)])], axis=1)
    order_t = inner.op(
        "Expand", [inner.op("Unsqueeze", [order, inner.const([2], np.int64)]), inner.op("Shape", [v["tokens"]])]
    )
    new["tokens"] = inner.op("GatherElements", [union_t, order_t], axis=1)
    types = {"score": DOUBLE, "length": INT, "tokens": INT, "count": INT}
    outs = inner.outputs(
        [inner.const(True, np.bool_), *(new[k] for k in KEYS)], [inner.name(x) for x in ("going", *KEYS)]
    )
    body = helper.make_graph(
        inner.nodes,
        "offer_candidates",
        [scalar(j, INT), scalar(cond, BOOL), *(value(v[k], types[k]) for k in KEYS)],
        [scalar(outs[0], BOOL), *(value(o, types[k]) for o, k in zip(outs[1:], KEYS))],
    )
    final = b.op("Loop", [K, b.const(True, np.bool_), *(pool[k] for k in KEYS)], len(KEYS), body=body)
    return dict(zip(KEYS, final))


def best_first(b: Nodes, K: str, pool: dict[str, str]) -> tuple[str, str, str]:
    """The pool's hypotheses best first (a stable sort: equal scores keep their list order), as generate.onnx
    outputs them: tokens (n, K, t), lengths (n, K) (-1 for an empty slot), scores (n, K) float."""
    slots = b.op("Unsqueeze", [b.op("Range", [b.const(0, np.int64), K, b.const(1, np.int64)]), b.const([0], np.int64)])
    kept = b.op("Less", [slots, b.op("Unsqueeze", [pool["count"], b.const([1], np.int64)])])
    score = b.op("Where", [kept, pool["score"], b.const(np.array(-np.inf))])
    _, order = b.op("TopK", [score, b.op("Reshape", [K, b.const([1], np.int64)])], 2, axis=1, largest=1, sorted=1)
    length = b.op("GatherElements", [b.op("Where", [kept, pool["length"], b.const(-1, np.int64)]), order], axis=1)
    order_t = b.op("Expand", [b.op("Unsqueeze", [order, b.const([2], np.int64)]), b.op("Shape", [pool["tokens"]])])
    tokens = b.op("GatherElements", [pool["tokens"], order_t], axis=1)
    scores = b.op("Cast", [b.op("GatherElements", [score, order], axis=1)], to=1)
    return tokens, length, scores
