"""validate_bundle: a bundle against a reference (the PyTorch checkpoint it came from, or another bundle)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from edgeseq.bundle import MANIFEST, Manifest, file_sha256
from edgeseq.errors import BundleError, InputError
from edgeseq.export.adapter import TorchBackend
from edgeseq.export.checkpoint import load_checkpoint
from edgeseq.export.head import without_head
from edgeseq.export.hf import is_hf_checkpoint
from edgeseq.export.parity import PRECISION_THRESHOLDS, ParityReport, Thresholds, check_parity, sample_sources
from edgeseq.export.pipeline import adapter_for
from edgeseq.runtime.bundle import Bundle, load_bundle
from edgeseq.runtime.generator import OrtBackend
from edgeseq.runtime.options import DecodingOptions
from edgeseq.runtime.sources import read_sources
from edgeseq.runtime.tokenizer import tokenizer_files


def read_pairs(path: str | Path) -> tuple[list[str], list[str] | None]:
    """Sources, one per line, each optionally followed by a tab and its reference translation."""
    rows = [line.split("\t") for line in read_sources(path)]
    for i, row in enumerate(rows, 1):
        if not row[0].strip() or len(row) > 2:
            raise InputError(f"{path}, line {i}: expected 'source' or 'source<TAB>reference'")
    with_refs = [len(r) == 2 for r in rows]
    if any(with_refs) and not all(with_refs):
        raise InputError(f"{path}: give a reference on every line or on none")
    return [r[0] for r in rows], ([r[1] for r in rows] if all(with_refs) else None)


def precision_of(manifest: Manifest) -> str:
    """'int8', 'fp16' or 'fp32': the lowest precision any graph of the bundle runs in."""
    recipe = (manifest.provenance.get("quantize") or {}).get("recipe", {})
    modes = set(recipe.values()) if isinstance(recipe, dict) else set()
    if any("int8" in str(m) for m in modes):
        return "int8"
    return "fp16" if "fp16" in modes else "fp32"


def _reference(path: Path, bundle: Bundle):
    """A backend for the reference: a bundle directory, or an edgeseq checkpoint file."""
    m = bundle.manifest
    if (path / MANIFEST).is_file():
        ref = load_bundle(path)
        if ref.manifest.family != m.family or {k: (g.inputs, g.outputs) for k, g in ref.manifest.graphs.items()} != {
            k: (g.inputs, g.outputs) for k, g in m.graphs.items()
        }:
            raise BundleError(f"{path} and {bundle.path} are not the same model: their graphs differ")
        same = ref.manifest.tokenizer == m.tokenizer and all(
            file_sha256(ref.path / f) == file_sha256(bundle.path / f) for f in tokenizer_files(m.tokenizer)
        )
        if not same:
            raise BundleError(f"{path} and {bundle.path} have different tokenizers")
        return OrtBackend(ref)
    elif is_hf_checkpoint(path):
        from edgeseq.export.hf import load_hf_checkpoint

        adapter = adapter_for(load_hf_checkpoint(path).model)
        specs = adapter.graph_specs()
        graphs = {k: without_head(g, m.decoder) for k, g in m.graphs.items()}
        if any(specs[k].inputs != g.inputs or specs[k].outputs != g.outputs for k, g in graphs.items()):
            raise BundleError(f"{path} does not match {bundle.path}: their graphs differ")
        return TorchBackend(adapter)
    else:
        ckpt = load_checkpoint(path)
        adapter = adapter_for(ckpt.model)
        specs = adapter.graph_specs()
        if adapter.family != m.family or set(specs) != set(m.graphs):
            raise BundleError(
                f"{path} is a {adapter.family} model with graphs {sorted(specs)}, "
                f"but {bundle.path} is a {m.family} bundle with graphs {sorted(m.graphs)}"
            )
        for name, spec in specs.items():
            graph = without_head(m.graphs[name], m.decoder)
            if spec.inputs != graph.inputs or spec.outputs != graph.outputs:
                raise BundleError(f"{path} does not match {bundle.path}: graph {name} has different inputs/outputs")
        if (ckpt.source_vocab, ckpt.target_vocab) != (bundle.source_vocab, bundle.target_vocab):
            raise BundleError(f"{path} and {bundle.path} have different vocabularies")
        return TorchBackend(adapter)


def validate_bundle(
    bundle_dir: str | Path,
    reference: str | Path,
    texts: Sequence[str] | None = None,
    references: Sequence[str] | None = None,
    thresholds: Thresholds | None = None,
    count: int = 16,
    record: bool = True,
) -> ParityReport:
    """Graph, step and sequence parity of a bundle against `reference` (checkpoint file or bundle directory).

    Thresholds default by the bundle's precision (fp32, fp16, int8). With `record`, the report is written
    into the bundle's manifest.
    """
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    ref = _reference(Path(reference), bundle)
    thresholds = thresholds or PRECISION_THRESHOLDS[precision_of(m)]
    if texts:
        sources = [bundle.tokenizer.encode(t) for t in texts]
    else:
        sources = sample_sources(m.source_vocab_size, count=count, seed=1234)
    report = check_parity(
        ref,
        OrtBackend(bundle),
        m.decoder,
        sources,
        thresholds,
        DecodingOptions(max_new_tokens=m.max_new_tokens),
        references,
        bundle.tokenizer.decode,
    )
    if record:
        record_parity(bundle.path, {"reference": str(reference), "precision": precision_of(m), **report.to_json()})
    return report


def record_parity(bundle_dir: Path, parity: dict) -> None:
    """Replace the manifest's `parity` field (write to a temporary file, then rename over)."""
    path = Path(bundle_dir) / MANIFEST
    data = json.loads(path.read_text(encoding="utf-8"))
    data["parity"] = parity
    tmp = path.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
