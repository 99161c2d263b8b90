"""Text as the command line prints it: control characters escaped, so that one item stays on one line."""

from __future__ import annotations

import os
import unicodedata

_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape_controls(text: str) -> str:
    """Control characters as escapes (\\n, \\t, \\x1b), and lone surrogates (a file name that is not UTF-8)
    as \\udcXX, so one translation or one path stays on one printable line."""
    if text.isprintable():
        return text
    return "".join(
        _ESCAPES.get(c, f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        if unicodedata.category(c) in ("Cc", "Cs")
        else c
        for c in text
    )


def shown(path: str | os.PathLike) -> str:
    """A path as edgeseq prints it: the user's text, control characters escaped."""
    return escape_controls(os.fspath(path) if not isinstance(path, bytes) else os.fsdecode(path))
