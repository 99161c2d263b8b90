"""Opening a bundle directory: manifest, graph files (present, inside the bundle, checksummed), tokenizer."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from edgeseq.bundle import Manifest, file_sha256, read_manifest
from edgeseq.errors import BundleError
from edgeseq.runtime.tokenizer import Tokenizer, VocabTokenizer, load_tokenizer, tokenizer_files
from edgeseq.vocab import Vocab


@dataclass(frozen=True)
class Bundle:
    """A bundle on disk: its directory, checked manifest and tokenizer."""

    path: Path
    manifest: Manifest
    tokenizer: Tokenizer

    @property
    def source_vocab(self) -> Vocab | None:
        """edgeseq's own source vocabulary (None for Hugging Face tokenizers)."""
        return self.tokenizer.source if isinstance(self.tokenizer, VocabTokenizer) else None

    @property
    def target_vocab(self) -> Vocab | None:
        return self.tokenizer.target if isinstance(self.tokenizer, VocabTokenizer) else None

    def graph_path(self, name: str) -> Path:
        return self.path / self.manifest.graphs[name].file


def load_bundle(path: str | Path, verify_checksums: bool = True) -> Bundle:
    """Read and check a bundle. `verify_checksums=False` skips hashing the graphs (very large bundles)."""
    root = Path(path)
    manifest = read_manifest(root)
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
        _inside(root, name, "tokenizer")
    tokenizer = load_tokenizer(root, manifest.tokenizer)
    for side, size, have in (
        ("source", manifest.source_vocab_size, tokenizer.source_size),
        ("target", manifest.target_vocab_size, tokenizer.target_size),
    ):
        if have > size:
            raise BundleError(f"{root}: the {side} tokenizer has {have} tokens but {side}_vocab_size is {size}")
    return Bundle(root, manifest, tokenizer)


_LOCATION = re.compile(rb"\n\x08location\x12")


def external_data_locations(path: Path) -> set[str]:
    """The external-data file names an ONNX file refers to, read from its bytes (the runtime has no onnx).

    They are the values of TensorProto.external_data entries whose key is "location".
    """
    data = path.read_bytes()
    found = set()
    for m in _LOCATION.finditer(data):
        i, length, shift = m.end(), 0, 0
        while i < len(data):  # a protobuf varint
            byte = data[i]
            length |= (byte & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if not byte & 0x80:
                break
        found.add(data[i : i + length].decode("utf-8", errors="replace"))
    return found


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
