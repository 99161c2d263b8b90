"""The step graph's head (export/head.py): greedy's argmax and beam search's top 2k, computed in the graph."""

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeseq.bundle import MANIFEST, file_sha256
from edgeseq.export import ExportOptions, export_model
from edgeseq.runtime import DecodingOptions
from edgeseq.runtime import Generator as AnyEngine
from edgeseq.runtime.binding import DeviceTensor
from edgeseq.runtime.loop import Decoding
from edgeseq.runtime.processors import log_softmax
from edgeseq.runtime.step import BEAM, GREEDY, INPLACE, REORDER, HeadRequest
from tests.conftest import mixed_sources, tiny_rnn, vocabs
from tests.test_transformer import tiny_transformer

OPTIONS = {
    "greedy": DecodingOptions(max_new_tokens=14),
    "min-length": DecodingOptions(max_new_tokens=14, min_new_tokens=9),
    "beam": DecodingOptions(max_new_tokens=12, beam_size=4, nbest=4),
    "beam-min-length": DecodingOptions(max_new_tokens=12, beam_size=3, min_new_tokens=6, length_penalty=0.7),
}


def Generator(*args, **kwargs) -> AnyEngine:  # noqa: N802 - these tests are of the Python loop's head
    return AnyEngine(*args, engine="loop", **kwargs)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("head")
    out = {}
    for name, (model, sv, tv) in {
        "lstm": tiny_rnn("lstm", "bahdanau", True),
        "transformer": tiny_transformer("post"),
    }.items():
        out[name] = root / name
        export_model(model, out[name], source_vocab=sv, target_vocab=tv, options=ExportOptions(max_new_tokens=16))
    model, sv, tv = tiny_rnn("gru", "luong-general", False)
    out["no-head"] = root / "no-head"
    export_model(model, out["no-head"], source_vocab=sv, target_vocab=tv, options=ExportOptions(head=False))
    return out


def first_step(gen, sources):
    """The decoder step's feeds for the first step of `sources` (greedy rows), as the loop builds them."""
    spec = gen.bundle.manifest.decoder
    d = Decoding(gen.backend, spec, sources, DecodingOptions(max_new_tokens=4))
    feeds = {**d.fixed, **d.state.states, spec.tokens_input: d.strategy.last_tokens()}
    if spec.step_input:
        feeds[spec.step_input] = np.array(0, dtype=np.int64)
    return feeds


def test_step_graph_declares_the_head(bundles):
    gen = Generator(bundles["lstm"])
    head = gen.bundle.manifest.decoder.head
    assert head.names() == ("head_mode", "head_bias", "beam_scores", "head_scores", "head_ids")
    step = gen.bundle.manifest.graphs["decoder_step"]
    assert step.input("head_bias").shape == (len(vocabs()[1]),)
    assert step.input("head_mode").shape == () and step.input("head_mode").dtype == "int64"
    model = onnx.load(str(bundles["lstm"] / "decoder_step.onnx"))
    onnx.checker.check_model(model, full_check=True)
    assert {o.name for o in model.graph.output} >= {"logits", "head_scores", "head_ids"}
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)  # standard operators only
    assert gen.backend.offers == {GREEDY, BEAM, REORDER, INPLACE}


@pytest.mark.parametrize("family", ["lstm", "transformer"])
def test_greedy_head_is_argmax_and_log_softmax_of_biased_logits(bundles, family):
    gen = Generator(bundles[family])
    feeds = first_step(gen, mixed_sources(vocabs()[0]))
    vocab = len(vocabs()[1])
    bias = np.zeros(vocab, dtype=np.float32)
    logits = gen.backend.step(feeds)["logits"]
    bias[[int(logits[0].argmax()), 5]] = -np.inf  # ban row 0's favourite: the head must take the next one
    out = gen.backend.step(feeds, HeadRequest(GREEDY, bias))
    scores, ids = gen.backend.chosen(out)
    x = logits + bias
    assert ids.shape == scores.shape == (len(logits), 1)
    np.testing.assert_array_equal(ids[:, 0], x.argmax(-1))
    np.testing.assert_allclose(scores[:, 0], -np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)), atol=1e-5)
    assert out["head_scores"].dtype == np.float32 and out["head_ids"].dtype == np.int64


