"""Tokenizers the runtime can load from a bundle, without transformers.

- "vocab": edgeseq's own character/word vocabularies (source_vocab.json, target_vocab.json);
- "sentencepiece": Marian's pair of SentencePiece models and its shared vocab.json (needs `sentencepiece`);
- "tokenizers": a Hugging Face tokenizer.json (BART, mBART, T5...; needs `tokenizers`).

Every kind offers encode(text) -> ids (with </s>), decode(ids) -> text, piece(id, first) -> text, and the
files it reads (checksummed in the manifest).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from edgeseq.errors import BundleError, InputError
from edgeseq.vocab import Vocab


class Tokenizer(Protocol):
    source_size: int
    target_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids) -> str: ...

    def piece(self, token_id: int, first: bool) -> str: ...


class VocabTokenizer:
    """edgeseq's own vocabularies."""

    def __init__(self, source: Vocab, target: Vocab) -> None:
        self.source, self.target = source, target
        self.source_size, self.target_size = len(source), len(target)

    def encode(self, text: str) -> list[int]:
        return self.source.encode(text)

    def decode(self, ids) -> str:
        return self.target.decode(ids)

    def piece(self, token_id: int, first: bool) -> str:
        return self.target.piece(token_id, first)


class SentencePieceTokenizer:
    """Marian: SentencePiece pieces mapped through a shared vocabulary; </s> appended."""

    def __init__(self, root: Path, entry: dict[str, Any]) -> None:
        try:
            import sentencepiece
        except ImportError:
            raise BundleError("this bundle's tokenizer needs sentencepiece: pip install 'edgeseq[text]'") from None
        self.source_sp = sentencepiece.SentencePieceProcessor(model_file=str(root / entry["source_model"]))
        self.target_sp = sentencepiece.SentencePieceProcessor(model_file=str(root / entry["target_model"]))
        vocab = json.loads((root / entry["vocab"]).read_text(encoding="utf-8"))
        self.ids: dict[str, int] = vocab
        # id -> piece as a list, not a second dict: a 58k vocabulary then costs ~0.5 MB rather than ~5 MB
        self.pieces: list[str | None] = [None] * (max(vocab.values(), default=-1) + 1)
        for p, i in vocab.items():
            self.pieces[i] = p
        self.eos, self.unk, self.pad = vocab[entry["eos"]], vocab[entry["unk"]], vocab[entry["pad"]]
        self.special = {self.eos, self.pad, self.unk}  # what HF skips with skip_special_tokens
        self.source_size = self.target_size = len(vocab)

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(p, self.unk) for p in self.source_sp.encode(text, out_type=str)] + [self.eos]

    def decode(self, ids) -> str:
        pieces = [self._piece(int(i)) for i in ids if int(i) not in self.special]
        pieces = [p for p in pieces if p is not None]
        return self.target_sp.decode_pieces(pieces).replace("\u2581", " ").strip()  # as MarianTokenizer

    def _piece(self, token_id: int) -> str | None:
        return self.pieces[token_id] if 0 <= token_id < len(self.pieces) else None

    def piece(self, token_id: int, first: bool) -> str:
        text = None if token_id in self.special else self._piece(token_id)
        if text is None:
            return ""
        text = text.replace("\u2581", " ")
        return text.lstrip() if first else text


class HFTokenizer:
    """A Hugging Face tokenizer.json; special tokens as its post-processor adds them."""

    def __init__(self, root: Path, entry: dict[str, Any]) -> None:
        try:
            from tokenizers import Tokenizer as Backend
        except ImportError:
            raise BundleError("this bundle's tokenizer needs tokenizers: pip install 'edgeseq[text]'") from None
        self.backend = Backend.from_file(str(root / entry["file"]))
        self.backend.no_padding()
        self.backend.no_truncation()
        self.source_size = self.target_size = int(entry.get("size", self.backend.get_vocab_size()))
        self._seen: list[int] = []

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text).ids

    def decode(self, ids) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=True)

    def piece(self, token_id: int, first: bool) -> str:
        return self.backend.decode([int(token_id)], skip_special_tokens=True)


def load_tokenizer(root: Path, entry: dict[str, Any]) -> Tokenizer:
    """The tokenizer a manifest's `tokenizer` entry describes."""
    kind = entry.get("type")
    try:
        if kind == "vocab":
            return VocabTokenizer(Vocab.load(root / entry["source"]), Vocab.load(root / entry["target"]))
        if kind == "sentencepiece":
            return SentencePieceTokenizer(root, entry)
        if kind == "tokenizers":
            return HFTokenizer(root, entry)
    except (KeyError, OSError, ValueError, RuntimeError) as e:
        raise BundleError(f"{root}: cannot load its {kind} tokenizer ({type(e).__name__}: {e})") from None
    raise BundleError(f"{root}: tokenizer.type {kind!r} is not supported (expected vocab, sentencepiece or tokenizers)")


def tokenizer_files(entry: dict[str, Any]) -> list[str]:
    """The bundle files a tokenizer entry reads."""
    keys = {
        "vocab": ("source", "target"),
        "sentencepiece": ("source_model", "target_model", "vocab"),
        "tokenizers": ("file",),
    }.get(entry.get("type"), ())
    return [entry[k] for k in keys if isinstance(entry.get(k), str)]


__all__ = [
    "HFTokenizer",
    "InputError",
    "SentencePieceTokenizer",
    "Tokenizer",
    "VocabTokenizer",
    "load_tokenizer",
    "tokenizer_files",
]
