"""validate_bundle: a bundle against the PyTorch checkpoint it was made from."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgeseq.errors import BundleError
from edgeseq.export.adapter import TorchBackend
from edgeseq.export.checkpoint import load_checkpoint
from edgeseq.export.parity import ParityReport, Thresholds, check_parity, sample_sources
from edgeseq.export.pipeline import adapter_for
from edgeseq.runtime.bundle import load_bundle
from edgeseq.runtime.generator import OrtBackend
from edgeseq.runtime.options import DecodingOptions


def validate_bundle(
    bundle_dir: str | Path,
    checkpoint: str | Path,
    texts: Sequence[str] | None = None,
    thresholds: Thresholds = Thresholds(),
    count: int = 16,
) -> ParityReport:
    """Graph and greedy-sequence parity of a bundle against a checkpoint, on `texts` or random sources."""
    bundle = load_bundle(bundle_dir)
    ckpt = load_checkpoint(checkpoint)
    adapter = adapter_for(ckpt.model)
    m = bundle.manifest
    specs = adapter.graph_specs()
    if adapter.family != m.family or set(specs) != set(m.graphs):
        raise BundleError(
            f"{checkpoint} is a {adapter.family} model with graphs {sorted(specs)}, "
            f"but {bundle_dir} is a {m.family} bundle with graphs {sorted(m.graphs)}"
        )
    for name, spec in specs.items():
        if spec.inputs != m.graphs[name].inputs or spec.outputs != m.graphs[name].outputs:
            raise BundleError(f"{checkpoint} does not match {bundle_dir}: graph {name} has different inputs/outputs")
    if ckpt.source_vocab != bundle.source_vocab or ckpt.target_vocab != bundle.target_vocab:
        raise BundleError(f"{checkpoint} and {bundle_dir} have different vocabularies")
    if texts:
        sources = [bundle.source_vocab.encode(t) for t in texts]
    else:
        sources = sample_sources(m.source_vocab_size, count=count, seed=1234)
    return check_parity(
        TorchBackend(adapter), OrtBackend(bundle), sources, thresholds, DecodingOptions(max_new_tokens=m.max_new_tokens)
    )