@pytest.mark.parametrize(
    ("family", "k", "tied"),
    [("lstm", 4, False), ("transformer", 4, False), ("transformer", 3, True), ("transformer", 20, False)],
)
def test_beam_head_is_the_top_2k_of_scored_log_probabilities(bundles, family, k, tied):
    """Tied: every beam of a source scores alike (the first step's rows are equal), so the lower beam, then the
    lower token, comes first. k = 20: 2k is more than the vocabulary."""
    gen = Generator(bundles[family])
    sources = mixed_sources(vocabs()[0])[:3]
    feeds = first_step(gen, [s for s in sources for _ in range(k)])  # k rows per source, as beam search has
    vocab = len(vocabs()[1])
    assert (2 * 20 > vocab) and (2 * 4 <= vocab)
    rng = np.random.default_rng(0)
    running = (
        np.zeros((len(sources), k), np.float32) if tied else rng.normal(-3, 1, (len(sources), k)).astype(np.float32)
    )
    bias = np.zeros(vocab, dtype=np.float32)
    bias[[2, 7]] = -np.inf
    logits = gen.backend.step(feeds)["logits"]
    scores, ids = gen.backend.chosen(gen.backend.step(feeds, HeadRequest(BEAM, bias, running)))
    total = (log_softmax(logits) + bias + running.reshape(-1, 1)).reshape(len(sources), k * vocab)
    expected = np.argsort(-total, axis=-1, kind="stable")[:, : 2 * k]
    assert ids.shape == scores.shape == (len(sources), 2 * k)
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(total, expected, -1), atol=1e-5)
    assert not np.isin(ids % vocab, [2, 7]).any()


def test_no_request_computes_nothing(bundles):
    gen = Generator(bundles["transformer"])
    out = gen.backend.step(first_step(gen, mixed_sources(vocabs()[0])[:2]))
    assert out["head_scores"].shape == (0, 0) and out["head_ids"].shape == (0, 0)


def count_head_use(monkeypatch, backend_cls):
    used = []
    original = backend_cls.chosen

    def chosen(self, out):
        used.append(1)
        return original(self, out)

    monkeypatch.setattr(backend_cls, "chosen", chosen)
    return used


@pytest.mark.parametrize("family", ["lstm", "transformer"])
@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("io_binding", [False, True])
def test_head_decodes_like_the_logits_path(bundles, monkeypatch, family, name, io_binding):
    from edgeseq.runtime.generator import OrtBackend

    sources = mixed_sources(vocabs()[0])
    options = OPTIONS[name]
    plain = Generator(bundles[family], use_head=False).generate_ids(sources, options)
    used = count_head_use(monkeypatch, OrtBackend)
    fast = Generator(bundles[family], io_binding=io_binding).generate_ids(sources, options)
    assert used, "the head was not used"
    assert [[h.tokens for h in hs] for hs in fast] == [[h.tokens for h in hs] for hs in plain]
    for f, p in zip(fast, plain):
        assert [h.score for h in f] == pytest.approx([h.score for h in p], abs=1e-4)


def test_strategies_that_need_logits_do_not_use_the_head(bundles, monkeypatch):
    from edgeseq.runtime.generator import OrtBackend

    used = count_head_use(monkeypatch, OrtBackend)
    gen = Generator(bundles["lstm"])
    sources = mixed_sources(vocabs()[0])[:2]
    for options in (
        DecodingOptions(max_new_tokens=6, sample=True, seed=1),
        DecodingOptions(max_new_tokens=6, repetition_penalty=1.3),
        DecodingOptions(max_new_tokens=6, no_repeat_ngram=2),
        DecodingOptions(max_new_tokens=6, beam_size=3, repetition_penalty=1.3),
        DecodingOptions(max_new_tokens=6, beam_size=3, no_repeat_ngram=2),
    ):
        gen.generate_ids(sources, options)
    assert not used


def test_forced_tokens_leave_the_head_for_that_step_only(bundles, monkeypatch):
    from edgeseq.runtime.generator import OrtBackend

    used = count_head_use(monkeypatch, OrtBackend)
    gen = Generator(bundles["transformer"])
    options = DecodingOptions(max_new_tokens=5, min_new_tokens=5, beam_size=2, forced_eos=True)
    sources = mixed_sources(vocabs()[0])[:2]
    hyps = gen.generate_ids(sources, options)
    # steps 1-3 through the head: the first runs one row per source (the head takes the 2 best of a row), the
    # last forces </s>, both on the logits
    assert len(used) == 3
    assert all(len(h[0].tokens) == 4 for h in hyps)  # four tokens, then the forced </s>
    plain = Generator(bundles["transformer"], use_head=False).generate_ids(sources, options)
    assert [[h.tokens for h in hs] for hs in hyps] == [[h.tokens for h in hs] for hs in plain]


