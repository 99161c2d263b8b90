"""onnxsim on each traced graph: fewer nodes (shape arithmetic folded), same names and declared I/O.

A graph onnxsim fails on is kept as traced, and the report says why; it never fails the export.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from edgeseq.bundle import GraphSpec
from edgeseq.export.trace import set_declared_types


def simplify_graph(path: Path, spec: GraphSpec) -> dict[str, Any]:
    """Simplify the ONNX file at `path` in place; returns what happened (node counts, bytes, or the error)."""
    import onnxsim

    model = onnx.load(str(path))
    before = {"nodes": len(model.graph.node), "bytes": model.ByteSize()}
    try:
        simplified, ok = onnxsim.simplify(model)
        if not ok:
            raise RuntimeError("onnxsim's own check of the simplified graph failed")
        if [i.name for i in simplified.graph.input] != [t.name for t in spec.inputs] or [
            o.name for o in simplified.graph.output
        ] != [t.name for t in spec.outputs]:
            raise RuntimeError("onnxsim changed the graph's inputs or outputs")
        set_declared_types(simplified, spec)
        onnx.checker.check_model(simplified, full_check=True)
    except Exception as e:  # onnxsim raises many types; the graph stays as traced and the reason is recorded
        return {"simplified": False, "reason": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}", **before}
    onnx.save(simplified, str(path))
    return {
        "simplified": True,
        "nodes_before": before["nodes"],
        "nodes_after": len(simplified.graph.node),
        "bytes_before": before["bytes"],
        "bytes_after": simplified.ByteSize(),
    }
