"""Benchmark: one batch of N mixed-length sources against N single-source decodes, same bundle, same run.

    .venv/bin/python benchmarks/batching.py BUNDLE [--count 32] [--beam 1] [--threads 2]

Sources are real texts when --input is given, else random token ids of 4 to 40 tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from edgeseq.runtime import DecodingOptions, Generator
from edgeseq.runtime.sources import read_sources


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--input", help="source sentences, one per line")
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    gen = Generator(args.bundle, threads=args.threads)
    m = gen.bundle.manifest
    if args.input:
        sources = [gen.encode(t) for t in read_sources(args.input)[: args.count]]
    else:
        rng = np.random.default_rng(0)
        sources = [
            [*map(int, rng.integers(4, m.source_vocab_size, size=n - 1)), 2] for n in rng.integers(4, 41, args.count)
        ]
    options = DecodingOptions(max_new_tokens=args.max_new_tokens, beam_size=args.beam)
    batch = timed(lambda: gen.generate_ids(sources, options), args.repeats)
    singles = timed(lambda: [gen.generate_ids([s], options) for s in sources], args.repeats)
    tokens = sum(len(h[0].tokens) + 1 for h in gen.generate_ids(sources, options))
    print(
        f"{m.family} bundle, {len(sources)} sources of {min(map(len, sources))}-{max(map(len, sources))} tokens, "
        f"beam {args.beam}, {args.threads} threads, {tokens} tokens generated"
    )
    print(f"one batch of {len(sources)}: {batch * 1000:8.1f} ms  ({tokens / batch:8.0f} tokens/s)")
    print(f"{len(sources)} single decodes: {singles * 1000:8.1f} ms  ({tokens / singles:8.0f} tokens/s)")
    print(f"batching speed-up: {singles / batch:.2f}x")


if __name__ == "__main__":
    main()
