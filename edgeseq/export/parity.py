"""Parity of a bundle against a reference (its PyTorch model, or another bundle), at three levels.

1. graph: every graph run by both on the same inputs (those of a real decode): max abs/rel error per output;
2. step: teacher-forced on the reference's own greedy output, every step's logits compared: max abs error,
   the fraction of steps whose argmax agrees, and the first step where it does not;
3. sequence: greedy tokens (exact match, first divergence), one source at a time and as a padded batch,
   and, given reference translations, BLEU and chrF of both (sacrebleu).
(4. text, against the user's own pipeline, is in export/text_check.py.)

Tolerances are relative to each output's scale (its largest finite reference magnitude): logits in the
hundreds pass at the same relative error as logits near one. Infinities agree when both sides have the same
one (masked logits); token-id outputs are compared for equality. Counts are reported as counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgeseq.bundle import DecoderSpec, Manifest, SourceFraming
from edgeseq.runtime.batching import pad_batch, random_sources
from edgeseq.runtime.loop import decode, initial_state
from edgeseq.runtime.options import DecodingOptions
from edgeseq.runtime.step import GREEDY, HeadRequest


@dataclass(frozen=True)
class Thresholds:
    """What counts as a pass. A None tolerance reports the figure without judging it."""

    atol: float | None = 1e-4  # graph outputs pass when max |got - ref| <= atol + rtol * scale(ref)
    rtol: float = 1e-4  # scale(ref): the output's largest finite reference magnitude
    step_atol: float | None = 1e-3  # teacher-forced logits, every step: max error <= step_atol + rtol * scale
    min_step_agreement: float = 1.0  # fraction of teacher-forced steps whose argmax agrees
    min_exact_match: float = 1.0  # fraction of greedy sequences identical to the reference's
    max_bleu_drop: float | None = None  # with reference translations: BLEU may fall at most this much
    min_text_match: float = 1.0  # fraction of texts identical to the user's own pipeline's (text level)


PRECISION_THRESHOLDS = {
    "fp32": Thresholds(),
    "fp16": Thresholds(
        atol=None, step_atol=None, min_step_agreement=0.98, min_exact_match=0.9, max_bleu_drop=1.0, min_text_match=0.9
    ),
    "int8": Thresholds(
        atol=None, step_atol=None, min_step_agreement=0.95, min_exact_match=0.85, max_bleu_drop=2.0, min_text_match=0.85
    ),
}


def precision_of(manifest: Manifest) -> str:
    """'int8', 'fp16' or 'fp32': the lowest precision any graph of the bundle runs in."""
    recipe = (manifest.provenance.get("quantize") or {}).get("recipe", {})
    modes = set(recipe.values()) if isinstance(recipe, dict) else set()
    if any("int8" in str(m) for m in modes):
        return "int8"
    return "fp16" if "fp16" in modes else "fp32"


def count(part: int, whole: int) -> str:
    """'1999/2000 (99.9%)': never rounded up to 100% unless every one agrees."""
    if not whole:
        return "0/0"
    pct = 100.0 if part == whole else min(math.floor(1000 * part / whole) / 10, 99.9)
    return f"{part}/{whole} ({pct:.1f}%)"


@dataclass
class OutputCheck:
    graph: str
    output: str
    max_abs: float  # float outputs: largest difference (0 where both sides hold the same infinity)
    max_rel: float  # max_abs relative to the output's scale (largest finite reference magnitude)
    ok: bool
    differ: int | None = None  # token-id outputs: how many ids differ (compared for equality) ...
    total: int | None = None  # ... out of how many

    def describe(self) -> str:
        if self.differ is not None:
            return f"graph {self.graph}: {self.output} {self.differ}/{self.total} ids differ"
        return f"graph {self.graph}: {self.output} max abs error {self.max_abs:.3g} (relative {self.max_rel:.2g})"


@dataclass
class StepCheck:
    sentences: int
    steps: int
    max_abs: float
    agreement: float  # fraction of steps whose argmax agrees with the reference
    first_divergence: list[int | None]  # per sentence: first step whose argmax differs
    ok: bool
    graphs_off: list[str]  # graphs whose outputs exceed the graph tolerance: where to look
    agreed: int = 0  # steps whose argmax agrees (of `steps`)
    max_rel: float = 0.0  # max_abs relative to the logits' scale


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
    text: Any = None  # a TextCheck (export/text_check.py): the bundle's text against the user's pipeline
    generate: Any = None  # a GenerateCheck (export/generate_check.py): generate.onnx against the loop
    notes: list[str] = field(default_factory=list)  # what the user should know (e.g. unmasked padding)
    declarations: list[str] = field(default_factory=list)  # ids/framing the bundle declares unlike the reference

    @property
    def ok(self) -> bool:
        extra = (self.steps, self.quality, self.text, self.generate)
        checks = [*self.outputs, *self.sequences, *(c for c in extra if c is not None)]
        return all(c.ok for c in checks) and not self.declarations

    def failures(self) -> list[str]:
        bad = [c.describe() for c in self.outputs if not c.ok]
        s = self.steps
        if s is not None and not s.ok:
            where = f" (graphs off: {', '.join(s.graphs_off)})" if s.graphs_off else ""
            bad.append(
                f"step: logits max abs error {s.max_abs:.3g} (relative {s.max_rel:.2g}), "
                f"argmax agreement {count(s.agreed, s.steps)}{where}"
            )
        bad += [f"{q.name}: exact match {count(q.exact, q.sources)}" for q in self.sequences if not q.ok]
        if self.quality is not None and not self.quality.ok:
            bad.append(f"BLEU {self.quality.bleu:.2f} vs reference {self.quality.bleu_reference:.2f}")
        for check in (self.text, self.generate):
            if check is not None and not check.ok:
                bad.append(check.describe())
        bad += [f"declared differently: {d}" for d in self.declarations]
        return bad

    def to_json(self) -> dict:
        return {
            "ok": self.ok,
            "thresholds": asdict(self.thresholds),
            "graphs": [asdict(c) for c in self.outputs],
            "steps": asdict(self.steps) if self.steps else None,
            "sequences": [{**asdict(s), "exact_match": s.exact_match} for s in self.sequences],
            "quality": asdict(self.quality) if self.quality else None,
            "text": self.text.to_json() if self.text else None,
            "generate": self.generate.to_json() if self.generate else None,
            "notes": list(self.notes),
            "declarations": list(self.declarations),
        }

    def table(self) -> str:
        lines = [f"{'graph':<14}{'output':<16}{'max abs':>11}{'max rel':>11}  result"]
        for c in self.outputs:
            verdict = "ok" if c.ok else "FAIL"
            if c.differ is not None:
                lines.append(f"{c.graph:<14}{c.output:<16}{f'{c.differ}/{c.total} ids differ':>22}  {verdict}")
            else:
                lines.append(f"{c.graph:<14}{c.output:<16}{c.max_abs:>11.2e}{c.max_rel:>11.2e}  {verdict}")
        if self.steps:
            s = self.steps
            div = [d for d in s.first_divergence if d is not None]
            lines += [
                "",
                f"steps (teacher-forced): {s.sentences} sentences, logits max abs {s.max_abs:.2e} (relative "
                f"{s.max_rel:.1e}), argmax agreement {count(s.agreed, s.steps)}"
                + (f", first divergence at step {min(div)}" if div else "")
                + f"  {'ok' if s.ok else 'FAIL'}",
            ]
        lines += ["", f"{'sequences':<36}{'exact match':>20}  first divergence"]
        for q in self.sequences:
            div = [d for d in q.first_divergence if d is not None]
            where = f"at token {min(div)}" if div else "-"
            lines.append(f"{q.name:<36}{count(q.exact, q.sources):>20}  {where}  {'ok' if q.ok else 'FAIL'}")
        if self.quality:
            q = self.quality
            lines += [
                "",
                f"quality vs references: BLEU {q.bleu:.2f} (reference model {q.bleu_reference:.2f}), "
                f"chrF {q.chrf:.2f} ({q.chrf_reference:.2f})  {'ok' if q.ok else 'FAIL'}",
            ]
        if self.text:
            lines += ["", self.text.line()]
        if self.generate:
            lines += ["", f"{self.generate.describe()}  {'ok' if self.generate.ok else 'FAIL'}"]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"declared differently: {d}  FAIL" for d in self.declarations]
        lines += ["", "PASS" if self.ok else "FAIL: " + "; ".join(self.failures())]
        return "\n".join(lines)


def difference(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(max abs error, scale of ref): equal infinities (a masked -inf on both sides) count as no error; an
    infinity on one side only, or a NaN on either side (a broken model, even if both are), as an infinite one.
    The scale is the largest finite |ref|."""
    a, b = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    same = a == b
    diff = np.where(same, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)
    finite = np.abs(b[np.isfinite(b)])
    return (float(diff.max()) if diff.size else 0.0), (float(finite.max()) if finite.size else 0.0)


