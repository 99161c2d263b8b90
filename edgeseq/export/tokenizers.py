"""Tokenizers at export: what goes into the bundle, and what each knows about the model's ids.

Every kind writes its files into the bundle (returning the manifest's `tokenizer` entry) and says what it
knows: the framing it adds to a text by itself (a tokenizer.json post-processor), the ids of named tokens
(for framing declared by text, e.g. "<bos>"), and the special roles of its target side (to check them
against the model's).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseq.errors import OptionsError
from edgeseq.runtime.tokenizer import tokenizer_framing
from edgeseq.vocab import Vocab


class TokenizerExport:
    """Base of the export tokenizers: sizes, files, and what they know (nothing, by default)."""

    source_size: int
    target_size: int

    def write(self, bundle: Path) -> dict[str, Any]:
        """Write the tokenizer files into `bundle`; return the manifest's `tokenizer` entry."""
        raise NotImplementedError

    def implied_framing(self) -> tuple[list[int], list[int]] | None:
        """(prefix, suffix) ids this tokenizer adds around a text by itself; None: it adds nothing known."""
        return None

    def source_id(self, token: str) -> int | None:
        """The source id of a token given as text, if the tokenizer has it."""
        return None

    def target_id(self, token: str) -> int | None:
        """The target id of a token given as text, if the tokenizer has it."""
        return None

    def target_specials(self) -> dict[str, int]:
        """Target ids of the roles this tokenizer names (pad, bos, eos, unk)."""
        return {}

    def source_unk(self) -> int | None:
        """Where a source piece the tokenizer lacks goes (edgeseq vocabularies; others handle it themselves)."""
        return None

    def source_pad(self) -> int | None:
        return None


@dataclass(frozen=True)
class VocabExport(TokenizerExport):
    """edgeseq vocabularies, with the model's own ids."""

    source: Vocab
    target: Vocab

    @property
    def source_size(self) -> int:
        return len(self.source)

    @property
    def target_size(self) -> int:
        return len(self.target)

    def write(self, bundle: Path) -> dict[str, Any]:
        self.source.save(bundle / "source_vocab.json")
        self.target.save(bundle / "target_vocab.json")
        return {
            "type": "vocab",
            "source": "source_vocab.json",
            "target": "target_vocab.json",
            "level": self.source.level,
        }

    def source_id(self, token: str) -> int | None:
        return self.source._index.get(token)  # type: ignore[attr-defined]

    def target_id(self, token: str) -> int | None:
        return self.target._index.get(token)  # type: ignore[attr-defined]

    def target_specials(self) -> dict[str, int]:
        return dict(self.target.specials or {})

    def source_unk(self) -> int | None:
        return self.source.unk_id

    def source_pad(self) -> int | None:
        return self.source.pad_id


class SentencePieceModels(TokenizerExport):
    """The user's SentencePiece .model files (source and target; the same file for a shared vocabulary)."""

    def __init__(self, source: str | Path, target: str | Path) -> None:
        try:
            import sentencepiece
        except ImportError:
            raise OptionsError("SentencePiece tokenizers need sentencepiece: pip install 'edgeseq[text]'") from None
        self.files = (Path(source), Path(target))
        try:
            self.sp = [sentencepiece.SentencePieceProcessor(model_file=str(f)) for f in self.files]
        except (OSError, RuntimeError) as e:
            raise OptionsError(f"cannot load the SentencePiece model: {e}") from None
        self.source_size, self.target_size = (sp.get_piece_size() for sp in self.sp)

    def write(self, bundle: Path) -> dict[str, Any]:
        shutil.copyfile(self.files[0], bundle / "source.spm")
        shutil.copyfile(self.files[1], bundle / "target.spm")
        return {"type": "sentencepiece", "source_model": "source.spm", "target_model": "target.spm"}

    def source_id(self, token: str) -> int | None:
        return _piece_id(self.sp[0], token)

    def target_id(self, token: str) -> int | None:
        return _piece_id(self.sp[1], token)

    def target_specials(self) -> dict[str, int]:
        sp = self.sp[1]
        ids = {"pad": sp.pad_id(), "bos": sp.bos_id(), "eos": sp.eos_id(), "unk": sp.unk_id()}
        return {k: v for k, v in ids.items() if v >= 0}

    def source_pad(self) -> int | None:
        return self.sp[0].pad_id() if self.sp[0].pad_id() >= 0 else None


