"""The generation loop: family-agnostic, backend-agnostic, strategy-agnostic.

A backend runs the graphs (ONNX Runtime in deployment, PyTorch for the parity reference); a strategy
chooses tokens and says which rows go on. The loop feeds state outputs back to state inputs by the pairs
the manifest declares, and moves every per-row tensor along its batch axis when the strategy reorders or
drops rows.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgeseq.bundle import DecoderSpec, GraphSpec, StateSpec
from edgeseq.errors import BundleError
from edgeseq.runtime.batching import pad_batch
from edgeseq.runtime.inplace import StateBuffers
from edgeseq.runtime.options import DecodingOptions
from edgeseq.runtime.search import Hypothesis, Strategy, make_strategy
from edgeseq.runtime.step import INPLACE, REORDER, HeadRequest, StepOutput

SOURCE_IDS, SOURCE_MASK = "src_ids", "src_mask"


class Backend(Protocol):
    """What the loop needs from a model: the graphs' I/O, one-off context, and one step."""

    graphs: dict[str, GraphSpec]
    step_graph: GraphSpec
    special_tokens: dict[str, int]  # target ids: eos, decoder_start (pad, bos where the model has them)
    source_pad: int  # fills the padded positions of src_ids
    masked_padding: bool  # False: the model ignores src_mask, so only equal-length sources share a batch
    offers: frozenset[str]  # what the step graph's head can choose ("greedy", "beam"), "reorder" (runtime/step.py)

    def context(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{src_ids, src_mask} -> every encoder and attention output, by name."""

    def step(self, feeds: dict[str, np.ndarray], request: HeadRequest | None = None) -> dict[str, np.ndarray]:
        """The decoder step graph's inputs by name -> its outputs by name; `request` asks its head to choose."""

    def chosen(self, out: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The head's (scores, ids) in a step's outputs, after a request."""


@dataclass
class DecodeState:
    """The tensors a step needs: context (one row per source, fixed) and states (per row, replaced every step)."""

    context: dict[str, np.ndarray]
    states: dict[str, np.ndarray]


def initial_state(backend: Backend, src_ids: np.ndarray, src_mask: np.ndarray, spec: DecoderSpec) -> DecodeState:
    """Run encoder and attention once; start every state from its declared source."""
    feeds = {SOURCE_IDS: src_ids, SOURCE_MASK: src_mask}
    context = {**feeds, **backend.context(feeds)}
    states = {s.input: _init(s, context, src_ids.shape[0]) for s in spec.states}
    return DecodeState(context, states)


def _init(s: StateSpec, context: dict[str, np.ndarray], batch: int) -> np.ndarray:
    if s.init_from:
        return context[s.init_from]
    shape = [batch if d == "batch" else d for d in s.zeros_shape or ()]
    if not all(isinstance(d, int) for d in shape):
        raise BundleError(f"state {s.input}: zeros shape {list(s.zeros_shape or ())} may use only 'batch' and sizes")
    return np.zeros(shape, dtype=s.dtype)


def context_rows(sources: np.ndarray, per_source: bool) -> np.ndarray:
    """Which source's context each row of the step's context inputs holds, for rows of `sources`.

    With DecoderSpec.context_per_source, one row per run of consecutive rows of one source while every run has
    the same length (beam search, greedy): the step pairs row r with context row r // g. Otherwise one per row.
    """
    n = len(sources)
    if per_source and n:
        later = np.flatnonzero(sources[1:] != sources[:-1]) + 1  # where each run after the first starts
        g = n // (len(later) + 1)
        if g * (len(later) + 1) == n and np.array_equal(later, np.arange(g, n, g)):
            return sources[::g]
    return sources


def batch_axes(backend: Backend) -> dict[str, int]:
    """The batch axis of every context tensor (source inputs, encoder and attention outputs)."""
    axes = {SOURCE_IDS: 0, SOURCE_MASK: 0}
    for name in ("encoder", "attention"):
        for t in backend.graphs[name].outputs if name in backend.graphs else ():
            if "batch" in t.shape:
                axes[t.name] = t.shape.index("batch")
    return axes


class Decoding:
    """One batch being decoded: iterate `steps()` for the tokens as they are decided, then `results()`."""

    def __init__(
        self,
        backend: Backend,
        spec: DecoderSpec,
        sources: Sequence[Sequence[int]],
        options: DecodingOptions,
        banned: tuple[int, ...] = (),
    ) -> None:
        self.backend, self.spec, self.options = backend, spec, options
        src_ids, src_mask = pad_batch(sources, backend.source_pad)
        self.state = initial_state(backend, src_ids, src_mask, spec)
        vocab = backend.step_graph.output(spec.logits_output).shape[-1]
        self.strategy: Strategy = make_strategy(
            options, [len(s) for s in sources], backend.special_tokens, banned, vocab if isinstance(vocab, int) else 0
        )
        self.axes = batch_axes(backend)
        self.row_sources = np.arange(len(sources))
        self.step_inputs = [t.name for t in backend.step_graph.inputs]
        # the step graph gathers its states for the new rows itself (export/reorder.py): the loop feeds the rows
        self.reorder = spec.reorder_input if REORDER in backend.offers else None
        # ... and may write them over its inputs' memory (runtime/inplace.py)
        self.buffers = None
        if INPLACE in backend.offers:  # (buffers from the backend's pool, where it has one)
            self.buffers = StateBuffers(spec.states, options.max_new_tokens, getattr(backend, "pool", None))
        self.rows: dict[str, np.ndarray] = {}
        self.context_sources = self.row_sources
        # the step's inputs that stay fixed until the rows' sources change again
        self.fixed = {n: self.state.context[n] for n in self.step_inputs if n in self.state.context}
        self._take(self.strategy.start_rows(), force=True)

    def _take(self, rows: np.ndarray, force: bool = False) -> None:
        """Carry `rows` (indices of the current rows) forward: states always, context when sources change."""
        same = np.array_equal(rows, np.arange(len(self.row_sources)))
        if same and not force:
            return
        sources = self.row_sources[rows]
        if not same:
            if self.reorder:
                self.rows = {self.reorder: rows.astype(np.int64, copy=False)}
            else:
                specs = {s.input: s for s in self.spec.states}
                # numpy arrays and device tensors (runtime/binding.py) both have take(rows, axis=...)
                self.state.states = {k: v.take(rows, axis=specs[k].batch_axis) for k, v in self.state.states.items()}
        wanted = context_rows(sources, self.spec.context_per_source)
        if not np.array_equal(wanted, self.context_sources):  # beams reordered within a source share context
            context = self.state.context  # one row per source
            self.fixed = {
                n: context[n].take(wanted, axis=self.axes[n]) if n in self.axes else context[n]
                for n in self.step_inputs
                if n in context
            }
            self.context_sources = wanted
        self.row_sources = sources

    def steps(self) -> Iterator[list[tuple[int, int]]]:
        """Run the decoder; after each step yield the (source, token) pairs decided at it."""
        try:
            yield from self._steps()
        finally:  # done, failed or abandoned: the states' buffers go back to the pool
            if self.buffers is not None:
                self.state.states = {}
                self.buffers.release()

    def _steps(self) -> Iterator[list[tuple[int, int]]]:
        spec, strategy, backend = self.spec, self.strategy, self.backend
        pairs = [(s.input, s.output) for s in spec.states]
        alignment = spec.alignment_output if self.options.return_alignments else None
        for step in range(self.options.max_new_tokens):
            feeds = {**self.fixed, **self.state.states, **self.rows, spec.tokens_input: strategy.last_tokens()}
            self.rows = {}
            if spec.step_input:
                feeds[spec.step_input] = np.array(step, dtype=np.int64)
            request = strategy.request(step, backend.offers)
            buffers = self.buffers
            if buffers is not None and buffers.enabled:
                into = buffers.outputs(self.state.states, len(feeds[spec.tokens_input]))
                out = backend.step(feeds, request, into=into) if into else backend.step(feeds, request)
            else:
                out = backend.step(feeds, request)
                if buffers is not None and step < 2:
                    buffers.learn(self.state.states, out)
            result = StepOutput(
                lambda out=out: out[spec.logits_output],
                backend.chosen(out) if request is not None else None,
                out.get(alignment) if alignment else None,
            )
            keep = strategy.update(step, result)
            self.state.states = {i: out[o] for i, o in pairs}
            out = result = None  # the logits (rows x vocabulary) freed before the next step, not after it
            if keep is not None:
                self._take(keep)
            yield self.strategy.emitted()
            if self.strategy.done():
                return

    def results(self) -> list[list[Hypothesis]]:
        """Per source in input order, its hypotheses best first."""
        return self.strategy.finalize()


def batches(backend: Backend, sources: Sequence[Sequence[int]]) -> list[list[int]]:
    """Which sources may be decoded together: all of them, or for a model that ignores src_mask (padding
    would change its results) those of equal length; indices into `sources`, in input order."""
    if backend.masked_padding:
        return [list(range(len(sources)))]
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(sources):
        groups.setdefault(len(s), []).append(i)
    return list(groups.values())


def decode(
    backend: Backend,
    spec: DecoderSpec,
    sources: Sequence[Sequence[int]],
    options: DecodingOptions,
    banned: tuple[int, ...] = (),
) -> list[list[Hypothesis]]:
    """Decode a batch of source id lists; per source in input order, its hypotheses best first."""
    results: list[list[Hypothesis]] = [[] for _ in sources]
    for group in batches(backend, sources):
        decoding = Decoding(backend, spec, [sources[i] for i in group], options, banned)
        for _ in decoding.steps():
            pass
        for i, hyps in zip(group, decoding.results()):
            results[i] = hyps
    return results