@pytest.mark.parametrize("options", [OPTIONS["min-length"], OPTIONS["beam"]], ids=["greedy", "beam"])
def test_bound_logits_stay_on_the_device_when_the_head_chooses(bundles, options):
    gen = Generator(bundles["transformer"], io_binding=True)
    outs = []
    run = gen.backend.step
    gen.backend.step = lambda f, request=None: outs.append(run(f, request)) or outs[-1]
    gen.generate_ids(mixed_sources(vocabs()[0])[:2], options)
    if options.beam_size > 1:  # (beam search's first step runs one row per source, on the logits)
        outs = outs[1:]
    assert outs
    assert all(isinstance(o["logits"], DeviceTensor) for o in outs)
    assert all(isinstance(o["head_ids"], np.ndarray) and isinstance(o["head_scores"], np.ndarray) for o in outs)


def test_a_bundle_without_the_head_decodes_through_the_logits(bundles):
    gen = Generator(bundles["no-head"])
    assert not gen.bundle.manifest.decoder.head_names() and not gen.backend.offers
    assert "head_bias" not in {t.name for t in gen.bundle.manifest.graphs["decoder_step"].inputs}
    for options in (OPTIONS["greedy"], OPTIONS["beam"]):
        assert all(h[0].tokens for h in gen.generate_ids(mixed_sources(vocabs()[0]), options))


def greedy_only_head(bundle, vocab):
    """Give a head-less bundle the greedy-only head that bundles had before beam search used the head."""
    path = bundle / "decoder_step.onnx"
    model = onnx.load(str(path), load_external_data=False)
    model.graph.node.extend(
        [
            helper.make_node("Add", ["logits", "head_bias"], ["legacy.biased"]),
            helper.make_node("ArgMax", ["legacy.biased"], ["next_token"], axis=-1, keepdims=0),
            helper.make_node("LogSoftmax", ["legacy.biased"], ["legacy.lp"], axis=-1),
            helper.make_node("ReduceMax", ["legacy.lp"], ["next_logprob"], axes=[-1], keepdims=0),
        ]
    )
    model.graph.input.append(helper.make_tensor_value_info("head_bias", TensorProto.FLOAT, [vocab]))
    model.graph.output.extend(
        [
            helper.make_tensor_value_info("next_token", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("next_logprob", TensorProto.FLOAT, ["batch"]),
        ]
    )
    onnx.save(model, str(path))
    data = json.loads((bundle / MANIFEST).read_text())
    g = data["graphs"]["decoder_step"]
    g["sha256"] = file_sha256(path)
    g["inputs"].append({"name": "head_bias", "dtype": "float32", "shape": [vocab]})
    g["outputs"] += [
        {"name": "next_token", "dtype": "int64", "shape": ["batch"]},
        {"name": "next_logprob", "dtype": "float32", "shape": ["batch"]},
    ]
    data["decoder"].update(
        head_bias_input="head_bias", head_token_output="next_token", head_logprob_output="next_logprob"
    )
    (bundle / MANIFEST).write_text(json.dumps(data))


def test_a_bundle_with_the_older_greedy_only_head_still_uses_it(bundles, tmp_path, monkeypatch):
    from edgeseq.runtime.generator import OrtBackend

    legacy = tmp_path / "legacy"
    shutil.copytree(bundles["no-head"], legacy)
    greedy_only_head(legacy, len(vocabs()[1]))
    sources = mixed_sources(vocabs()[0])
    used = count_head_use(monkeypatch, OrtBackend)
    gen = Generator(legacy)
    assert gen.backend.offers == {GREEDY}
    for options in (OPTIONS["min-length"], OPTIONS["beam"]):
        plain = Generator(bundles["no-head"]).generate_ids(sources, options)
        got = gen.generate_ids(sources, options)
        assert [h[0].tokens for h in got] == [h[0].tokens for h in plain]
        assert [h[0].score for h in got] == pytest.approx([h[0].score for h in plain], abs=1e-4)
    assert used  # greedy went through the old head, beam search through the logits


def branch_session(branch, vocab: int, beam: bool, opset: int = 17):
    """An ONNX Runtime session running one head branch alone (both sides of an If), fed go, logits, the bias
    and, for the beam branch, the running scores."""
    import onnxruntime as ort

    from edgeseq.export.head import BEAM, BIAS

    inputs = [
        helper.make_tensor_value_info("go", TensorProto.BOOL, []),
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["rows", vocab]),
        helper.make_tensor_value_info(BIAS, TensorProto.FLOAT, [vocab]),
    ]
    if beam:
        inputs.append(helper.make_tensor_value_info(BEAM, TensorProto.FLOAT, ["sources", "beams"]))
    graph = helper.make_graph(
        [helper.make_node("If", ["go"], ["scores", "ids"], then_branch=branch, else_branch=branch)],
        "branch_only",
        inputs,
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("ids", TensorProto.INT64, None),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_greedy_branch_takes_the_lower_index_of_tied_maxima():
    """The greedy branch alone (export/head.py _greedy), on logits with exact ties: as numpy's argmax (and
    the loop's), the lower index wins, and its score is the log-probability of the biased logits."""
    from edgeseq.export.head import BIAS, _greedy

    vocab = 6
    session = branch_session(_greedy("logits"), vocab, beam=False)
    logits = np.array([[1, 3, 3, 0, 3, 2], [5, 5, 5, 5, 5, 5], [0, 1, 2, 9, 9, 1]], np.float32)
    bias = np.zeros(vocab, np.float32)
    bias[1] = -np.inf  # row 0's first maximum banned: the next one (index 2) wins
    feeds = {"go": np.array(True), "logits": logits, BIAS: bias}
    scores, ids = session.run(None, feeds)
    x = logits + bias
    np.testing.assert_array_equal(ids[:, 0], [2, 0, 3])
    np.testing.assert_array_equal(ids[:, 0], x.argmax(-1))
    np.testing.assert_allclose(scores[:, 0], -np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)), rtol=1e-6)


