"""Cross-attention against keys/values kept one row per source while the decoder has several rows per source.

Beam search (and greedy with several sources) decodes R = C * g rows: g consecutive rows for each of C sources.
The encoder-side keys and values are the same for a source's rows, so the step graph can take them (and the
source mask) once per source: the rows' queries are regrouped by source and attend as one (g, hs) block per head.
With g = 1 (one row per source, or context gathered per row) this is ordinary attention.

q (R, nh, T, hs), k/v (C, nh, S, hs), keep broadcastable to (C, nh, g * T, S), True = attend.
"""

from __future__ import annotations

import torch


def by_source(q: torch.Tensor, sources: int) -> torch.Tensor:
    """(R, nh, T, hs) -> (C, nh, g * T, hs): each source's g rows side by side along the query axis."""
    _, nh, t, hs = q.shape
    return q.reshape(sources, -1, nh, t, hs).transpose(1, 2).reshape(sources, nh, -1, hs)


def by_row(y: torch.Tensor, t: int) -> torch.Tensor:
    """(C, nh, g * T, hs) -> (R, nh, T, hs): undoes by_source."""
    c, nh, _, hs = y.shape
    return y.reshape(c, nh, -1, t, hs).transpose(1, 2).reshape(-1, nh, t, hs)


def attend_by_source(q, k, v, keep=None, scale: float = 1.0) -> torch.Tensor:
    """Softmax attention of every row's queries over its source's keys -> (R, nh, T, hs)."""
    scores = (by_source(q, k.shape[0]) @ k.transpose(-2, -1)) * scale  # (C, nh, g * T, S)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    return by_row(torch.softmax(scores, dim=-1) @ v, q.shape[2])
