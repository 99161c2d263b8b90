"""Search strategies behind one small interface; the loop never asks which one it runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgeseq.runtime.options import DecodingOptions


@dataclass(frozen=True)
class Hypothesis:
    """A decoded sequence (without </s>) and its score: the sum of its tokens' log-probabilities."""

    tokens: tuple[int, ...]
    score: float


class Strategy(Protocol):
    def last_tokens(self) -> np.ndarray:
        """(rows,) int64: the token each row feeds to the next step."""

    def update(self, logits: np.ndarray, step: int) -> None:
        """Take one step's (rows, V) logits and choose the next tokens."""

    def done(self) -> bool:
        """True when every row has finished."""

    def finalize(self) -> list[list[Hypothesis]]:
        """Per source, its hypotheses best first."""


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """(rows, V) -> (rows, V) log-probabilities, in float32."""
    x = logits.astype(np.float32, copy=False)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


class Greedy:
    """Argmax at every step; finished rows feed <pad> and add nothing to their score."""

    def __init__(self, batch: int, special_tokens: dict[str, int], options: DecodingOptions) -> None:
        self.eos, self.pad = special_tokens["eos"], special_tokens["pad"]
        self.min_new_tokens = options.min_new_tokens
        self.last = np.full(batch, special_tokens["decoder_start"], dtype=np.int64)
        self.finished = np.zeros(batch, dtype=bool)
        self.scores = np.zeros(batch, dtype=np.float64)
        self.tokens: list[list[int]] = [[] for _ in range(batch)]

    def last_tokens(self) -> np.ndarray:
        return self.last

    def update(self, logits: np.ndarray, step: int) -> None:
        logprobs = log_softmax(logits)  # (B, V)
        if step < self.min_new_tokens:
            logprobs[:, self.eos] = -np.inf
        chosen = logprobs.argmax(axis=-1)  # (B,)
        gained = logprobs[np.arange(len(chosen)), chosen]
        chosen = np.where(self.finished, self.pad, chosen)
        self.scores += np.where(self.finished, 0.0, gained)
        for row in np.flatnonzero(~self.finished):
            if chosen[row] != self.eos:
                self.tokens[row].append(int(chosen[row]))
        self.finished |= chosen == self.eos
        self.last = chosen.astype(np.int64)

    def done(self) -> bool:
        return bool(self.finished.all())

    def finalize(self) -> list[list[Hypothesis]]:
        return [[Hypothesis(tuple(t), float(s))] for t, s in zip(self.tokens, self.scores)]


def make_strategy(options: DecodingOptions, batch: int, special_tokens: dict[str, int]) -> Strategy:
    """The strategy that `options` asks for."""
    return Greedy(batch, special_tokens, options)
