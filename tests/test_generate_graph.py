"""generate.onnx: the whole loop as one ONNX graph, for every family; the same tokens and scores as the loop.

The reference is the Python loop (runtime/loop.py), itself tested against PyTorch and Hugging Face
`generate()` elsewhere. Here generate.onnx runs in a plain onnxruntime session, fed by hand from the manifest
(no edgeseq code between the graph and the test), in fp32 and dynamic int8, greedy and beam 4, one source
and a padded batch.
"""

import itertools
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeseq.export import ExportOptions, Framing, export_model
from edgeseq.export.any_model import export_any
from edgeseq.export.quantize import Recipe, quantize_bundle
from edgeseq.runtime import DecodingOptions, Generator, load_bundle
from tests.conftest import mixed_sources
from tests.hf_models import make_marian, make_t5
from tests.test_custom_adapter import ConvGRUAdapter
from tests.test_custom_adapter import make as make_conv_gru
from tests.test_transformer import tiny_transformer

FAMILIES = ["lstm", "gru", "transformer", "marian", "t5", "conv-gru"]
PLAIN_ORT = """
import json, sys
import numpy as np
import onnxruntime as ort
bundle, feeds = sys.argv[1], json.loads(sys.stdin.read())
m = json.load(open(bundle + "/edgeseq.json"))
session = ort.InferenceSession(bundle + "/" + m["graphs"]["generate"]["file"])
dtypes = {t["name"]: t["dtype"] for t in m["graphs"]["generate"]["inputs"]}
out = session.run(None, {k: np.array(v, dtype=dtypes[k]) for k, v in feeds.items()})
print(json.dumps([o.tolist() for o in out]))
"""
assert "edgeseq" not in PLAIN_ORT.replace('"/edgeseq.json"', "")


def _export(family, root: Path) -> Path:
    out = root / family
    options = ExportOptions(max_new_tokens=10)
    if family in ("lstm", "gru"):
        from tests.conftest import tiny_rnn

        model, sv, tv = tiny_rnn(family, "bahdanau" if family == "lstm" else "luong-general", True)
        export_model(model, out, source_vocab=sv, target_vocab=tv, options=options)
    elif family == "transformer":
        model, sv, tv = tiny_transformer("pre")
        export_model(model, out, source_vocab=sv, target_vocab=tv, options=options)
    elif family == "conv-gru":
        model, sv, tv = make_conv_gru()
        adapter = ConvGRUAdapter(model, len(sv), len(tv))
        export_model(adapter, out, source_vocab=sv, target_vocab=tv, options=options, framing=Framing(suffix=["</s>"]))
    else:
        folder = make_marian(root / "hf-marian") if family == "marian" else make_t5(root / "hf-t5", "t5")
        export_any(str(folder), out, options, None, None, "", lambda msg: None, [])
    return out


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """family -> {precision: bundle}: each exported, then quantized to dynamic int8."""
    root = tmp_path_factory.mktemp("generate")
    made = {}
    for family in FAMILIES:
        fp32 = _export(family, root)
        int8 = quantize_bundle(fp32, root / f"{family}-int8", Recipe.uniform("dynamic-int8"))
        made[family] = {"fp32": fp32, "int8": int8}
    return made


def sources_for(gen: Generator, count: int) -> list[list[int]]:
    """`count` framed sources of mixed lengths in the bundle's own ids (the first the longest)."""
    m = gen.bundle.manifest
    if gen.bundle.source_vocab is not None:
        return mixed_sources(gen.bundle.source_vocab, count=count)[:count]
    rng = np.random.default_rng(5)
    specials = set(m.special_tokens.values()) | set(m.source_framing.suffix) | {m.source_framing.pad}
    regular = [i for i in range(3, min(m.source_vocab_size, 60)) if i not in specials]
    lengths = [9, *rng.integers(2, 9, size=count - 1)]
    return [m.source_framing.frame([int(x) for x in rng.choice(regular, size=n)]) for n in lengths]


def plain_feeds(gen: Generator, sources, options: DecodingOptions) -> dict:
    """generate.onnx's inputs, built from the manifest alone."""
    m = gen.bundle.manifest
    width = max(len(s) for s in sources)
    return {
        "src_ids": [s + [m.source_framing.pad] * (width - len(s)) for s in sources],
        "src_mask": [[1] * len(s) + [0] * (width - len(s)) for s in sources],
        "max_new_tokens": options.max_new_tokens,
        "min_new_tokens": options.min_new_tokens,
        "beam_size": options.beam_size,
        "length_penalty": options.length_penalty,
        "early_stopping": int(options.early_stopping),
        "banned_ids": list(m.banned_tokens),
        "forced_eos": int(options.forced_eos),
        "forced_bos_token": -1 if options.forced_bos_token is None else options.forced_bos_token,
    }