class TokenizerJsonFiles(TokenizerExport):
    """Hugging Face tokenizer.json files (one shared, or source and target), or `tokenizers.Tokenizer`s."""

    def __init__(self, source: Any, target: Any = None) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise OptionsError("tokenizer.json tokenizers need tokenizers: pip install 'edgeseq[text]'") from None

        def load(x):
            if isinstance(x, Tokenizer):
                return x
            backend = getattr(x, "backend_tokenizer", None)  # a transformers fast tokenizer
            if backend is not None:
                return backend
            try:
                return Tokenizer.from_file(str(x))
            except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exception
                raise OptionsError(f"cannot load tokenizer {x}: {str(e).splitlines()[0][:200]}") from None

        self.shared = target is None or target is source
        self.tok = [load(source), load(source if self.shared else target)]
        self.source_size, self.target_size = (t.get_vocab_size() for t in self.tok)

    def write(self, bundle: Path) -> dict[str, Any]:
        if self.shared:
            self.tok[0].save(str(bundle / "tokenizer.json"))
            return {"type": "tokenizers", "file": "tokenizer.json"}
        self.tok[0].save(str(bundle / "source_tokenizer.json"))
        self.tok[1].save(str(bundle / "target_tokenizer.json"))
        return {"type": "tokenizers", "source_file": "source_tokenizer.json", "target_file": "target_tokenizer.json"}

    def implied_framing(self) -> tuple[list[int], list[int]] | None:
        tok = self.tok[0]
        return tokenizer_framing(
            lambda t: tok.encode(t, add_special_tokens=True).ids, lambda t: tok.encode(t, add_special_tokens=False).ids
        )

    def source_id(self, token: str) -> int | None:
        return self.tok[0].token_to_id(token)

    def target_id(self, token: str) -> int | None:
        return self.tok[1].token_to_id(token)


def _piece_id(sp, piece: str) -> int | None:
    i = sp.piece_to_id(piece)
    return i if i != sp.unk_id() or piece == sp.id_to_piece(sp.unk_id()) else None


def tokenizer_from(value: Any, side: str) -> Any:
    """What a user gave as a tokenizer -> a Vocab, a Path to a .model, or a tokenizer object/path (json)."""
    if isinstance(value, Vocab):
        return value
    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.is_file():
            raise OptionsError(f"{side}_tokenizer {value}: no such file")
        if path.suffix == ".json" and path.name != "tokenizer.json":
            try:
                return Vocab.load(path)  # an edgeseq vocabulary saved with Vocab.save
            except Exception:  # noqa: BLE001 - not an edgeseq vocabulary: try it as a tokenizer.json
                return path
        return path
    if hasattr(value, "backend_tokenizer") or type(value).__module__.startswith("tokenizers"):
        return value
    raise OptionsError(
        f"{side}_tokenizer: expected an edgeseq Vocab, a SentencePiece .model file or a tokenizer.json "
        f"(path, tokenizers.Tokenizer or transformers fast tokenizer), got {type(value).__name__}"
    )


def make_tokenizer_export(source: Any, target: Any) -> TokenizerExport:
    """The export tokenizer for a source and a target tokenizer (both of one kind)."""
    s, t = tokenizer_from(source, "source"), tokenizer_from(target, "target")
    if isinstance(s, Vocab) and isinstance(t, Vocab):
        return VocabExport(s, t)
    if isinstance(s, Path) and isinstance(t, Path) and s.suffix == t.suffix == ".model":
        return SentencePieceModels(s, t)
    if not isinstance(s, Vocab) and not isinstance(t, Vocab) and not (isinstance(s, Path) and s.suffix == ".model"):
        return TokenizerJsonFiles(s, None if t is s or (isinstance(s, Path) and s == t) else t)
    raise OptionsError(
        "source_tokenizer and target_tokenizer must be of one kind: two edgeseq Vocabs, two SentencePiece "
        ".model files, or tokenizer.json files"
    )