def compare_output(graph: str, name: str, got: np.ndarray, ref: np.ndarray, t: Thresholds) -> OutputCheck:
    got = np.asarray(got)  # a device tensor (runtime/binding.py) comes to the host here
    ref = np.asarray(ref)
    if got.shape != ref.shape:
        return OutputCheck(graph, name, float("inf"), float("inf"), False)
    if np.issubdtype(ref.dtype, np.integer) or ref.dtype == np.bool_:
        differ = int((got != ref).sum())
        return OutputCheck(graph, name, 0.0, 0.0, t.atol is None or differ == 0, differ, int(ref.size))
    max_abs, scale = difference(got, ref)
    ok = t.atol is None or max_abs <= t.atol + t.rtol * scale
    return OutputCheck(graph, name, max_abs, max_abs / max(scale, 1e-12), ok)


def check_graphs(
    ref, got, spec: DecoderSpec, sources: Sequence[Sequence[int]], t: Thresholds, steps: int = 4
) -> list[OutputCheck]:
    """Each graph on both backends with identical inputs; the step graph at `steps` teacher-forced steps."""
    src_ids, src_mask = pad_batch(sources, ref.source_pad)
    feeds = {"src_ids": src_ids, "src_mask": src_mask}
    worst: dict[tuple[str, str], OutputCheck] = {}

    def record(graph: str, got_out: dict, ref_out: dict) -> None:
        for name, r in ref_out.items():
            c = compare_output(graph, name, got_out[name], r, t)
            key = (graph, name)
            w = worst.get(key)
            if w is None or (w.ok and not c.ok) or c.max_abs > w.max_abs or (c.differ or 0) > (w.differ or 0):
                worst[key] = c

    enc_ref = ref.run("encoder", feeds)
    record("encoder", got.run("encoder", feeds), enc_ref)
    if "attention" in ref.graphs:
        att_ref = ref.run("attention", {**feeds, **enc_ref})
        record("attention", got.run("attention", {**feeds, **enc_ref}), att_ref)
    # two bundles with a head: their greedy choices (ids and log-probabilities) are compared too
    request = None
    if GREEDY in ref.offers and GREEDY in got.offers:
        request = HeadRequest(GREEDY, np.zeros(got.step_graph.output(spec.logits_output).shape[-1], np.float32))
    # the batch, then its first source alone: a step of one row may run another graph (export/one_row.py)
    for graph, batch in (("decoder_step", sources), ("step (1 row)", sources[:1])):
        src_ids, src_mask = pad_batch(batch, ref.source_pad)
        state = initial_state(ref, src_ids, src_mask, spec)
        tokens = np.full(len(batch), ref.special_tokens["decoder_start"], dtype=np.int64)
        for step in range(steps):
            step_feeds = {**state.context, **state.states, spec.tokens_input: tokens}
            if spec.step_input:
                step_feeds[spec.step_input] = np.array(step, dtype=np.int64)
            out_ref = ref.step(step_feeds, request)
            record(graph, got.step(step_feeds, request), out_ref)
            state.states = {s.input: out_ref[s.output] for s in spec.states}
            tokens = out_ref[spec.logits_output].argmax(-1).astype(np.int64)
    return list(worst.values())


