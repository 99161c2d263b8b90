"""A tiny word-level translation task (French-like -> English-like, adjectives move before nouns), so that
tutorial-style models train in seconds. Nothing here imports edgeseq."""

from __future__ import annotations

import random

NOUNS = {"chat": "cat", "chien": "dog", "souris": "mouse", "oiseau": "bird", "enfant": "child", "homme": "man"}
ADJECTIVES = {"noir": "black", "blanc": "white", "petit": "small", "grand": "big", "rouge": "red"}
VERBS = {"mange": "eats", "voit": "sees", "aime": "likes", "suit": "follows"}
DETERMINERS = {"le": "the", "un": "a"}


def _phrase(rng: random.Random) -> tuple[list[str], list[str]]:
    det, noun = rng.choice(list(DETERMINERS)), rng.choice(list(NOUNS))
    src, tgt = [det, noun], [DETERMINERS[det], NOUNS[noun]]
    if rng.random() < 0.5:
        adj = rng.choice(list(ADJECTIVES))
        src.append(adj)
        tgt.insert(1, ADJECTIVES[adj])
    return src, tgt


def sentence(rng: random.Random) -> tuple[str, str]:
    """One pair: 'le chat noir voit un chien' -> 'the black cat sees a dog'."""
    (s1, t1), (s2, t2) = _phrase(rng), _phrase(rng)
    verb = rng.choice(list(VERBS))
    return " ".join([*s1, verb, *s2]), " ".join([*t1, VERBS[verb], *t2])


def pairs(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [sentence(rng) for _ in range(count)]
