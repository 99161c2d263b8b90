"""The states' reorder inside the step graph (export/reorder.py): one Gather per state just before its first
reader, fed the rows at every step; bundles made before, with one If over all states fed empty rows when
nothing changes, still decode the same with both engines."""

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeseq.bundle import file_sha256
from edgeseq.export.generate_check import with_generate
from edgeseq.export.reorder import PREFIX, ROWS
from edgeseq.runtime import DecodingOptions, Generator, load_bundle
from tests.conftest import mixed_sources
from tests.test_binding import transformer_bundle  # noqa: F401 - a fixture


def _reads(node: onnx.NodeProto) -> set[str]:
    names = set(node.input)
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            for n in a.g.node:
                names |= _reads(n)
    return names


def as_session_4(bundle, out):
    """A copy of `bundle` with the reorder as session 4 made it: one If gathering every state when
    state_rows is not empty, passing them on as they are otherwise (DecoderSpec.reorder_every_step false)."""
    shutil.copytree(bundle, out)
    manifest = json.loads((out / "edgeseq.json").read_text())
    states = manifest["decoder"]["states"]
    path = out / manifest["graphs"]["decoder_step"]["file"]
    model = onnx.load(str(path), load_external_data=False)
    g = model.graph
    gathers = [n for n in g.node if n.name.startswith(f"{PREFIX}gather.")]
    assert len(gathers) == len(states)
    for n in gathers:
        g.node.remove(n)
    types = {i.name: i.type.tensor_type.elem_type for i in g.input}
    then_nodes = [
        helper.make_node("Gather", [n.input[0], ROWS], [f"t.{n.output[0]}"], axis=n.attribute[0].i) for n in gathers
    ]
    else_nodes = [helper.make_node("Identity", [n.input[0]], [f"e.{n.output[0]}"]) for n in gathers]
    branch = lambda nodes, prefix: helper.make_graph(  # noqa: E731
        nodes,
        prefix,
        [],
        [helper.make_tensor_value_info(f"{prefix}.{n.output[0]}", types[n.input[0]], None) for n in gathers],
    )
    zero = helper.make_tensor(f"{PREFIX}zero.value", TensorProto.INT64, [], [0])
    g.node.insert(0, helper.make_node("Size", [ROWS], [f"{PREFIX}size"], name=f"{PREFIX}size"))
    g.node.insert(1, helper.make_node("Constant", [], [f"{PREFIX}zero"], name=f"{PREFIX}zero", value=zero))
    g.node.insert(
        2, helper.make_node("Greater", [f"{PREFIX}size", f"{PREFIX}zero"], [f"{PREFIX}given"], name=f"{PREFIX}given")
    )
    outputs = [n.output[0] for n in gathers]
    g.node.insert(
        3,
        helper.make_node(
            "If",
            [f"{PREFIX}given"],
            outputs,
            name=f"{PREFIX}if",
            then_branch=branch(then_nodes, "t"),
            else_branch=branch(else_nodes, "e"),
        ),
    )
    onnx.save(model, str(path))
    manifest["graphs"]["decoder_step"]["sha256"] = file_sha256(path)
    del manifest["decoder"]["reorder_every_step"]
    (out / "edgeseq.json").write_text(json.dumps(manifest))
    m = with_generate(out, load_bundle(out, verify_checksums=False).manifest)  # generate.onnx from that step
    manifest["graphs"]["generate"]["sha256"] = m.graphs["generate"].sha256
    (out / "edgeseq.json").write_text(json.dumps(manifest))
    return out


@pytest.fixture(params=["lstm", "transformer"])
def bundle(request, bundle_factory, transformer_bundle):  # noqa: F811
    return bundle_factory()[0] if request.param == "lstm" else transformer_bundle


def test_one_gather_per_state_before_its_first_reader(bundle):
    m = load_bundle(bundle).manifest
    assert m.decoder.reorder_input == ROWS and m.decoder.reorder_every_step
    g = onnx.load(str(bundle / "decoder_step.onnx"), load_external_data=False).graph
    assert not [n for n in g.node if n.op_type == "If" and ROWS in _reads(n)]
    for st in m.decoder.states:
        moved = f"{PREFIX}{st.input}"
        at = next(i for i, n in enumerate(g.node) if moved in n.output)
        assert g.node[at].op_type == "Gather" and list(g.node[at].input) == [st.input, ROWS]
        assert next(i for i, n in enumerate(g.node) if moved in _reads(n)) == at + 1
        assert all(st.input not in _reads(n) for n in g.node if n is not g.node[at])  # every reader reads the gathered


def test_bundles_with_the_session_4_reorder_decode_the_same(bundle, tmp_path):
    old = as_session_4(bundle, tmp_path / "old")
    assert not load_bundle(old).manifest.decoder.reorder_every_step
    gen = Generator(bundle, engine="loop")
    sv = gen.bundle.source_vocab
    sources = mixed_sources(sv, count=5) if sv is not None else [[4, 5, 6, 2]] * 5
    for options in (DecodingOptions(max_new_tokens=10), DecodingOptions(max_new_tokens=10, beam_size=4, nbest=4)):
        want = [[(h.tokens, h.score) for h in hyps] for hyps in gen.generate_ids(sources, options)]
        for engine in ("loop", "graph"):
            got = Generator(old, engine=engine).generate_ids(sources, options)
            assert [[h.tokens for h in hyps] for hyps in got] == [[t for t, _ in w] for w in want], engine
            np.testing.assert_allclose(
                [h.score for hyps in got for h in hyps], [s for w in want for _, s in w], rtol=1e-5, atol=1e-6
            )


@pytest.mark.parametrize("mode", ["dynamic-int8", "fp16", "static-int8"])
def test_both_forms_quantize(bundle_factory, tmp_path, mode):
    """Quantizing keeps either form working: the quantize pipeline checks generate.onnx against the loop, and
    the quantized step decodes what the fp32 one does (to near-ties)."""
    from edgeseq.export.quantize import Recipe, quantize_bundle

    new = bundle_factory()[0]
    old = as_session_4(new, tmp_path / "old")
    gen = Generator(new, engine="loop")
    sources = mixed_sources(gen.bundle.source_vocab, count=4)
    calibration = [gen.bundle.source_vocab.decode(s[:-1]) for s in sources] if mode == "static-int8" else None
    options = DecodingOptions(max_new_tokens=10, beam_size=3)
    results = []
    for name, folder in (("new", new), ("old", old)):
        out = quantize_bundle(folder, tmp_path / f"{name}-{mode}", Recipe.uniform(mode), calibration)
        assert load_bundle(out).manifest.decoder.reorder_every_step == (name == "new")
        results.append([h[0].tokens for h in Generator(out, engine="loop").generate_ids(sources, options)])
    assert results[0] == results[1]
