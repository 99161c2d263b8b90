"""Translating a stream of lines (runtime/lines.py): bounded batches, input order, bad lines."""

import threading

import numpy as np
import pytest

from edgeseq.errors import InputError, OptionsError
from edgeseq.runtime import DecodingOptions, Generator
from edgeseq.runtime.lines import DEFAULT_WORKERS, Batching, split_threads, spread, usable_cpus


def lines_of(gen, count, seed=0):
    vocab = gen.bundle.source_vocab
    regular = [t for i, t in enumerate(vocab.tokens) if i not in set(vocab.specials.values())]
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(regular, size=rng.integers(1, 30))) for _ in range(count)]


@pytest.fixture
def recorded(bundle_factory, monkeypatch):
    gen = Generator(bundle_factory()[0])
    batches = []
    original = gen.translate_ids

    def translate_ids(sources, options, **kw):
        batches.append([len(s) for s in sources])
        return original(sources, options, **kw)

    monkeypatch.setattr(gen, "translate_ids", translate_ids)
    return gen, batches


@pytest.mark.parametrize("beam", [1, 3])
def test_batches_are_bounded_sorted_and_results_come_back_in_input_order(recorded, beam):
    gen, batches = recorded
    options = DecodingOptions(max_new_tokens=6, beam_size=beam)
    texts = lines_of(gen, 120)
    batching = Batching(max_tokens=400, window=3)
    got = list(gen.translate_lines(iter(texts), options, batching))
    seen = list(batches)
    assert [r.line for r in got] == list(range(1, 121)) and [r.source for r in got] == texts
    expected = [t.text for t in gen.generate(texts, options)]  # one batch
    assert [r.translation.text for r in got] == expected
    assert len(seen) > 6 and sum(map(len, seen)) == 120
    for lengths in seen:  # rows x (longest source + max_new_tokens) within the budget, or a single source
        assert len(lengths) == 1 or len(lengths) * beam * (max(lengths) + 6) <= 400
        assert lengths == sorted(lengths)


def test_a_longer_output_budget_makes_smaller_batches(recorded):
    gen, batches = recorded
    texts = lines_of(gen, 60)
    largest = {}
    for new in (4, 40):
        batches.clear()
        list(gen.translate_lines(iter(texts), DecodingOptions(max_new_tokens=new), Batching(max_tokens=600)))
        largest[new] = max(len(b) for b in batches)
    assert largest[40] < largest[4]


def test_bad_lines_stop_with_their_number_or_are_skipped(bundle_factory):
    gen = Generator(bundle_factory()[0])
    texts = [*lines_of(gen, 5), "", *lines_of(gen, 4, seed=1)]
    options = DecodingOptions(max_new_tokens=5)
    got = list(gen.translate_lines(iter(texts), options, Batching(on_error="skip")))
    assert [r.line for r in got] == list(range(1, 11))
    assert got[5].translation is None and "empty" in got[5].error
    assert all(r.translation is not None for i, r in enumerate(got) if i != 5)
    done = []
    with pytest.raises(InputError, match="line 6: empty"):
        for r in gen.translate_lines(iter(texts), options, Batching(on_error="stop")):
            done.append(r.line)
    assert done == [1, 2, 3, 4, 5]  # the lines before it still come out


@pytest.mark.parametrize(
    "data, limit, expected, error",
    [
        (b"abc\nde\r\nf", 8, ["abc", "de", "f"], None),  # \r\n and a last line without a newline
        (b"12345678\nx\n", 8, ["12345678", "x"], None),  # exactly the limit, then its newline
        (b"ok\n123456789\nnever\n", 8, ["ok"], "x, line 2: longer than 8 bytes"),
        (b"ok\n123456789", 8, ["ok"], "x, line 2: longer than 8 bytes"),
        (b"ok\n\xff\n", 8, ["ok"], "x, line 2: not UTF-8 text"),
        (b"", 8, [], "x is empty"),
    ],
)
def test_read_lines_caps_the_line_length(data, limit, expected, error):
    """A line is never read whole past `max_line_bytes` (a stream without newlines, such as /dev/zero, stays
    bounded): it is refused naming its number, after the lines before it."""
    import io

    from edgeseq.runtime.lines import read_lines

    got = []
    if error is None:
        got = list(read_lines(io.BytesIO(data), "x", max_line_bytes=limit))
    else:
        with pytest.raises(InputError, match=error):
            for line in read_lines(io.BytesIO(data), "x", max_line_bytes=limit):
                got.append(line)
    assert got == expected


