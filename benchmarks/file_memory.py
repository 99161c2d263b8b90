"""Peak memory of `edgeseq generate --input` against the number of lines: it should not grow with the input.

    .venv/bin/python benchmarks/file_memory.py BUNDLE [--lines 1000 10000 100000] [--text FILE]

Each size runs in its own process; peak RSS is the child's VmHWM (wait4's ru_maxrss). Lines are 1-40
tokens drawn from the bundle's source vocabulary (an edgeseq vocabulary's regular tokens, or for a
SentencePiece / Hugging Face tokenizer, its regular ids decoded), or taken in turn from --text FILE; a
drawn line that the bundle would refuse (empty once stripped, longer than it takes) is drawn again.
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

from edgeseq.errors import EdgeseqError
from edgeseq.runtime import load_bundle
from edgeseq.runtime.bundle import Bundle


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


def draw_lines(bundle: Bundle, count: int, longest: int = 40, seed: int = 0) -> list[str]:
    """`count` lines of 1..`longest` random regular tokens, each one the bundle takes."""
    rng = np.random.default_rng(seed)
    vocab = bundle.source_vocab
    if vocab is not None:  # whitespace tokens (a char vocabulary's " ") would make blank lines
        specials = set(vocab.specials.values())
        regular = [t for i, t in enumerate(vocab.tokens) if i not in specials and t.strip() and t.isprintable()]
        sep = "" if vocab.level == "char" else " "

        def draw(n: int) -> str:
            return sep.join(rng.choice(regular, size=n))
    else:
        m = bundle.manifest
        avoid = set(m.special_tokens.values()) | set(m.source_framing.prefix) | set(m.source_framing.suffix)
        ids = np.array([i for i in range(m.source_vocab_size) if i not in avoid])

        def draw(n: int) -> str:
            return bundle.tokenizer.decode([int(i) for i in rng.choice(ids, size=n)])

    lines: list[str] = []
    while len(lines) < count:
        text = " ".join(draw(int(rng.integers(1, longest + 1))).split())  # one line, no blank ends
        if text and _takes(bundle, text):
            lines.append(text)
    return lines


def _takes(bundle: Bundle, text: str) -> bool:
    try:
        return len(bundle.encode(text)) <= bundle.manifest.max_source_length
    except EdgeseqError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--lines", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--max-new-tokens", default="16")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--longest", type=int, default=40, help="Most tokens drawn per line.")
    parser.add_argument("--text", type=Path, help="Take lines from this file (in turn) instead of drawing them.")
    parser.add_argument("--batch-tokens", help="Passed to edgeseq generate.")
    args = parser.parse_args()
    bundle = load_bundle(args.bundle, verify_checksums=False)
    if args.text:
        given = [line for line in args.text.read_text(encoding="utf-8").splitlines() if line.strip()]
        pool = [given[i % len(given)] for i in range(max(args.lines))]
    else:
        pool = draw_lines(bundle, max(args.lines), args.longest)
    extra = ["--max-new-tokens", args.max_new_tokens, "--threads", args.threads]
    extra += ["--batch-tokens", args.batch_tokens] if args.batch_tokens else []
    print(f"{'lines':>8} {'peak RSS MB':>12} {'seconds':>9} {'lines/s':>9}")
    base = None
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.lines:
            rss, seconds = run(args.bundle, pool[:n], Path(tmp), extra)
            base = base or rss
            print(f"{n:>8} {rss:>12.1f} {seconds:>9.2f} {n / seconds:>9.0f}   {rss / base:.2f}x the first")


if __name__ == "__main__":
    main()
