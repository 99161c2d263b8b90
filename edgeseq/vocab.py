"""Character- and word-level vocabularies: text <-> token ids, saved as JSON (no torch).

A vocabulary keeps the model's own ids: its tokens in id order, and which of them play the special roles
(padding, start, end, unknown), wherever they are. `Vocab.build` makes the classic layout (<pad>, <s>, </s>,
<unk> at ids 0..3); a model trained with other ids brings its own token list:

    Vocab(["<unk>", "<pad>", "<bos>", "<eos>", "ein", ...], "word",
          specials={"unk": "<unk>", "pad": "<pad>", "bos": "<bos>", "eos": "<eos>"})
    Vocab.from_mapping(lang.index2word, "word", specials={"bos": "SOS", "eos": "EOS"})
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgeseq.errors import BundleError, InputError

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
ROLES = ("pad", "bos", "eos", "unk")  # the special roles a token can play
LEVELS = ("char", "word")
# What a source text goes through before it is split, in this order, as the model's pipeline did it.
NORMALIZERS = ("nfkc", "strip_accents", "lower")
MAX_TOKEN_CHARS = 1024


@dataclass(frozen=True)
class Vocab:
    """An ordered token list (a token's id is its position) and the ids of its special tokens.

    `specials` maps roles (pad, bos, eos, unk) to a token of the list, by text or by id; a role a model
    does not have is left out. None means the classic layout: <pad>, <s>, </s>, <unk> at ids 0..3.
    """

    tokens: tuple[str, ...]
    level: str = "char"  # "char": one token per character; "word": whitespace-separated words
    specials: Mapping[str, int | str] | None = field(default=None, compare=True)
    normalize: tuple[str, ...] = ()  # applied to text before splitting: "nfkc", "strip_accents", "lower"

    def __post_init__(self) -> None:
        tokens = tuple(self.tokens)
        object.__setattr__(self, "tokens", tokens)
        if self.level not in LEVELS:
            raise BundleError(f"vocabulary level {self.level!r} is not one of {', '.join(LEVELS)}")
        normalize = tuple(self.normalize)
        if not all(n in NORMALIZERS for n in normalize):
            raise BundleError(f"vocabulary normalize {list(normalize)} may use only {', '.join(NORMALIZERS)}")
        object.__setattr__(self, "normalize", tuple(n for n in NORMALIZERS if n in normalize))
        if not all(isinstance(t, str) and t and len(t) <= MAX_TOKEN_CHARS for t in tokens):
            raise BundleError(f"every vocabulary token must be a non-empty string of at most {MAX_TOKEN_CHARS} chars")
        if len(set(tokens)) != len(tokens):
            dup = next(t for t, n in Counter(tokens).items() if n > 1)
            raise BundleError(f"vocabulary has duplicate tokens (e.g. {dup!r}): a token's id must be unique")
        index = {t: i for i, t in enumerate(tokens)}
        object.__setattr__(self, "_index", index)
        if self.specials is None:
            if tokens[: len(SPECIALS)] != SPECIALS:
                raise BundleError(
                    f"vocabulary must start with the special tokens {list(SPECIALS)}, or name its own: "
                    "Vocab(tokens, level, specials={'eos': '</s>', ...})"
                )
            ids = dict(zip(ROLES, range(len(SPECIALS))))
        else:
            ids = _special_ids(self.specials, index, len(tokens))
        object.__setattr__(self, "specials", dict(sorted(ids.items(), key=lambda kv: ROLES.index(kv[0]))))

    @property
    def pad_id(self) -> int | None:
        return self.specials.get("pad")  # type: ignore[union-attr]

    @property
    def bos_id(self) -> int | None:
        return self.specials.get("bos")  # type: ignore[union-attr]

    @property
    def eos_id(self) -> int | None:
        return self.specials.get("eos")  # type: ignore[union-attr]

    @property
    def unk_id(self) -> int | None:
        return self.specials.get("unk")  # type: ignore[union-attr]

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, texts: Iterable[str], level: str = "char", min_count: int = 1) -> Vocab:
        """Collect every character (or word) of `texts`, most frequent first after <pad>, <s>, </s>, <unk>."""
        counts = Counter(t for text in texts for t in split(text, level))
        ordered = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
        return cls(SPECIALS + tuple(t for t in ordered if t not in SPECIALS), level)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, int] | Mapping[int, str], level: str = "word", specials=None) -> Vocab:
        """From a token -> id dict (`word2index`) or an id -> token dict (`index2word`); ids must be 0..n-1."""
        pairs = [(v, k) if isinstance(k, str) else (k, v) for k, v in mapping.items()]  # (id, token)
        if not all(isinstance(i, int) and isinstance(t, str) for i, t in pairs):
            raise BundleError("a vocabulary mapping must map tokens (str) to ids (int), or ids to tokens")
        ids = sorted(i for i, _ in pairs)
        if ids != list(range(len(ids))):
            missing = sorted(set(range(len(ids))) - set(ids))[:3]
            raise BundleError(f"vocabulary ids must run 0..{len(ids) - 1} without gaps (missing e.g. {missing})")
        return cls(tuple(t for _, t in sorted(pairs)), level, specials)

    def ids(self, text: str, unknown: int | None = None) -> list[int]:
        """Text -> the ids of its pieces, nothing added. A piece the vocabulary lacks becomes `unknown`, or
        is an InputError when `unknown` is None."""
        out = []
        index = self._index  # type: ignore[attr-defined]
        for piece in split(normalized(text, self.normalize), self.level):
            i = index.get(piece)
            if i is None:
                if unknown is None:
                    raise InputError(
                        f"cannot encode {piece!r} in {text!r}: it is not in the vocabulary, which has no <unk> token"
                    )
                i = unknown
            out.append(i)
        return out

    def encode(self, text: str, add_eos: bool = True, allow_unk: bool = False) -> list[int]:
        """Text -> ids with </s> appended (edgeseq's own models' framing). Unknown pieces are an InputError
        unless `allow_unk` (and the vocabulary has <unk>)."""
        ids = self.ids(text, self.unk_id if allow_unk else None)
        if add_eos:
            if self.eos_id is None:
                raise InputError("this vocabulary has no end token to append")
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, up to the end token. Every other token the model generated is shown, special ones
        included (a <pad> or <s> in an output is what the model said, as its author's decode shows it)."""
        pieces = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if not 0 <= i < len(self.tokens):
                raise InputError(f"token id {i} is out of range for a vocabulary of {len(self.tokens)}")
            pieces.append(self.tokens[i])
        return ("" if self.level == "char" else " ").join(pieces)

    def piece(self, token_id: int, first: bool) -> str:
        """The text one token adds when streaming (a word after the first brings its leading space)."""
        if token_id == self.eos_id:
            return ""
        if not 0 <= token_id < len(self.tokens):
            raise InputError(f"token id {token_id} is out of range for a vocabulary of {len(self.tokens)}")
        return self.tokens[token_id] if self.level == "char" or first else " " + self.tokens[token_id]

    def to_json(self) -> dict:
        data = {"level": self.level, "tokens": list(self.tokens), "specials": dict(self.specials or {})}
        return {**data, "normalize": list(self.normalize)} if self.normalize else data

    @classmethod
    def from_json(cls, data: object, where: str = "vocabulary") -> Vocab:
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise BundleError(f"{where}: expected an object with a 'tokens' list")
        if not all(isinstance(t, str) for t in data["tokens"]):
            raise BundleError(f"{where}: every token must be a string")
        specials = data.get("specials")
        if specials is not None and not isinstance(specials, dict):
            raise BundleError(f"{where}: 'specials' must map roles ({', '.join(ROLES)}) to token ids")
        level = data.get("level", "char")
        normalize = data.get("normalize", [])
        if not isinstance(normalize, list):
            raise BundleError(f"{where}: 'normalize' must be a list of {', '.join(NORMALIZERS)}")
        try:
            return cls(
                tuple(data["tokens"]), level if isinstance(level, str) else repr(level), specials, tuple(normalize)
            )
        except BundleError as e:
            raise BundleError(f"{where}: {e}") from None

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocab:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except RecursionError:
            raise BundleError(f"cannot read vocabulary {path}: JSON nested too deeply") from None
        except (OSError, ValueError) as e:
            raise BundleError(f"cannot read vocabulary {path}: {e}") from None
        return cls.from_json(data, where=str(path))


def _special_ids(specials: Mapping, index: dict[str, int], size: int) -> dict[str, int]:
    """Roles -> ids, from a mapping whose values are tokens (text) or ids; every problem named at once."""
    if not isinstance(specials, Mapping):
        raise BundleError(f"specials must map roles ({', '.join(ROLES)}) to tokens or ids, got {specials!r}")
    ids, problems = {}, []
    for role, value in specials.items():
        if role not in ROLES:
            problems.append(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
        elif value is None:
            continue
        elif isinstance(value, str):
            if value not in index:
                problems.append(f"{role} token {value!r} is not in the vocabulary")
            else:
                ids[role] = index[value]
        elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size:
            ids[role] = value
        else:
            problems.append(f"{role} must be a token or an id in 0..{size - 1}, got {value!r}")
    if problems:
        raise BundleError("vocabulary specials: " + "; ".join(problems))
    return ids


def normalized(text: str, steps: tuple[str, ...]) -> str:
    """`text` after the normalization steps, in NORMALIZERS order."""
    if "nfkc" in steps:
        text = unicodedata.normalize("NFKC", text)
    if "strip_accents" in steps:
        text = "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")
    if "lower" in steps:
        text = text.lower()
    return text


def split(text: str, level: str) -> list[str]:
    """A text's pieces at `level`: its characters, or its whitespace-separated words."""
    return list(text) if level == "char" else text.split()
