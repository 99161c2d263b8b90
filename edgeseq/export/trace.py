"""Tracing one graph of an adapter to an ONNX file with the declared names, dtypes and symbolic axes."""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from pathlib import Path

import onnx
import torch

from edgeseq.bundle import GraphSpec, TensorSpec
from edgeseq.errors import EdgeseqError
from edgeseq.export.adapter import GraphModule, Seq2SeqAdapter

_ONNX_DTYPES = {
    "float32": onnx.TensorProto.FLOAT,
    "float16": onnx.TensorProto.FLOAT16,
    "int64": onnx.TensorProto.INT64,
    "int32": onnx.TensorProto.INT32,
    "bool": onnx.TensorProto.BOOL,
}


class ExportError(EdgeseqError):
    """A model that cannot be exported as declared (its graph does not match its I/O table)."""


def trace_graph(
    adapter: Seq2SeqAdapter, graph: str, spec: GraphSpec, feeds: dict[str, torch.Tensor], path: Path, opset: int
) -> onnx.ModelProto:
    """Trace `adapter.<graph>` on example `feeds` into `path`; check names, set shapes, run onnx.checker."""
    module = GraphModule(adapter, graph, spec).eval()
    args = tuple(feeds[t.name] for t in spec.inputs)
    names_in, names_out = [t.name for t in spec.inputs], [t.name for t in spec.outputs]
    dynamic = {t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)} for t in spec.inputs + spec.outputs}
    with _captured_stderr() as log, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=names_in,
                output_names=names_out,
                dynamic_axes={k: v for k, v in dynamic.items() if v},
                opset_version=opset,
                dynamo=False,
            )
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:400]
            error = ExportError(f"{graph}: torch.onnx.export failed: {first}")
            error.log = f"{e}\n{log.read_text()}"  # the exporter's whole story, for the Python API
            raise error from e
    model = onnx.load(str(path))
    got_in = [i.name for i in model.graph.input]
    got_out = [o.name for o in model.graph.output]
    if got_in != names_in or got_out != names_out:
        raise ExportError(
            f"{graph}: traced graph has inputs {got_in} and outputs {got_out}, but the adapter declares "
            f"{names_in} and {names_out} (an input the computation never uses is dropped by tracing: "
            "remove it from the graph spec)"
        )
    set_declared_types(model, spec)
    model.doc_string = f"edgeseq {graph} graph"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return model


def set_declared_types(model: onnx.ModelProto, spec: GraphSpec) -> None:
    """Give every graph input and output the dtype and (symbolic) shape its spec declares."""
    for value, t in zip([*model.graph.input, *model.graph.output], [*spec.inputs, *spec.outputs]):
        _set_type(value, t)


def _set_type(value: onnx.ValueInfoProto, t: TensorSpec) -> None:
    tt = value.type.tensor_type
    if tt.elem_type != _ONNX_DTYPES[t.dtype]:
        raise ExportError(
            f"{t.name}: traced dtype {onnx.TensorProto.DataType.Name(tt.elem_type)} but declared {t.dtype}"
        )
    tt.shape.Clear()
    for d in t.shape:
        dim = tt.shape.dim.add()
        if isinstance(d, str):
            dim.dim_param = d
        else:
            dim.dim_value = d


@contextlib.contextmanager
def _captured_stderr():
    """Route the C++ exporter's warnings (written straight to fd 2) into a temp file; yields its path."""
    with tempfile.NamedTemporaryFile(prefix="edgeseq-export-", suffix=".log", delete=False) as tmp:
        log = Path(tmp.name)
    saved = os.dup(2)
    try:
        with open(log, "wb") as f:
            os.dup2(f.fileno(), 2)
            try:
                yield log
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)
        log.unlink(missing_ok=True)
