"""One loaded Generator shared by many threads gives exactly what serial decoding gives."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from edgeseq.runtime import DecodingOptions, Generator


def test_threads_share_one_generator(bundle_factory):
    gen = Generator(bundle_factory()[0], threads=1)
    rng = np.random.default_rng(0)
    sources = [[*map(int, rng.integers(4, 40, size=n)), 2] for n in rng.integers(1, 15, size=24)]
    options = [DecodingOptions(max_new_tokens=10), DecodingOptions(max_new_tokens=10, beam_size=3)]
    jobs = [(s, o) for s in sources for o in options] * 4  # 192 generations

    def run(job):
        source, opts = job
        return [(h.tokens, round(h.score, 4)) for h in gen.generate_ids([source], opts)[0]]

    serial = [run(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(run, jobs))
    assert threaded == serial
