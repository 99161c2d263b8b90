"""Character- and word-level vocabularies: text <-> token ids, saved as JSON (no torch)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgeseq.errors import BundleError, InputError

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
LEVELS = ("char", "word")


@dataclass(frozen=True)
class Vocab:
    """An ordered token list; ids 0..3 are always <pad>, <s>, </s>, <unk>."""

    tokens: tuple[str, ...]
    level: str = "char"  # "char": one token per character; "word": whitespace-separated words

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise BundleError(f"vocabulary level {self.level!r} is not one of {', '.join(LEVELS)}")
        if tuple(self.tokens[: len(SPECIALS)]) != SPECIALS:
            raise BundleError(f"vocabulary must start with the special tokens {list(SPECIALS)}")
        if len(set(self.tokens)) != len(self.tokens):
            raise BundleError("vocabulary has duplicate tokens")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def build(cls, texts: Iterable[str], level: str = "char", min_count: int = 1) -> Vocab:
        """Collect every character (or word) of `texts`, most frequent first after the specials."""
        counts = Counter(t for text in texts for t in _split(text, level))
        ordered = sorted((t for t, n in counts.items() if n >= min_count), key=lambda t: (-counts[t], t))
        return cls(SPECIALS + tuple(t for t in ordered if t not in SPECIALS), level)

    def encode(self, text: str, add_eos: bool = True, allow_unk: bool = False) -> list[int]:
        """Text -> ids, with </s> appended. Unknown pieces are an InputError unless `allow_unk`."""
        ids = []
        for piece in _split(text, self.level):
            i = self._index.get(piece)  # type: ignore[attr-defined]
            if i is None:
                if not allow_unk:
                    raise InputError(f"cannot encode {piece!r} in {text!r}: it is not in the vocabulary")
                i = self.unk_id
            ids.append(i)
        return ids + [self.eos_id] if add_eos else ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, stopping at </s> and skipping <pad> and <s>."""
        pieces = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            if not 0 <= i < len(self.tokens):
                raise InputError(f"token id {i} is out of range for a vocabulary of {len(self.tokens)}")
            pieces.append(self.tokens[i])
        return ("" if self.level == "char" else " ").join(pieces)

    def piece(self, token_id: int, first: bool) -> str:
        """The text one token adds when streaming (a word after the first brings its leading space)."""
        if token_id in (self.pad_id, self.bos_id, self.eos_id):
            return ""
        if not 0 <= token_id < len(self.tokens):
            raise InputError(f"token id {token_id} is out of range for a vocabulary of {len(self.tokens)}")
        return self.tokens[token_id] if self.level == "char" or first else " " + self.tokens[token_id]

    def to_json(self) -> dict:
        return {"level": self.level, "tokens": list(self.tokens)}

    @classmethod
    def from_json(cls, data: object, where: str = "vocabulary") -> Vocab:
        if not isinstance(data, dict) or not isinstance(data.get("tokens"), list):
            raise BundleError(f"{where}: expected an object with a 'tokens' list")
        if not all(isinstance(t, str) for t in data["tokens"]):
            raise BundleError(f"{where}: every token must be a string")
        return cls(tuple(data["tokens"]), str(data.get("level", "char")))

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=0), encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocab:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BundleError(f"cannot read vocabulary {path}: {e}") from None
        return cls.from_json(data, where=str(path))


def _split(text: str, level: str) -> list[str]:
    return list(text) if level == "char" else text.split()
