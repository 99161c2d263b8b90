"""Giving back the pages of a bundle's weights that ONNX Runtime read while loading, once it holds its own copy.

ONNX Runtime maps a bundle's weights file (page-aligned external data) rather than reading it. A session
that prepacks its weights for the GEMM kernels (the decoder step's: runtime/session.py `session_options`)
reads every page of them once, at load, into its packed copy; the mapped pages stay resident all the same and
count in the process's memory (a dynamic-int8 Marian base: 28 MB of a 77 MB bundle). Dropping them after
the sessions load costs nothing: a page that a kernel reads again (the encoder reads its weights where they
lie) faults back in from the page cache. Beam 4 over 16 sources, int8: peak RSS 413 -> 391 MB, the same speed.

Only private mappings of files inside the bundle's folder in which no page was written are touched
(MADV_DONTNEED on such a mapping loses nothing: its pages are the file's), on Linux; elsewhere this does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from pathlib import Path

MADV_DONTNEED = 4


def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.madvise.restype = ctypes.c_int
    return libc


def clean_mappings(folder: Path, smaps: str = "/proc/self/smaps") -> list[tuple[int, int]]:
    """(start, end) of this process's private mappings of files inside `folder` that no one wrote: none of
    their pages is anonymous (ONNX Runtime maps external data read-write, copy-on-write; a page written
    would be the only copy of its contents, so a mapping with any is left alone)."""
    root = str(folder.resolve())
    try:
        lines = Path(smaps).read_text().splitlines()
    except OSError:
        return []
    ranges, current = [], None
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) >= 5 and "-" in parts[0] and ":" not in parts[0]:  # a mapping's header line
            path = parts[5].strip() if len(parts) == 6 else ""
            private = len(parts[1]) == 4 and parts[1][3] == "p"
            current = None
            if private and path.startswith(root + "/"):
                current = tuple(int(x, 16) for x in parts[0].split("-"))
        elif current is not None and parts[:1] == ["Anonymous:"]:
            if parts[1] == "0":
                ranges.append(current)
            current = None
    return ranges


def drop_loaded_pages(folder: Path) -> int:
    """Drop this process's resident pages of the unwritten mappings of files in `folder`; the bytes advised
    (0 where the platform has no madvise)."""
    libc = _libc()
    if libc is None:
        return 0
    advised = 0
    for start, end in clean_mappings(folder):
        if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
            advised += end - start
    return advised


def trim_heap() -> bool:
    """Give the C heap's free memory back to the system (glibc's malloc_trim): ONNX Runtime frees what constant
    folding computed on the way to a session's weights (export/one_row.py's unsigned copies, once packed), but
    glibc keeps the freed pages (a Marian base's one-row step: 286 -> 162 MB resident). False where there is none."""
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True