def test_an_unreadable_line_stops_after_the_lines_before_it(bundle_factory):
    """A read error in the middle of a window: the lines before it are translated and given back first."""
    import io

    from edgeseq.runtime.lines import read_lines

    gen = Generator(bundle_factory()[0])
    texts = lines_of(gen, 5)
    data = ("\n".join(texts) + "\n").encode() + b"x" * 100 + b"\nabc\n"
    done = []
    with pytest.raises(InputError, match="line 6: longer than 64 bytes"):
        for r in gen.translate_lines(read_lines(io.BytesIO(data), "in", 64), DecodingOptions(max_new_tokens=5)):
            done.append(r.source)
    assert done == texts


@pytest.mark.parametrize("engine", ["loop", "graph"])
def test_beam_batches_count_the_context_once_per_source_where_the_step_takes_it_so(tmp_path, monkeypatch, engine):
    """A Transformer's step takes the cross-attention cache once per source (DecoderSpec.context_per_source): the
    loop's beam batches count a source's tokens once, not once per beam; generate.onnx takes them per row."""
    from edgeseq.export import ExportOptions, export_model
    from tests.test_transformer import tiny_transformer

    model, sv, tv = tiny_transformer("pre")
    export_model(model, tmp_path / "b", source_vocab=sv, target_vocab=tv, options=ExportOptions(max_new_tokens=8))
    gen = Generator(tmp_path / "b", engine=engine)
    assert gen.bundle.manifest.decoder.context_per_source
    batches, original = [], gen.translate_ids

    def translate_ids(sources, options, **kw):
        batches.append([len(s) for s in sources])
        return original(sources, options, **kw)

    monkeypatch.setattr(gen, "translate_ids", translate_ids)
    options, beam, texts = DecodingOptions(max_new_tokens=6, beam_size=3), 3, lines_of(gen, 80)
    got = [r.translation.text for r in gen.translate_lines(iter(texts), options, Batching(max_tokens=400, window=3))]
    seen = list(batches)
    assert got == [t.text for t in gen.generate(texts, options)]  # (one batch)
    per_row = [len(b) * beam * (max(b) + 6) for b in seen]
    per_source = [len(b) * (max(b) + beam * 6) for b in seen]
    if engine == "loop":
        assert all(t <= 400 for b, t in zip(seen, per_source) if len(b) > 1)
        assert max(per_row) > 400  # batches the per-row count would have cut
    else:
        assert all(t <= 400 for b, t in zip(seen, per_row) if len(b) > 1)


def test_workers_decode_batches_side_by_side_with_the_same_results(recorded, monkeypatch):
    """Two batches are in translate_ids at once (the first two calls wait at a barrier that both must reach:
    one worker alone would time out), and the results are those of one batch, in input order."""
    gen, batches = recorded
    options, texts = DecodingOptions(max_new_tokens=6), lines_of(gen, 120, seed=3)
    expected = [t.text for t in gen.generate(texts, options)]  # one batch
    batches.clear()
    barrier, calls, threads, inner = threading.Barrier(2, timeout=30), [], set(), gen.translate_ids

    def translate_ids(sources, options, **kw):
        threads.add(threading.get_ident())
        calls.append(None)  # (atomic)
        if len(calls) <= 2:
            barrier.wait()
        return inner(sources, options, **kw)

    monkeypatch.setattr(gen, "translate_ids", translate_ids)
    got = list(gen.translate_lines(iter(texts), options, Batching(max_tokens=400, window=3, workers=2)))
    assert [r.line for r in got] == list(range(1, 121))
    assert [r.translation.text for r in got] == expected
    assert len(threads) == 2 and threading.get_ident() not in threads and not barrier.broken
    assert len(batches) > 6 and sum(map(len, batches)) == 120


def test_a_window_of_one_batch_is_halved_for_two_workers(recorded):
    gen, batches = recorded
    texts = lines_of(gen, 80, seed=4)  # (more sources than engine 'auto' gives generate.onnx: the loop)
    list(gen.translate_lines(iter(texts), DecodingOptions(max_new_tokens=4), Batching(workers=2)))
    assert sorted(map(len, batches)) == [40, 40]
    assert max(batches[0] + batches[1]) == max(map(len, (gen.encode(t) for t in texts)))


@pytest.mark.parametrize(
    "batches, workers, expected",
    [
        ([[1, 2, 3, 4], [5]], 3, [[1, 2], [3, 4], [5]]),
        ([[1, 2, 3, 4, 5]], 4, [[1], [2], [3], [4, 5]]),
        ([[1], [2]], 4, [[1], [2]]),
        ([[1, 2], [3, 4], [5, 6]], 2, [[1, 2], [3, 4], [5, 6]]),
        ([], 2, []),
    ],
)
def test_spread_halves_the_largest_batches_in_order(batches, workers, expected):
    assert spread(batches, workers) == expected


