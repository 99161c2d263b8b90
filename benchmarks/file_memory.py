"""Peak memory of `edgeseq generate --input` against the number of lines: it should not grow with the input.

    .venv/bin/python benchmarks/file_memory.py BUNDLE [--lines 1000 10000 100000]

Each size runs in its own process; peak RSS is the child's VmHWM (wait4's ru_maxrss). Lines are 1-40
characters drawn from the bundle's source vocabulary.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeseq.runtime import load_bundle


def run(bundle: Path, lines: list[str], folder: Path, extra: list[str]) -> tuple[float, float]:
    source = folder / f"in{len(lines)}.txt"
    source.write_text("\n".join(lines) + "\n")
    args = [
        sys.executable,
        "-m",
        "edgeseq",
        "generate",
        str(bundle),
        "--input",
        str(source),
        "--output",
        str(folder / "out.txt"),
        *extra,
    ]
    t = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(proc.stderr.read().decode())
    return usage.ru_maxrss / 1024, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--lines", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--max-new-tokens", default="16")
    parser.add_argument("--threads", default="2")
    args = parser.parse_args()
    vocab = load_bundle(args.bundle).source_vocab
    if vocab is None:
        raise SystemExit("this benchmark draws lines from an edgeseq vocabulary (char or word level)")
    regular = [t for i, t in enumerate(vocab.tokens) if i not in set(vocab.specials.values())]
    sep = "" if vocab.level == "char" else " "
    rng = np.random.default_rng(0)
    pool = [sep.join(rng.choice(regular, size=rng.integers(1, 40))) for _ in range(max(args.lines))]
    extra = ["--max-new-tokens", args.max_new_tokens, "--threads", args.threads]
    print(f"{'lines':>8} {'peak RSS MB':>12} {'seconds':>9} {'lines/s':>9}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.lines:
            rss, seconds = run(args.bundle, pool[:n], Path(tmp), extra)
            base = base or rss
            print(f"{n:>8} {rss:>12.1f} {seconds:>9.2f} {n / seconds:>9.0f}   {rss / base:.2f}x the first")


if __name__ == "__main__":
    main()