def run_plain(bundle: Path, feeds: dict) -> list[list[tuple[tuple[int, ...], float]]]:
    """generate.onnx in a plain onnxruntime session: per source its (tokens, score) hypotheses."""
    m = json.loads((bundle / "edgeseq.json").read_text())
    session = ort.InferenceSession(str(bundle / m["graphs"]["generate"]["file"]), providers=["CPUExecutionProvider"])
    dtypes = {t["name"]: t["dtype"] for t in m["graphs"]["generate"]["inputs"]}
    tokens, lengths, scores = session.run(None, {k: np.array(v, dtype=dtypes[k]) for k, v in feeds.items()})
    return [
        [(tuple(tokens[i, j, : lengths[i, j]].tolist()), float(scores[i, j])) for j in range(tokens.shape[1])]
        for i in range(tokens.shape[0])
    ]


def domains(graph: onnx.GraphProto) -> set[str]:
    """The operator domains a graph uses, its subgraphs' included."""
    found = set()
    for n in graph.node:
        found.add(n.domain)
        for a in n.attribute:
            for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                found |= domains(g)
    return found


def loop_hypotheses(gen: Generator, sources, options):
    return [[(h.tokens, h.score) for h in hyps] for hyps in gen.generate_ids(sources, options)]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("family", FAMILIES)
def test_generate_graph_equals_the_python_loop(bundles, family, precision):
    bundle = bundles[family][precision]
    model = onnx.load(str(bundle / "generate.onnx"), load_external_data=False)
    onnx.checker.check_model(str(bundle / "generate.onnx"))
    own = {
        d
        for g in ("encoder", "attention", "decoder_step")
        if (bundle / f"{g}.onnx").exists()
        for d in domains(onnx.load(str(bundle / f"{g}.onnx"), load_external_data=False).graph)
    }
    assert domains(model.graph) <= own | {"", "ai.onnx"}  # the composition adds standard operators only
    assert not [
        t for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL and t.ByteSize() > 1 << 20
    ]
    # (engine "auto" would take generate.onnx itself for greedy; the graph composes decoder_step, so the loop
    # runs it for one row too, not the one-row graph)
    gen = Generator(bundle, engine="loop", one_row=False)
    batch = sources_for(gen, 5)
    checked = 0
    for sources in (batch[:1], batch):
        for options in (DecodingOptions(max_new_tokens=10), DecodingOptions(max_new_tokens=10, beam_size=4, nbest=4)):
            want = loop_hypotheses(gen, sources, options)
            got = run_plain(bundle, plain_feeds(gen, sources, options))
            for w, g in zip(want, got):
                # int8: ONNX Runtime fuses quantized kernels inside a Loop otherwise, so near-tied lower beams
                # may part (export/generate_check.py); the best hypothesis must agree
                shown = len(w) if precision == "fp32" else 1
                g, w = g[:shown], w[:shown]
                assert [h[0] for h in g] == [h[0] for h in w], (family, precision, options.beam_size)
                # (beam search's first step: log_softmax in numpy in the loop (one row per source), in ONNX
                # Runtime in the graph: ~1e-8 apart, so a near-zero score needs an absolute tolerance)
                tolerance = dict(rtol=1e-5, atol=1e-6) if shown > 1 else dict(rtol=1e-3)
                np.testing.assert_allclose([h[1] for h in g], [h[1] for h in w], **tolerance)
                checked += 1
    assert checked == 2 * (1 + len(batch))


