"""Checks every reference model's config shares: special ids inside the vocabularies, sizes bounded."""

from __future__ import annotations

MAX_SIZE = 1 << 24  # any vocabulary or layer size


def special_id_problems(cfg) -> list[str]:
    """pad, bos, eos must be ids of both vocabularies (the source is padded with pad, the target uses all);
    every size must be at most MAX_SIZE."""
    problems = []
    for name in ("src_vocab_size", "tgt_vocab_size", "d_model", "hidden", "emb_dim", "ffn_dim", "max_positions"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > MAX_SIZE:
            problems.append(f"{name} {value} is larger than {MAX_SIZE}")
    smallest = min(cfg.src_vocab_size, cfg.tgt_vocab_size) if isinstance(cfg.src_vocab_size, int) else 0
    for name in ("pad_id", "bos_id", "eos_id"):
        value = getattr(cfg, name)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < smallest:
            problems.append(f"{name} {value!r} must be an id of both vocabularies (0..{smallest - 1})")
    return problems
