"""Soak: one Generator shared by N threads for many generations; results against serial, RSS growth.

    .venv/bin/python benchmarks/soak.py [BUNDLE] [--threads 8] [--generations 2000]

Without BUNDLE, trains nothing: it exports a small random-weight LSTM + Bahdanau model to a temporary
directory. Prints generations, threads, errors, mismatches against serial decoding, and RSS after warm-up and
after the soak (it should grow by less than 5%).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edgeseq.runtime import DecodingOptions, Generator


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def random_bundle(folder: Path) -> Path:
    import torch

    from edgeseq.export import ExportOptions, export_model
    from edgeseq.models import RNNConfig, RNNSeq2Seq
    from edgeseq.vocab import Vocab

    sv, tv = Vocab.build(["abcdefghijklmnopqrstuvwxyz0123456789 "]), Vocab.build(["0123456789-"])
    torch.manual_seed(0)
    model = RNNSeq2Seq(RNNConfig(len(sv), len(tv), bidirectional=True, layers=2, hidden=64)).eval()
    return export_model(
        model, folder / "bundle", source_vocab=sv, target_vocab=tv, options=ExportOptions(max_new_tokens=16)
    )[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="?")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--generations", type=int, default=2000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = Path(args.bundle) if args.bundle else random_bundle(Path(tmp))
        gen = Generator(bundle, threads=1)
        vocab = gen.bundle.manifest.source_vocab_size
        rng = np.random.default_rng(0)
        sources = [[*map(int, rng.integers(4, vocab, size=n)), 2] for n in rng.integers(1, 30, size=100)]
        options = [DecodingOptions(max_new_tokens=16), DecodingOptions(max_new_tokens=16, beam_size=4)]
        jobs = [(sources[i % len(sources)], options[i % 2]) for i in range(args.generations)]

        def run(job):
            source, opts = job
            return [h.tokens for h in gen.generate_ids([source], opts)[0]]

        expected = {}
        for i in range(2 * len(sources)):  # warm-up, and the serial answers
            expected[i % (2 * len(sources))] = run(jobs[i])
        warm = rss_mb()
        errors, mismatches = 0, 0
        t = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.threads) as pool:
            futures = [pool.submit(run, job) for job in jobs]
            for i, f in enumerate(futures):
                try:
                    mismatches += f.result() != expected[i % (2 * len(sources))]
                except Exception:  # counted and reported: the soak is about finding these
                    errors += 1
        seconds = time.perf_counter() - t
        after = rss_mb()
        print(
            f"generations {len(jobs)}, threads {args.threads}, errors {errors}, mismatches vs serial {mismatches}, "
            f"{seconds:.1f} s ({len(jobs) / seconds:.0f}/s)"
        )
        print(f"RSS after warm-up {warm:.1f} MB, after soak {after:.1f} MB, growth {100 * (after / warm - 1):+.2f}%")


if __name__ == "__main__":
    main()