@pytest.mark.parametrize("family", ["lstm", "transformer", "marian"])
def test_rules_the_loop_has(bundles, family):
    """Minimum length, banned tokens, forced </s>, length penalty and early stopping, as the loop applies them."""
    bundle = load_bundle(bundles[family]["fp32"])
    m = bundle.manifest
    banned = sorted({m.special_tokens.get("pad", 0), 5, 7} - {m.special_tokens["eos"]})
    gen = Generator(replace(bundle, manifest=replace(m, banned_tokens=tuple(banned))), engine="loop")  # more bans
    batch = sources_for(gen, 4)
    for options, sources in itertools.product(
        (
            DecodingOptions(max_new_tokens=8, min_new_tokens=6),
            DecodingOptions(max_new_tokens=6, forced_eos=True),
            DecodingOptions(max_new_tokens=9, beam_size=3, nbest=3, length_penalty=0.6),
            DecodingOptions(max_new_tokens=9, beam_size=3, nbest=3, early_stopping=True, min_new_tokens=3),
            DecodingOptions(max_new_tokens=7, beam_size=2, nbest=2, forced_eos=True, length_penalty=1.4),
        ),
        (batch, batch[1:2]),  # (one source: greedy decoding has a Loop of its own for it in small models)
    ):
        want = loop_hypotheses(gen, sources, options)
        got = run_plain(gen.bundle.path, plain_feeds(gen, sources, options))
        assert len(got) == len(want)
        for w, g in zip(want, got):
            assert [h[0] for h in g[: len(w)]] == [h[0] for h in w], options
            np.testing.assert_allclose([h[1] for h in g[: len(w)]], [h[1] for h in w], rtol=1e-5, atol=1e-6)
            assert all(banned_id not in h[0] for h in w for banned_id in banned)


@pytest.mark.parametrize("family", ["lstm", "marian"])
def test_one_loop_for_both_strategies(bundles, family, tmp_path, monkeypatch):
    """Bundles with more weights than generate_graph.SEPARATE_LOOPS_WEIGHTS get one Loop, greedy and beam
    search in the branches of an If (small ones a Loop each): the same hypotheses as the loop either way."""
    from edgeseq.export import generate_graph

    def loops(folder: Path) -> int:
        return sum(
            n.op_type == "Loop" for n in onnx.load(str(folder / "generate.onnx"), load_external_data=False).graph.node
        )

    assert loops(bundles[family]["fp32"]) == 3  # greedy for one source, greedy, beam search
    for precision in ("fp32", "int8"):
        folder = tmp_path / precision
        shutil.copytree(bundles[family][precision], folder)
        monkeypatch.setattr(generate_graph, "SEPARATE_LOOPS_WEIGHTS", -1)
        generate_graph.build_generate(folder, load_bundle(folder).manifest)
        assert loops(folder) == 1
        gen = Generator(bundles[family][precision], engine="loop", one_row=False)  # (decoder_step, as the graph)
        sources = sources_for(gen, 4)
        for options in (
            DecodingOptions(max_new_tokens=9, min_new_tokens=2),
            DecodingOptions(max_new_tokens=9, beam_size=3, nbest=3, forced_eos=True),
        ):
            want = loop_hypotheses(gen, sources, options)
            got = run_plain(folder, plain_feeds(gen, sources, options))
            shown = len(want[0]) if precision == "fp32" else 1  # (int8: see above)
            assert [[h[0] for h in g[:shown]] for g in got] == [[h[0] for h in w[:shown]] for w in want], options
            for w, g in zip(want, got):
                np.testing.assert_allclose([h[1] for h in g[:shown]], [h[1] for h in w[:shown]], rtol=1e-4)


