"""Search strategies behind one small interface; the loop never asks which one it runs.

A strategy owns the rows of the batch the decoder runs on. After each step it may return `keep`: the
current rows to carry into the next step, in their new order (beam search reorders; finished rows drop
out). The loop applies `keep` to every state tensor along its declared batch axis.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgeseq.runtime.options import DecodingOptions
from edgeseq.runtime.processors import beyond_bias, log_softmax, needs_processing, process, sample, top_indices, warp
from edgeseq.runtime.step import BEAM, GREEDY, HeadRequest, StepOutput


@dataclass(frozen=True)
class Hypothesis:
    """A decoded sequence (without </s>) and its score.

    Greedy and sampling: the sum of the chosen tokens' log-probabilities (after penalties, before sampling
    warpers). Beam search: that sum divided by length ** length_penalty (length counts </s>), as HF.
    `alignment`: (tokens, source length) attention weights, when asked for and available.
    """

    tokens: tuple[int, ...]
    score: float
    alignment: np.ndarray | None = None


class Strategy(Protocol):
    def start_rows(self) -> np.ndarray:
        """The source index of each initial row (a source may get several rows: beams, samples)."""

    def last_tokens(self) -> np.ndarray:
        """(rows,) int64: the token each row feeds to the next step."""

    def request(self, step: int, offers: frozenset[str]) -> HeadRequest | None:
        """What to ask of the step graph's head at `step` (among what it offers), or None for the logits."""

    def update(self, step: int, result: StepOutput) -> np.ndarray | None:
        """Take one step's result; return the rows to keep (None: all, unchanged)."""

    def emitted(self) -> list[tuple[int, int]]:
        """(source, token) pairs decided for good at the last update, </s> included, for streaming (empty for
        beams)."""

    def done(self) -> bool:
        """True when nothing is left to decode."""

    def finalize(self) -> list[list[Hypothesis]]:
        """Per source, its hypotheses best first."""


@dataclass
class _Row:
    source: int
    tokens: list[int]
    score: float = 0.0
    alignment: list[np.ndarray] | None = None


class _Search:
    """What every strategy keeps: the options, banned tokens, source lengths, </s> and the vocabulary size."""

    def __init__(
        self,
        source_lengths: Sequence[int],
        special_tokens: dict[str, int],
        options: DecodingOptions,
        banned: tuple[int, ...],
        vocab: int,
    ) -> None:
        self.options, self.banned, self.lengths, self.vocab = options, banned, list(source_lengths), vocab
        self.eos = special_tokens["eos"]
        self._biases: dict[bool, np.ndarray] = {}

    def bias(self, step: int) -> np.ndarray:
        """(V,) float32: -inf at banned ids and, before the minimum length, at </s>; 0 elsewhere."""
        no_eos = step < self.options.min_new_tokens
        if no_eos not in self._biases:
            bias = np.zeros(self.vocab, dtype=np.float32)
            bias[list(self.banned) + ([self.eos] if no_eos else [])] = -np.inf
            self._biases[no_eos] = bias
        return self._biases[no_eos]


