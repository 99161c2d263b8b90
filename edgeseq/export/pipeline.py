"""export_model: PyTorch model -> bundle directory, as a fixed pipeline.

check the target -> trace each graph -> write tokenizer and manifest -> load with the runtime and check
parity against PyTorch -> record the figures -> move the finished bundle into place.
The bundle is built in a temporary directory beside the target, so a failed or killed export never leaves
a half-written bundle under the target name.
"""

from __future__ import annotations

import datetime
import platform
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

import edgeseq
from edgeseq.bundle import DecoderSpec, Manifest, file_sha256, wiring_problems
from edgeseq.errors import OptionsError, ParityError
from edgeseq.export.adapter import Seq2SeqAdapter, TorchBackend
from edgeseq.export.head import add_greedy_head
from edgeseq.export.parity import ParityReport, Thresholds, check_parity, sample_sources
from edgeseq.export.rnn import RNNAdapter
from edgeseq.export.simplify import simplify_graph
from edgeseq.export.trace import ExportError, trace_graph
from edgeseq.export.transformer import TransformerAdapter
from edgeseq.export.weights import WEIGHTS_FILE, share_weights, split_projections
from edgeseq.fsutil import replace_dir
from edgeseq.models.rnn import RNNSeq2Seq
from edgeseq.models.transformer import TransformerSeq2Seq
from edgeseq.runtime.batching import pad_batch
from edgeseq.runtime.bundle import load_bundle
from edgeseq.runtime.generator import OrtBackend
from edgeseq.runtime.loop import initial_state
from edgeseq.runtime.options import DecodingOptions
from edgeseq.runtime.tokenizer import tokenizer_files
from edgeseq.vocab import Vocab


class TokenizerExport(Protocol):
    """What export needs from a tokenizer: its sizes, and writing its files (returns the manifest entry)."""

    source_size: int
    target_size: int
    unk_id: int | None

    def write(self, bundle: Path) -> dict[str, Any]: ...


@dataclass(frozen=True)
class VocabExport:
    """edgeseq's own source and target vocabularies."""

    source: Vocab
    target: Vocab

    @property
    def source_size(self) -> int:
        return len(self.source)

    @property
    def target_size(self) -> int:
        return len(self.target)

    @property
    def unk_id(self) -> int:
        return self.target.unk_id

    def write(self, bundle: Path) -> dict[str, Any]:
        self.source.save(bundle / "source_vocab.json")
        self.target.save(bundle / "target_vocab.json")
        return {
            "type": "vocab",
            "source": "source_vocab.json",
            "target": "target_vocab.json",
            "level": self.source.level,
        }


ADAPTERS: dict[type[nn.Module], Callable[[Any], Seq2SeqAdapter]] = {
    RNNSeq2Seq: RNNAdapter,
    TransformerSeq2Seq: TransformerAdapter,
}