@pytest.mark.parametrize(
    "threads, workers, many, expected",
    [
        (2, None, True, (2, 1)),  # a file: one batch per thread
        (16, None, True, (4, 4)),  # at most DEFAULT_WORKERS, the threads shared out
        (3, 1, True, (1, 3)),
        (None, None, False, (1, None)),  # a few sources: onnxruntime's choice of threads
        (8, 2, False, (2, 4)),
        (1, 4, True, (4, 1)),  # more workers than threads: one each
    ],
)
def test_threads_are_shared_out_among_workers(threads, workers, many, expected):
    assert split_threads(threads, workers, many) == expected
    assert split_threads(None, None, True)[0] == min(usable_cpus(), DEFAULT_WORKERS)


@pytest.mark.parametrize("workers", [0, -1, 257, 2.0, "2"])
def test_bad_worker_counts_are_refused(workers):
    with pytest.raises(OptionsError, match=r"workers \(--workers\) must be in 1\.\.256"):
        Batching(workers=workers)


def test_engine_auto_decodes_a_stream_of_batches_with_the_loop_alone(bundle_factory):
    """generate.onnx only for an input of one batch: a stream would hold both engines' memory."""
    bundle = bundle_factory()[0]
    gen, options = Generator(bundle), DecodingOptions(max_new_tokens=6)
    assert gen.engine == "auto" and gen.auto_graph and gen.takes_graph(options, 10)
    texts = lines_of(gen, 120, seed=5)
    for workers in (1, 2):
        got = list(gen.translate_lines(iter(texts), options, Batching(max_tokens=400, window=3, workers=workers)))
        assert gen._graph is None
    loop = Generator(bundle, engine="loop").generate(texts, options)
    assert [r.translation.text for r in got] == [t.text for t in loop]
    few = [r.translation.text for r in gen.translate_lines(iter(texts[:5]), options, Batching(workers=2))]
    assert gen._graph is not None and few == [t.text for t in loop[:5]]


def test_a_failing_batch_stops_the_run_and_its_workers(recorded, monkeypatch):
    gen, batches = recorded
    inner, before = gen.translate_ids, threading.active_count()

    def translate_ids(sources, options, **kw):
        if len(batches) >= 2:
            raise MemoryError("no room")
        return inner(sources, options, **kw)

    monkeypatch.setattr(gen, "translate_ids", translate_ids)
    texts = lines_of(gen, 120, seed=6)
    with pytest.raises(MemoryError, match="no room"):
        list(gen.translate_lines(iter(texts), DecodingOptions(max_new_tokens=6), Batching(max_tokens=400, workers=2)))
    assert threading.active_count() == before  # the pool's threads ended with the run


def test_the_next_window_decodes_while_the_last_batch_of_one_does(recorded, monkeypatch):
    """With two workers, the first batch of the second window starts while the last batch of the first is still
    decoding (both wait at a barrier: one window at a time would time out there); the results and their order
    are those of one batch."""
    from edgeseq.runtime.lines import _cost, cut_batches, windows

    gen, batches = recorded
    options, texts = DecodingOptions(max_new_tokens=6), lines_of(gen, 120, seed=7)
    batching = Batching(max_tokens=400, window=3, workers=2)
    first = next(windows(gen.bundle, iter(texts), options, batching))
    ordered = sorted(first, key=lambda item: len(item[2]))
    size = len(spread(cut_batches(ordered, 400, _cost(gen.bundle, options), gen.bundle), 2))
    assert size >= 2 and len(first) < len(texts)
    expected = [t.text for t in gen.generate(texts, options)]
    batches.clear()
    barrier, inner, calls = threading.Barrier(2, timeout=30), gen.translate_ids, []

    def translate_ids(sources, options, **kw):
        calls.append(None)  # (atomic: the call's place in the queue)
        if len(calls) in (size, size + 1):  # the last of the first window, the first of the second
            barrier.wait()
        return inner(sources, options, **kw)

    monkeypatch.setattr(gen, "translate_ids", translate_ids)
    got = list(gen.translate_lines(iter(texts), options, batching))
    assert not barrier.broken and len(batches) > size + 1
    assert [r.line for r in got] == list(range(1, 121)) and [r.translation.text for r in got] == expected


def test_a_read_error_comes_after_the_lines_before_it_with_workers(recorded):
    """The window before a line that cannot be read is given back in full, then the error naming that line."""
    gen, _ = recorded
    texts = lines_of(gen, 90, seed=8)

    def lines():
        yield from texts
        raise InputError("stdin, line 91: not UTF-8 text")

    got = []
    with pytest.raises(InputError, match="line 91: not UTF-8"):
        for result in gen.translate_lines(
            lines(), DecodingOptions(max_new_tokens=4), Batching(max_tokens=400, window=3, workers=2)
        ):
            got.append(result)
    assert [r.line for r in got] == list(range(1, 91)) and all(r.translation for r in got)
