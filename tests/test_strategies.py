"""Decoding strategies: the runtime against the PyTorch reference decoder, for every family and strategy."""

import json
import subprocess
import sys

import numpy as np
import pytest

from edgeseq.errors import OptionsError
from edgeseq.export import ExportOptions, TorchBackend, adapter_for, export_model
from edgeseq.runtime import DecodingOptions, Generator
from edgeseq.runtime.loop import Decoding, decode
from edgeseq.runtime.search import BeamSearch
from tests.conftest import mixed_sources, tiny_rnn
from tests.test_transformer import tiny_transformer

STRATEGIES = {
    "greedy": DecodingOptions(max_new_tokens=10),
    "beam4-lp0.6": DecodingOptions(max_new_tokens=10, beam_size=4, length_penalty=0.6),
    "beam4-lp1.0": DecodingOptions(max_new_tokens=10, beam_size=4, length_penalty=1.0),
    "beam4-nbest3": DecodingOptions(max_new_tokens=10, beam_size=4, nbest=3),
    "beam3-early": DecodingOptions(max_new_tokens=10, beam_size=3, early_stopping=True),
    "sample-topk": DecodingOptions(max_new_tokens=10, sample=True, top_k=5, seed=7, nbest=2),
    "sample-topp": DecodingOptions(max_new_tokens=10, sample=True, top_p=0.8, temperature=1.3, seed=3),
    "greedy-penalties": DecodingOptions(max_new_tokens=10, repetition_penalty=1.5, no_repeat_ngram=2, min_new_tokens=3),
}
FAMILIES = ["lstm-bahdanau", "gru-luong-general", "transformer"]


@pytest.fixture(scope="module")
def family_bundles(tmp_path_factory):
    made = {}
    for family in FAMILIES:
        if family == "transformer":
            model, sv, tv = tiny_transformer("pre")
        else:
            cell, attention = family.split("-", 1)
            model, sv, tv = tiny_rnn(cell, attention)
        out = tmp_path_factory.mktemp("strategies") / family
        export_model(model, out, source_vocab=sv, target_vocab=tv, options=ExportOptions(max_new_tokens=10))
        made[family] = (Generator(out), TorchBackend(adapter_for(model)), sv)
    return made


