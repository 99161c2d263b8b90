"""The greedy head (export/head.py): the step graph's own argmax and log-probability, used by greedy decoding."""

import numpy as np
import onnx
import pytest

from edgeseq.export import ExportOptions, export_model
from edgeseq.runtime import DecodingOptions, Generator
from edgeseq.runtime.binding import DeviceTensor
from edgeseq.runtime.search import TokenByToken
from tests.conftest import mixed_sources, tiny_rnn, vocabs
from tests.test_transformer import tiny_transformer

OPTIONS = {
    "greedy": DecodingOptions(max_new_tokens=14),
    "min-length": DecodingOptions(max_new_tokens=14, min_new_tokens=9),
}


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
    export_model(model, out["no-head"], source_vocab=sv, target_vocab=tv, options=ExportOptions(greedy_head=False))
    return out


def test_step_graph_has_the_head(bundles):
    gen = Generator(bundles["lstm"])
    dec = gen.bundle.manifest.decoder
    assert (dec.head_bias_input, dec.head_token_output, dec.head_logprob_output) == (
        "head_bias",
        "next_token",
        "next_logprob",
    )
    step = gen.bundle.manifest.graphs["decoder_step"]
    assert step.input("head_bias").shape == (len(vocabs()[1]),)
    model = onnx.load(str(bundles["lstm"] / "decoder_step.onnx"))
    assert {o.name for o in model.graph.output} >= {"logits", "next_token", "next_logprob"}


def test_head_outputs_are_argmax_and_log_softmax_of_biased_logits(bundles):
    gen = Generator(bundles["transformer"])
    m = gen.bundle.manifest
    seen = []
    run = gen.backend.step

    def step(f):
        out = run(f)
        seen.append((f["head_bias"], out))
        return out

    gen.backend.step = step
    gen.generate_ids(mixed_sources(vocabs()[0]), OPTIONS["min-length"])
    assert seen
    for bias, out in seen:
        x = out["logits"] + bias
        np.testing.assert_array_equal(out["next_token"], x.argmax(-1))
        lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1))
        np.testing.assert_allclose(out["next_logprob"], -lse, atol=1e-5)
    assert np.isneginf(seen[0][0][m.special_tokens["eos"]])  # </s> barred before the minimum length


@pytest.mark.parametrize("family", ["lstm", "transformer"])
@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.parametrize("io_binding", [False, True])
def test_head_decodes_like_the_logits_path(bundles, monkeypatch, family, name, io_binding):
    sources = mixed_sources(vocabs()[0])
    options = OPTIONS[name]
    plain = Generator(bundles[family], use_head=False).generate_ids(sources, options)
    chosen = []
    original = TokenByToken.update_chosen

    def counted(self, tokens, logprobs, step, alignment):
        chosen.append(step)
        return original(self, tokens, logprobs, step, alignment)

    monkeypatch.setattr(TokenByToken, "update_chosen", counted)
    fast = Generator(bundles[family], io_binding=io_binding).generate_ids(sources, options)
    assert chosen, "the head was not used"
    assert [h[0].tokens for h in fast] == [h[0].tokens for h in plain]
    assert [h[0].score for h in fast] == pytest.approx([h[0].score for h in plain], abs=1e-4)


def test_strategies_that_need_logits_do_not_use_the_head(bundles, monkeypatch):
    monkeypatch.setattr(TokenByToken, "update_chosen", lambda *a: pytest.fail("head used"))
    gen = Generator(bundles["lstm"])
    sources = mixed_sources(vocabs()[0])[:2]
    for options in (
        DecodingOptions(max_new_tokens=6, beam_size=3),
        DecodingOptions(max_new_tokens=6, sample=True, seed=1),
        DecodingOptions(max_new_tokens=6, repetition_penalty=1.3),
        DecodingOptions(max_new_tokens=6, no_repeat_ngram=2),
    ):
        gen.generate_ids(sources, options)


def test_bound_logits_stay_on_the_device_when_the_head_chooses(bundles):
    gen = Generator(bundles["transformer"], io_binding=True)
    outs = []
    run = gen.backend.step
    gen.backend.step = lambda f: outs.append(run(f)) or outs[-1]
    gen.generate_ids(mixed_sources(vocabs()[0])[:2], DecodingOptions(max_new_tokens=4, min_new_tokens=4))
    assert all(isinstance(o["logits"], DeviceTensor) for o in outs)
    assert all(isinstance(o["next_token"], np.ndarray) for o in outs)


def test_a_bundle_without_the_head_decodes_through_the_logits(bundles):
    gen = Generator(bundles["no-head"])
    assert not gen.bundle.manifest.decoder.has_head
    assert "head_bias" not in {t.name for t in gen.bundle.manifest.graphs["decoder_step"].inputs}
    assert all(h[0].tokens for h in gen.generate_ids(mixed_sources(vocabs()[0]), OPTIONS["greedy"]))
