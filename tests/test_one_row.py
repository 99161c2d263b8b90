"""The one-row step graph of dynamic-int8 bundles (export/one_row.py): int8 weight products as GEMVs, the
weights read from the bundle's own int8 tensors, run by the loop for steps of one row only."""

import json

import numpy as np
import onnx
import pytest

from edgeseq.bundle import MANIFEST, ONE_ROW
from edgeseq.errors import BundleError
from edgeseq.export.one_row import one_row_step
from edgeseq.export.quantize import Recipe, quantize_bundle
from edgeseq.export.validate import validate_bundle
from edgeseq.runtime import Generator
from edgeseq.runtime.batching import pad_batch
from edgeseq.runtime.bundle import load_bundle
from edgeseq.runtime.generator import OrtBackend
from edgeseq.runtime.loop import initial_state
from tests.conftest import medium_transformer

WEIGHT_PRODUCTS = {"MatMulInteger", "QGemm"}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """A Transformer (its tied output projection is tied_int8's QGemm) in fp32 and dynamic int8, its
    checkpoint, and sentences of 3 to 9 words."""
    root = tmp_path_factory.mktemp("one_row")
    medium_transformer(root)
    quantize_bundle(root / "fp32", root / "int8", Recipe.uniform("dynamic-int8"))
    texts = [" ".join(f"w{i}" for i in np.random.default_rng(s).integers(0, 996, 3 + s % 7)) for s in range(12)]
    return root, texts


def top_ops(path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]


def test_int8_bundles_have_it_reading_the_same_weights(bundles):
    root, _ = bundles
    m = load_bundle(root / "int8").manifest
    one, step = m.graphs[ONE_ROW], m.graphs["decoder_step"]
    assert (one.inputs, one.outputs) == (step.inputs, step.outputs)
    assert m.parity["one_row"]["ok"] and m.parity["one_row"]["sources"] == 8
    ops, step_ops = top_ops(root / "int8" / one.file), top_ops(root / "int8" / step.file)
    model = onnx.load(str(root / "int8" / one.file), load_external_data=False)
    # every int8 weight product of the step (the tied projection's QGemm among them) is a MatMulNBits; those of
    # one input (query, key, value) are one, split
    joined = sum(len(n.output) - 1 for n in model.graph.node if n.op_type == "Split")
    assert joined >= 1 and ops.count("MatMulNBits") + joined == sum(op in WEIGHT_PRODUCTS for op in step_ops) > 8
    assert "QGemm" in step_ops and not WEIGHT_PRODUCTS & set(ops)
    onnx.checker.check_model(str(root / "int8" / one.file))
    # no weights of its own: its large tensors are the step's, in weights.bin (unsigned copies are folded at load)
    inline = lambda g: sum(len(t.raw_data) for t in g.initializer)  # noqa: E731
    step_model = onnx.load(str(root / "int8" / step.file), load_external_data=False)
    assert inline(model.graph) <= inline(step_model.graph)
    assert (root / "int8" / one.file).stat().st_size < 2 * (root / "int8" / step.file).stat().st_size
    assert {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"} == {"weights.bin"}
    # fp32 and fp16 bundles have none, and the transform finds nothing to replace in their steps
    assert ONE_ROW not in load_bundle(root / "fp32").manifest.graphs
    fp32 = onnx.load(str(root / "fp32" / "decoder_step.onnx"), load_external_data=False)
    assert one_row_step(fp32, str(root / "fp32")) is None


def one_row_feeds(bundle_dir, text):
    """The step's feeds at its second step for one source (its first step's states)."""
    b = load_bundle(bundle_dir)
    backend = OrtBackend(b, one_row=False)
    spec = b.manifest.decoder
    ids, mask = pad_batch([b.encode(text)], b.manifest.source_framing.pad)
    state = initial_state(backend, ids, mask, spec)
    feeds = {**state.context, **state.states, spec.tokens_input: np.array([b.manifest.special_tokens["decoder_start"]])}
    if spec.step_input:
        feeds[spec.step_input] = np.array(0, np.int64)
    out = backend.step(feeds)
    feeds = {**feeds, **{s.input: out[s.output] for s in spec.states}}
    feeds[spec.tokens_input] = out[spec.logits_output].argmax(-1)
    if spec.step_input:
        feeds[spec.step_input] = np.array(1, np.int64)
    return feeds


def test_its_products_are_the_int8_steps_to_rounding(bundles):
    root, texts = bundles
    logits = OrtBackend(load_bundle(root / "int8")).decoder.logits_output
    for text in texts[:4]:
        feeds = one_row_feeds(root / "fp32", text)
        exact = OrtBackend(load_bundle(root / "fp32")).step(feeds)[logits]
        batched = OrtBackend(load_bundle(root / "int8"), one_row=False).step(feeds)[logits]
        one = OrtBackend(load_bundle(root / "int8")).step(feeds)[logits]
        assert not np.array_equal(one, batched)  # another graph ran (x quantized per block, not per tensor)
        scale = np.abs(exact).max()
        # as close to the fp32 step as the batched int8 step is, within int8 rounding of the logits' size
        assert np.abs(one - exact).max() <= 2 * np.abs(batched - exact).max() + 0.01 * scale
        assert np.abs(one - batched).max() <= 0.05 * scale


def test_the_loop_runs_it_for_steps_of_one_row_only(bundles):
    root, texts = bundles
    gen = Generator(root / "int8", engine="loop")
    alone = [gen.generate([t])[0] for t in texts]
    sessions = gen._backend.sessions
    assert ONE_ROW in sessions and "decoder_step" not in sessions  # the batched step was never loaded
    batched = gen.generate(texts)
    assert "decoder_step" in sessions
    plain = Generator(root / "int8", engine="loop", one_row=False)
    without = [plain.generate([t])[0] for t in texts]
    assert ONE_ROW not in plain._backend.sessions
    fp32 = [Generator(root / "fp32", engine="loop").generate([t])[0] for t in texts]
    # int8 rounding parts near ties only: nearly every source decodes alike every way
    for other in (batched, without, fp32):
        assert sum(a.tokens == b.tokens for a, b in zip(alone, other)) >= len(texts) - 2
    assert sum(len(a.tokens) > 0 for a in alone) == len(texts)


def test_validation_compares_the_step_of_one_row(bundles):
    root, texts = bundles
    report = validate_bundle(root / "int8", root / "model.safetensors", texts=texts, record=False)
    assert report.ok, report.failures()
    assert {c.graph for c in report.outputs} >= {"decoder_step", "step (1 row)"}
    names = [s.name for s in report.sequences]
    assert "runtime vs reference, batch 1" in names and "runtime batch vs alone" in names


def test_a_one_row_graph_must_have_the_steps_inputs_and_outputs(bundles, tmp_path):
    root, _ = bundles
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(root / "int8", broken)
    data = json.loads((broken / MANIFEST).read_text())
    data["graphs"][ONE_ROW]["inputs"] = data["graphs"][ONE_ROW]["inputs"][1:]
    (broken / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(BundleError, match=f"graphs.{ONE_ROW} must have decoder_step's inputs and outputs"):
        load_bundle(broken)


def test_bench_places_the_batched_step_of_an_int8_bundle(bundles):
    """`edgeseq bench` profiles decoder_step on one source: the one-row graph must not take its place."""
    from edgeseq.bench import step_placement

    root, _ = bundles
    placement = step_placement(load_bundle(root / "int8"), "cpu")
    assert placement.nodes.get("CPUExecutionProvider", 0) > 20 and placement.memcpy == 0
