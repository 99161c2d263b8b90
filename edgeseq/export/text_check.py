"""Parity level 4: the bundle's text output against the user's own pipeline (their tokenization, framing and
decode), given as a `translate(list[str]) -> list[str]` function or as (source, expected output) pairs.

Texts are compared with runs of whitespace made one space and the ends trimmed (" the cat " equals
"the cat"); any other difference counts. Levels 1-3 compare ids with ids, so they cannot see a vocabulary,
a framing or special ids that differ from the ones the model was trained with; this level can. When
outputs differ it looks for the likely cause by trying what users get wrong (the source's start and end
tokens, the decoder's end and start ids, lowercasing and accents, unknown words, the length limit) and
saying which change makes the outputs agree.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from edgeseq.errors import EdgeseqError, OptionsError
from edgeseq.export.parity import count
from edgeseq.runtime.bundle import Bundle
from edgeseq.runtime.generator import Generator
from edgeseq.runtime.options import DecodingOptions
from edgeseq.vocab import normalized

DIAGNOSE = 4  # differing sources tried per candidate cause


@dataclass
class TextCheck:
    reference: str  # what the bundle was compared with: "translate()" or a pairs file
    sources: int
    equal: int
    ok: bool
    first: dict | None = None  # the first differing source: {"index", "source", "bundle", "expected"}
    cause: str | None = None  # the likely cause, when one was found

    def describe(self) -> str:
        text = f"text vs {self.reference}: {count(self.equal, self.sources)} identical"
        if self.first:
            f = self.first
            text += (
                f"; first difference at source {f['index']} {_clip(f['source'])}: bundle {_clip(f['bundle'])}, "
                f"expected {_clip(f['expected'])}"
            )
        if not self.ok:
            text += f"; likely cause: {self.cause}" if self.cause else "; no likely cause found"
        return text

    def line(self) -> str:
        return f"{self.describe()}  {'ok' if self.ok else 'FAIL'}"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def same_text(text: str) -> str:
    """What the text level compares: whitespace runs made one space, the ends trimmed."""
    return " ".join(text.split())


def _clip(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def reference_outputs(translate: Callable, texts: Sequence[str], where: str) -> list[str]:
    """Call the user's translate() on `texts`, checking what it returns."""
    try:
        out = translate(list(texts))
    except Exception as e:  # the user's code: any failure is reported as theirs
        raise OptionsError(f"{where}: translate() raised {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
    if not isinstance(out, (list, tuple)) or len(out) != len(texts) or not all(isinstance(t, str) for t in out):
        got = f"{type(out).__name__} of {len(out)}" if isinstance(out, (list, tuple)) else type(out).__name__
        raise OptionsError(f"{where}: translate() must return a list of {len(texts)} strings, got {got}")
    return list(out)


def check_text(
    bundle: Bundle,
    texts: Sequence[str],
    expected: Sequence[str],
    min_match: float,
    reference: str,
    options: DecodingOptions | None = None,
    threads: int | None = None,
) -> TextCheck:
    """Decode `texts` with the bundle and compare with `expected`; on a difference, look for its cause."""
    gen = Generator(bundle, threads=threads, engine="loop")  # (the diagnosis changes the loop's special ids)
    options = options or DecodingOptions(max_new_tokens=bundle.manifest.max_new_tokens)
    got, refused = [], {}
    for i, text in enumerate(texts):
        try:
            got.append(same_text(gen.generate([text], options)[0].text))
        except EdgeseqError as e:  # e.g. a word the vocabulary lacks: the user's pipeline took it
            got.append(None)
            refused[i] = str(e)
    expected = [same_text(e) for e in expected]
    equal = sum(g == e for g, e in zip(got, expected))
    ok = equal >= min_match * len(texts)
    differ = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    first = None
    if differ:
        i = differ[0]
        shown = got[i] if got[i] is not None else f"<refused: {refused[i]}>"
        first = {"index": i, "source": texts[i], "bundle": shown, "expected": expected[i]}
    cause = None
    if differ and not ok:
        cause = diagnose(gen, [texts[i] for i in differ], [expected[i] for i in differ], options, refused)
    return TextCheck(reference, len(texts), equal, ok, first, cause)


def diagnose(
    gen: Generator, texts: Sequence[str], expected: Sequence[str], options: DecodingOptions, refused: dict
) -> str | None:
    """The first candidate change that makes the bundle's outputs equal the expected ones, described."""
    bundle, m = gen.bundle, gen.bundle.manifest
    texts, expected = list(texts[:DIAGNOSE]), list(expected[:DIAGNOSE])
    tok, framing = bundle.tokenizer, m.source_framing

    def outputs(sources, special=None) -> list[str]:
        saved = gen.backend.special_tokens
        gen.backend.special_tokens = {**saved, **(special or {})}
        try:
            hyps = gen.generate_ids(sources, options)
        finally:
            gen.backend.special_tokens = saved
        return [same_text(tok.decode(h[0].tokens)) for h in hyps]

    vocab = bundle.source_vocab
    if vocab is not None:
        for steps in (("lower",), ("strip_accents", "lower"), ("nfkc",)):
            if set(steps) <= set(vocab.normalize):
                continue
            try:
                redone = [framing.frame(tok.encode(normalized(t, steps))) for t in texts]
            except EdgeseqError:
                continue
            if outputs(redone) == expected:
                return (
                    f"text normalization: with {' and '.join(steps)} applied to the sources the outputs match "
                    f"(declare it: Vocab(..., normalize={steps!r}))"
                )
    if refused:
        return f"the bundle refuses sources the reference took: {next(iter(refused.values()))}"
    pieces = [tok.encode(t) for t in texts]
    if framing.unk is not None and any(framing.unk in p for p in pieces):
        return "unknown words: the differing sources contain pieces the vocabulary lacks (mapped to <unk>)"
    current = outputs([framing.frame(p) for p in pieces])
    limited = [len(h) >= options.max_new_tokens for h in _token_counts(gen, pieces, framing, options)]
    if all(lim and e.startswith(c) and len(e) > len(c) for lim, c, e in zip(limited, current, expected)):
        return (
            f"the length limit: the bundle stops at max_new_tokens={options.max_new_tokens}, the reference goes on "
            "(export with a larger --max-new-tokens)"
        )
    source_ids = _special_source_ids(bundle)
    for prefix in [(), *((i,) for i in source_ids)]:
        for suffix in [(), *((i,) for i in source_ids)]:
            if (prefix, suffix) == (framing.prefix, framing.suffix):
                continue
            if outputs([[*prefix, *p, *suffix] for p in pieces]) == expected:
                return (
                    f"source framing: with prefix {_names(bundle, prefix)} and suffix {_names(bundle, suffix)} "
                    f"(the bundle has {_names(bundle, framing.prefix)} and {_names(bundle, framing.suffix)}) "
                    "the outputs match"
                )
    framed = [framing.frame(p) for p in pieces]
    targets = sorted({*m.special_tokens.values(), *range(min(4, m.target_vocab_size))})
    for role in ("eos", "decoder_start"):
        for value in targets:
            have = m.special_tokens[role]
            if value != have and outputs(framed, {role: value}) == expected:
                return f"special ids: with {role}={value} (the bundle has {role}={have}) the outputs match"
    for eos in targets:
        for start in targets:
            if outputs(framed, {"eos": eos, "decoder_start": start}) == expected:
                return f"special ids: with eos={eos} and decoder_start={start} the outputs match"
    return None


def _token_counts(gen, pieces, framing, options) -> list[tuple]:
    return [h[0].tokens for h in gen.generate_ids([framing.frame(p) for p in pieces], options)]


def _special_source_ids(bundle: Bundle) -> list[int]:
    """Source ids that may be framing tokens: the framing's own, the special tokens', the vocabulary's."""
    m = bundle.manifest
    ids = {*m.source_framing.prefix, *m.source_framing.suffix, *m.special_tokens.values()}
    vocab = bundle.source_vocab
    if vocab is not None:
        ids |= {i for role, i in vocab.specials.items() if role != "unk"}
    ids |= set(range(min(4, m.source_vocab_size)))
    return sorted(i for i in ids if 0 <= i < m.source_vocab_size)[:8]


def _names(bundle: Bundle, ids: Sequence[int]) -> str:
    vocab = bundle.source_vocab
    if vocab is None:
        return str(list(ids))
    return "[" + ", ".join(repr(vocab.tokens[i]) for i in ids) + "]"


def random_texts(bundle: Bundle, count: int = 24, max_len: int = 10, seed: int = 0) -> list[str]:
    """Random source texts made of the source vocabulary's regular pieces (for checks without data)."""
    rng = np.random.default_rng(seed)
    vocab = bundle.source_vocab
    m = bundle.manifest
    if vocab is not None:
        special = set((vocab.specials or {}).values())
        regular = [t for i, t in enumerate(vocab.tokens) if i not in special and t.strip() == t and t]
        sep = "" if vocab.level == "char" else " "
        texts = []
        for _ in range(count):
            n = int(rng.integers(1, max_len))
            text = sep.join(rng.choice(regular, size=n)).strip()
            texts.append(text or regular[0])
        return texts
    decode = bundle.tokenizer.source_text
    avoid = {*m.special_tokens.values(), *m.source_framing.prefix, *m.source_framing.suffix, m.source_framing.pad}
    ids = [i for i in range(min(m.source_vocab_size, 1 << 20)) if i not in avoid]
    texts = []
    while len(texts) < count:
        text = decode([int(i) for i in rng.choice(ids, size=int(rng.integers(1, max_len)))]).strip()
        if text:
            texts.append(text)
    return texts
