"""What `edgeseq generate` writes: plain lines or JSON, to stdout or to a file written whole, with progress.

Plain output is one line per source (n-best hypotheses separated by tabs); a control character in a
translation (a newline, a tab, an escape) is printed escaped (\\n, \\t, \\x1b) so that line N of the output
always belongs to line N of the input. JSON output is always valid JSON: a list with one object per source,
written as it goes; a score that is not a finite number (a hypothesis forced through a -inf logit) is null.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import numpy as np

from edgeseq.escapes import escape_controls, shown
from edgeseq.fsutil import WriteError, describe_os_error
from edgeseq.runtime.lines import LineResult

__all__ = ["Output", "Progress", "escape_controls", "write_results"]


def _number(x: float) -> float | None:
    return x if math.isfinite(x) else None


def hypothesis_json(h) -> dict:
    d = {"text": h.text, "tokens": list(h.tokens), "score": _number(float(h.score))}
    if h.alignment is not None:
        d["alignment"] = np.round(np.nan_to_num(h.alignment), 5).tolist()
    return d


def result_json(r: LineResult) -> dict:
    d = {"line": r.line, "source": r.source}
    if r.error is not None:
        return {**d, "error": r.error}
    return {**d, "hypotheses": [hypothesis_json(h) for h in r.translation.nbest]}


class Output:
    """stdout; a regular file, built beside it and renamed over it when complete (never half-written); or a
    special file (a device, a pipe), written directly: it is never replaced. Errors name the path the user
    gave (never the partial file beside it)."""

    def __init__(self, path: str | None) -> None:
        self.path = None if path in (None, "-") else Path(path)
        self.tmp: Path | None = None
        if self.path is None:
            self.stream: TextIO = sys.stdout
            return
        target = self.path.resolve()  # through a symlink, to the file it names
        try:
            if target.is_dir():
                raise WriteError(f"--output {shown(self.path)} is a directory: give a file name")
            if target.exists() and not target.is_file():  # /dev/full, a FIFO: write into it, never replace it
                self.stream = open(target, "w", encoding="utf-8")  # noqa: SIM115 - closed in finish/abort
                return
            self.target = target
            self.tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
            self.stream = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in finish/abort
        except OSError as e:
            raise WriteError(describe_os_error(e, self.path)) from None

    def write(self, text: str) -> None:
        try:
            self.stream.write(text)
        except OSError as e:
            raise WriteError(describe_os_error(e, self.path or "stdout")) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as e:
            raise WriteError(describe_os_error(e, self.path or "stdout")) from None

    def finish(self) -> None:
        self.flush()
        if self.path is None:
            return
        try:
            self.stream.close()
            if self.tmp is not None:
                os.replace(self.tmp, self.target)
        except OSError as e:
            self.abort()
            raise WriteError(describe_os_error(e, self.path)) from None

    def abort(self) -> None:
        if self.path is not None:
            try:
                self.stream.close()
            except OSError:
                pass
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)


class Progress:
    """Lines done and lines per second on stderr, when it is a terminal: one line redrawn in place (at most
    twice a second, padded over the longer line it replaces), then the total on its own line."""

    def __init__(self, enabled: bool) -> None:
        self.enabled, self.start, self.last, self.count, self.width = enabled, time.perf_counter(), 0.0, 0, 0

    def step(self, count: int = 1) -> None:
        self.count += count
        now = time.perf_counter()
        if self.enabled and now - self.last >= 0.5:
            self.last = now
            self._show(f"edgeseq: {_lines(self.count)}, {self.count / max(now - self.start, 1e-9):.0f} lines/s")

    def done(self) -> None:
        if self.enabled and self.count:
            seconds = time.perf_counter() - self.start
            rate = self.count / max(seconds, 1e-9)
            self._show(f"edgeseq: {_lines(self.count)} in {seconds:.1f} s ({rate:.0f} lines/s)", end="\n")

    def _show(self, text: str, end: str = "") -> None:
        sys.stderr.write("\r" + text.ljust(self.width) + end)
        sys.stderr.flush()
        self.width = len(text)


def _lines(count: int) -> str:
    return f"{count} line" + ("" if count == 1 else "s")


def write_results(results, out: Output, as_json: bool, progress: Progress, note) -> int:
    """Write each LineResult as it comes (plain lines or a JSON list); returns how many were skipped."""
    skipped, first = 0, True
    if as_json:
        out.write("[")
    try:
        for r in results:
            skipped += _write_one(r, out, as_json, first, note)
            first = False
            progress.step()
            if progress.count % 64 == 0:
                out.flush()
    finally:  # stopped by a bad line or an error: what was written is still a valid JSON list
        if as_json:
            out.write("\n]\n")
    return skipped


def _write_one(r: LineResult, out: Output, as_json: bool, first: bool, note) -> int:
    if r.error is not None:
        note(f"line {r.line} skipped: {r.error}")
    if as_json:
        text = json.dumps(result_json(r), ensure_ascii=False, allow_nan=False)
        out.write(("\n" if first else ",\n") + "  " + text)
    elif r.error is not None:
        out.write("\n")
    else:
        out.write("\t".join(escape_controls(h.text) for h in r.translation.nbest) + "\n")
    return int(r.error is not None)
