"""Decoder states written in place: one buffer per state for a whole decode, instead of a new tensor a step.

A step graph made with reorder_every_step (export/reorder.py) reads each state input exactly once, by the
Gather that takes the rows to carry on into ONNX Runtime's own memory, before anything writes that state's
output. So the output may be written over the input's memory: the loop binds each state output to a buffer
that also holds the state input. Without it a decode holds two copies of its caches at every step (the
inputs, held by the feeds, and the outputs), and ONNX Runtime's arena, asked for slightly larger tensors at
every step, grows past both (beam 4 over 16 sources of a Marian base, 64 tokens: peak RSS 548 -> 416 MB for
int8, the same hypotheses, the same speed).

How each state's shape changes from one step to the next is learnt from the first two steps (run as
usual, and agreeing): its rows along the batch axis (the more of the two: beam search's first step runs one
row per source), and at most one other axis one longer a step (a self-attention cache) or none (an RNN's h
and c). A state that changes otherwise is left to ONNX Runtime.
Buffers are sized for the rows and steps of the decode; their pages are touched only as the states grow
into them. A state that later changes shape otherwise than it did in the first two steps (ONNX Runtime
refuses the bound output: nothing is written out of bounds) stops the decode with an error, as its input
may be overwritten already: such a model decodes with `Generator(..., inplace_states=False)`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from edgeseq.bundle import StateSpec


class BufferPool:
    """Buffers handed from one decode to the next (a file is translated as many decodes): their pages are
    touched once, not again for every batch (a fresh buffer per batch cost ~4% of a file's time in page
    faults). Thread-safe; a buffer is one decode's until it gives it back."""

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []  # raw uint8 buffers, smallest first
        self._lock = threading.Lock()

    def take(self, size: int, dtype: np.dtype) -> np.ndarray:
        """A flat array of `size` elements of `dtype` (its contents undefined)."""
        nbytes = size * np.dtype(dtype).itemsize
        with self._lock:
            for i, raw in enumerate(self._free):
                if raw.nbytes >= nbytes:
                    del self._free[i]
                    break
            else:
                raw = np.empty(nbytes, dtype=np.uint8)  # (no page is touched before a step writes it)
        return raw[:nbytes].view(dtype)

    def give(self, buffers: Sequence[np.ndarray]) -> None:
        """Take back buffers from take() (nothing may use them any more). The pool keeps one decode's worth,
        the largest: sources of other lengths must not pile up buffers of every size."""
        with self._lock:
            self._free += [b.base if b.base is not None else b for b in buffers]
            self._free.sort(key=lambda raw: raw.nbytes)
            del self._free[: max(0, len(self._free) - len(buffers))]


# below this many bytes of states (at their largest) a decode keeps them in ONNX Runtime's arena: there the
# two copies share memory with the step's other tensors, so writing them in place saves nothing (a file
# greedy-decoded by a small Marian, 13 MB of states a batch: 263 -> 280 MB), and binding costs a few
# microseconds per input and output a step (a tiny model's whole step is ~40 us). Above it, the caches are
# the peak (beam 4 over 16 sources of a Marian base, 64 tokens: 100 MB of states).
MIN_BYTES = 32 << 20


class StateBuffers:
    """The buffers of one decode's states: `learn()` after each of the first two steps, then `outputs()`
    gives the arrays a step writes its states into (none until `enabled`)."""

    def __init__(self, states: Sequence[StateSpec], steps: int, pool: BufferPool | None = None) -> None:
        self.states, self.steps, self.pool = list(states), steps, pool or BufferPool()
        self.first: dict[str, tuple] | None = None  # what the first step showed, per state input
        self.growth: dict[str, tuple[tuple[int, ...], int | None]] = {}  # input: (largest shape, grow axis)
        self.buffers: dict[str, np.ndarray] = {}
        self.enabled = False

    def _seen(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> dict[str, tuple]:
        """Per state: (grow axis or None, output shape, itemsize), for states that grow as this module takes."""
        seen = {}
        for s in self.states:
            before, after = inputs.get(s.input), outputs.get(s.output)
            if not isinstance(before, np.ndarray) or not isinstance(after, np.ndarray) or before.ndim != after.ndim:
                continue
            grown = [a for a in range(after.ndim) if a != s.batch_axis and after.shape[a] != before.shape[a]]
            if len(grown) > 1 or (grown and after.shape[grown[0]] != before.shape[grown[0]] + 1):
                continue
            seen[s.input] = (grown[0] if grown else None, after.shape, after.dtype.itemsize)
        return seen

    def learn(self, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """After each of the first two steps: how each state's shape changes (where both steps agree)."""
        seen = self._seen(inputs, outputs)
        if self.first is None:
            self.first = seen
            return
        total = 0
        for s in self.states:
            if s.input not in seen or s.input not in self.first:
                continue
            axis, shape, size = seen[s.input]
            first_axis, first_shape, _ = self.first[s.input]
            fixed = [a for a in range(len(shape)) if a not in (s.batch_axis, axis)]
            if axis != first_axis or any(shape[a] != first_shape[a] for a in fixed):
                continue
            largest = list(first_shape)  # the most rows of the two steps (beam search's first may have fewer)
            largest[s.batch_axis] = max(shape[s.batch_axis], first_shape[s.batch_axis])  # rows only leave later
            if axis is not None:
                largest[axis] += self.steps - 1  # as long as it gets
            self.growth[s.input] = (tuple(largest), axis)
            total += int(np.prod(largest)) * size
        self.enabled = total >= MIN_BYTES

    def outputs(self, inputs: dict[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
        """For a step of `rows` rows whose state inputs are `inputs`: per state output, the array to write it
        into (in its buffer, where the input may lie). States that do not fit are left out."""
        into = {}
        for s in self.states:
            known, state = self.growth.get(s.input), inputs.get(s.input)
            if known is None or not isinstance(state, np.ndarray):
                continue
            largest, axis = known
            shape = list(state.shape)
            shape[s.batch_axis] = rows
            if axis is not None:
                shape[axis] += 1
            if any(d > m for d, m in zip(shape, largest)):
                continue
            buffer = self.buffers.get(s.input)
            if buffer is None:
                buffer = self.buffers[s.input] = self.pool.take(int(np.prod(largest)), state.dtype)
            if state.dtype != buffer.dtype:
                continue
            into[s.output] = buffer[: int(np.prod(shape))].reshape(shape)
        return into

    def release(self) -> None:
        """The decode is over: its buffers go back to the pool."""
        buffers, self.buffers, self.enabled = list(self.buffers.values()), {}, False
        self.pool.give(buffers)
