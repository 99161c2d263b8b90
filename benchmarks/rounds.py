"""Engines run in rounds, in turn: ratios that a slow phase of a shared machine does not decide (speed.py).

This machine's speed swings by +-20% within minutes, and one engine met such a phase while its yardstick did
not (session 12: edgeseq int8 beam 1,826 ms in speed.py, 1,500-1,547 ms alone minutes later). So every engine
runs once per round, the order reversed from one round to the next (A B C, C B A, ...: each pair of engines
is as often early as late), and a ratio is taken within each round, then the median over rounds reported with
its range. An engine's own figures are the medians over its rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence


def in_rounds(labels: Sequence[str], rounds: int, run: Callable[[str], dict | None]) -> dict[str, list[dict]]:
    """run(label) for every label, `rounds` times in alternating order; per label its rounds' results (a
    run that failed, None, is left out)."""
    done: dict[str, list[dict]] = {label: [] for label in labels}
    for r in range(rounds):
        for label in labels if r % 2 == 0 else reversed(labels):
            result = run(label)
            if result is not None:
                result["round"] = r
                done[label].append(result)
    return {label: runs for label, runs in done.items() if runs}


def combined(runs: list[dict]) -> dict:
    """One engine's figures over its rounds: each number the median, anything else the first round's; the
    rounds themselves kept under "rounds"."""
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "round":
            out[key] = statistics.median(r[key] for r in runs)
    out.pop("round", None)
    out["rounds"] = [{k: v for k, v in r.items() if isinstance(v, (int, float))} for r in runs]
    return out


def ratio(a: dict, b: dict, key: str) -> tuple[float, float, float]:
    """a's `key` over b's, taken within each round both ran: (median, lowest, highest)."""
    theirs = {r["round"]: r[key] for r in b.get("rounds", [])}
    per_round = [r[key] / theirs[r["round"]] for r in a.get("rounds", []) if theirs.get(r["round"])]
    if not per_round:  # figures without rounds (a --json of an older run)
        value = a[key] / b[key]
        return value, value, value
    return statistics.median(per_round), min(per_round), max(per_round)


def shown(a: dict, b: dict, key: str) -> str:
    """ratio() as text: '1.29x (1.21x-1.35x over 3 rounds)', or '1.29x' for one round or no spread."""
    mid, low, high = ratio(a, b, key)
    n = len(a.get("rounds", []))
    if n <= 1 or f"{low:.2f}" == f"{high:.2f}":
        return f"{mid:.2f}x"
    return f"{mid:.2f}x ({low:.2f}x-{high:.2f}x over {n} rounds)"
