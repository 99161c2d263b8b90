"""Opening a bundle directory: manifest, graph files (present, inside the bundle, checksummed), tokenizer."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from edgeseq.bundle import Manifest, SourceFraming, file_sha256
from edgeseq.errors import BundleError, InputError
from edgeseq.manifest import plain_file_name, read_manifest
from edgeseq.runtime.external import external_data_locations
from edgeseq.runtime.tokenizer import HFTokenizer, Tokenizer, VocabTokenizer, load_tokenizer, tokenizer_files
from edgeseq.vocab import Vocab


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk: its directory, checked manifest and tokenizer."""

    path: Path
    manifest: Manifest
    tokenizer: Tokenizer

    @property
    def source_vocab(self) -> Vocab | None:
        """edgeseq's own source vocabulary (None for SentencePiece and Hugging Face tokenizers)."""
        return self.tokenizer.source if isinstance(self.tokenizer, VocabTokenizer) else None

    @property
    def target_vocab(self) -> Vocab | None:
        return self.tokenizer.target if isinstance(self.tokenizer, VocabTokenizer) else None

    def graph_path(self, name: str) -> Path:
        return self.path / self.manifest.graphs[name].file

    def weights_bytes(self) -> int:
        """The size of the model: its graph files and the files their weights lie in (weights.bin)."""
        files = {g.file for g in self.manifest.loop_graphs.values()} | {
            f for f in self.manifest.files if f.endswith(".bin")
        }
        return sum((self.path / f).stat().st_size for f in files if (self.path / f).is_file())

    def encode(self, text: str) -> list[int]:
        """Source text -> the encoder's input ids, framed as the model was trained (prefix + pieces + suffix)."""
        if not isinstance(text, str) or not text.strip():
            raise InputError("empty source text: give at least one character")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates: bytes that were not UTF-8 (e.g. from a command line)
            raise InputError(f"source text {text!r} is not valid UTF-8 text") from None
        return self.manifest.source_framing.frame(self.tokenizer.encode(text))


def load_bundle(path: str | Path, verify_checksums: bool = True) -> Bundle:
    """Read and check a bundle. `verify_checksums=False` skips hashing the files (very large bundles)."""
    root = Path(path)
    manifest = read_manifest(root)
    try:
        return _load(root, manifest, verify_checksums)
    except OSError as e:  # a file vanished, a permission, a loop of symlinks
        raise BundleError(f"{root}: cannot read the bundle ({type(e).__name__}: {e})") from None


def _load(root: Path, manifest: Manifest, verify_checksums: bool) -> Bundle:
    for name, graph in manifest.graphs.items():
        file = _inside(root, graph.file, f"graphs.{name}.file")
        if verify_checksums and file_sha256(file) != graph.sha256:  # first: it explains any change
            raise BundleError(
                f"{file}: checksum mismatch with the manifest (graphs.{name}.sha256): the file was modified "
                "after export; re-export the bundle or restore the file"
            )
        for location in external_data_locations(file):
            if location not in manifest.files:
                raise BundleError(
                    f"{file}: its weights point to {location!r}, which is not a file of this bundle's manifest; "
                    "refusing to read it"
                )
    for name, digest in manifest.files.items():
        file = _inside(root, name, f"files.{name}")
        if verify_checksums and file_sha256(file) != digest:
            raise BundleError(
                f"{file}: checksum mismatch with the manifest (files.{name}): the file was modified after export"
            )
    for name in tokenizer_files(manifest.tokenizer):
        if not plain_file_name(name):
            raise BundleError(f"{root}: tokenizer file {str(name)[:80]!r} must be a plain file name inside the bundle")
        if name not in manifest.files:
            raise BundleError(
                f"{root}: tokenizer file {name!r} is not listed (with its sha256) in the manifest's files"
            )
    unk = manifest.source_framing.unk if manifest.source_framing is not None else None
    tokenizer = load_tokenizer(root, manifest.tokenizer, unk)
    if manifest.source_framing is None:  # format 1, tokenizer.json: its post-processor framed the sources
        prefix, suffix = tokenizer.framing() if isinstance(tokenizer, HFTokenizer) else ([], [])
        framing = SourceFraming(tuple(prefix), tuple(suffix), manifest.special_tokens.get("pad", 0))
        manifest = dataclasses.replace(manifest, source_framing=framing)
    if isinstance(tokenizer, VocabTokenizer):
        _check_specials(root, manifest, tokenizer)
    for side, size, have in (
        ("source", manifest.source_vocab_size, tokenizer.source_size),
        ("target", manifest.target_vocab_size, tokenizer.target_size),
    ):
        if have > size:
            raise BundleError(f"{root}: the {side} tokenizer has {have} tokens but {side}_vocab_size is {size}")
    return Bundle(root, manifest, tokenizer)


def _check_specials(root: Path, m: Manifest, tokenizer: VocabTokenizer) -> None:
    """The ids the manifest gives special roles must be the ones its vocabularies give them: otherwise decoding
    stops at the wrong token, or the text shows one token for another."""
    named = tokenizer.target.specials or {}
    wrong = [
        f"special_tokens.{role} = {m.special_tokens[role]} but the target vocabulary's {role} is {named[role]}"
        for role in ("eos", "pad", "bos")
        if role in m.special_tokens and role in named and m.special_tokens[role] != named[role]
    ]
    unk = tokenizer.source.unk_id
    if m.source_framing.unk is not None and unk is not None and m.source_framing.unk != unk:
        wrong.append(f"source_framing.unk = {m.source_framing.unk} but the source vocabulary's unk is {unk}")
    if wrong:
        raise BundleError(f"{root}: " + "; ".join(wrong))


def _inside(root: Path, name: str, field: str) -> Path:
    """The file `name` of the bundle; refuses one that is missing or resolves outside the bundle."""
    file = root / name
    try:
        inside = file.resolve(strict=False).is_relative_to(root.resolve())
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop on older Pythons
        raise BundleError(f"{file}: cannot resolve ({e})") from None
    if not inside:
        raise BundleError(f"{file}: {field} points outside the bundle directory; refusing to read it")
    if not file.is_file():
        raise BundleError(f"{file}: missing (listed in the manifest as {field})")
    return file
