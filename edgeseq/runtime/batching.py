"""Padding token sequences into a batch (numpy only)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeseq.bundle import SourceFraming
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


def random_sources(
    vocab_size: int,
    count: int,
    length: int | None = None,
    max_len: int = 12,
    seed: int = 0,
    framing: SourceFraming | None = None,
    special: Sequence[int] = (),
) -> list[list[int]]:
    """Random sources for checks and benchmarks without data: ids that are none of `special` nor the framing's
    own, framed as the model was trained. `length` tokens each (framing included), or mixed lengths below
    `max_len` (the first at full length, so that a batch of them really is padded)."""
    framing = framing or SourceFraming()
    avoid = {*special, *framing.prefix, *framing.suffix, framing.pad, framing.unk}
    regular = np.array([i for i in range(min(vocab_size, 1 << 20)) if i not in avoid], dtype=np.int64)
    if not len(regular):  # a vocabulary of special tokens only
        regular = np.arange(vocab_size, dtype=np.int64)
    rng = np.random.default_rng(seed)
    framed = len(framing.prefix) + len(framing.suffix)
    if length is not None:
        lengths = np.full(count, max(1, length - framed))
    else:
        lengths = rng.integers(1, max_len, size=count)
        lengths[0] = max_len - 1
    return [framing.frame([int(i) for i in rng.choice(regular, size=n)]) for n in lengths]
