"""Small edits of ONNX graphs shared by the graph rewrites (head, reorder, quantize, the generate graph)."""

from __future__ import annotations

import onnx

from edgeseq.errors import OptionsError


def _needs(node: onnx.NodeProto) -> set[str]:
    """A node's inputs, and the outer-scope names its subgraphs (If, Loop, Scan bodies) read."""
    names = set(node.input)
    for a in node.attribute:
        for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
            inner = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                inner |= set(n.output)
            names |= {x for n in g.node for x in _needs(n)} - inner
    return names


def topological_sort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so that every node comes after the producers of its inputs (subgraphs' included)."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = [(n, _needs(n)) for n in graph.node], []
    while pending:
        rest = [(n, needs) for n, needs in pending if not needs <= ready]
        done = [n for n, needs in pending if needs <= ready]
        if not done:
            raise OptionsError(f"graph {graph.name}: cycle or missing input among {[n.name for n, _ in rest][:5]}")
        for n in done:
            ordered.append(n)
            ready.update(n.output)
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
