"""The generation loop: family-agnostic, backend-agnostic, strategy-agnostic.

A backend runs the graphs (ONNX Runtime in deployment, PyTorch for the parity reference); the loop only
feeds state outputs back to state inputs by the pairs the manifest declares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgeseq.bundle import GraphSpec, StateSpec
from edgeseq.errors import BundleError
from edgeseq.runtime.batching import pad_batch
from edgeseq.runtime.options import DecodingOptions
from edgeseq.runtime.search import Hypothesis, make_strategy

SOURCE_IDS, SOURCE_MASK = "src_ids", "src_mask"


class Backend(Protocol):
    """What the loop needs from a model: the step graph's I/O, one-off context, and one step."""

    step_graph: GraphSpec
    special_tokens: dict[str, int]

    def context(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{src_ids, src_mask} -> every encoder and attention output, by name."""

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The decoder step graph's inputs by name -> its outputs by name."""


@dataclass
class DecodeState:
    """The tensors a step needs: per-batch context (fixed) and states (replaced every step)."""

    context: dict[str, np.ndarray]
    states: dict[str, np.ndarray]


def initial_state(backend: Backend, src_ids: np.ndarray, src_mask: np.ndarray, spec) -> DecodeState:
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


def decode(
    backend: Backend, spec, sources: Sequence[Sequence[int]], options: DecodingOptions
) -> list[list[Hypothesis]]:
    """Decode a batch of source id lists; returns, per source in input order, its hypotheses best first.

    `spec` is the bundle's DecoderSpec: which step inputs are the tokens, the step index and the states.
    """
    tokens = backend.special_tokens
    src_ids, src_mask = pad_batch(sources, tokens["pad"])
    state = initial_state(backend, src_ids, src_mask, spec)
    strategy = make_strategy(options, batch=len(sources), special_tokens=tokens)
    step_inputs = [t.name for t in backend.step_graph.inputs]
    for step in range(options.max_new_tokens):
        feeds = {}
        for name in step_inputs:
            if name == spec.tokens_input:
                feeds[name] = strategy.last_tokens()
            elif name == spec.step_input:
                feeds[name] = np.array(step, dtype=np.int64)
            elif name in state.states:
                feeds[name] = state.states[name]
            else:
                feeds[name] = state.context[name]
        out = backend.step(feeds)
        strategy.update(out[spec.logits_output], step)
        state.states = {s.input: out[s.output] for s in spec.states}
        if strategy.done():
            break
    return strategy.finalize()