@dataclass(frozen=True)
class ExportOptions:
    """How to export. Invalid values are refused at construction."""

    opset: int = 17  # ONNX opset of every graph
    force: bool = False  # replace an existing bundle at the target
    max_new_tokens: int | None = None  # the bundle's default generation limit (None: 64, or fewer positions)
    max_source_length: int | None = None  # longest source the bundle accepts (None: the model's limit)
    check_parity: bool = True  # validate against PyTorch and refuse a bundle that fails
    simplify: bool = True  # run onnxsim on each graph (a graph it fails on is kept as traced)
    greedy_head: bool = True  # append argmax + log-probability to the step graph (export/head.py)
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        if not 13 <= self.opset <= 20:
            raise OptionsError(f"opset must be between 13 and 20, got {self.opset}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise OptionsError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_source_length is not None and self.max_source_length < 1:
            raise OptionsError(f"max_source_length must be >= 1, got {self.max_source_length}")


def adapter_for(model: nn.Module) -> Seq2SeqAdapter:
    """The export adapter of a reference model; a Seq2SeqAdapter is taken as it is."""
    if isinstance(model, Seq2SeqAdapter):
        return model
    from edgeseq.export.hf.bart import HFBartLike
    from edgeseq.export.hf.t5 import HFT5

    if isinstance(model, (HFBartLike, HFT5)):
        return TransformerAdapter(model, family=model.model_type)
    for cls, make in ADAPTERS.items():
        if isinstance(model, cls):
            return make(model)
    raise OptionsError(
        f"cannot export a {type(model).__name__}: pass a model from edgeseq.models "
        f"({', '.join(c.__name__ for c in ADAPTERS)}) or wrap yours in an edgeseq.export.Seq2SeqAdapter"
    )


def export_model(
    model: nn.Module,
    out_dir: str | Path,
    *,
    source_vocab: Vocab | None = None,
    target_vocab: Vocab | None = None,
    tokenizer: TokenizerExport | None = None,
    options: ExportOptions = ExportOptions(),
    parity_sources: Sequence[Sequence[int]] | None = None,
    made_from: dict[str, Any] | None = None,
    generation: dict[str, Any] | None = None,
    banned_tokens: Sequence[int] = (),
    progress: Callable[[str], None] = lambda msg: None,
) -> tuple[Path, ParityReport | None]:
    """Export `model` to a bundle at `out_dir`; returns the path and the parity report.

    `parity_sources` are source id lists (each ending in </s>) to check decoding on; random ones are
    drawn from the source vocabulary when none are given.
    """
    out = Path(out_dir)
    if out.exists() and not options.force:
        raise OptionsError(f"{out} already exists: choose another --out, or pass --force to replace it")
    adapter = adapter_for(model).eval()
    limit = adapter.max_target_length
    if options.max_new_tokens is None:
        options = replace(options, max_new_tokens=min(64, limit or 64))
    elif limit and options.max_new_tokens > limit:
        raise OptionsError(
            f"max_new_tokens {options.max_new_tokens} exceeds the model's {adapter.max_target_length} target positions"
        )
    specs = adapter.graph_specs()
    problems = wiring_problems(specs, adapter.decoder_spec())
    if problems:
        raise ExportError(f"{type(adapter).__name__}: " + "; ".join(problems))
    if tokenizer is None:
        if source_vocab is None or target_vocab is None:
            raise OptionsError("give source_vocab and target_vocab, or a tokenizer")
        tokenizer = VocabExport(source_vocab, target_vocab)
    _check_vocab_sizes(adapter, specs, tokenizer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        reference = TorchBackend(adapter)
        feeds = _example_feeds(reference, adapter.source_vocab_size)
        simplified = {}
        for name, spec in specs.items():
            progress(f"tracing {name}")
            trace_graph(adapter, name, spec, feeds[name], tmp / spec.file, options.opset)
            if options.simplify:
                simplified[name] = simplify_graph(tmp / spec.file, spec)
        decoder = adapter.decoder_spec()
        if options.greedy_head:
            step = specs["decoder_step"]
            specs = {**specs, "decoder_step": None}
            specs["decoder_step"], decoder = add_greedy_head(tmp / step.file, step, decoder)
        progress("sharing weights between graphs")
        sharing = share_weights(tmp, [spec.file for spec in specs.values()])
        split = split_projections(tmp, [spec.file for spec in specs.values()])
        entry = tokenizer.write(tmp)
        made_from = {
            **(made_from or {}),
            "weights": {**asdict(sharing), "projections_split": split},
            "simplify": simplified or None,
        }
        manifest = _manifest(
            adapter, specs, decoder, tmp, entry, tokenizer, options, made_from, generation or {}, banned_tokens
        )
        manifest.save(tmp)
        report = None
        if options.check_parity:
            progress("checking parity against PyTorch")
            sources = parity_sources or sample_sources(adapter.source_vocab_size, seed=0)
            backend = OrtBackend(load_bundle(tmp))
            report = check_parity(
                reference,
                backend,
                decoder,  # with the head: the runtime's side of the sequence checks decodes through it
                sources,
                options.thresholds,
                DecodingOptions(max_new_tokens=options.max_new_tokens),
            )
            manifest.parity.update(reference="pytorch", **report.to_json())
            manifest.save(tmp)
            if not report.ok:
                raise ParityError(f"exported graphs do not match PyTorch: {'; '.join(report.failures())}")
        replace_dir(tmp, out)
        return out, report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_vocab_sizes(adapter: Seq2SeqAdapter, specs, tokenizer: TokenizerExport) -> None:
    logits = specs["decoder_step"].output(adapter.decoder_spec().logits_output)
    if tokenizer.target_size > logits.shape[-1]:
        raise OptionsError(
            f"the target tokenizer has {tokenizer.target_size} tokens but the model predicts {logits.shape[-1]}"
        )
    if tokenizer.source_size > adapter.source_vocab_size:
        raise OptionsError(
            f"the source tokenizer has {tokenizer.source_size} tokens but the model embeds {adapter.source_vocab_size}"
        )


def _example_feeds(reference: TorchBackend, source_vocab_size: int) -> dict[str, dict[str, torch.Tensor]]:
    """Inputs of a real second decoding step (non-empty caches), per graph, for tracing (batch 2, padded)."""
    spec = reference.adapter.decoder_spec()
    src_ids, src_mask = pad_batch(
        sample_sources(source_vocab_size, count=2, max_len=7, seed=1), reference.special_tokens["pad"]
    )
    state = initial_state(reference, src_ids, src_mask, spec)
    step = {}
    for index in range(2):
        tokens = np.full(2, reference.special_tokens["decoder_start"] if index == 0 else 4, dtype=np.int64)
        step = {**state.context, **state.states, spec.tokens_input: tokens}
        if spec.step_input:
            step[spec.step_input] = np.array(index, dtype=np.int64)
        if index == 0:
            out = reference.step(step)
            state.states = {s.input: out[s.output] for s in spec.states}
    pools = {"encoder": state.context, "attention": state.context, "decoder_step": step}
    return {
        g: {t.name: torch.from_numpy(np.ascontiguousarray(pools[g][t.name])) for t in s.inputs}
        for g, s in reference.graphs.items()
    }


def _manifest(
    adapter: Seq2SeqAdapter,
    specs,
    decoder: DecoderSpec,
    bundle: Path,
    entry: dict[str, Any],
    tokenizer: TokenizerExport,
    options: ExportOptions,
    made_from: dict[str, Any],
    generation: dict[str, Any],
    banned_tokens: Sequence[int],
) -> Manifest:
    graphs = {
        name: type(spec)(spec.file, spec.inputs, spec.outputs, file_sha256(bundle / spec.file))
        for name, spec in specs.items()
    }
    max_src = options.max_source_length or adapter.max_source_length
    special = {**adapter.special_tokens(), **({"unk": tokenizer.unk_id} if tokenizer.unk_id is not None else {})}
    return Manifest(
        family=adapter.family,
        graphs=graphs,
        decoder=decoder,
        special_tokens=special,
        source_vocab_size=adapter.source_vocab_size,
        target_vocab_size=specs["decoder_step"].output(adapter.decoder_spec().logits_output).shape[-1],
        tokenizer=entry,
        max_source_length=max_src,
        max_target_length=adapter.max_target_length,
        files={f: file_sha256(bundle / f) for f in (WEIGHTS_FILE, *tokenizer_files(entry))},
        generation=dict(generation),
        banned_tokens=tuple(banned_tokens),
        max_new_tokens=options.max_new_tokens,
        provenance={
            "edgeseq": edgeseq.__version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "exporter": "torch.onnx.export (TorchScript tracing)",
            "opset": options.opset,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "options": {k: v for k, v in asdict(options).items() if k != "thresholds"},
            "quantize": None,
            **made_from,
        },
    )
