"""Translating a stream of lines with bounded memory: a file of any size, or stdin.

Lines are read a window at a time, sorted by length within the window, cut into batches of at most
`max_tokens` tokens, decoded, and given back in input order as each window completes. A batch's tokens are
what its caches hold at the end: per source token the encoder output or cross-attention cache, once per row
(sources x beams) or, for beam search where the step takes its context once per source
(DecoderSpec.context_per_source), once per source; per generated token the decoder's state or self-attention
cache, once per row. So a batch's memory is bounded whatever the lengths. Memory depends on the window, not
on the input's size.

With `workers` > 1 (on the CPU), that many threads decode a window's batches at once, each batch on the
thread that asks for it: with sessions of one intra-op thread each (Generator(threads=1)), two batches on two
cores decode ~1.3x faster than one batch at a time on both (an operator's work split over threads waits for
its slowest part, and no thread pool spins between graphs), at the memory of one batch more in flight. A
window cut into fewer batches than workers has its largest batches halved until each worker has one. The next
window is read (in a thread of its own) while one decodes and queued behind it, so no worker waits at the end
of a window for another's last batch; at most two windows are queued, so memory still depends on the window.

A line the model cannot take (empty, too long, a character the vocabulary lacks and has no <unk> for) stops
the run with an error naming its line number, or, with `on_error="skip"`, comes back with its error and no
translation while the rest go on. Input that cannot be read as lines (not UTF-8, a line of more than
MAX_LINE_BYTES: /dev/zero has no newline) stops the run naming its line, once the lines before it are out.
"""

from __future__ import annotations

import codecs
import os
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from edgeseq.errors import EdgeseqError, InputError, OptionsError

if TYPE_CHECKING:  # the Generator imports this module
    from edgeseq.runtime.bundle import Bundle
    from edgeseq.runtime.generator import Generator, Translation
    from edgeseq.runtime.options import DecodingOptions

ON_ERROR = ("stop", "skip")
MAX_LINE_BYTES = 1 << 20  # the longest line read_lines reads (a source sentence is far shorter)
MAX_WORKERS = 256
DEFAULT_WORKERS = 4  # at most, for a file: each worker holds one batch more in memory
WINDOW_CHARS = 1 << 24  # a window also ends once its text holds this many characters (lines refused as too long)


@dataclass(frozen=True)
class Batching:
    """How a stream of lines is cut into batches."""

    max_tokens: int = 4096  # per batch: what its caches hold (see above): rows x (longest + max_new_tokens) at most
    window: int = 16  # batches' worth of lines read ahead and sorted by length (memory grows with it)
    on_error: str = "stop"  # a line the model cannot take: "stop" with an error naming it, or "skip" it
    workers: int = 1  # batches decoded at once, one per thread (see above): each holds up to max_tokens

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or not 1 <= self.max_tokens <= 1 << 24:
            raise OptionsError(f"max_tokens (--batch-tokens) must be in 1..{1 << 24}, got {self.max_tokens!r}")
        if not isinstance(self.window, int) or not 1 <= self.window <= 1 << 12:
            raise OptionsError(f"window must be in 1..{1 << 12}, got {self.window!r}")
        if self.on_error not in ON_ERROR:
            raise OptionsError(f"on_error must be one of {', '.join(ON_ERROR)}, got {self.on_error!r}")
        if not isinstance(self.workers, int) or not 1 <= self.workers <= MAX_WORKERS:
            raise OptionsError(f"workers (--workers) must be in 1..{MAX_WORKERS}, got {self.workers!r}")


