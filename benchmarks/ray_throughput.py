"""Benchmark: translating one file on Ray with 1 and 2 actors against single-process `edgeseq generate`.

    .venv/bin/python benchmarks/ray_throughput.py [BUNDLE] [--lines 20000] [--beam 1] [--threads 1]

Without BUNDLE, a small random-weight Transformer is exported first (d 256, 3+3 layers, 1,000 words; lines
of 3-20 words, up to 24 new tokens). Rows: the single process (`edgeseq generate`, whole command, and its
decoding alone from its progress meter); `edgeseq generate --ray --actors N` (whole command: it starts a
local Ray cluster); `edgeseq.ray.translate_files` on a running cluster (actors' start-up included). Peak
memory: the single process's VmHWM, and each actor's own at the end. Every output must equal the single
process's, or the benchmark fails.
"""

from __future__ import annotations

import argparse
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def small_transformer(out: Path) -> Path:
    import torch

    from edgeseq.export import ExportOptions, export_model
    from edgeseq.models import TransformerConfig, TransformerSeq2Seq
    from edgeseq.vocab import SPECIALS, Vocab

    torch.manual_seed(0)
    model = TransformerSeq2Seq(TransformerConfig(1000, 1000, max_positions=64)).eval()
    with torch.no_grad():
        model.out_bias[2] -= 4.0  # a random model should not stop at once: outputs near max_new_tokens
    vocab = Vocab((*SPECIALS, *(f"w{i}" for i in range(1000 - len(SPECIALS)))), level="word")
    export_model(model, out, source_vocab=vocab, target_vocab=vocab, options=ExportOptions(max_new_tokens=24))
    return out


def run(args: list[str]) -> tuple[float, float, str]:
    """(seconds, the child's peak RSS in MB, stderr) of `edgeseq ARGS`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "edgeseq", *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"edgeseq {' '.join(args)} failed:\n{r.stderr}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far, in KB
    return seconds, (peak / 1024 if peak > before else float("nan")), r.stderr


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundle", nargs="?")
    p.add_argument("--lines", type=int, default=20_000)
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="threads of the single process, and per actor")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="edgeseq-ray-bench-"))
    bundle = Path(args.bundle) if args.bundle else small_transformer(folder / "bundle")
    source = folder / "in.txt"
    source.write_text("\n".join(sample_lines(bundle, args.lines)) + "\n")
    common = ["generate", str(bundle), "--input", str(source), "--beam", str(args.beam), "--threads", str(args.threads)]
    seconds, peak, stderr = run([*common, "--output", str(folder / "single.txt"), "--progress"])
    expected = (folder / "single.txt").read_bytes()
    decoding = float(re.findall(r"lines in ([0-9.]+) s", stderr)[-1])
    rows = [("edgeseq generate", seconds, f"{args.lines / decoding:.0f}", f"{peak:.0f}")]
    for actors in (1, 2):
        out = folder / f"cli{actors}.txt"
        seconds, _, _ = run([*common, "--output", str(out), "--ray", "--actors", str(actors)])
        check(out, expected, f"--ray --actors {actors}")
        rows.append((f"  --ray --actors {actors}", seconds, "", ""))
    import ray

    from edgeseq.ray import Cluster, translate_files
    from edgeseq.runtime import Generator

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    options = Generator(bundle).options.replace(beam_size=args.beam)
    for actors in (1, 2):
        pools, out = [], folder / f"api{actors}.txt"
        t = time.perf_counter()
        cluster = Cluster(actors=actors, cpus_per_actor=args.threads, on_chunk=pools.append)
        translate_files(bundle, [source], [out], options, cluster=cluster)
        seconds = time.perf_counter() - t
        check(out, expected, f"translate_files, {actors} actors")
        memory = ", ".join(f"{x / 2**20:.0f}" for x in pools[-1].peak_rss)
        rows.append((f"translate_files, {actors} actor{'s' * (actors > 1)}", seconds, "", memory))
    ray.shutdown()
    print(f"{args.lines} lines, beam {args.beam}, {args.threads} thread(s) per process or actor, bundle {bundle}")
    print(f"{'':28} {'seconds':>8} {'lines/s':>8} {'decoding':>9}  peak RSS (MB, per actor)")
    for name, seconds, decoding, memory in rows:
        print(f"{name:28} {seconds:8.1f} {args.lines / seconds:8.0f} {decoding:>9}  {memory}")
    shutil.rmtree(folder)  # kept when a run fails, to look at


def sample_lines(bundle: Path, count: int) -> list[str]:
    """Lines of 3-20 of the bundle's source words (or characters, for a character vocabulary)."""
    from edgeseq.runtime import load_bundle

    vocab = load_bundle(bundle).source_vocab
    if vocab is None:
        sys.exit("give a bundle with an edgeseq vocabulary (or none: a small model is built)")
    specials = set(vocab.specials.values())
    pieces = [t for i, t in enumerate(vocab.tokens) if i not in specials and t.strip()]
    rng = np.random.default_rng(0)
    sep = " " if vocab.level == "word" else ""
    return [sep.join(rng.choice(pieces, size=rng.integers(3, 21))) for _ in range(count)]


def check(out: Path, expected: bytes, what: str) -> None:
    if out.read_bytes() != expected:
        sys.exit(f"{what}: the output differs from the single process's")


if __name__ == "__main__":
    main()
