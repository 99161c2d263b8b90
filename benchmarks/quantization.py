"""Benchmark: fp32 against dynamic-int8, static-int8 and fp16 bundles of the demo models.

    .venv/bin/python benchmarks/quantization.py [--arch rnn|transformer|both] [--threads 2]

Trains the demo model (as `edgeseq demo`), exports it, quantizes it every way, and prints per bundle:
size, greedy tokens/s on the CPU (one sentence at a time), and exact match on the 1000 held-out dates.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from edgeseq.demo.dates import demo_split
from edgeseq.demo.run import DemoOptions, run_demo
from edgeseq.export.quantize import Recipe, quantize_bundle
from edgeseq.runtime import Generator


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir())


def measure(bundle: Path, pairs, threads: int, timed: int = 200) -> tuple[float, float]:
    gen = Generator(bundle, threads=threads)
    texts = [s for s, _ in pairs]
    exact = sum(r.text == ref for r, (_, ref) in zip(gen.generate(texts), pairs)) / len(pairs)
    gen.generate(texts[:10])
    t = time.perf_counter()
    tokens = sum(len(gen.generate([s])[0].tokens) + 1 for s in texts[:timed])
    return exact, tokens / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["rnn", "transformer", "both"], default="both")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    train, test = demo_split()
    calibration = [s for s, _ in train[:200]]
    print(f"{'model':<12}{'bundle':<14}{'size KB':>9}{'x fp32':>8}{'tokens/s':>10}{'exact match':>13}")
    for arch in ["rnn", "transformer"] if args.arch == "both" else [args.arch]:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "demo"
            run_demo(out, DemoOptions(arch=arch, examples=0), echo=lambda msg: None)
            fp32 = out / "bundle"
            bundles = {"fp32": fp32}
            for mode in ("dynamic-int8", "static-int8", "fp16"):
                bundles[mode] = quantize_bundle(fp32, out / mode, Recipe.uniform(mode), calibration)
            base = size(fp32)
            for mode, path in bundles.items():
                exact, tps = measure(path, test, args.threads)
                print(
                    f"{arch:<12}{mode:<14}{size(path) / 1024:>9.0f}{size(path) / base:>8.2f}{tps:>10.0f}{exact:>12.1%}"
                )


if __name__ == "__main__":
    main()