@dataclass(frozen=True)
class LineResult:
    """One input line: its number (from 1), its text, and its translation or why it has none."""

    line: int
    source: str
    translation: Translation | None
    error: str | None = None


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def split_threads(threads: int | None, workers: int | None, many: bool) -> tuple[int, int | None]:
    """(workers, intra-op threads per session) for `threads` in all (default: the usable CPUs). `workers`
    unset: one per thread up to DEFAULT_WORKERS where there are `many` lines to translate (a file), else one
    (with the sessions' threads left as given: onnxruntime's choice if none)."""
    if workers is None:
        if not many:
            return 1, threads
        workers = min(threads or usable_cpus(), DEFAULT_WORKERS)
    if workers == 1:
        return 1, threads
    return workers, max(1, (threads or usable_cpus()) // workers)


def read_lines(stream: BinaryIO, name: str, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[str]:
    """The lines of a binary stream as text, without newlines. A line that is not UTF-8, or longer than
    `max_line_bytes` (never read whole: memory stays bounded on a stream without newlines), names its number."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    count = 0
    while raw := stream.readline(max_line_bytes + 1):
        count += 1
        if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
            raise InputError(
                f"{name}, line {count}: longer than {max_line_bytes} bytes (one source sentence per line; "
                "is this a text file?)"
            )
        try:
            text = decoder.decode(raw, final=True)
        except UnicodeDecodeError as e:
            raise InputError(f"{name}, line {count}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        yield text.removesuffix("\n").removesuffix("\r")
    if count == 0:
        raise InputError(f"{name} is empty: give one source sentence per line")


def translate_lines(
    gen: Generator, lines: Iterable[str], options: DecodingOptions, batching: Batching = Batching()
) -> Iterator[LineResult]:
    """Translate `lines` in input order (see the module docstring).

    With workers, the next window is read (by a thread of its own: reading stdin may wait for its writer) while
    this one decodes, and its batches join the queue as soon as it is read: the workers do not wait at the
    end of each window for its last batch (~3% of a file's time with two workers). At most two windows are in
    the queue; a window's results are given back as soon as it is done, whatever the next one is doing."""
    cost = _cost(gen.bundle, options, graph=gen.engine == "graph")
    pool = ThreadPoolExecutor(batching.workers, "edgeseq-batch") if batching.workers > 1 else None
    source = windows(gen.bundle, lines, options, batching)
    reader = _Reader(source) if pool is not None else None
    pending: deque[_Window] = deque()  # windows whose batches are decoding or decoded, in input order
    later = Future()  # without workers: the next window is read once this one is out, not before
    reading: Future | None = reader.next() if reader else later
    failed: EdgeseqError | None = None  # a read error: raised once the windows before it are out
    started = 0
    try:
        while True:
            # take in what is read: a window in the queue while another decodes, or, with none decoding, wait
            while reading is not None and len(pending) < (2 if pool else 1) and (reading.done() or not pending):
                if reading is later:
                    reading = _now(next, source, None)
                try:
                    window = reading.result()
                except EdgeseqError as e:
                    window, failed = None, e
                if window is None:
                    reading = None
                    break
                pending.append(_start_window(gen, window, options, batching, cost, pool, first=started == 0))
                started += 1
                reading = None if pending[-1].stop else (reader.next() if reader else later)
            if not pending:
                break
            head = pending[0]
            waits = [f for f in head.futures if not f.done()]
            if waits:  # until the head window is done, or the next window is read (then queued at once)
                more = [reading] if reading is not None and len(pending) < 2 else []
                wait(waits + more, return_when=FIRST_COMPLETED)
                continue
            pending.popleft()
            yield from head.results()
        if failed is not None:
            raise failed
    finally:
        if pool is not None:  # batches not started are dropped; running ones end (a batch is short)
            pool.shutdown(wait=True, cancel_futures=True)
        if reader is not None:
            reader.close(reading)


def windows(bundle: Bundle, lines: Iterable[str], options: DecodingOptions, batching: Batching) -> Iterator[list]:
    """`lines` numbered from 1 and encoded, cut into the windows translate_lines decodes one at a time: each
    item (number, text, ids or None, error or None). A window ends once its tokens reach max_tokens x window
    (or at 65536 lines, or WINDOW_CHARS characters), so a window's lines given to translate_lines again make
    exactly that one window (edgeseq.ray sends each window to an actor as one task: the same batches, so the
    same results). If reading `lines` fails (an EdgeseqError naming a line), the lines before it make a last
    window, then the error is raised."""
    cost = _cost(bundle, options)
    budget = batching.max_tokens * batching.window
    numbered = enumerate(lines, 1)
    while True:
        window, tokens, chars, failed = [], 0, 0, None
        try:
            for number, text in numbered:
                item = _encode(bundle, number, text)
                window.append(item)
                tokens += cost(len(item[2] or ()))
                chars += len(text)
                if tokens >= budget or len(window) >= 1 << 16 or chars >= WINDOW_CHARS:
                    break
        except EdgeseqError as e:
            failed = e
        if window:
            yield window
        if failed is not None:
            raise failed
        if not window:
            return


def _cost(bundle: Bundle, options: DecodingOptions, graph: bool = False) -> Callable[[int], int]:
    """A source's tokens in a batch by its length (see the module docstring); `graph`: decoded by generate.onnx,
    which takes the context per row."""
    rows = options.beam_size if options.beam_size > 1 else (options.nbest if options.sample else 1)
    # the loop's beam rows stay k consecutive rows per source; samples' rows end unevenly (context then per row)
    per_source = options.beam_size > 1 and bundle.manifest.decoder.context_per_source and not graph
    context = 1 if per_source else rows
    return lambda length: context * length + rows * options.max_new_tokens


def _encode(bundle: Bundle, number: int, text: str) -> tuple[int, str, list[int] | None, str | None]:
    try:
        ids = bundle.encode(text)
    except EdgeseqError as e:
        return number, text, None, str(e)
    limit = bundle.manifest.max_source_length
    if len(ids) > limit:
        return number, text, None, f"{len(ids)} tokens; this bundle takes at most {limit} (max_source_length)"
    return number, text, ids, None


@dataclass
class _Window:
    """A window being decoded: its lines (up to a line that stops the run), each batch's future."""

    todo: list  # (number, text, ids or None, error or None)
    stop: tuple[int, str] | None  # the line that stops the run after these, and its error
    batches: list[list]
    futures: list[Future]

    def results(self) -> Iterator[LineResult]:
        """The window's lines in input order, then the error of the line that stops the run, if any."""
        results: dict[int, Translation] = {}
        for batch, future in zip(self.batches, self.futures):
            for (number, *_), translation in zip(batch, future.result()):
                results[number] = translation
        for number, text, _, error in self.todo:
            yield LineResult(number, text, results.get(number), error)
        if self.stop is not None:
            raise InputError(f"line {self.stop[0]}: {self.stop[1]}")


def _start_window(
    gen: Generator,
    window: list,
    options: DecodingOptions,
    batching: Batching,
    cost: Callable[[int], int],
    pool: ThreadPoolExecutor | None,
    first: bool,
) -> _Window:
    """Queue one window's sources on `pool`'s threads (without a pool: decode them now), shortest first, in
    batches of at most max_tokens tokens (see above). Engine 'auto' takes generate.onnx only for an input of
    one batch (the first window, cut into one): a stream of batches of every size would load both engines and
    hold the memory of both (a small int8 Marian's file: 457 MB peak RSS against 230) for a few percent at most."""
    bad = next((i for i, item in enumerate(window) if item[3] is not None), None)
    stop = None
    if bad is not None and batching.on_error == "stop":
        stop, window = (window[bad][0], window[bad][3]), window[:bad]
    items = [item for item in window if item[3] is None]
    batches = cut_batches(sorted(items, key=lambda item: len(item[2])), batching.max_tokens, cost, gen.bundle)
    graph = first and len(batches) == 1 and gen.takes_graph(options, len(batches[0]))
    if pool is not None and not graph:
        batches = spread(batches, batching.workers)

    def decode(batch: list) -> list[Translation]:
        return gen.translate_ids([b[2] for b in batch], options, auto_graph=graph)

    if pool is None or graph:
        futures = [_now(decode, batch) for batch in batches]
    else:
        futures = [pool.submit(decode, batch) for batch in batches]
    return _Window(window, stop, batches, futures)


def _now(fn: Callable, *args) -> Future:
    """fn(*args) called now, as a done Future (its result, or what it raised)."""
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except BaseException as e:  # noqa: BLE001 (given back by result(), as a pool's future does)
        future.set_exception(e)
    return future


class _Reader:
    """Reads windows from an iterator in a daemon thread, one when asked: `next()` is a Future of the next
    window (None at the end). A daemon thread, not a pool's: one waiting for stdin must not keep the process
    from exiting."""

    def __init__(self, source: Iterator) -> None:
        self._source, self._asked = source, queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="edgeseq-read", daemon=True)
        self._thread.start()

    def next(self) -> Future:
        future: Future = Future()
        self._asked.put(future)
        return future

    def close(self, asked: Future | None) -> None:
        """No more windows: the thread ends, now if `asked` (the last future from next()) can be cancelled or is
        done, else once its read returns (reading stdin may wait for its writer: that is not waited for)."""
        idle = asked is None or asked.cancel() or asked.done()
        self._asked.put(None)
        if idle:
            self._thread.join()

    def _run(self) -> None:
        while (future := self._asked.get()) is not None:
            if not future.set_running_or_notify_cancel():
                continue
            try:
                window = next(self._source, None)
            except BaseException as e:  # noqa: BLE001 (raised where the window is taken)
                future.set_exception(e)
            else:
                future.set_result(window)


def cut_batches(items: list, max_tokens: int, cost: Callable[[int], int], bundle: Bundle) -> list[list]:
    """Sources sorted by length, cut in order into batches of at most `max_tokens` tokens; for a model
    without masked padding, each batch of sources of one length (padding would change its results)."""
    batches: list[list] = []
    equal_lengths = not bundle.manifest.masked_padding
    for item in items:
        batch = batches[-1] if batches else None
        if batch is not None:
            longest = len(item[2])  # sorted: the newcomer is the longest
            fits = (len(batch) + 1) * cost(longest) <= max_tokens
            if fits and not (equal_lengths and longest != len(batch[0][2])):
                batch.append(item)
                continue
        batches.append([item])
    return batches


def spread(batches: list[list], workers: int) -> list[list]:
    """`batches`, the largest halved (in order, so each stays sorted) until there are `workers` of them or
    none has two sources: a short window keeps every worker busy."""
    batches = list(batches)
    while len(batches) < workers:
        i = max(range(len(batches)), key=lambda j: len(batches[j]), default=None)
        if i is None or len(batches[i]) < 2:
            break
        half = len(batches[i]) // 2
        batches[i : i + 1] = [batches[i][:half], batches[i][half:]]
    return batches
