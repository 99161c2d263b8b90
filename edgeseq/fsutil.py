"""Putting a finished directory in place atomically (no torch, no onnx)."""

from __future__ import annotations

import ctypes
import os
import shutil
import sys
from pathlib import Path

_RENAME_EXCHANGE = 2  # Linux renameat2 flag: swap two paths in one step


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories where the OS can (Linux renameat2); False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_dir(new: Path, target: Path) -> None:
    """Move the finished directory `new` to `target`, replacing what is there.

    At every instant `target` is either the complete old directory or the complete new one: on Linux the
    two are swapped in one system call; elsewhere the old one is renamed aside first (a crash between the
    two renames leaves it, whole, at `.NAME.old-*`).
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        new.rename(target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old directory
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