def test_generate_graph_in_a_process_without_edgeseq(bundles):
    """generate.onnx needs only onnxruntime: a Python process that never imports edgeseq gets the same tokens."""
    bundle = bundles["transformer"]["fp32"]
    gen = Generator(bundle, engine="loop")
    sources = sources_for(gen, 3)
    options = DecodingOptions(max_new_tokens=10, beam_size=4, nbest=4)
    feeds = plain_feeds(gen, sources, options)
    r = subprocess.run(
        [sys.executable, "-I", "-c", PLAIN_ORT, str(bundle)], input=json.dumps(feeds), capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    tokens, lengths, scores = json.loads(r.stdout)
    best = [tuple(tokens[i][0][: lengths[i][0]]) for i in range(len(sources))]
    assert best == [h[0].tokens for h in gen.generate_ids(sources, options)]


def test_engine_graph_from_python_and_the_cli(bundles):
    bundle = bundles["lstm"]["fp32"]
    loop, graph = Generator(bundle, engine="loop"), Generator(bundle, engine="graph")
    texts = ["abc", "hello world 42", "zz"]
    for options in (DecodingOptions(max_new_tokens=10), DecodingOptions(max_new_tokens=10, beam_size=3)):
        assert [t.text for t in graph.generate(texts, options)] == [t.text for t in loop.generate(texts, options)]
    cli = [sys.executable, "-m", "edgeseq", "generate", str(bundle), *texts, "--beam", "3"]
    plain = subprocess.run(cli, capture_output=True, text=True, check=True).stdout
    assert subprocess.run([*cli, "--engine", "graph"], capture_output=True, text=True, check=True).stdout == plain
    r = subprocess.run([*cli[:-2], "--engine", "graph", "--sample"], capture_output=True, text=True)
    assert r.returncode == 2 and "the generate graph does not do sampling" in r.stderr and "Traceback" not in r.stderr


def test_auto_uses_the_graph_where_it_is_faster(bundles, monkeypatch):
    """engine 'auto': generate.onnx for greedy decoding of a few sources by a small model, the loop for beam
    search, many sources or a large model (generator.AUTO_GRAPH_*); the same tokens either way."""
    import edgeseq.runtime.generator as generator
    from edgeseq.runtime.graph_engine import GraphEngine

    used = []
    original = GraphEngine.decode
    monkeypatch.setattr(GraphEngine, "decode", lambda self, *a, **k: used.append(len(a[0])) or original(self, *a, **k))
    bundle = bundles["lstm"]["fp32"]
    auto, loop = Generator(bundle), Generator(bundle, engine="loop")
    assert auto._graph is None  # loaded when first needed
    sources = (sources_for(auto, 6) * (generator.AUTO_GRAPH_SOURCES // 6 + 1))[: generator.AUTO_GRAPH_SOURCES + 1]
    greedy, beam = DecodingOptions(max_new_tokens=10), DecodingOptions(max_new_tokens=10, beam_size=3)
    for some, options, graph in ((sources[:2], greedy, True), (sources, greedy, False), (sources[:2], beam, False)):
        used.clear()
        assert same(auto.generate_ids(some, options), loop.generate_ids(some, options))
        assert used == ([len(some)] if graph else []), (len(some), options.beam_size)
    monkeypatch.setattr(generator, "AUTO_GRAPH_WEIGHTS", 1000)  # a model larger than that: the loop
    used.clear()
    assert same(Generator(bundle).generate_ids(sources[:2], greedy), loop.generate_ids(sources[:2], greedy))
    assert not used


def test_one_engine_follows_each_calls_options(bundles):
    """The graph engine keeps the last options' feeds (a short call's Python): one engine given options
    that change from call to call decodes each call as an engine made for it, one source and several."""
    bundle = bundles["gru"]["fp32"]
    engine, loop = Generator(bundle, engine="graph"), Generator(bundle, engine="loop")
    sources = sources_for(loop, 3)
    calls = [
        DecodingOptions(max_new_tokens=8),
        DecodingOptions(max_new_tokens=3),
        DecodingOptions(max_new_tokens=8, min_new_tokens=6),
        DecodingOptions(max_new_tokens=6, forced_eos=True),
        DecodingOptions(max_new_tokens=8, beam_size=3, nbest=2),
        DecodingOptions(max_new_tokens=8),
    ]
    for options in calls:
        for some in (sources[:1], sources):
            got, want = engine.generate_ids(some, options), loop.generate_ids(some, options)
            assert same(got, want), options
            assert all(len(h.tokens) <= options.max_new_tokens for x in got for h in x)


def _folded_rnns(bundle: Path) -> int:
    """How many RNN nodes in generate.onnx's Loop bodies take their input projection from a table
    (export/generate_fold.py): X a (1, 1, 1) zero constant of the main graph."""
    graph = onnx.load(str(bundle / "generate.onnx"), load_external_data=False).graph
    zeros = {
        n.output[0]
        for n in graph.node
        if n.op_type == "Constant" and list(onnx.numpy_helper.to_array(n.attribute[0].t).shape) == [1, 1, 1]
    }
    bodies = [a.g for n in graph.node if n.op_type == "Loop" for a in n.attribute if a.name == "body"]
    return sum(n.op_type in ("GRU", "LSTM") and n.input[0] in zeros for g in bodies for n in g.node)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_one_source_rnn_reads_its_input_projection_from_a_table(cell, tmp_path, bundles, monkeypatch):
    """An RNN decoder fed by the embedding alone: generate.onnx's one-source Loop looks its first layer's input
    projection up (a third of the layer, every token), with the loop's tokens and scores; models that feed
    attention context or their previous output to the RNN keep their step as it is."""
    from edgeseq.export.compose import Nodes
    from edgeseq.export.generate_fold import fold_rnn_input
    from tests.conftest import tiny_rnn

    model, sv, tv = tiny_rnn(cell, "none", True)
    bundle, _ = export_model(model, tmp_path / cell, source_vocab=sv, target_vocab=tv, options=ExportOptions())
    assert _folded_rnns(bundle) == 1  # in the one-source Loop only (B is one row for the whole batch)
    assert _folded_rnns(bundles["lstm"]["fp32"]) == _folded_rnns(bundles["gru"]["fp32"]) == 0  # attention
    loop = Generator(bundle, engine="loop")
    for options in (
        DecodingOptions(max_new_tokens=10),
        DecodingOptions(max_new_tokens=8, min_new_tokens=6),
        DecodingOptions(max_new_tokens=6, forced_eos=True),
    ):
        for source in sources_for(loop, 5):
            want = loop_hypotheses(loop, [source], options)
            got = run_plain(bundle, plain_feeds(loop, [source], options))
            assert [h[0] for h in got[0]] == [h[0] for h in want[0]], options
            np.testing.assert_allclose([h[1] for h in got[0]], [h[1] for h in want[0]], rtol=1e-5, atol=1e-6)
    step = onnx.load(str(bundle / "decoder_step.onnx"), load_external_data=False).graph
    inits = {t.name: t.name for t in step.initializer}
    tokens = loop.bundle.manifest.decoder.tokens_input
    assert fold_rnn_input(step, inits, tokens, Nodes("t/", 17)) is not None
    assert fold_rnn_input(step, inits, "another_input", Nodes("t/", 17)) is None  # X is not the tokens' embedding
    monkeypatch.setattr("edgeseq.export.generate_fold.FOLD_TABLE_BYTES", 0)  # a vocabulary too large for a table
    assert fold_rnn_input(step, inits, tokens, Nodes("t/", 17)) is None


def test_one_source_feeds_as_a_padded_batch(bundles):
    """The graph engine builds one source's inputs without pad_batch (a short call's Python): the same arrays,
    the same refusal of an empty source, and a source longer than its cached mask still decodes."""
    from edgeseq.errors import InputError
    from edgeseq.runtime.batching import pad_batch

    gen = Generator(bundles["gru"]["fp32"], engine="graph")
    engine, source = gen.graph, sources_for(gen, 1)[0]
    ids, mask = engine._source([source])
    want_ids, want_mask = pad_batch([source], engine.source_pad)
    for got, want, name in ((ids, want_ids, "src_ids"), (mask, want_mask, "src_mask")):
        assert got.dtype == np.dtype(engine.dtypes[name]) and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)
    with pytest.raises(InputError, match="source 0 is empty"):
        engine._source([[]])
    engine._ones = engine._ones[:, :2]  # shorter than the source: pad_batch's arrays
    np.testing.assert_array_equal(engine._source([source])[1], want_mask)
    options = DecodingOptions(max_new_tokens=6)
    loop = Generator(bundles["gru"]["fp32"], engine="loop").generate_ids([source], options)
    assert same(engine.decode([source], options), loop)


def same(a: list, b: list) -> bool:
    """The same hypotheses (tokens), scores equal to float32 precision (the graph sums them in float32)."""
    return [[h.tokens for h in x] for x in a] == [[h.tokens for h in x] for x in b] and np.allclose(
        [h.score for x in a for h in x], [h.score for x in b for h in x], rtol=1e-6, atol=0
    )


def test_bundles_can_leave_it_out_and_then_say_so(tmp_path, bundles):
    from tests.conftest import tiny_rnn

    model, sv, tv = tiny_rnn("lstm", "bahdanau", True)
    out, _ = export_model(
        model, tmp_path / "b", source_vocab=sv, target_vocab=tv, options=ExportOptions(generate_graph=False)
    )
    assert (
        not (out / "generate.onnx").exists()
        and "generate" not in json.loads((out / "edgeseq.json").read_text())["graphs"]
    )
    with pytest.raises(Exception, match="has no generate graph"):
        Generator(out, engine="graph")
    q = quantize_bundle(bundles["lstm"]["fp32"], tmp_path / "q", Recipe.uniform("dynamic-int8"), generate_graph=False)
    assert not (q / "generate.onnx").exists()


def test_the_manifest_records_the_check(bundles):
    for family in FAMILIES:
        for precision in ("fp32", "int8"):
            m = json.loads((bundles[family][precision] / "edgeseq.json").read_text())
            check = m["parity"]["generate"]
            assert check["ok"] and check["agreed"] == check["sources"], (family, precision, check)
            assert m["graphs"]["generate"]["sha256"]