def assert_same(got, ref):
    assert [[h.tokens for h in hyps] for hyps in got] == [[h.tokens for h in hyps] for hyps in ref]
    for g_hyps, r_hyps in zip(got, ref):
        for g, r in zip(g_hyps, r_hyps):
            assert g.score == pytest.approx(r.score, abs=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_runtime_equals_pytorch_reference(family_bundles, family, strategy):
    gen, torch_backend, sv = family_bundles[family]
    options = STRATEGIES[strategy]
    spec = gen.bundle.manifest.decoder
    sources = mixed_sources(sv)
    batched = gen.generate_ids(sources, options)
    assert_same(batched, decode(torch_backend, spec, sources, options))
    for source in sources[:3]:
        assert_same(gen.generate_ids([source], options), decode(torch_backend, spec, [source], options))
    expected = options.nbest
    assert all(len(h) == expected for h in batched)
    assert all(h[i].score >= h[i + 1].score for h in batched for i in range(len(h) - 1))  # n-best sorted
    if not options.sample:  # deterministic strategies give each source the same alone as in a batch
        assert_same(batched, [gen.generate_ids([s], options)[0] for s in sources])


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_search_with_one_beam_is_greedy(family_bundles, family):
    gen, _, sv = family_bundles[family]
    options = DecodingOptions(max_new_tokens=10)
    sources = mixed_sources(sv)
    decoding = Decoding(gen.backend, gen.bundle.manifest.decoder, sources, options)
    decoding.strategy = BeamSearch([len(s) for s in sources], gen.backend.special_tokens, options)
    for _ in decoding.steps():
        pass
    beam = decoding.results()
    greedy = gen.generate_ids(sources, options)
    assert [h[0].tokens for h in beam] == [h[0].tokens for h in greedy]


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_search_runs_its_first_step_on_one_row_per_source(family_bundles, family, monkeypatch):
    """All k beams of a source start identical: the first step runs one row per source, the next k rows per
    source, and the hypotheses are those of k rows from the start (HF's way: all but one at -1e9). A vocabulary
    with fewer than 2k allowed tokens at the first step starts with k rows."""
    from edgeseq.runtime import search

    gen, _, sv = family_bundles[family]
    sources, options = mixed_sources(sv), DecodingOptions(max_new_tokens=8, beam_size=4, nbest=4)
    rows, step = [], gen.backend.step
    monkeypatch.setattr(
        gen.backend,
        "step",
        lambda feeds, *a, **kw: (
            rows.append(len(feeds[gen.bundle.manifest.decoder.tokens_input])) or step(feeds, *a, **kw)
        ),
    )
    fast = gen.generate_ids(sources, options)
    assert rows[:2] == [len(sources), 4 * len(sources)]
    rows.clear()
    monkeypatch.setattr(search, "_first_alone", lambda *a: False)
    plain = gen.generate_ids(sources, options)
    assert rows[0] == 4 * len(sources)
    assert_same(fast, plain)
    monkeypatch.undo()
    vocab = gen.backend.step_graph.output(gen.bundle.manifest.decoder.logits_output).shape[-1]
    assert search._first_alone(options, (), vocab) and not search._first_alone(options, tuple(range(vocab - 8)), vocab)
    assert not search._first_alone(options.replace(forced_bos_token=3), (), vocab)


@pytest.mark.parametrize("family", FAMILIES)
def test_beam_search_scores_at_least_greedy(family_bundles, family):
    gen, _, sv = family_bundles[family]
    sources = mixed_sources(sv)
    lp0 = DecodingOptions(max_new_tokens=10, length_penalty=0.0)
    greedy = gen.generate_ids(sources, lp0)
    beam = gen.generate_ids(sources, lp0.replace(beam_size=5))
    assert all(b[0].score >= g[0].score - 1e-5 for b, g in zip(beam, greedy))  # lp 0: plain sum of log-probs
    if family == "lstm-bahdanau":  # here the searches really differ
        assert any(b[0].tokens != g[0].tokens for b, g in zip(beam, greedy))


def test_sampling_is_reproducible_with_a_seed(family_bundles):
    gen, _, sv = family_bundles["lstm-bahdanau"]
    sources = mixed_sources(sv)
    options = DecodingOptions(max_new_tokens=10, sample=True, seed=11, temperature=1.5)
    first = gen.generate_ids(sources, options)
    assert [h[0].tokens for h in first] == [h[0].tokens for h in gen.generate_ids(sources, options)]
    other = gen.generate_ids(sources, options.replace(seed=12))
    assert [h[0].tokens for h in first] != [h[0].tokens for h in other]


def test_penalties_change_the_output(family_bundles):
    gen, _, sv = family_bundles["gru-luong-general"]
    sources = mixed_sources(sv)
    plain = gen.generate_ids(sources, DecodingOptions(max_new_tokens=10))
    for h in gen.generate_ids(sources, DecodingOptions(max_new_tokens=10, no_repeat_ngram=1)):
        assert len(set(h[0].tokens)) == len(h[0].tokens)  # no token twice
    assert all(len(h[0].tokens) >= 3 for h in gen.generate_ids(sources, DecodingOptions(min_new_tokens=3)))
    assert plain != gen.generate_ids(sources, DecodingOptions(max_new_tokens=10, repetition_penalty=3.0))


def test_streaming_yields_the_greedy_tokens_as_text(family_bundles):
    gen, _, sv = family_bundles["lstm-bahdanau"]
    texts = ["abc", "hello world 42", "x"]
    events = list(gen.stream(texts))
    results = gen.generate(texts)
    for i, r in enumerate(results):
        assert [e.token for e in events if e.source == i and not e.done] == list(r.tokens)
        assert [e.done for e in events if e.source == i][-1]  # the last event of a source ends it
        assert "".join(e.piece for e in events if e.source == i) == r.text
    with pytest.raises(OptionsError, match="streaming needs greedy decoding or sampling"):
        next(gen.stream(texts, DecodingOptions(beam_size=2)))


@pytest.mark.parametrize("options", [DecodingOptions(max_new_tokens=8), DecodingOptions(max_new_tokens=8, beam_size=3)])
def test_alignments(family_bundles, options):
    gen, _, sv = family_bundles["lstm-bahdanau"]
    texts = ["abc", "hello world 42"]
    for text, r in zip(texts, gen.generate(texts, options.replace(return_alignments=True))):
        a = r.alignment
        assert a.shape[1] == len(text) + 1  # source characters and </s>
        assert a.shape[0] in (len(r.tokens), len(r.tokens) + 1)  # one row per generated token (and </s>)
        np.testing.assert_allclose(a.sum(axis=1), 1.0, atol=1e-5)
    transformer = family_bundles["transformer"][0]
    with pytest.raises(OptionsError, match="does not expose attention weights"):
        transformer.generate(["abc"], DecodingOptions(return_alignments=True))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beam_size": 0}, "beam_size must be in 1..1024"),
        ({"top_p": 0.0}, r"top_p must be in \[1e-06, 1\]"),
        ({"top_p": 1.5}, r"top_p must be in \[1e-06, 1\]"),
        ({"temperature": 0.0}, r"temperature must be in \[0.0001, 10000\]"),
        ({"temperature": -1.0}, r"temperature must be in \[0.0001, 10000\]"),
        ({"min_new_tokens": 5, "max_new_tokens": 4}, r"min_new_tokens \(5\) must not exceed max_new_tokens \(4\)"),
        ({"nbest": 3, "beam_size": 2}, r"nbest \(3\) must not exceed beam_size \(2\)"),
        ({"sample": True, "beam_size": 4}, "sample and beam_size > 1 cannot be combined"),
        ({"top_k": -1}, "top_k must be >= 0"),
        ({"repetition_penalty": 0.0}, r"repetition_penalty must be in \[0.001, 1000\]"),
        ({"no_repeat_ngram": -2}, "no_repeat_ngram must be >= 0"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"length_penalty": float("nan")}, "length_penalty must be a finite number"),
        ({"sample": "yes"}, "sample must be true or false"),
    ],
)
def test_invalid_options_are_refused_at_construction(kwargs, message):
    with pytest.raises(OptionsError, match=message):
        DecodingOptions(**kwargs)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeseq", *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--beam", "0"], "beam_size must be in 1..1024"),
        (["--top-p", "1.5"], "top_p must be in [1e-06, 1]"),
        (["--temperature", "0"], "temperature must be in [0.0001, 10000]"),
        (["--min-new-tokens", "9", "--max-new-tokens", "3"], "min_new_tokens (9) must not exceed max_new_tokens (3)"),
    ],
)
def test_cli_invalid_options_exit_2_with_one_line(bundle_factory, flags, message):
    r = run_cli("generate", bundle_factory()[0], "abc", *flags)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and message in r.stderr and "Traceback" not in r.stderr