class TokenByToken(_Search):
    """Greedy decoding, or sampling (`options.sample`) with `nbest` independent samples per source.

    A finished row stops costing work: it leaves the batch.
    """

    def __init__(
        self,
        source_lengths: Sequence[int],
        special_tokens: dict[str, int],
        options: DecodingOptions,
        banned: tuple[int, ...] = (),
        vocab: int = 0,
    ) -> None:
        super().__init__(source_lengths, special_tokens, options, banned, vocab)
        copies = options.nbest if options.sample else 1
        self.rows = [
            _Row(s, [], 0.0, [] if options.return_alignments else None)
            for s in range(len(source_lengths))
            for _ in range(copies)
        ]
        self.active = list(range(len(self.rows)))  # row index of each batch row
        # each row's decoder input so far (HF's input_ids), in a buffer filled one column per step; it grows
        # with the tokens generated (doubling), not with max_new_tokens
        self.buffer = np.full(
            (len(self.rows), min(options.max_new_tokens, 63) + 1), special_tokens["decoder_start"], np.int64
        )
        self.length = 1
        seed = options.seed
        self.generators = (  # one per row: a row's samples do not depend on its batch-mates (sampling only)
            [np.random.default_rng(None if seed is None else [seed, i]) for i in range(len(self.rows))]
            if options.sample
            else []
        )
        self._emitted: list[tuple[int, int]] = []

    def start_rows(self) -> np.ndarray:
        return np.array([r.source for r in self.rows], dtype=np.int64)

    @property
    def history(self) -> np.ndarray:
        return self.buffer[:, : self.length]

    def last_tokens(self) -> np.ndarray:
        return self.buffer[:, self.length - 1]

    def request(self, step: int, offers: frozenset[str]) -> HeadRequest | None:
        """Greedy with bans and a minimum length only: the head's argmax of logits + bias is our choice."""
        if GREEDY not in offers or not self.vocab or self.options.sample or beyond_bias(self.options, step):
            return None
        return HeadRequest(GREEDY, self.bias(step))

    def update(self, step: int, result: StepOutput) -> np.ndarray | None:
        if result.chosen is not None:  # the step graph chose: only token ids and log-probabilities are read
            # as Python lists (two numpy calls): after a step each numpy call costs microseconds, a tiny
            # model's whole step ~40 us
            scores, ids = (x if isinstance(x, np.ndarray) else np.asarray(x) for x in result.chosen)
            gained, chosen = [g for (g,) in scores.tolist()], [t for (t,) in ids.tolist()]
            if not all(map(math.isfinite, gained)):  # rows with no allowed token: </s>, -inf
                dead = [not math.isfinite(g) for g in gained]
                chosen = [self.eos if d else t for d, t in zip(dead, chosen)]
                gained = [-math.inf if d else g for d, g in zip(dead, gained)]
            return self._advance(chosen, gained, result.alignment)
        # This runs once per token: few numpy calls, no (rows, V) temporaries beyond the one exp.
        o, logits = self.options, result.logits
        if needs_processing(o, self.banned, step):
            scores = process(logits.astype(np.float32, copy=True), self.history, step, o, self.eos, self.banned)
        else:
            scores = logits if logits.dtype == np.float32 else logits.astype(np.float32)
        # log-probability of the chosen tokens: score - logsumexp(scores), without a (rows, V) log_softmax
        top = scores.max(axis=-1, keepdims=True)
        dead = ~np.isfinite(top[:, 0])  # every token -inf (bans, no-repeat n-grams exhausted it): the row ends
        if dead.any():
            scores = np.where(dead[:, None], 0.0, scores).astype(np.float32)
            top = np.where(dead[:, None], 0.0, top)
        lse = np.log(np.exp(scores - top).sum(axis=-1))  # logsumexp(scores) - top
        if o.sample:
            chosen = sample(warp(scores, o), [self.generators[i] for i in self.active])
            gained = scores[np.arange(len(chosen)), chosen] - top[:, 0] - lse
        else:
            chosen = scores.argmax(axis=-1)
            gained = -lse  # the greedy choice is the maximum: its log-probability is -lse
        return self._advance(*self._end_dead(chosen, gained, dead), result.alignment)

    def _end_dead(self, chosen: np.ndarray, gained: np.ndarray, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows with no allowed token end with </s> and a score of -inf (probability 0 under the constraints)."""
        if dead.any():
            chosen = np.where(dead, self.eos, chosen)
            gained = np.where(dead, -np.inf, gained)
        return chosen, gained

    def _advance(
        self, chosen: np.ndarray | list[int], gained: np.ndarray | list[float], alignment: np.ndarray | None
    ) -> np.ndarray | None:
        """Append each row's token and score; rows that chose </s> leave the batch."""
        self._emitted = []
        tokens = chosen if isinstance(chosen, list) else chosen.tolist()
        gained = gained if isinstance(gained, list) else gained.tolist()
        for b, (i, token, gain) in enumerate(zip(self.active, tokens, gained)):
            row = self.rows[i]
            row.score += gain
            if row.alignment is not None and alignment is not None:
                row.alignment.append(alignment[b, : self.lengths[row.source]].copy())
            if token != self.eos:
                row.tokens.append(token)
            self._emitted.append((row.source, token))
        if self.length == self.buffer.shape[1]:
            self.buffer = np.concatenate([self.buffer, np.zeros_like(self.buffer)], axis=1)
        self.buffer[:, self.length] = chosen
        self.length += 1
        if self.eos not in tokens:
            return None
        keep = np.array([b for b, token in enumerate(tokens) if token != self.eos], dtype=np.int64)
        self.active, self.buffer = [self.active[b] for b in keep], self.buffer[keep]
        return keep

    def emitted(self) -> list[tuple[int, int]]:
        return self._emitted

    def done(self) -> bool:
        return len(self.active) == 0

    def finalize(self) -> list[list[Hypothesis]]:
        out: list[list[Hypothesis]] = [[] for _ in self.lengths]
        for row in self.rows:
            align = np.array(row.alignment) if row.alignment else None
            out[row.source].append(Hypothesis(tuple(row.tokens), row.score, align))
        return [sorted(h, key=lambda x: -x.score) for h in out]


class BeamSearch(_Search):
    """Beam search with the semantics of Hugging Face transformers' `generate()` (v5):

    each step keeps the 2 * beam best continuations of a source; those among the top `beam` that end (</s>,
    or the length limit) become finished hypotheses scored sum(log p) / length ** length_penalty, the best
    `beam` of them kept; the `beam` best that do not end run on. A source is done when no running beam can
    beat its worst finished one (all `beam` slots full), with early stopping as soon as the slots are full,
    or at the length limit; then it leaves the batch.
    """

    def __init__(
        self,
        source_lengths: Sequence[int],
        special_tokens: dict[str, int],
        options: DecodingOptions,
        banned: tuple[int, ...] = (),
        vocab: int = 0,
    ) -> None:
        super().__init__(source_lengths, special_tokens, options, banned, vocab)
        self.k = options.beam_size
        n = len(source_lengths)
        # HF starts k identical rows per source, all but the first at -1e9, so only the first expands: the first
        # step runs on that row alone where that gives the same 2k candidates (runtime/loop.py gathers each
        # source's row k times after it; the first step then costs a k-th of a step)
        first = 1 if _first_alone(options, banned, vocab) else self.k
        self.sources = np.arange(n)  # sources still searching, in batch order; each has k rows (`first` at first)
        self.history = np.full((n * first, 1), special_tokens["decoder_start"], dtype=np.int64)
        self.beam_scores = np.zeros((n, first), dtype=np.float32)  # float32, as HF's scores
        self.beam_scores[:, 1:] = -1e9  # all beams start identical: only the first may expand
        self.align: np.ndarray | None = None  # (rows, t, src_len) when alignments are asked for
        self.finished: list[list[tuple[float, tuple[int, ...], np.ndarray | None]]] = [[] for _ in range(n)]
        self.full = np.zeros(n, dtype=bool)  # sources with k finished hypotheses

    def start_rows(self) -> np.ndarray:
        return np.repeat(self.sources, self.beam_scores.shape[1])

    def last_tokens(self) -> np.ndarray:
        return self.history[:, -1]

    def request(self, step: int, offers: frozenset[str]) -> HeadRequest | None:
        """The head's top 2k per source, unless a processor beyond a bias acts at this step."""
        if BEAM not in offers or not self.vocab or beyond_bias(self.options, step):
            return None
        if self.beam_scores.shape[1] < self.k:  # the first step on one row per source: the head would take 2
            return None
        return HeadRequest(BEAM, self.bias(step), self.beam_scores)

    def update(self, step: int, result: StepOutput) -> np.ndarray | None:
        k, o, vocab = self.k, self.options, self.vocab
        length, last = step + 1, step + 1 >= o.max_new_tokens  # tokens once this step's token is appended
        per = self.beam_scores.shape[1]  # rows per source: k, or 1 at the first step
        if result.chosen is not None:  # (n, 2k) best continuations and their flat ids (beam * V + token)
            best, top = (np.asarray(a) for a in result.chosen)
        else:
            logits = result.logits
            vocab = logits.shape[-1]
            logprobs = process(log_softmax(logits), self.history, step, o, self.eos, self.banned)
            # float32 like HF's scores: a float64 sum over (rows, V) would double the memory traffic
            flat = (logprobs + self.beam_scores.reshape(-1, 1)).reshape(len(self.sources), per * vocab)
            top = top_indices(flat, 2 * k)  # (n, 2k) best continuations, best first
            best = np.take_along_axis(flat, top, axis=-1)
        alignment = result.alignment
        if o.return_alignments and alignment is not None:
            step_align = alignment[:, None, :]
            self.align = step_align if self.align is None else np.concatenate([self.align, step_align], axis=1)
        n = len(self.sources)
        rows = np.arange(n)[:, None] * per + top // vocab  # (n, 2k) the row each candidate extends
        tokens = (top % vocab).astype(np.int64, copy=False)
        ends = np.ones_like(tokens, dtype=bool) if last else tokens == self.eos
        for i, rank in zip(*np.nonzero(ends[:, :k])):  # the top k that end close a hypothesis, best first
            token = int(tokens[i, rank])
            extra = None if token == self.eos else token
            self._add(int(self.sources[i]), float(best[i, rank]) / length**o.length_penalty, int(rows[i, rank]), extra)
        # the k best that do not end run on (a source has at most k ending candidates: one </s> per beam)
        order = np.argsort(ends, axis=1, kind="stable")[:, :k]
        at = np.arange(n)[:, None]
        go = ~ends[at, order].any(axis=1) & (not last)
        for i in np.flatnonzero(go & self.full[self.sources]):  # (a source with fewer than k finished runs on)
            go[i] = not self._is_done(int(self.sources[i]), float(best[i, order[i, 0]]), length)
        at, order = at[go], order[go]
        keep = rows[at, order].reshape(-1)
        self.history = np.concatenate([self.history[keep], tokens[at, order].reshape(-1, 1)], axis=1)
        self.beam_scores = best[at, order].astype(np.float32, copy=False)
        self.sources = self.sources[go]
        if self.align is not None:
            self.align = self.align[keep]
        return keep

    def _add(self, source: int, score: float, row: int, extra: int | None) -> None:
        """Close a hypothesis (`extra`: a last token that is not </s>); a source keeps its `beam` best."""
        hyps = self.finished[source]
        if len(hyps) == self.k and score <= min(h[0] for h in hyps):
            return
        tokens = tuple(int(t) for t in self.history[row, 1:]) + ((extra,) if extra is not None else ())
        align = None if self.align is None else self.align[row, :, : self.lengths[source]].copy()
        hyps.append((score, tokens, align))
        if len(hyps) > self.k:
            hyps.remove(min(hyps, key=lambda h: h[0]))
        self.full[source] = len(hyps) == self.k

    def _is_done(self, source: int, best_running: float, length: int) -> bool:
        hyps = self.finished[source]
        if len(hyps) < self.k:
            return False
        if self.options.early_stopping:
            return True
        return best_running / length**self.options.length_penalty <= min(h[0] for h in hyps)

    def emitted(self) -> list[tuple[int, int]]:
        return []

    def done(self) -> bool:
        return len(self.sources) == 0

    def finalize(self) -> list[list[Hypothesis]]:
        out = []
        for hyps in self.finished:
            best = sorted(hyps, key=lambda h: -h[0])[: self.options.nbest]
            out.append([Hypothesis(tokens, score, align) for score, tokens, align in best])
        return out


def _first_alone(options: DecodingOptions, banned: tuple[int, ...], vocab: int) -> bool:
    """Whether beam search's first step on one row per source gives HF's 2k candidates: that row leaves at
    least 2k tokens allowed (nothing at that step but bans and </s> before the minimum length, and a vocabulary
    larger than 2k of them plus those), so none of the -1e9 rows' candidates is among the 2k best."""
    return bool(vocab) and not beyond_bias(options, 0) and vocab >= 2 * options.beam_size + len(set(banned)) + 1


def make_strategy(
    options: DecodingOptions,
    source_lengths: Sequence[int],
    special_tokens: dict[str, int],
    banned: tuple[int, ...] = (),
    vocab: int = 0,
) -> Strategy:
    """The strategy that `options` asks for: beam search for beam_size > 1, else greedy or sampling."""
    cls = BeamSearch if options.beam_size > 1 else TokenByToken
    return cls(source_lengths, special_tokens, options, banned, vocab)
