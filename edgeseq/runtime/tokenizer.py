"""Tokenizers the runtime can load from a bundle, without transformers.

- "vocab": edgeseq's character/word vocabularies with the model's own ids (source_vocab.json, target_vocab.json);
- "sentencepiece": SentencePiece models, source and target (needs `sentencepiece`); with a `vocab` file
  (Marian's vocab.json) pieces are mapped through it, else the model's own ids are used;
- "tokenizers": Hugging Face tokenizer.json files, one shared or one per side (needs `tokenizers`).

Every kind offers encode(text) -> the ids of the text's pieces (no framing: the bundle's `source_framing`
adds the model's start/end tokens), decode(ids) -> text, and an incremental detokenizer for streaming.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from edgeseq.errors import BundleError, InputError
from edgeseq.vocab import Vocab

MAX_TOKENIZER_BYTES = 256 << 20


class Detokenizer(Protocol):
    def add(self, token_id: int) -> str:
        """The text this token adds that can no longer change ('' while it may)."""

    def finish(self) -> str:
        """The rest of the text: what add() returned plus this equals decode(all tokens)."""


class Tokenizer(Protocol):
    source_size: int
    target_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids) -> str: ...

    def detokenizer(self) -> Detokenizer: ...

    def source_text(self, ids) -> str: ...


class PieceDetokenizer:
    """Streaming for tokenizers whose text is the concatenation of per-token pieces (edgeseq vocabularies)."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab, self.count, self.ended = vocab, 0, False

    def add(self, token_id: int) -> str:
        if self.ended or token_id == self.vocab.eos_id:
            self.ended = True
            return ""
        piece = self.vocab.piece(int(token_id), first=self.count == 0)
        self.count += bool(piece)
        return piece

    def finish(self) -> str:
        return ""


class TextDetokenizer:
    """Streaming for any tokenizer: decode the tokens so far and release only text later tokens cannot
    change. Decoders clean up spaces around a word (WordPiece), strip the ends (SentencePiece) or wait for
    the rest of a UTF-8 character (byte-level BPE), so the last word, trailing spaces and an unfinished
    character are held back until the next word begins or the sequence ends."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode, self.ids, self.sent = decode, [], ""

    def add(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        text = self.decode(self.ids)
        cut = max(text.rfind(c) for c in (" ", "\n", "\t"))
        stable = text[:cut] if cut > 0 else ""
        if "\ufffd" in stable[len(self.sent) :] or not stable.startswith(self.sent):
            return ""
        out, self.sent = stable[len(self.sent) :], stable
        return out

    def finish(self) -> str:
        text = self.decode(self.ids)
        if not text.startswith(self.sent):  # cannot happen for the decoders above; never emit twice
            raise InputError(f"streamed text {self.sent!r} is not a prefix of the decoded text {text!r}")
        out, self.sent = text[len(self.sent) :], text
        return out


class VocabTokenizer:
    """edgeseq's own vocabularies; a piece the source vocabulary lacks becomes `unk` (None: refused)."""

    def __init__(self, source: Vocab, target: Vocab, unk: int | None = None) -> None:
        self.source, self.target, self.unk = source, target, unk
        self.source_size, self.target_size = len(source), len(target)

    def encode(self, text: str) -> list[int]:
        return self.source.ids(text, self.unk)

    def decode(self, ids) -> str:
        return self.target.decode(ids)

    def detokenizer(self) -> Detokenizer:
        return PieceDetokenizer(self.target)

    def source_text(self, ids) -> str:
        """Source ids -> text (for checks that need source sentences)."""
        return self.source.decode(ids)