@pytest.mark.parametrize(
    ("vocab", "banned", "beams", "opset"),
    [
        (6, (), 2, 17),
        (6, (1, 4), 2, 17),
        (6, (0, 1, 2, 4), 2, 17),
        (6, (0, 1, 2, 3, 4), 3, 17),
        (128, (1, 4, 100), 4, 17),
        (128, (), 3, 18),
        (128, tuple(range(2, 127)), 2, 18),
    ],
    ids=[
        "no bias",
        "two banned",
        "fewer allowed than 2k",
        "one allowed, 2k above the vocabulary",
        "blocks of 16",
        "blocks, opset 18",
        "blocks, fewer allowed than 2k",
    ],
)
def test_beam_branch_adds_the_bias_to_candidates_as_one_topk_over_all_would(vocab, banned, beams, opset):
    """The beam branch alone (export/head.py _beam) on logits with exact ties: the bias is added to each row's
    best 2k + (ids with a bias) only, found through blocks of the vocabulary where a block size divides it,
    yet the ids are those of a stable sort of log_softmax + bias + running over (sources, beams * V), ties to
    the lower beam then the lower token, -inf candidates included."""
    from edgeseq.export.head import BEAM, BIAS, _beam

    branch = _beam("logits", vocab, opset)
    assert any(n.op_type == "ReduceMax" for n in branch.node) == (vocab == 128)
    session = branch_session(branch, vocab, beam=True, opset=opset)
    rng = np.random.default_rng(len(banned) + vocab)
    sources = 2
    logits = rng.integers(0, 3, (sources * beams, vocab)).astype(np.float32)  # many exact ties
    running = np.array([[-1.0] * beams, [0.0] + [-2.0] * (beams - 1)], np.float32)
    bias = np.zeros(vocab, np.float32)
    bias[list(banned)] = -np.inf
    scores, ids = session.run(None, {"go": np.array(True), "logits": logits, BIAS: bias, BEAM: running})
    total = (log_softmax(logits) + bias + running.reshape(-1, 1)).reshape(sources, beams * vocab)
    expected = np.argsort(-total, axis=-1, kind="stable")[:, : 2 * beams]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(total, expected, -1), rtol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 8, 9, 40])
@pytest.mark.parametrize("opset", [17, 18])
def test_block_top_k_is_topk_ties_included(k, opset):
    """_block_top_k over 128 ids (8 blocks of 16): values and ids of a stable sort, when the best span every
    block in no block order, tied within and across blocks."""
    import onnxruntime as ort

    from edgeseq.export.head import _block_top_k, _Nodes

    b = _Nodes("t")
    top, ids = _block_top_k(b, "x", "k", 128, opset)
    assert any(n.op_type == "ReduceMax" for n in b.nodes)
    b.nodes += [helper.make_node("Identity", [top], ["top"]), helper.make_node("Identity", [ids], ["ids"])]
    graph = helper.make_graph(
        b.nodes,
        "block_top_k",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", 128]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info("top", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("ids", TensorProto.INT64, None),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(k)
    x = rng.integers(0, 3, (6, 128)).astype(np.float32)
    for row in x.reshape(6, 8, 16):  # one high value in each block, from 3 levels: ties across blocks
        row[np.arange(8), rng.integers(0, 16, 8)] = rng.integers(5, 8, 8)
    top, ids = session.run(None, {"x": x, "k": np.array([k], np.int64)})
    expected = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(top, np.take_along_axis(x, expected, -1))
