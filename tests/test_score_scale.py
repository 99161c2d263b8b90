"""Attention's score scale folded into the query projection (export/score_scale.py): the same scores, no scale
left for ONNX Runtime to fuse into the product, and nothing folded where another node would see the change."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseq.bundle import MANIFEST
from edgeseq.export.score_scale import fold_score_scales
from tests.conftest import medium_transformer

D, H, DH = 16, 2, 8  # model width, heads, head size
RNG = np.random.default_rng(0)


def weight(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def model(nodes, initializers, outputs=("probs",), inputs=(("x", ["rows", D]), ("keys", ["rows", H, "t", DH]))):
    """x (rows, D) -> a query (rows, H, 1, DH) against keys (rows, H, t, DH) -> softmax of scaled scores."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in initializers.items()],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def heads(value: str, out: str) -> list:
    """(rows, D) -> (rows, H, 1, DH)"""
    return [helper.make_node("Reshape", [value, "heads_shape"], [out])]


def scores(q: str, out: str) -> list:
    """q (rows, H, 1, DH) @ keys^T -> (rows, H, 1, t)"""
    return [
        helper.make_node("Transpose", ["keys"], ["keys_t"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", [q, "keys_t"], [out]),
    ]


BASE = {"heads_shape": np.array([-1, H, 1, DH], dtype=np.int64), "wq": weight(D, D), "bq": weight(D)}


def run(m, feeds) -> dict:
    session = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def feeds(rows=3, t=5) -> dict:
    return {"x": weight(rows, D), "keys": weight(rows, H, t, DH)}


def ops(m) -> list[str]:
    return [n.op_type for n in m.graph.node]


def gemm_after() -> tuple[list, dict]:
    """Gemm -> Reshape -> MatMul(., keys^T) -> Mul(1/sqrt(DH)) -> Softmax: the decoder step's pattern."""
    nodes = [
        helper.make_node("Gemm", ["x", "wq", "bq"], ["q2"]),
        *heads("q2", "q"),
        *scores("q", "s"),
        helper.make_node("Mul", ["s", "scale"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["probs"]),
    ]
    return nodes, {**BASE, "scale": np.array(1 / np.sqrt(DH), dtype=np.float32)}


def matmul_add_before() -> tuple[list, dict]:
    """MatMul + Add (a Linear over 3-D input) -> Mul(scale) on the query -> Reshape -> MatMul -> Softmax
    (Hugging Face's `q_proj(x) * scaling`), the scale a Constant node."""
    nodes = [
        helper.make_node("Constant", [], ["scale"], value=numpy_helper.from_array(np.array(0.3, np.float32))),
        helper.make_node("MatMul", ["x", "wq"], ["xw"]),
        helper.make_node("Add", ["bq", "xw"], ["q2"]),
        helper.make_node("Mul", ["scale", "q2"], ["q2s"]),
        *heads("q2s", "q"),
        *scores("q", "s"),
        helper.make_node("Softmax", ["s"], ["probs"]),
    ]
    return nodes, dict(BASE)


def div_after() -> tuple[list, dict]:
    """MatMul without a bias -> scores / sqrt(DH), the Shape of the query read too (not its values)."""
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q2"]),
        helper.make_node("Shape", ["q2"], ["q2_shape"]),
        *heads("q2", "q"),
        *scores("q", "s"),
        helper.make_node("Div", ["s", "root"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["probs"]),
    ]
    return nodes, {k: v for k, v in BASE.items() if k != "bq"} | {"root": np.array(np.sqrt(DH), np.float32)}


@pytest.mark.parametrize("build", [gemm_after, matmul_add_before, div_after])
def test_the_scale_moves_into_the_query_projection(build):
    nodes, inits = build()
    m = model(nodes, inits)
    f = feeds()
    before = run(m, f)["probs"]
    assert fold_score_scales(m) == 1
    onnx.checker.check_model(m)
    assert "Mul" not in ops(m) and "Div" not in ops(m)
    np.testing.assert_allclose(run(m, f)["probs"], before, rtol=1e-5, atol=1e-6)


def test_scales_left_unread_are_removed():
    nodes, inits = gemm_after()
    m = model(nodes, inits)
    fold_score_scales(m)
    assert "scale" not in {t.name for t in m.graph.initializer}
    nodes, inits = matmul_add_before()
    m = model(nodes, inits)
    fold_score_scales(m)
    assert "Constant" not in ops(m)


def test_onnx_runtime_runs_a_plain_product_after_it(tmp_path):
    """What the fold is for: no FusedMatMul with alpha != 1 left in ONNX Runtime's optimised graph."""

    def alphas(m) -> list[float]:
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / "opt.onnx")
        ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
        optimised = onnx.load(str(tmp_path / "opt.onnx"))
        return [
            a.f for n in optimised.graph.node if n.op_type == "FusedMatMul" for a in n.attribute if a.name == "alpha"
        ]

    nodes, inits = gemm_after()
    m = model(nodes, inits)
    assert any(a != 1.0 for a in alphas(m))  # the case the fold is for
    fold_score_scales(m)
    assert all(a == 1.0 for a in alphas(m))


def test_a_query_read_elsewhere_is_left_alone():
    nodes, inits = gemm_after()
    m = model(nodes, inits, outputs=("probs", "q2"))  # the projection is also a graph output
    original = m.SerializeToString()
    assert fold_score_scales(m) == 0 and m.SerializeToString() == original

    nodes, inits = gemm_after()
    nodes.append(helper.make_node("Add", ["q", "q"], ["twice"]))  # another node reads the query's values
    m = model(nodes, inits, outputs=("probs", "twice"))
    assert fold_score_scales(m) == 0 and "Mul" in ops(m)


def test_a_scale_on_a_weight_product_is_not_a_score_scale():
    """(h * s) @ W (T5's tied output projection) has a weight on the other side: not attention's scores."""
    nodes = [
        helper.make_node("Gemm", ["x", "wq", "bq"], ["h"]),
        helper.make_node("Mul", ["h", "scale"], ["hs"]),
        helper.make_node("MatMul", ["hs", "w_out"], ["logits"]),
    ]
    inits = {**BASE, "scale": np.array(0.5, np.float32), "w_out": weight(D, 11)}
    m = model(nodes, inits, outputs=("logits",), inputs=(("x", ["rows", D]),))
    assert fold_score_scales(m) == 0 and "Mul" in ops(m)


def test_a_projection_weight_read_elsewhere_gets_its_own_scaled_copy():
    nodes, inits = gemm_after()
    nodes.append(helper.make_node("Gemm", ["x", "wq", "bq"], ["other"]))  # the same weights, unscaled
    m = model(nodes, inits, outputs=("probs", "other"))
    f = feeds()
    before = run(m, f)
    assert fold_score_scales(m) == 1
    after = run(m, f)
    assert np.array_equal(after["other"], before["other"])
    np.testing.assert_allclose(after["probs"], before["probs"], rtol=1e-5, atol=1e-6)
    assert {"wq", "bq"} <= {t.name for t in m.graph.initializer}


def test_exported_transformers_have_their_step_scales_folded(tmp_path):
    """The reference Transformer's bundle: every attention of the step and the encoder folded, recorded in the
    provenance, and the bundle passed its parity checks against PyTorch (export raises otherwise)."""
    medium_transformer(tmp_path)
    manifest = json.loads((tmp_path / "fp32" / MANIFEST).read_text())
    folded = manifest["provenance"]["score_scales_folded"]
    assert folded["decoder_step"] == 4 and folded["encoder"] == 2  # 2 layers: self + cross; 2 encoder layers
    assert manifest["parity"]["ok"]
    step = onnx.load(str(tmp_path / "fp32" / "decoder_step.onnx"), load_external_data=False)
    products = {o for n in step.graph.node if n.op_type == "MatMul" for o in n.output}
    assert not [n.name for n in step.graph.node if n.op_type in ("Mul", "Div") and set(n.input) & products]
