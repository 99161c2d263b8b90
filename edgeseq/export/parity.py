"""Parity of a bundle against its PyTorch model: graph outputs, then decoded sequences.

Graph level: every graph run by ONNX Runtime and by PyTorch on the same inputs (the inputs of a real
decode), max abs and relative error per output. Sequence level: greedy tokens from the runtime against the
PyTorch reference decoder, one source at a time and as one padded batch, plus the runtime's own batch
invariance (a padded batch gives each source what decoding it alone gives).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from edgeseq.export.adapter import TorchBackend
from edgeseq.runtime.batching import pad_batch
from edgeseq.runtime.generator import OrtBackend
from edgeseq.runtime.loop import decode, initial_state
from edgeseq.runtime.options import DecodingOptions


@dataclass(frozen=True)
class Thresholds:
    """What counts as a pass. Output errors pass when |got - ref| <= atol + rtol * |ref| everywhere."""

    atol: float = 1e-4
    rtol: float = 1e-4
    min_exact_match: float = 1.0  # fraction of sequences identical to the reference


@dataclass
class OutputCheck:
    graph: str
    output: str
    max_abs: float
    max_rel: float  # max_abs relative to the output's largest reference magnitude
    ok: bool


@dataclass
class SequenceCheck:
    name: str
    sources: int
    exact: int
    first_divergence: list[int | None]  # per source: first differing position, None if identical
    ok: bool

    @property
    def exact_match(self) -> float:
        return self.exact / self.sources if self.sources else 1.0


@dataclass
class ParityReport:
    thresholds: Thresholds
    outputs: list[OutputCheck] = field(default_factory=list)
    sequences: list[SequenceCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.outputs) and all(s.ok for s in self.sequences)

    def failures(self) -> list[str]:
        bad = [f"{c.graph}.{c.output} max abs error {c.max_abs:.3g}" for c in self.outputs if not c.ok]
        return bad + [f"{s.name}: exact match {s.exact_match:.1%}" for s in self.sequences if not s.ok]

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "thresholds": asdict(self.thresholds),
            "graphs": [asdict(c) for c in self.outputs],
            "sequences": [{**asdict(s), "exact_match": s.exact_match} for s in self.sequences],
        }

    def table(self) -> str:
        lines = [f"{'graph':<14}{'output':<16}{'max abs':>11}{'max rel':>11}  result"]
        for c in self.outputs:
            lines.append(f"{c.graph:<14}{c.output:<16}{c.max_abs:>11.2e}{c.max_rel:>11.2e}  {'ok' if c.ok else 'FAIL'}")
        lines.append("")
        lines.append(f"{'sequences':<32}{'exact match':>13}  first divergence")
        for s in self.sequences:
            div = [d for d in s.first_divergence if d is not None]
            where = f"at token {min(div)}" if div else "-"
            lines.append(
                f"{s.name:<32}{f'{s.exact}/{s.sources}':>6} {s.exact_match:>6.1%}  {where}  {'ok' if s.ok else 'FAIL'}"
            )
        lines.append("")
        lines.append("PASS" if self.ok else "FAIL: " + "; ".join(self.failures()))
        return "\n".join(lines)


def compare_output(graph: str, name: str, got: np.ndarray, ref: np.ndarray, t: Thresholds) -> OutputCheck:
    if got.shape != ref.shape:
        return OutputCheck(graph, name, float("inf"), float("inf"), False)
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    ok = bool(np.all(diff <= t.atol + t.rtol * np.abs(ref))) and bool(np.isfinite(got).all() == np.isfinite(ref).all())
    return OutputCheck(graph, name, max_abs, max_abs / max(scale, 1e-12), ok)


def check_graphs(
    ref: TorchBackend, got: OrtBackend, sources: Sequence[Sequence[int]], t: Thresholds, steps: int = 4
) -> list[OutputCheck]:
    """Each graph on both backends with identical inputs; the step graph at `steps` teacher-forced steps."""
    spec = ref.adapter.decoder_spec()
    src_ids, src_mask = pad_batch(sources, ref.special_tokens["pad"])
    feeds = {"src_ids": src_ids, "src_mask": src_mask}
    worst: dict[tuple[str, str], OutputCheck] = {}

    def record(graph: str, got_out: dict, ref_out: dict) -> None:
        for name, r in ref_out.items():
            c = compare_output(graph, name, got_out[name], r, t)
            key = (graph, name)
            if key not in worst or (worst[key].ok and not c.ok) or c.max_abs > worst[key].max_abs:
                worst[key] = c

    enc_ref = ref.run("encoder", feeds)
    record("encoder", got.sessions["encoder"].run(feeds), enc_ref)
    if "attention" in ref.graphs:
        att_ref = ref.run("attention", {**feeds, **enc_ref})
        record("attention", got.sessions["attention"].run({**feeds, **enc_ref}), att_ref)
    state = initial_state(ref, src_ids, src_mask, spec)
    tokens = np.full(len(sources), ref.special_tokens["decoder_start"], dtype=np.int64)
    for step in range(steps):
        step_feeds = {**state.context, **state.states, spec.tokens_input: tokens}
        if spec.step_input:
            step_feeds[spec.step_input] = np.array(step, dtype=np.int64)
        out_ref = ref.step(step_feeds)
        record("decoder_step", got.step(step_feeds), out_ref)
        state.states = {s.input: out_ref[s.output] for s in spec.states}
        tokens = out_ref[spec.logits_output].argmax(-1).astype(np.int64)
    return list(worst.values())


def teacher_forced_logits(backend, spec, sources: Sequence[Sequence[int]], decoder_inputs: np.ndarray) -> np.ndarray:
    """Logits of every step when the decoder is fed `decoder_inputs` (B, T), starting with decoder_start.

    Works on either backend; (B, T, V). Rows shorter than T should be padded; compare only real positions.
    """
    src_ids, src_mask = pad_batch(sources, backend.special_tokens["pad"])
    state = initial_state(backend, src_ids, src_mask, spec)
    logits = []
    for step in range(decoder_inputs.shape[1]):
        feeds = {**state.context, **state.states, spec.tokens_input: decoder_inputs[:, step].astype(np.int64)}
        if spec.step_input:
            feeds[spec.step_input] = np.array(step, dtype=np.int64)
        out = backend.step(feeds)
        state.states = {s.input: out[s.output] for s in spec.states}
        logits.append(out[spec.logits_output])
    return np.stack(logits, axis=1)


def check_sequences(
    ref: TorchBackend, got: OrtBackend, sources: Sequence[Sequence[int]], t: Thresholds, options: DecodingOptions
) -> list[SequenceCheck]:
    """Greedy tokens: runtime vs PyTorch (alone and batched), and runtime batched vs runtime alone."""
    spec = ref.adapter.decoder_spec()

    def run(backend, batched: bool) -> list[tuple[int, ...]]:
        if batched:
            return [h[0].tokens for h in decode(backend, spec, sources, options)]
        return [decode(backend, spec, [s], options)[0][0].tokens for s in sources]

    ref_one, got_one, got_batch = run(ref, False), run(got, False), run(got, True)
    ref_batch = run(ref, True)
    return [
        _sequence_check("runtime vs torch, batch 1", got_one, ref_one, t),
        _sequence_check("runtime vs torch, padded batch", got_batch, ref_batch, t),
        _sequence_check("runtime batch vs alone", got_batch, got_one, t),
    ]


def _sequence_check(name: str, got: list, ref: list, t: Thresholds) -> SequenceCheck:
    divergence = [_first_divergence(a, b) for a, b in zip(got, ref)]
    exact = sum(d is None for d in divergence)
    return SequenceCheck(name, len(ref), exact, divergence, exact >= t.min_exact_match * len(ref))


def _first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def sample_sources(
    vocab_size: int, count: int = 8, max_len: int = 12, seed: int = 0, eos: int = 2, first_regular: int = 4
) -> list[list[int]]:
    """Random source id lists of mixed lengths (regular tokens, then </s>) for models without data."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len, size=count)
    lengths[0] = max_len - 1  # one source at full length, so the batch really is padded
    return [[*map(int, rng.integers(first_regular, vocab_size, size=n)), eos] for n in lengths]


def check_parity(
    ref: TorchBackend,
    got: OrtBackend,
    sources: Sequence[Sequence[int]],
    thresholds: Thresholds = Thresholds(),
    options: DecodingOptions | None = None,
) -> ParityReport:
    """The full report: graph outputs and greedy sequences of `sources` (source id lists ending in </s>)."""
    options = options or DecodingOptions()
    report = ParityReport(thresholds)
    report.outputs = check_graphs(ref, got, sources, thresholds)
    report.sequences = check_sequences(ref, got, sources, thresholds, options)
    return report
