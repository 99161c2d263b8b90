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
window cut into fewer batches than workers has its largest batches halved until each worker has one.

A line the model cannot take (empty, too long, a character the vocabulary lacks and has no <unk> for) stops
the run with an error naming its line number, or, with `on_error="skip"`, comes back with its error and no
translation while the rest go on. Input that cannot be read as lines (not UTF-8, a line of more than
MAX_LINE_BYTES: /dev/zero has no newline) stops the run naming its line, once the lines before it are out.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
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
    """Translate `lines` in input order (see the module docstring)."""
    cost = _cost(gen.bundle, options, graph=gen.engine == "graph")
    pool = ThreadPoolExecutor(batching.workers, "edgeseq-batch") if batching.workers > 1 else None
    try:
        for count, window in enumerate(windows(gen.bundle, lines, options, batching)):
            bad = next((i for i, item in enumerate(window) if item[3] is not None), None)
            stop = bad is not None and batching.on_error == "stop"
            todo = window[:bad] if stop else window
            ok = [item for item in todo if item[3] is None]
            results = _decode_window(gen, ok, options, batching, cost, pool, first=count == 0)
            for number, text, _, error in todo:
                yield LineResult(number, text, results.get(number), error)
            if stop:
                number, _, _, error = window[bad]
                raise InputError(f"line {number}: {error}")
    finally:
        if pool is not None:  # batches not started are dropped; running ones end (a batch is short)
            pool.shutdown(wait=True, cancel_futures=True)


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


def _decode_window(
    gen: Generator,
    items: list,
    options: DecodingOptions,
    batching: Batching,
    cost: Callable[[int], int],
    pool: ThreadPoolExecutor | None,
    first: bool,
) -> dict[int, Translation]:
    """Decode one window's sources, shortest first, in batches of at most max_tokens tokens (see above), by
    `pool`'s threads if given. Engine 'auto' takes generate.onnx only for an input of one batch (the first
    window, cut into one): a stream of batches of every size would load both engines and hold the memory of
    both (a small int8 Marian's file: 457 MB peak RSS against 230) for a few percent at most."""
    batches = cut_batches(sorted(items, key=lambda item: len(item[2])), batching.max_tokens, cost, gen.bundle)
    graph = first and len(batches) == 1 and gen.takes_graph(options, len(batches[0]))
    if graph:
        pool = None  # one call
    elif pool is not None:
        batches = spread(batches, batching.workers)

    def decode(batch: list) -> list[Translation]:
        return gen.translate_ids([b[2] for b in batch], options, auto_graph=graph)

    decoded = pool.map(decode, batches) if pool is not None else map(decode, batches)
    results: dict[int, Translation] = {}
    for batch, translations in zip(batches, decoded):
        for (number, *_), translation in zip(batch, translations):
            results[number] = translation
    return results


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
