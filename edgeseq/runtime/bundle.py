"""Opening a bundle directory: manifest, graph files (present, inside the bundle, checksummed), tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeseq.bundle import Manifest, file_sha256, read_manifest
from edgeseq.errors import BundleError
from edgeseq.vocab import Vocab


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk: its directory, checked manifest and vocabularies."""

    path: Path
    manifest: Manifest
    source_vocab: Vocab
    target_vocab: Vocab

    def graph_path(self, name: str) -> Path:
        return self.path / self.manifest.graphs[name].file


def load_bundle(path: str | Path, verify_checksums: bool = True) -> Bundle:
    """Read and check a bundle. `verify_checksums=False` skips hashing the graphs (very large bundles)."""
    root = Path(path)
    manifest = read_manifest(root)
    for name, graph in manifest.graphs.items():
        file = _inside(root, graph.file, f"graphs.{name}.file")
        if verify_checksums and file_sha256(file) != graph.sha256:
            raise BundleError(
                f"{file}: checksum mismatch with the manifest (graphs.{name}.sha256): the file was modified "
                "after export; re-export the bundle or restore the file"
            )
    for name, digest in manifest.files.items():
        file = _inside(root, name, f"files.{name}")
        if verify_checksums and file_sha256(file) != digest:
            raise BundleError(
                f"{file}: checksum mismatch with the manifest (files.{name}): the file was modified after export"
            )
    tok = manifest.tokenizer
    if tok.get("type") != "vocab":
        raise BundleError(f"{root}: tokenizer.type {tok.get('type')!r} is not supported (expected 'vocab')")
    vocabs = []
    for side, size in (("source", manifest.source_vocab_size), ("target", manifest.target_vocab_size)):
        if not isinstance(tok.get(side), str):
            raise BundleError(f"{root}: tokenizer.{side} must name the {side} vocabulary file")
        vocab = Vocab.load(_inside(root, tok[side], f"tokenizer.{side}"))
        if len(vocab) != size:
            raise BundleError(f"{root}: {side} vocabulary has {len(vocab)} tokens but {side}_vocab_size is {size}")
        vocabs.append(vocab)
    return Bundle(root, manifest, *vocabs)


def _inside(root: Path, name: str, field: str) -> Path:
    """The file `name` of the bundle; refuses one that is missing or resolves outside the bundle."""
    file = root / name
    try:
        inside = file.resolve().is_relative_to(root.resolve())
    except OSError as e:
        raise BundleError(f"{file}: cannot resolve ({e})") from None
    if not inside:
        raise BundleError(f"{file}: {field} points outside the bundle directory; refusing to read it")
    if not file.is_file():
        raise BundleError(f"{file}: missing (listed in the manifest as {field})")
    return file
