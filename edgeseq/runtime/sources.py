"""Reading source sentences from a text file, one per line."""

from __future__ import annotations

from pathlib import Path

from edgeseq.errors import InputError


def read_sources(path: str | Path) -> list[str]:
    """One source per line; an unreadable or empty file, or an empty line, is an error naming it."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {path}: {e}") from None
    if not lines:
        raise InputError(f"{path} is empty: give one source sentence per line")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            raise InputError(f"{path}, line {i} is empty: give one source sentence per line")
    return lines
