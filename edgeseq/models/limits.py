"""Checks every reference model's config shares: special ids inside the vocabularies, sizes bounded.

A config read from a checkpoint is untrusted: each size field has its own bound (no real model comes near
them), so that a config cannot ask for an unbounded allocation (edgeseq.export.checkpoint also bounds the
bytes of the tensors a config implies that the file does not store, such as a sinusoidal position table).
"""

from __future__ import annotations

MAX_SIZE = 1 << 24  # a vocabulary
MAX_WIDTH = 1 << 16  # a layer's width: d_model, hidden, emb_dim, ffn_dim, attn_dim
MAX_POSITIONS = 1 << 20  # positions (the manifest's longest source and most tokens to generate)
MAX_COUNT = 1 << 10  # layers, heads

SIZE_LIMITS = {
    "src_vocab_size": MAX_SIZE,
    "tgt_vocab_size": MAX_SIZE,
    "d_model": MAX_WIDTH,
    "hidden": MAX_WIDTH,
    "emb_dim": MAX_WIDTH,
    "ffn_dim": MAX_WIDTH,
    "attn_dim": MAX_WIDTH,
    "max_positions": MAX_POSITIONS,
    "heads": MAX_COUNT,
    "layers": MAX_COUNT,
    "encoder_layers": MAX_COUNT,
    "decoder_layers": MAX_COUNT,
}


def special_id_problems(cfg) -> list[str]:
    """pad, bos, eos must be ids of both vocabularies (the source is padded with pad, the target uses all);
    every size field must be within its bound (SIZE_LIMITS)."""
    problems = []
    for name, limit in SIZE_LIMITS.items():
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > limit:
            problems.append(f"{name} {value} is larger than {limit}, the most edgeseq takes")
    smallest = min(cfg.src_vocab_size, cfg.tgt_vocab_size) if isinstance(cfg.src_vocab_size, int) else 0
    for name in ("pad_id", "bos_id", "eos_id"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < smallest:
            problems.append(f"{name} {value!r} must be an id of both vocabularies (0..{smallest - 1})")
    return problems
