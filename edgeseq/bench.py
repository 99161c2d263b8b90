"""Decoding benchmarks: the runtime against PyTorch eager on the same model, in one run, side by side.

Both sides run the same generation loop and strategy; only the engine under the graphs differs (ONNX
Runtime vs the PyTorch modules). Random sources of a fixed length; exactly `new_tokens` tokens are
generated (</s> is forbidden until then), so random-weight models decode as far as trained ones.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from edgeseq.runtime.batching import random_sources
from edgeseq.runtime.loop import decode
from edgeseq.runtime.options import DecodingOptions


@dataclass
class BenchResult:
    """One engine's figures."""

    engine: str
    batch: int
    new_tokens: int
    seconds: float  # median wall time of one batch decode
    tokens_per_s: float  # generated tokens per second (batch * new_tokens / seconds)
    step_ms: list[float] = field(default_factory=list)  # decoder step wall time at each step, median of repeats
    context_ms: float = 0.0  # encoder + attention graph, once per batch

    def to_json(self) -> dict:
        return asdict(self)


class _Timed:
    """Wraps a backend and records how long each call takes."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.graphs, self.step_graph, self.special_tokens = backend.graphs, backend.step_graph, backend.special_tokens
        self.source_pad, self.masked_padding = backend.source_pad, backend.masked_padding
        self.offers = backend.offers
        self.steps: list[float] = []
        self.context_s = 0.0

    def context(self, feeds):
        t = time.perf_counter()
        out = self.backend.context(feeds)
        self.context_s = time.perf_counter() - t
        return out

    def step(self, feeds, request=None, **kw):
        t = time.perf_counter()
        out = self.backend.step(feeds, request, **kw)
        self.steps.append(time.perf_counter() - t)
        return out

    def chosen(self, out):
        return self.backend.chosen(out)


def bundle_sources(m, count: int, length: int, seed: int = 0) -> list[list[int]]:
    """Random sources of exactly `length` tokens, with the bundle's own framing and special ids."""
    return random_sources(
        m.source_vocab_size,
        count,
        length,
        seed=seed,
        framing=m.source_framing,
        special=tuple(m.special_tokens.values()),
    )


def bench_decode(
    engine: str, backend, spec, sources: Sequence[Sequence[int]], new_tokens: int, repeats: int = 3
) -> BenchResult:
    """Greedy-decode `sources` exactly `new_tokens` tokens, `repeats` times after one warm-up."""
    options = DecodingOptions(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    decode(backend, spec, sources, options)  # warm-up: allocations, lazy initialisation
    runs, steps, contexts = [], [], []
    for _ in range(repeats):
        timed = _Timed(backend)
        t = time.perf_counter()
        decode(timed, spec, sources, options)
        runs.append(time.perf_counter() - t)
        steps.append(timed.steps)
        contexts.append(timed.context_s)
    seconds = statistics.median(runs)
    step_ms = [1000 * statistics.median(s[i] for s in steps) for i in range(new_tokens)]
    return BenchResult(
        engine,
        len(sources),
        new_tokens,
        seconds,
        len(sources) * new_tokens / seconds,
        step_ms,
        1000 * statistics.median(contexts),
    )


def step_profile_table(
    results: Sequence[BenchResult], marks: Sequence[int] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
) -> str:
    """Decoder step time (ms) at chosen steps, per engine, with the mean over each doubling range."""
    n = min(len(r.step_ms) for r in results)
    marks = [m for m in marks if m <= n]
    lines = [f"{'step':>6}" + "".join(f"{r.engine:>16}" for r in results)]
    for m in marks:
        lo = max(1, m // 2 + 1) if m > 1 else 1
        lines.append(f"{m:>6}" + "".join(f"{statistics.mean(r.step_ms[lo - 1 : m]):>13.3f} ms" for r in results))
    return "\n".join(lines)


def summary_table(results: Sequence[BenchResult]) -> str:
    lines = [f"{'engine':<16}{'batch':>6}{'tokens':>8}{'seconds':>10}{'tokens/s':>11}{'context ms':>12}{'step ms':>9}"]
    for r in results:
        lines.append(
            f"{r.engine:<16}{r.batch:>6}{r.new_tokens:>8}{r.seconds:>10.3f}{r.tokens_per_s:>11.1f}{r.context_ms:>12.2f}"
            f"{statistics.median(r.step_ms):>9.3f}"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Placement:
    """Where ONNX Runtime ran the decoder step's nodes, from its profiler (one decode of one source)."""

    provider: str  # the provider asked for first
    nodes: dict[str, int]  # provider -> nodes it ran
    memcpy: int  # Memcpy nodes: tensors crossing between host and device inside the step

    def line(self) -> str:
        where = ", ".join(f"{n} on {p.replace('ExecutionProvider', '')}" for p, n in sorted(self.nodes.items()))
        return f"decoder step nodes: {where}; Memcpy nodes inside the step: {self.memcpy}"


def step_placement(bundle, provider: str = "cpu", new_tokens: int = 2) -> Placement:
    """Profile the decoder step on `provider` and count its nodes per provider and its Memcpy nodes."""
    import json
    import os
    import tempfile

    from edgeseq.runtime.generator import OrtBackend
    from edgeseq.runtime.session import GraphSession, session_options

    backend = OrtBackend(bundle, provider, one_row=False)  # (decoder_step is what is placed, one row or more)
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(None, step=True)
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "step")
        session = GraphSession(bundle, "decoder_step", backend.providers, options)
        backend.sessions["decoder_step"] = session
        if backend.bound is not None:
            backend.bound["decoder_step"].graph = session
        m = bundle.manifest
        decode(
            backend,
            m.decoder,
            bundle_sources(m, 1, 8),
            DecodingOptions(max_new_tokens=new_tokens),
        )
        events = json.loads(open(session.session.end_profiling()).read())
    nodes: dict[str, set[str]] = {}
    memcpy = set()
    for e in events:
        args = e.get("args", {})
        if e.get("cat") != "Node" or "provider" not in args:
            continue
        nodes.setdefault(args["provider"], set()).add(e["name"].removesuffix("_kernel_time"))
        if args.get("op_name", "").startswith("Memcpy"):
            memcpy.add(e["name"])
    return Placement(backend.providers[0], {p: len(n) for p, n in nodes.items()}, len(memcpy))