def test_cli_beam_nbest_json(bundle_factory):
    r = run_cli("generate", bundle_factory()[0], "abc", "hello world", "--beam", "4", "--nbest", "3", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert [d["source"] for d in data] == ["abc", "hello world"]
    for d in data:
        hyps = d["hypotheses"]
        assert len(hyps) == 3 and all({"text", "tokens", "score"} <= set(h) for h in hyps)
        assert [h["score"] for h in hyps] == sorted((h["score"] for h in hyps), reverse=True)


def test_cli_stream_prints_tokens_before_the_end(bundle_factory, tmp_path):
    """Read the output line by line while the process runs: token events come before each sentence ends."""
    sources = tmp_path / "in.txt"
    sources.write_text("\n".join(["hello world 42", "abc"] * 100) + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeseq", "generate", bundle_factory()[0], "--input", sources, "--stream", "--json"],
        stdout=subprocess.PIPE,
        text=True,
    )
    first = json.loads(proc.stdout.readline())
    still_running = proc.poll() is None
    events = [first] + [json.loads(line) for line in proc.stdout]
    assert proc.wait() == 0
    assert "token" in first and first["source"] == 0
    assert still_running  # the first token arrived while 199 more sentences were still to come
    done = [i for i, e in enumerate(events) if e.get("done")]
    assert (
        len(done) == 200 and done[0] > 0 and events[done[0]]["text"] == "".join(e["piece"] for e in events[: done[0]])
    )


@pytest.mark.parametrize("bad", [-np.inf, np.nan])
def test_head_choice_with_no_allowed_token_ends_the_row(bad):
    """The head's greedy choice read as the logits path reads it: a row whose best log-probability is -inf
    (or NaN: every logit -inf) ends with </s> and a score of -inf; the other rows go on, their scores summed."""
    from edgeseq.runtime.search import TokenByToken
    from edgeseq.runtime.step import StepOutput

    special = {"eos": 2, "decoder_start": 1}
    greedy = TokenByToken([3, 4, 5], special, DecodingOptions(max_new_tokens=4), vocab=10)
    chosen = (np.array([[-0.5], [bad], [-1.25]], np.float32), np.array([[7], [4], [2]], np.int64))
    keep = greedy.update(0, StepOutput(lambda: None, chosen, None))
    assert keep.tolist() == [0] and greedy.emitted() == [(0, 7), (1, 2), (2, 2)]
    chosen = (np.array([[-0.25]], np.float32), np.array([[2]], np.int64))
    assert greedy.update(1, StepOutput(lambda: None, chosen, None)) is not None and greedy.done()
    best = [h[0] for h in greedy.finalize()]
    assert [h.tokens for h in best] == [(7,), (), ()]
    assert best[0].score == -0.75 and best[1].score == -np.inf and best[2].score == -1.25
