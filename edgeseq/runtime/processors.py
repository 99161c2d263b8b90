"""Logits processing shared by the strategies: penalties and bans (Hugging Face semantics), and sampling.

`history` is each row's decoder input so far, starting with the decoder start token, as HF's input_ids.
"""

from __future__ import annotations

import numpy as np

from edgeseq.runtime.options import DecodingOptions


def log_softmax(x: np.ndarray) -> np.ndarray:
    """(rows, V) -> (rows, V) log-probabilities, in float32."""
    x = x.astype(np.float32, copy=False)
    m = x.max(axis=-1, keepdims=True)
    if not np.isfinite(m).all():  # a row with every token -inf stays -inf (not NaN)
        alive = np.isfinite(m)
        m = np.where(alive, m, np.float32(0))
        with np.errstate(divide="ignore", invalid="ignore"):
            lse = m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
            return np.where(alive, x - lse, np.float32(-np.inf)).astype(np.float32)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def beyond_bias(options: DecodingOptions, step: int) -> bool:
    """Whether `process` does more at `step` than add a fixed bias (bans, </s> before the minimum length)."""
    return bool(
        options.repetition_penalty != 1.0
        or options.no_repeat_ngram
        or (step == 0 and options.forced_bos_token is not None)
        or (options.forced_eos and step == options.max_new_tokens - 1)
    )


def needs_processing(options: DecodingOptions, banned: tuple[int, ...], step: int) -> bool:
    """Whether `process` changes anything at `step` (if not, the logits can be used as they are)."""
    return bool(beyond_bias(options, step) or banned or step < options.min_new_tokens)


def process(
    scores: np.ndarray, history: np.ndarray, step: int, options: DecodingOptions, eos: int, banned: tuple[int, ...] = ()
) -> np.ndarray:
    """Apply repetition penalty, no-repeat n-grams, banned tokens and the minimum length, in place.

    scores (rows, V) float32; history (rows, t) int64.
    """
    if options.repetition_penalty != 1.0:
        for r in range(scores.shape[0]):
            seen = np.unique(history[r])
            s = scores[r, seen]
            scores[r, seen] = np.where(s < 0, s * options.repetition_penalty, s / options.repetition_penalty)
    n = options.no_repeat_ngram
    if n and history.shape[1] >= n:
        for r in range(scores.shape[0]):
            for token in _banned_ngram_tokens(history[r], n):
                scores[r, token] = -np.inf
    if banned:
        scores[:, list(banned)] = -np.inf
    if step < options.min_new_tokens:
        scores[:, eos] = -np.inf
    if step == 0 and options.forced_bos_token is not None:
        _force(scores, options.forced_bos_token)
    if options.forced_eos and step == options.max_new_tokens - 1:
        _force(scores, eos)
    return scores


def _force(scores: np.ndarray, token: int) -> None:
    """Only `token` remains, with score 0 (HF's ForcedBOS/ForcedEOS processors)."""
    scores[:] = -np.inf
    scores[:, token] = 0.0


def _banned_ngram_tokens(seq: np.ndarray, n: int) -> list[int]:
    """Tokens that would complete an n-gram that already occurs in `seq`."""
    prefix = tuple(seq[len(seq) - n + 1 :].tolist()) if n > 1 else ()
    return [int(seq[i + n - 1]) for i in range(len(seq) - n + 1) if tuple(seq[i : i + n - 1].tolist()) == prefix]


def warp(logits: np.ndarray, options: DecodingOptions) -> np.ndarray:
    """Temperature, then top-k, then top-p (HF's order): (rows, V) logits -> warped logits (-inf = removed)."""
    x = logits / np.float32(options.temperature)
    if options.top_k and options.top_k < x.shape[-1]:
        kth = np.partition(x, -options.top_k, axis=-1)[:, -options.top_k][:, None]
        x = np.where(x < kth, -np.inf, x)
    if options.top_p < 1.0:
        order = np.argsort(-x, axis=-1, kind="stable")
        probs = np.exp(log_softmax(np.take_along_axis(x, order, axis=-1)))
        before = np.cumsum(probs, axis=-1) - probs  # probability mass of the tokens ranked above
        drop = before >= options.top_p  # the top token always stays
        np.put_along_axis(x, order, np.where(drop, -np.inf, np.take_along_axis(x, order, axis=-1)), axis=-1)
    return x


def sample(logits: np.ndarray, generators: list[np.random.Generator]) -> np.ndarray:
    """One token per row from softmax(logits), drawing from each row's own generator: (rows,) int64."""
    probs = np.exp(log_softmax(logits)).astype(np.float64)
    cdf = np.cumsum(probs, axis=-1)
    u = np.array([g.random() for g in generators]) * cdf[:, -1]
    chosen = (cdf < u[:, None]).sum(axis=-1)
    return np.minimum(chosen, logits.shape[-1] - 1).astype(np.int64)


def top_indices(x: np.ndarray, m: int, block: int = 256) -> np.ndarray:
    """Per row of x (n, N): the indices of its m largest values, largest first (ties: lower index first).

    A partition over the whole row costs ~10 ns an element (beam search over 4 x 58k scores: 40 ms a step).
    Instead: the max of each block of `block` values (one fast pass), the m best blocks (every one of the m
    best values lies in one of them), then an exact sort of those m * block candidates.
    """
    n, size = x.shape
    full = size // block
    if full <= m:
        cand = np.broadcast_to(np.arange(size), (n, size))
    else:
        best = x[:, : full * block].reshape(n, full, block).max(axis=-1)
        if size > full * block:
            best = np.concatenate([best, x[:, full * block :].max(axis=-1, keepdims=True)], axis=1)
        blocks = np.argpartition(-best, m - 1, axis=-1)[:, :m]
        cand = (blocks[:, :, None] * block + np.arange(block)).reshape(n, m * block)
    values = np.take_along_axis(x, np.minimum(cand, size - 1), axis=-1)
    values = np.where(cand < size, values, -np.inf)  # the last block's tail past the row's end
    order = np.lexsort((cand, -values), axis=-1)[:, :m]  # by value, then by index
    return np.take_along_axis(cand, order, axis=-1)
