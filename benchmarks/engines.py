"""generate.onnx against the Python loop on one bundle, by batch size and beam: what engine "auto" is based on.

    .venv/bin/python benchmarks/engines.py BUNDLE [--sources 1,4,16,64,256] [--beams 1,4] [--threads 2]

For each number of sources and beam size: the median time of one `generate_ids` call with `engine="loop"`
and with `engine="graph"`, the two calls interleaved in one process (same machine state), and the ratio.
Sources are the bundle's demo-style texts when it has a character vocabulary, else random ids; every call
decodes at most 12 tokens. The tokens of both engines are checked equal before timing.
generator.AUTO_GRAPH_SOURCES and AUTO_GRAPH_WEIGHTS record the figures the policy was set from.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from edgeseq.runtime import DecodingOptions, Generator

TEXTS = ["24 Nov 2026", "3 March 1999", "12/01/2020", "Monday, July 4, 1776", "the 5th of May, 2001", "1/2/03"]


def sources(gen: Generator, count: int) -> list[list[int]]:
    try:
        return [gen.encode(TEXTS[i % len(TEXTS)]) for i in range(count)]
    except Exception:  # noqa: BLE001 - a vocabulary these texts do not fit: random ids, framed
        m = gen.bundle.manifest
        rng = np.random.default_rng(0)
        return [m.source_framing.frame([int(x) for x in rng.integers(4, 30, size=10)]) for _ in range(count)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle")
    p.add_argument("--sources", default="1,4,16,64,256")
    p.add_argument("--beams", default="1,4")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0, help="time per engine and setting (about)")
    a = p.parse_args()
    loop = Generator(a.bundle, threads=a.threads, engine="loop")
    graph = Generator(a.bundle, threads=a.threads, engine="graph")
    print(f"{a.bundle}, {a.threads} threads, at most 12 tokens")
    print(f"{'sources':>7} {'beam':>4} {'loop us':>10} {'graph us':>10} {'graph vs loop':>14}")
    for n in (int(x) for x in a.sources.split(",")):
        for beam in (int(x) for x in a.beams.split(",")):
            ids = sources(loop, n)
            options = DecodingOptions(max_new_tokens=12, beam_size=beam, nbest=beam)
            want = [[h.tokens for h in hyps] for hyps in loop.generate_ids(ids, options)]
            got = [[h.tokens for h in hyps] for hyps in graph.generate_ids(ids, options)]
            if want != got:
                raise SystemExit(f"{n} sources, beam {beam}: the engines' tokens differ")
            times: dict[str, list[float]] = {"loop": [], "graph": []}
            end = time.perf_counter() + a.seconds * 2
            while time.perf_counter() < end or len(times["loop"]) < 5:
                for name, gen in (("loop", loop), ("graph", graph)):
                    t = time.perf_counter()
                    gen.generate_ids(ids, options)
                    times[name].append(time.perf_counter() - t)
            lo, gr = (statistics.median(times[k][1:]) * 1e6 for k in ("loop", "graph"))
            print(f"{n:>7} {beam:>4} {lo:>10.0f} {gr:>10.0f} {lo / gr:>13.2f}x")


if __name__ == "__main__":
    main()
