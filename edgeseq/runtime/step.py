"""What a strategy asks of a decoder step, and what it gets back.

A backend says what its step graph's head can compute (`offers`: "greedy", "beam"; export/head.py), and
whether the step reorders its own states ("reorder": export/reorder.py) and may write them in place
("inplace": runtime/inplace.py; then `step` takes `into`, the arrays to write them into). Before
each step a strategy asks for one of those (`HeadRequest`) or for nothing (it reads the logits); after the
step it gets a `StepOutput`: the head's choices when it asked for them, the logits otherwise (fetched only
when read), and the attention weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

GREEDY, BEAM = "greedy", "beam"
REORDER = "reorder"  # the step graph carries its states to the next step's rows itself (export/reorder.py)
INPLACE = "inplace"  # ... and may write its state outputs over their inputs' memory (runtime/inplace.py)


@dataclass(frozen=True)
class HeadRequest:
    """Ask the step's head to choose: greedy (argmax of logits + bias) or beam (the 2 x beam best of
    log_softmax(logits) + bias + each row's running score, per source)."""

    kind: str  # GREEDY or BEAM
    bias: np.ndarray  # (V,) float32: -inf at banned ids, 0 elsewhere
    beam_scores: np.ndarray | None = None  # (sources, beams) float32: each row's running score (beam)


class StepOutput:
    """One step's results, as the strategy asked for them."""

    __slots__ = ("_logits", "_fetched", "chosen", "alignment")

    def __init__(
        self,
        logits: Callable[[], np.ndarray],
        chosen: tuple[np.ndarray, np.ndarray] | None,
        alignment: np.ndarray | None,
    ) -> None:
        self._logits, self._fetched = logits, None
        self.chosen = chosen  # the head's (scores, ids): greedy (rows, 1), beam (sources, 2 x beams)
        self.alignment = alignment  # (rows, src_len) attention weights, when asked for

    @property
    def logits(self) -> np.ndarray:
        """(rows, V) logits on the host (brought over from the device the first time they are read)."""
        if self._fetched is None:
            self._fetched = np.asarray(self._logits())
        return self._fetched
