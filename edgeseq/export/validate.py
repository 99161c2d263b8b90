"""validate_bundle: a bundle against a reference: another bundle (e.g. the fp32 one), the edgeseq checkpoint
it came from, a Hugging Face folder, or the user's own code (`FILE.py:FUNCTION`, see export/user.py)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from edgeseq.bundle import MANIFEST, file_sha256
from edgeseq.errors import BundleError, InputError, OptionsError
from edgeseq.export.adapter import Seq2SeqAdapter, TorchBackend
from edgeseq.export.checkpoint import load_checkpoint
from edgeseq.export.head import without_head
from edgeseq.export.hf import is_hf_checkpoint
from edgeseq.export.parity import (
    PRECISION_THRESHOLDS,
    ParityReport,
    Thresholds,
    check_parity,
    precision_of,
    sample_sources,
)
from edgeseq.export.pipeline import adapter_for, encodable, resolve_framing
from edgeseq.export.text_check import check_text, random_texts, reference_outputs
from edgeseq.export.user import Loaded, call_user_function, prepare
from edgeseq.fsutil import WriteError, describe_os_error
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


def is_user_function(reference: str | Path) -> bool:
    """FILE.py:FUNCTION or package.module:FUNCTION (and not an existing path)."""
    text = str(reference)
    return ":" in text and not Path(text).exists()


def _same_graphs(adapter: Seq2SeqAdapter, bundle: Bundle, reference: str) -> None:
    m = bundle.manifest
    specs = adapter.graph_specs()
    graphs = {k: without_head(g, m.decoder) for k, g in m.loop_graphs.items()}
    if set(specs) != set(graphs):
        raise BundleError(
            f"{reference} cuts the model into graphs {sorted(specs)}, but {bundle.path} has {sorted(graphs)}"
        )
    for name, spec in specs.items():
        if spec.inputs != graphs[name].inputs or spec.outputs != graphs[name].outputs:
            raise BundleError(f"{reference} does not match {bundle.path}: graph {name} has different inputs/outputs")


def _declarations(loaded: Loaded, bundle: Bundle) -> list[str]:
    """Where the bundle's special ids or source framing differ from what the user's code declares."""
    m = bundle.manifest
    own = loaded.adapter.special_tokens()
    diffs = [
        f"special id {role}: bundle {m.special_tokens.get(role)}, {loaded.where} {own[role]}"
        for role in ("eos", "decoder_start", "pad", "bos")
        if role in own and m.special_tokens.get(role) != own[role]
    ]
    try:
        framing = resolve_framing(loaded.adapter, loaded.tokenizer, loaded.framing, loaded.spec.unknown)
    except OptionsError:  # the user's code does not say: the bundle's framing is checked by the text level
        return diffs
    for part in ("prefix", "suffix"):
        if getattr(framing, part) != getattr(m.source_framing, part):
            diffs.append(
                f"source {part}: bundle {list(getattr(m.source_framing, part))}, "
                f"{loaded.where} {list(getattr(framing, part))}"
            )
    return diffs


def _reference(reference: str, bundle: Bundle):
    """A backend for the reference, and the user's model where the reference is their code."""
    m = bundle.manifest
    path = Path(reference)
    if is_user_function(reference):
        loaded = prepare(call_user_function(reference), reference)
        _same_graphs(loaded.adapter, bundle, reference)
        return TorchBackend(loaded.adapter, masked_padding=m.masked_padding), loaded
    if (path / MANIFEST).is_file():
        ref = load_bundle(path)
        if {k: (g.inputs, g.outputs) for k, g in ref.manifest.loop_graphs.items()} != {
            k: (g.inputs, g.outputs) for k, g in m.loop_graphs.items()
        }:
            raise BundleError(f"{path} and {bundle.path} are not the same model: their graphs differ")
        same = ref.manifest.tokenizer == m.tokenizer and all(
            file_sha256(ref.path / f) == file_sha256(bundle.path / f) for f in tokenizer_files(m.tokenizer)
        )
        if not same or ref.manifest.source_framing != m.source_framing:
            raise BundleError(f"{path} and {bundle.path} have different tokenizers or source framing")
        return OrtBackend(ref), None
    if is_hf_checkpoint(path):
        from edgeseq.export.hf import load_hf_checkpoint

        adapter = adapter_for(load_hf_checkpoint(path).model)
        _same_graphs(adapter, bundle, str(path))
        return TorchBackend(adapter, masked_padding=m.masked_padding), None
    ckpt = load_checkpoint(path)
    adapter = adapter_for(ckpt.model)
    _same_graphs(adapter, bundle, str(path))
    if (ckpt.source_vocab, ckpt.target_vocab) != (bundle.source_vocab, bundle.target_vocab):
        raise BundleError(f"{path} and {bundle.path} have different vocabularies")
    return TorchBackend(adapter, masked_padding=m.masked_padding), None


def validate_bundle(
    bundle_dir: str | Path,
    reference: str | Path,
    texts: Sequence[str] | None = None,
    references: Sequence[str] | None = None,
    thresholds: Thresholds | None = None,
    count: int = 16,
    record: bool = True,
    expected: Sequence[str] | None = None,
    expected_name: str = "pairs",
) -> ParityReport:
    """Graph, step and sequence parity of a bundle against `reference`, and its text against the user's own
    pipeline (a reference FILE.py:FUNCTION with `translate`, or `expected` outputs of `texts`).

    Thresholds default by the bundle's precision (fp32, fp16, int8). With `record`, the report is written
    into the bundle's manifest.
    """
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    ref, loaded = _reference(str(reference), bundle)
    thresholds = thresholds or PRECISION_THRESHOLDS[precision_of(m)]
    if not texts and loaded is not None and loaded.spec.sources:
        texts = list(loaded.spec.sources)
    if texts and (expected is not None or loaded is not None) and encodable(bundle, texts):
        sources = encodable(bundle, texts)  # with a text level, texts the bundle refuses are reported there
    elif texts:
        sources = [bundle.encode(t) for t in texts]
    else:
        special = tuple(m.special_tokens.values())
        sources = sample_sources(m.source_vocab_size, count=count, seed=1234, framing=m.source_framing, special=special)
    decoding = DecodingOptions(max_new_tokens=m.max_new_tokens)
    report = check_parity(
        ref, OrtBackend(bundle), m.decoder, sources, thresholds, decoding, references, bundle.tokenizer.decode
    )
    if loaded is not None:
        report.declarations = _declarations(loaded, bundle)
    translate = loaded.spec.translate if loaded is not None else None
    if expected is not None or translate is not None:
        check_texts = list(texts) if texts else random_texts(bundle)
        name = expected_name if expected is not None else f"{reference} translate()"
        outputs = list(expected) if expected is not None else reference_outputs(translate, check_texts, str(reference))
        report.text = check_text(bundle, check_texts, outputs, thresholds.min_text_match, name, decoding)
    if record:
        record_parity(bundle.path, {"reference": str(reference), "precision": precision_of(m), **report.to_json()})
    return report


def record_parity(bundle_dir: Path, parity: dict) -> None:
    """Replace the manifest's `parity` field (write to a temporary file, then rename over)."""
    path = Path(bundle_dir) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.tmp")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        data["parity"] = parity
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise WriteError(f"cannot record the result in the manifest: {describe_os_error(e, path)}") from None
