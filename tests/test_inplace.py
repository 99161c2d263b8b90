"""Decoder states written in place (runtime/inplace.py): the same results, one buffer per state."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseq.bundle import StateSpec
from edgeseq.export import ExportOptions, export_model
from edgeseq.runtime import DecodingOptions, Generator, inplace
from edgeseq.runtime.binding import run_into
from edgeseq.runtime.inplace import StateBuffers
from tests.conftest import mixed_sources
from tests.test_transformer import full_forward_greedy, tiny_transformer


@pytest.fixture(scope="module")
def transformer(tmp_path_factory):
    model, sv, tv = tiny_transformer()
    out = tmp_path_factory.mktemp("inplace") / "transformer"
    export_model(model, out, source_vocab=sv, target_vocab=tv, options=ExportOptions(max_new_tokens=16))
    return out, model, sv, tv


def recording(gen: Generator) -> list[dict]:
    """Record the `into` of every step the generator's backend runs; returns the list it fills."""
    seen, step = [], gen.backend.step

    def record(feeds, request=None, into=None):
        seen.append({k: (v.ctypes.data, v.shape) for k, v in (into or {}).items()})
        return step(feeds, request, into=into)

    gen.backend.step = record
    return seen


@pytest.mark.parametrize("family", ["transformer", "lstm"])
def test_states_written_in_place_decode_as_before(transformer, bundle_factory, family, monkeypatch):
    monkeypatch.setattr(inplace, "MIN_BYTES", 0)  # (the test models' states are tiny)
    bundle, model, sv, tv = transformer if family == "transformer" else bundle_factory()
    states = Generator(bundle, engine="loop").bundle.manifest.decoder.states
    sources = mixed_sources(sv, count=5)
    for options in (
        DecodingOptions(max_new_tokens=14),  # rows leave the batch at different steps
        DecodingOptions(max_new_tokens=12, beam_size=3, nbest=3),  # rows reordered every step
        DecodingOptions(max_new_tokens=10, beam_size=2, nbest=2, early_stopping=True, min_new_tokens=2),
    ):
        plain = Generator(bundle, engine="loop", inplace_states=False).generate_ids(sources, options)
        gen = Generator(bundle, engine="loop")
        seen = recording(gen)
        got = gen.generate_ids(sources, options)
        assert [[h.tokens for h in hyps] for hyps in got] == [[h.tokens for h in hyps] for hyps in plain]
        assert [[h.score for h in hyps] for hyps in got] == [[h.score for h in hyps] for hyps in plain]
        # the first two steps learn the shapes; every later one writes every state into its one buffer
        assert seen[0] == seen[1] == {} and len(seen) > 3
        for later in seen[2:]:
            assert set(later) == {s.output for s in states}
            assert all(later[k][0] == seen[2][k][0] for k in later)  # the same memory, step after step
        if family == "transformer" and options.beam_size == 1:  # and an independent reference
            want = full_forward_greedy(model, sources, tv.bos_id, tv.eos_id, tv.pad_id, options.max_new_tokens)
            assert [list(hyps[0].tokens) for hyps in got] == want


def test_small_states_are_left_to_onnx_runtime(transformer):
    """Below MIN_BYTES a decode runs as before: binding costs more than a tiny model's step."""
    bundle, _, sv, _ = transformer
    gen = Generator(bundle, engine="loop")
    seen = recording(gen)
    gen.generate_ids(mixed_sources(sv, count=2), DecodingOptions(max_new_tokens=8, beam_size=2))
    assert seen and all(into == {} for into in seen)


def spec(name: str, axis: int = 0) -> StateSpec:
    return StateSpec(name, f"{name}_out", axis)


def test_what_the_first_two_steps_show_decides(monkeypatch):
    monkeypatch.setattr(inplace, "MIN_BYTES", 0)
    rows, z = 4, np.zeros
    states = [spec("cache"), spec("h", axis=1), spec("odd"), spec("shrinks")]
    b = StateBuffers(states, steps=10)
    ins = {"cache": z((rows, 2, 0, 3)), "h": z((1, rows, 5)), "odd": z((rows, 1)), "shrinks": z((rows, 3))}
    outs = {
        "cache_out": z((rows, 2, 1, 3)),
        "h_out": z((1, rows, 5)),
        "odd_out": z((rows, 3)),
        "shrinks_out": z((rows, 3)),
    }
    b.learn(ins, outs)
    assert not b.enabled
    ins = {"cache": outs["cache_out"], "h": outs["h_out"], "odd": outs["odd_out"], "shrinks": outs["shrinks_out"]}
    outs = {
        "cache_out": z((rows, 2, 2, 3)),
        "h_out": z((1, rows, 5)),
        "odd_out": z((rows, 4)),
        "shrinks_out": z((rows, 2)),
    }
    b.learn(ins, outs)
    assert b.enabled
    # grows by 2 a step: never in place; shrinks at the second step: the two steps disagree
    assert set(b.growth) == {"cache", "h"}
    assert b.growth["cache"] == ((rows, 2, 10, 3), 2) and b.growth["h"] == ((1, rows, 5), None)
    into = b.outputs({"cache": z((3, 2, 2, 3)), "h": z((1, 3, 5))}, rows=2)  # rows left, beams reordered
    assert into["cache_out"].shape == (2, 2, 3, 3) and into["h_out"].shape == (1, 2, 5)
    assert np.shares_memory(into["cache_out"], b.buffers["cache"])
    # past the decode's length or its first step's rows: left to ONNX Runtime
    assert set(b.outputs({"cache": z((2, 2, 10, 3)), "h": z((1, 2, 5))}, rows=2)) == {"h_out"}
    assert b.outputs({"cache": z((4, 2, 3, 3)), "h": z((1, 4, 5))}, rows=5) == {}


def test_run_into_writes_where_asked_and_copies_the_rest(transformer):
    bundle, _, sv, _ = transformer
    gen = Generator(bundle, engine="loop")
    session = gen.backend.sessions["encoder"]
    ids = np.array([mixed_sources(sv, count=1)[0]], dtype=np.int64)
    feeds = {"src_ids": ids, "src_mask": np.ones_like(ids)}
    want = session.run(feeds)
    first = session.output_names[0]
    target = np.full(want[first].size + 7, np.nan, dtype=want[first].dtype)
    into = {first: target[: want[first].size].reshape(want[first].shape)}
    out = run_into(session, feeds, into)
    assert out[first] is into[first] and np.isnan(target[-7:]).all()
    for name in session.output_names:
        np.testing.assert_array_equal(out[name], want[name])
    assert set(out) == set(session.output_names) and len(out) == len(session.output_names)