def teacher_forced_logits(
    backend, spec: DecoderSpec, sources: Sequence[Sequence[int]], decoder_inputs: np.ndarray
) -> np.ndarray:
    """Logits of every step when the decoder is fed `decoder_inputs` (B, T), starting with decoder_start.

    Works on either backend; (B, T, V). Rows shorter than T should be padded; compare only real positions.
    """
    src_ids, src_mask = pad_batch(sources, backend.source_pad)
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
    a, b, lengths = teacher_forced_pair(ref, got, spec, sources, targets)
    max_abs, scale, agree, total, first = 0.0, 0.0, 0, 0, []
    for i, n in enumerate(lengths):
        err, size = difference(b[i, :n], a[i, :n])
        max_abs, scale = max(max_abs, err), max(scale, size)
        same = np.asarray(a[i, :n]).argmax(-1) == np.asarray(b[i, :n]).argmax(-1)
        agree, total = agree + int(same.sum()), total + n
        first.append(None if same.all() else int(np.argmin(same)))
    agreement = agree / total if total else 1.0
    close = t.step_atol is None or max_abs <= t.step_atol + t.rtol * scale
    ok = close and agreement >= t.min_step_agreement
    rel = max_abs / max(scale, 1e-12)
    return StepCheck(len(targets), total, max_abs, agreement, first, ok, graphs_off, agree, rel)


def teacher_forced_pair(ref, got, spec: DecoderSpec, sources, targets) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Both backends' (B, T, V) logits when fed `targets` (each row's tokens, </s> appended)."""
    start = ref.special_tokens["decoder_start"]
    lengths = [len(x) for x in targets]
    inputs = np.full((len(targets), max(lengths)), start, dtype=np.int64)
    for i, x in enumerate(targets):
        inputs[i, : len(x)] = [start, *x[:-1]]
    return teacher_forced_logits(ref, spec, sources, inputs), teacher_forced_logits(got, spec, sources, inputs), lengths


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
    vocab_size: int,
    count: int = 8,
    max_len: int = 12,
    seed: int = 0,
    framing: SourceFraming | None = None,
    special: Sequence[int] = (),
) -> list[list[int]]:
    """Random sources of mixed lengths for models without data: regular ids (none of `special`, nor the
    framing's own ids), framed as the model was trained (prefix + ids + suffix)."""
    return random_sources(vocab_size, count, max_len=max_len, seed=seed, framing=framing, special=special)


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
