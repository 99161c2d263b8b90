"""Cross-attention against keys/values kept one row per source while the decoder has several rows per source.

Beam search (and greedy with several sources) decodes R = C * g rows: g consecutive rows for each of C sources.
The encoder-side keys and values are the same for a source's rows, so the step graph can take them (and the
source mask) once per source: the rows' projected queries (R, T, d) are, as they lie in memory, (C, g * T, d),
so splitting the heads of that view gives each source's g rows as one (g * T, hs) block per head, in the same
reshape and transpose that splitting the heads per row takes. With g = 1 (one row per source, or context taken
per row) this is ordinary attention.

q (R, d) or (R, T, d) projected queries, k/v (C, nh, S, hs), keep broadcastable to (C, nh, g * T, S), True = attend.
"""

from __future__ import annotations

import torch


def attend_by_source(q, k, v, keep=None, scale: float = 1.0) -> torch.Tensor:
    """Softmax attention of every row's queries over its source's keys -> q's shape, heads merged.

    q (R, d) holds one position per row (a decoder step: the output's shape is then a constant), or (R, T, d).
    """
    sources, heads, _, hs = k.shape
    blocks = q.reshape(sources, -1, heads, hs).transpose(1, 2)  # (C, nh, g * T, hs)
    scores = (blocks @ k.transpose(-2, -1)) * scale  # (C, nh, g * T, S)
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    y = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2)  # (C, g * T, nh, hs)
    return y.reshape(-1, heads * hs) if q.dim() == 2 else y.reshape(-1, q.shape[1], heads * hs)
