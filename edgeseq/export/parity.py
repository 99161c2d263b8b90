"""Parity of a bundle against a reference (its PyTorch model, or another bundle), at three levels.

1. graph: every graph run by both on the same inputs (those of a real decode): max abs/rel error per output;
2. step: teacher-forced on the reference's own greedy output, every step's logits compared: max abs error,
   the fraction of steps whose argmax agrees, and the first step where it does not;
3. sequence: greedy tokens (exact match, first divergence), one source at a time and as a padded batch,
   and, given reference translations, BLEU and chrF of both (sacrebleu).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from edgeseq.bundle import DecoderSpec
from edgeseq.runtime.batching import pad_batch
from edgeseq.runtime.loop import decode, initial_state
from edgeseq.runtime.options import DecodingOptions


@dataclass(frozen=True)
class Thresholds:
    """What counts as a pass. A None tolerance reports the figure without judging it."""

    atol: float | None = 1e-4  # graph outputs pass when |got - ref| <= atol + rtol * |ref| everywhere
    rtol: float = 1e-4
    step_atol: float | None = 1e-3  # teacher-forced logits, every step
    min_step_agreement: float = 1.0  # fraction of teacher-forced steps whose argmax agrees
    min_exact_match: float = 1.0  # fraction of greedy sequences identical to the reference's
    max_bleu_drop: float | None = None  # with reference translations: BLEU may fall at most this much


PRECISION_THRESHOLDS = {
    "fp32": Thresholds(),
    "fp16": Thresholds(atol=None, step_atol=None, min_step_agreement=0.98, min_exact_match=0.9, max_bleu_drop=1.0),
    "int8": Thresholds(atol=None, step_atol=None, min_step_agreement=0.95, min_exact_match=0.85, max_bleu_drop=2.0),
}


@dataclass
class OutputCheck:
    graph: str
    output: str
    max_abs: float
    max_rel: float  # max_abs relative to the output's largest reference magnitude
    ok: bool


@dataclass
class StepCheck:
    sentences: int
    steps: int
    max_abs: float
    agreement: float  # fraction of steps whose argmax agrees with the reference
    first_divergence: list[int | None]  # per sentence: first step whose argmax differs
    ok: bool
    graphs_off: list[str]  # graphs whose outputs exceed the graph tolerance: where to look


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
class QualityCheck:
    bleu_reference: float
    bleu: float
    chrf_reference: float
    chrf: float
    ok: bool


@dataclass
class ParityReport:
    thresholds: Thresholds
    outputs: list[OutputCheck] = field(default_factory=list)
    steps: StepCheck | None = None
    sequences: list[SequenceCheck] = field(default_factory=list)
    quality: QualityCheck | None = None

    @property
    def ok(self) -> bool:
        checks = [*self.outputs, *self.sequences, *(c for c in (self.steps, self.quality) if c is not None)]
        return all(c.ok for c in checks)

    def failures(self) -> list[str]:
        bad = [f"graph {c.graph}: {c.output} max abs error {c.max_abs:.3g}" for c in self.outputs if not c.ok]
        s = self.steps
        if s is not None and not s.ok:
            where = f" (graphs off: {', '.join(s.graphs_off)})" if s.graphs_off else ""
            bad.append(f"step: logits max abs error {s.max_abs:.3g}, argmax agreement {s.agreement:.1%}{where}")
        bad += [f"{q.name}: exact match {q.exact_match:.1%}" for q in self.sequences if not q.ok]
        if self.quality is not None and not self.quality.ok:
            bad.append(f"BLEU {self.quality.bleu:.2f} vs reference {self.quality.bleu_reference:.2f}")
        return bad

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "thresholds": asdict(self.thresholds),
            "graphs": [asdict(c) for c in self.outputs],
            "steps": asdict(self.steps) if self.steps else None,
            "sequences": [{**asdict(s), "exact_match": s.exact_match} for s in self.sequences],
            "quality": asdict(self.quality) if self.quality else None,
        }

    def table(self) -> str:
        lines = [f"{'graph':<14}{'output':<16}{'max abs':>11}{'max rel':>11}  result"]
        for c in self.outputs:
            verdict = "ok" if c.ok else "FAIL"
            lines.append(f"{c.graph:<14}{c.output:<16}{c.max_abs:>11.2e}{c.max_rel:>11.2e}  {verdict}")
        if self.steps:
            s = self.steps
            div = [d for d in s.first_divergence if d is not None]
            lines += [
                "",
                f"steps (teacher-forced): {s.steps} steps of {s.sentences} sentences, logits max abs "
                f"{s.max_abs:.2e}, argmax agreement {s.agreement:.1%}"
                + (f", first divergence at step {min(div)}" if div else "")
                + f"  {'ok' if s.ok else 'FAIL'}",
            ]
        lines += ["", f"{'sequences':<36}{'exact match':>13}  first divergence"]
        for q in self.sequences:
            div = [d for d in q.first_divergence if d is not None]
            where = f"at token {min(div)}" if div else "-"
            count = f"{q.exact}/{q.sources}"
            lines.append(f"{q.name:<36}{count:>6} {q.exact_match:>6.1%}  {where}  {'ok' if q.ok else 'FAIL'}")
        if self.quality:
            q = self.quality
            lines += [
                "",
                f"quality vs references: BLEU {q.bleu:.2f} (reference model {q.bleu_reference:.2f}), "
                f"chrF {q.chrf:.2f} ({q.chrf_reference:.2f})  {'ok' if q.ok else 'FAIL'}",
            ]
        lines += ["", "PASS" if self.ok else "FAIL: " + "; ".join(self.failures())]
        return "\n".join(lines)


def compare_output(graph: str, name: str, got: np.ndarray, ref: np.ndarray, t: Thresholds) -> OutputCheck:
    got = np.asarray(got)  # a device tensor (runtime/binding.py) comes to the host here
    if got.shape != ref.shape:
        return OutputCheck(graph, name, float("inf"), float("inf"), False)
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    ok = t.atol is None or bool(np.all(diff <= t.atol + t.rtol * np.abs(ref)))
    return OutputCheck(graph, name, max_abs, max_abs / max(scale, 1e-12), ok)


def check_graphs(
    ref, got, spec: DecoderSpec, sources: Sequence[Sequence[int]], t: Thresholds, steps: int = 4
) -> list[OutputCheck]:
    """Each graph on both backends with identical inputs; the step graph at `steps` teacher-forced steps."""
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
    record("encoder", got.run("encoder", feeds), enc_ref)
    if "attention" in ref.graphs:
        att_ref = ref.run("attention", {**feeds, **enc_ref})
        record("attention", got.run("attention", {**feeds, **enc_ref}), att_ref)
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


def teacher_forced_logits(
    backend, spec: DecoderSpec, sources: Sequence[Sequence[int]], decoder_inputs: np.ndarray
) -> np.ndarray:
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


def check_steps(
    ref,
    got,
    spec: DecoderSpec,
    sources: Sequence[Sequence[int]],
    targets: Sequence[Sequence[int]],
    t: Thresholds,
    graphs_off: list[str],
) -> StepCheck:
    """Teacher-force both on `targets` (the reference's greedy tokens, </s> appended); compare every step."""
    start, pad = ref.special_tokens["decoder_start"], ref.special_tokens["pad"]
    lengths = [len(x) for x in targets]
    inputs = np.full((len(targets), max(lengths)), pad, dtype=np.int64)
    for i, x in enumerate(targets):
        inputs[i, : len(x)] = [start, *x[:-1]]
    a = teacher_forced_logits(ref, spec, sources, inputs)
    b = teacher_forced_logits(got, spec, sources, inputs)
    max_abs, agree, total, first = 0.0, 0, 0, []
    for i, n in enumerate(lengths):
        diff = np.abs(a[i, :n].astype(np.float64) - b[i, :n])
        max_abs = max(max_abs, float(diff.max()))
        same = a[i, :n].argmax(-1) == b[i, :n].argmax(-1)
        agree, total = agree + int(same.sum()), total + n
        first.append(None if same.all() else int(np.argmin(same)))
    agreement = agree / total if total else 1.0
    ok = (t.step_atol is None or max_abs <= t.step_atol) and agreement >= t.min_step_agreement
    return StepCheck(len(targets), total, max_abs, agreement, first, ok, graphs_off)


def check_sequences(
    ref,
    got,
    spec: DecoderSpec,
    sources: Sequence[Sequence[int]],
    t: Thresholds,
    options: DecodingOptions,
    ref_batch: list | None = None,
) -> list[SequenceCheck]:
    """Greedy tokens: runtime vs reference (alone and batched), and runtime batched vs runtime alone."""

    def run(backend, batched: bool) -> list[tuple[int, ...]]:
        if batched:
            return [h[0].tokens for h in decode(backend, spec, sources, options)]
        return [decode(backend, spec, [s], options)[0][0].tokens for s in sources]

    ref_one, got_one, got_batch = run(ref, False), run(got, False), run(got, True)
    ref_batch = ref_batch if ref_batch is not None else run(ref, True)
    return [
        _sequence_check("runtime vs reference, batch 1", got_one, ref_one, t),
        _sequence_check("runtime vs reference, padded batch", got_batch, ref_batch, t),
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


def check_quality(ref_texts: list[str], got_texts: list[str], references: list[str], t: Thresholds) -> QualityCheck:
    """BLEU and chrF (sacrebleu) of the reference's and the candidate's outputs against reference texts."""
    import sacrebleu

    bleu_ref = sacrebleu.corpus_bleu(ref_texts, [references]).score
    bleu = sacrebleu.corpus_bleu(got_texts, [references]).score
    chrf_ref = sacrebleu.corpus_chrf(ref_texts, [references]).score
    chrf = sacrebleu.corpus_chrf(got_texts, [references]).score
    ok = t.max_bleu_drop is None or bleu >= bleu_ref - t.max_bleu_drop
    return QualityCheck(bleu_ref, bleu, chrf_ref, chrf, ok)


def sample_sources(
    vocab_size: int, count: int = 8, max_len: int = 12, seed: int = 0, eos: int = 2, first_regular: int = 4
) -> list[list[int]]:
    """Random source id lists of mixed lengths (regular tokens, then </s>) for models without data."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, max_len, size=count)
    lengths[0] = max_len - 1  # one source at full length, so the batch really is padded
    return [[*map(int, rng.integers(first_regular, vocab_size, size=n)), eos] for n in lengths]


def check_parity(
    ref,
    got,
    spec: DecoderSpec,
    sources: Sequence[Sequence[int]],
    thresholds: Thresholds = Thresholds(),
    options: DecodingOptions | None = None,
    references: Sequence[str] | None = None,
    detokenize=None,
) -> ParityReport:
    """The full report for `sources` (source id lists ending in </s>); `references` (texts) add BLEU/chrF,
    with `detokenize(tokens) -> text` turning decoded tokens into text."""
    options = options or DecodingOptions()
    report = ParityReport(thresholds)
    report.outputs = check_graphs(ref, got, spec, sources, thresholds)
    ref_batch = [h[0].tokens for h in decode(ref, spec, sources, options)]
    eos = ref.special_tokens["eos"]
    off = sorted({c.graph for c in report.outputs if thresholds.atol is not None and not c.ok})
    targets = [[*x, eos] if len(x) < options.max_new_tokens else list(x) for x in ref_batch]  # ended by </s>?
    report.steps = check_steps(ref, got, spec, sources, targets, thresholds, off)
    report.sequences = check_sequences(ref, got, spec, sources, thresholds, options, ref_batch)
    if references:
        got_batch = [h[0].tokens for h in decode(got, spec, sources, options)]
        report.quality = check_quality(
            [detokenize(x) for x in ref_batch], [detokenize(x) for x in got_batch], list(references), thresholds
        )
    return report