class SentencePieceTokenizer:
    """SentencePiece models; Marian maps their pieces through its vocab.json, others use the model's ids."""

    def __init__(self, root: Path, entry: dict[str, Any]) -> None:
        try:
            import sentencepiece
        except ImportError:
            raise BundleError("this bundle's tokenizer needs sentencepiece: pip install 'edgeseq[text]'") from None
        self.source_sp = _spm(sentencepiece, root / entry["source_model"])
        self.target_sp = _spm(sentencepiece, root / entry["target_model"])
        self.ids: dict[str, int] | None = None
        if entry.get("vocab"):
            vocab = _json(root / entry["vocab"])
            if not isinstance(vocab, dict) or not all(
                isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 24
                for k, v in vocab.items()
            ):
                raise BundleError(f"{root / entry['vocab']}: expected a JSON object of piece -> id (0..2^24)")
            self.ids = vocab
            # id -> piece as a list, not a second dict: a 58k vocabulary then costs ~0.5 MB rather than ~5 MB
            self.pieces: list[str | None] = [None] * (max(vocab.values(), default=-1) + 1)
            for p, i in vocab.items():
                self.pieces[i] = p
            missing = [entry.get(k) for k in ("eos", "unk", "pad") if entry.get(k) not in vocab]
            if missing:
                raise BundleError(f"{root / entry['vocab']}: special pieces {missing} are not in the vocabulary")
            self.unk = vocab[entry["unk"]]
            self.special = {vocab[entry[k]] for k in ("eos", "unk", "pad")}  # what HF skips with skip_special
            self.source_size = self.target_size = len(vocab)
        else:
            self.unk = self.source_sp.unk_id()
            self.special = set()
            self.source_size, self.target_size = self.source_sp.get_piece_size(), self.target_sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        if self.ids is None:
            return list(self.source_sp.encode(text))
        return [self.ids.get(p, self.unk) for p in self.source_sp.encode(text, out_type=str)]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.ids is None:
            return self.target_sp.decode([i for i in ids if 0 <= i < self.target_size])
        pieces = [self.pieces[i] for i in ids if i not in self.special and 0 <= i < len(self.pieces)]
        return self.target_sp.decode_pieces([p for p in pieces if p is not None]).replace("\u2581", " ").strip()

    def detokenizer(self) -> Detokenizer:
        return TextDetokenizer(self.decode)

    def source_text(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.ids is None:
            return self.source_sp.decode([i for i in ids if 0 <= i < self.source_size])
        pieces = [self.pieces[i] for i in ids if i not in self.special and 0 <= i < len(self.pieces)]
        return self.source_sp.decode_pieces([p for p in pieces if p is not None]).replace("\u2581", " ").strip()


class HFTokenizer:
    """Hugging Face tokenizer.json files (one shared, or one per side); the text's pieces only, no specials."""

    def __init__(self, root: Path, entry: dict[str, Any]) -> None:
        try:
            from tokenizers import Tokenizer as Backend
        except ImportError:
            raise BundleError("this bundle's tokenizer needs tokenizers: pip install 'edgeseq[text]'") from None
        files = [entry.get("source_file", entry.get("file")), entry.get("target_file", entry.get("file"))]
        self.source_backend, self.target_backend = (_hf(Backend, root / f) for f in files)
        size = entry.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or not 0 < size < 1 << 24):
            raise BundleError(f"{root}: tokenizer.size {size!r} is not a vocabulary size")
        self.source_size = size or self.source_backend.get_vocab_size()
        self.target_size = size or self.target_backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.source_backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.target_backend.decode([int(i) for i in ids], skip_special_tokens=True)

    def detokenizer(self) -> Detokenizer:
        return TextDetokenizer(self.decode)

    def source_text(self, ids) -> str:
        return self.source_backend.decode([int(i) for i in ids], skip_special_tokens=True)

    def framing(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer's post-processor puts before and after a text (its source framing)."""
        return tokenizer_framing(
            lambda t: self.source_backend.encode(t, add_special_tokens=True).ids,
            lambda t: self.source_backend.encode(t, add_special_tokens=False).ids,
        )


def tokenizer_framing(
    with_specials: Callable[[str], Sequence[int]], plain: Callable[[str], Sequence[int]]
) -> tuple[list[int], list[int]]:
    """Prefix and suffix ids a tokenizer adds around a text, found by encoding probes with and without them."""
    for probe in ("a b c", "hello world", "x"):
        full, bare = list(with_specials(probe)), list(plain(probe))
        if not bare:
            continue
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
    raise BundleError("cannot tell which tokens the tokenizer adds around a text; declare the source framing")


def _json(path: Path) -> Any:
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise BundleError(f"{path}: larger than {MAX_TOKENIZER_BYTES >> 20} MB")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise BundleError(f"{path}: JSON nested too deeply") from None
    except ValueError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None


def _spm(sentencepiece, path: Path):
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise BundleError(f"{path}: larger than {MAX_TOKENIZER_BYTES >> 20} MB")
    try:
        return sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (OSError, RuntimeError, ValueError) as e:
        raise BundleError(f"{path}: not a SentencePiece model ({str(e).splitlines()[0] if str(e) else e})") from None


def _hf(backend, path: Path):
    if path.stat().st_size > MAX_TOKENIZER_BYTES:
        raise BundleError(f"{path}: larger than {MAX_TOKENIZER_BYTES >> 20} MB")
    try:
        tok = backend.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own Exception type for a malformed file
        raise BundleError(f"{path}: not a tokenizer.json ({str(e).splitlines()[0][:200] if str(e) else e})") from None
    tok.no_padding()
    tok.no_truncation()
    return tok


TOKENIZER_FILES = {
    "vocab": ("source", "target"),
    "sentencepiece": ("source_model", "target_model", "vocab"),
    "tokenizers": ("file", "source_file", "target_file"),
}


def load_tokenizer(root: Path, entry: dict[str, Any], unk: int | None = None) -> Tokenizer:
    """The tokenizer a manifest's `tokenizer` entry describes; `unk`: what unknown vocabulary pieces become."""
    kind = entry.get("type")
    if kind not in TOKENIZER_FILES:
        raise BundleError(
            f"{root}: tokenizer.type {str(kind)[:40]!r} is not supported (expected {', '.join(TOKENIZER_FILES)})"
        )
    try:
        if kind == "vocab":
            return VocabTokenizer(Vocab.load(root / entry["source"]), Vocab.load(root / entry["target"]), unk)
        if kind == "sentencepiece":
            return SentencePieceTokenizer(root, entry)
        return HFTokenizer(root, entry)
    except BundleError as e:
        raise BundleError(f"{root}: cannot load its {kind} tokenizer: {e}") from None
    except (KeyError, OSError, ValueError, RuntimeError, TypeError) as e:
        raise BundleError(f"{root}: cannot load its {kind} tokenizer ({type(e).__name__}: {e})") from None


def tokenizer_files(entry: dict[str, Any]) -> list[str]:
    """The bundle files a tokenizer entry reads."""
    return [entry[k] for k in TOKENIZER_FILES.get(entry.get("type"), ()) if entry.get(k) is not None]


__all__ = [
    "Detokenizer",
    "HFTokenizer",
    "SentencePieceTokenizer",
    "TextDetokenizer",
    "Tokenizer",
    "VocabTokenizer",
    "load_tokenizer",
    "tokenizer_framing",
    "tokenizer_files",
]
