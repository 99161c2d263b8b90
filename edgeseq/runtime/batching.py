"""Padding token sequences into a batch (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeseq.errors import InputError


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id lists into src_ids (B, S) int64 and src_mask (B, S) int64 (1 = real token)."""
    if not seqs:
        raise InputError("no sources given: pass at least one sentence")
    for i, s in enumerate(seqs):
        if len(s) == 0:
            raise InputError(f"source {i} is empty: every source needs at least one token")
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
    return ids, mask
