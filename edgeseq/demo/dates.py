"""Human-written dates in many formats, paired with their ISO form. Pure Python, seeded, no downloads."""

from __future__ import annotations

import datetime
import random

MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
FIRST, LAST = datetime.date(1950, 1, 1), datetime.date(2049, 12, 31)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _formats(d: datetime.date) -> list[str]:
    month, mon = MONTHS[d.month - 1], MONTHS[d.month - 1][:3]
    day, dy = DAYS[d.weekday()], DAYS[d.weekday()][:3]
    return [
        f"{day}, {d.day} {month} {d.year}",
        f"{day}, {month} {d.day}, {d.year}",
        f"{d.day} {month} {d.year}",
        f"{d.day:02d} {month} {d.year}",
        f"{month} {d.day}, {d.year}",
        f"{mon} {d.day}, {d.year}",
        f"{mon} {d.day} {d.year}",
        f"{d.day} {mon} {d.year}",
        f"{dy} {d.day} {mon} {d.year}",
        f"{dy}, {mon} {d.day}, {d.year}",
        f"{d.day}-{mon}-{d.year}",
        f"{_ordinal(d.day)} of {month} {d.year}",
        f"{_ordinal(d.day)} of {month}, {d.year}",
        f"{month} {_ordinal(d.day)}, {d.year}",
        f"{day} the {_ordinal(d.day)} of {month} {d.year}",
        f"{d.month:02d}/{d.day:02d}/{d.year}",
        f"{d.month}/{d.day}/{d.year}",
        f"{d.day:02d}.{d.month:02d}.{d.year}",
        f"{d.day}.{d.month}.{d.year}",
        f"{d.year}-{d.month:02d}-{d.day:02d}",
        f"{d.year}/{d.month:02d}/{d.day:02d}",
        f"{d.year} {month} {d.day}",
    ]


def render(d: datetime.date, rng: random.Random) -> str:
    """One human-written form of `d`, in a random format and letter case."""
    text = rng.choice(_formats(d))
    case = rng.random()
    if case < 0.15:
        return text.lower()
    if case < 0.22:
        return text.upper()
    return text


def random_date(rng: random.Random) -> datetime.date:
    return FIRST + datetime.timedelta(days=rng.randrange((LAST - FIRST).days + 1))


def make_pairs(count: int, seed: int, exclude: set[str] | None = None) -> list[tuple[str, str]]:
    """`count` distinct (human, ISO) pairs; sources in `exclude` are skipped (a held-out set stays unseen)."""
    rng = random.Random(seed)
    exclude = exclude or set()
    pairs, seen = [], set()
    while len(pairs) < count:
        d = random_date(rng)
        src = render(d, rng)
        if src in seen or src in exclude:
            continue
        seen.add(src)
        pairs.append((src, d.isoformat()))
    return pairs


def demo_split(train: int = 30000, held_out: int = 1000, seed: int = 2026) -> tuple[list, list]:
    """Training pairs and a held-out set whose source strings never occur in training."""
    test = make_pairs(held_out, seed + 1)
    return make_pairs(train, seed, exclude={s for s, _ in test}), test
