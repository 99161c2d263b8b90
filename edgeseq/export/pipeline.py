"""export_model: PyTorch model -> bundle directory, as a fixed pipeline of stages.

1. plan: the model's family and adapter, its graphs' I/O, the tokenizer, the source framing and special
   ids (checked against each other), whether padding changes results; nothing is written yet;
2. graphs: trace, simplify, greedy head, one weights file (export/graphs.py);
3. manifest: tokenizer files and edgeseq.json;
4. checks: parity against PyTorch (graph, step, sequence) and, given the user's pipeline, text;
5. install: the bundle, built in a hidden directory beside the target, takes the target name when whole.
A failed or killed export never leaves a half-written bundle under the target name.
"""

from __future__ import annotations

import datetime
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx
import onnxruntime
import torch
from torch import nn

import edgeseq
from edgeseq.bundle import DecoderSpec, GraphSpec, Manifest, SourceFraming, file_sha256, wiring_problems
from edgeseq.errors import InputError, OptionsError, ParityError
from edgeseq.export.adapter import Seq2SeqAdapter, TorchBackend
from edgeseq.export.families import family_of
from edgeseq.export.generate_check import check_generate, with_generate
from edgeseq.export.generate_graph import GRAPH
from edgeseq.export.graphs import padding_is_masked, write_graphs
from edgeseq.export.parity import ParityReport, Thresholds, check_parity, sample_sources
from edgeseq.export.text_check import check_text, random_texts, reference_outputs
from edgeseq.export.tokenizers import TokenizerExport, VocabExport
from edgeseq.export.trace import ExportError
from edgeseq.export.weights import WEIGHTS_FILE
from edgeseq.fsutil import building, check_target
from edgeseq.runtime.bundle import load_bundle
from edgeseq.runtime.generator import OrtBackend
from edgeseq.runtime.options import DecodingOptions
from edgeseq.runtime.tokenizer import tokenizer_files
from edgeseq.vocab import Vocab

UNKNOWN = ("map", "refuse")


@dataclass(frozen=True)
class ExportOptions:
    """How to export. Invalid values are refused at construction."""

    opset: int = 17  # ONNX opset of every graph
    force: bool = False  # replace an existing bundle at the target
    max_new_tokens: int | None = None  # the bundle's default generation limit (None: 64, or fewer positions)
    max_source_length: int | None = None  # longest source the bundle accepts (None: the model's limit)
    check_parity: bool = True  # validate against PyTorch and refuse a bundle that fails
    simplify: bool = True  # run onnxsim on each graph (a graph it fails on is kept as traced)
    head: bool = True  # append the head (greedy argmax, beam top-k) and the states' reorder to the step graph
    generate_graph: bool = True  # compose the whole decoding loop into generate.onnx (export/generate_graph.py)
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        if not isinstance(self.opset, int) or not 13 <= self.opset <= 20:
            raise OptionsError(f"opset must be between 13 and 20, got {self.opset}")
        if self.max_new_tokens is not None and not 1 <= self.max_new_tokens <= 1 << 20:
            raise OptionsError(f"max_new_tokens must be in 1..{1 << 20}, got {self.max_new_tokens}")
        if self.max_source_length is not None and not 1 <= self.max_source_length <= 1 << 20:
            raise OptionsError(f"max_source_length must be in 1..{1 << 20}, got {self.max_source_length}")


@dataclass(frozen=True)
class Framing:
    """The source framing as a user declares it: tokens by text (looked up in the source tokenizer) or id."""

    prefix: Sequence[str | int] = ()
    suffix: Sequence[str | int] = ()


@dataclass
class Plan:
    """What an export decided before writing anything."""

    adapter: Seq2SeqAdapter
    tokenizer: TokenizerExport
    framing: SourceFraming
    options: ExportOptions
    masked_padding: bool
    notes: list[str]


def adapter_for(model: Any) -> Seq2SeqAdapter:
    """The export adapter of a model: a Seq2SeqAdapter as it is, else its registered family's adapter."""
    if isinstance(model, Seq2SeqAdapter):
        return model
    return family_of(model).adapter(model)


# -- stage 1: plan ---------------------------------------------------------------------------------------------
def plan_export(
    model: Any,
    tokenizer: TokenizerExport,
    options: ExportOptions,
    framing: Framing | None = None,
    unknown: str = "map",
) -> Plan:
    """Everything that can be checked before tracing: refused here, nothing is written."""
    if unknown not in UNKNOWN:
        raise OptionsError(f"unknown must be one of {', '.join(UNKNOWN)}, got {unknown!r}")
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
    _check_vocab_sizes(adapter, specs, tokenizer)
    check_special_ids(adapter.special_tokens(), tokenizer)
    source_framing = resolve_framing(adapter, tokenizer, framing, unknown)
    reference = TorchBackend(adapter)
    special = tuple(adapter.special_tokens().values())
    probe = sample_sources(
        adapter.source_vocab_size, count=4, max_len=9, seed=7, framing=source_framing, special=special
    )
    masked = padding_is_masked(reference, probe)
    notes = []
    if not masked:
        notes.append(
            "the model's results change with padding (it does not use src_mask): the runtime decodes only "
            "sources of equal length together"
        )
    return Plan(adapter, tokenizer, source_framing, options, masked, notes)


def _check_vocab_sizes(adapter: Seq2SeqAdapter, specs: dict[str, GraphSpec], tokenizer: TokenizerExport) -> None:
    logits = specs["decoder_step"].output(adapter.decoder_spec().logits_output)
    if tokenizer.target_size > logits.shape[-1]:
        raise OptionsError(
            f"the target tokenizer has {tokenizer.target_size} tokens but the model predicts {logits.shape[-1]}"
        )
    if tokenizer.source_size > adapter.source_vocab_size:
        raise OptionsError(
            f"the source tokenizer has {tokenizer.source_size} tokens but the model embeds {adapter.source_vocab_size}"
        )
    special = adapter.special_tokens()
    for role in ("eos", "decoder_start"):
        if not isinstance(special.get(role), int) or not 0 <= special[role] < logits.shape[-1]:
            raise OptionsError(
                f"the model's {role} id {special.get(role)!r} is not a target id (0..{logits.shape[-1] - 1})"
            )


def check_special_ids(model: dict[str, int], tokenizer: TokenizerExport) -> None:
    """The model's special ids must be the ones its target vocabulary gives those roles."""
    named = tokenizer.target_specials()
    wrong = [
        f"{role}: the model says {model[role]}, the target vocabulary {named[role]}"
        for role in ("pad", "bos", "eos")
        if role in model and role in named and model[role] != named[role]
    ]
    if wrong:
        raise OptionsError(
            "special ids disagree between the model and its vocabulary (" + "; ".join(wrong) + "): a vocabulary built "
            "with other ids than the model was trained with decodes wrong text; give the model's own vocabulary "
            "(Vocab(tokens, level, specials={...}) in the model's id order) or the model's own ids"
        )


def resolve_framing(
    adapter: Seq2SeqAdapter, tokenizer: TokenizerExport, framing: Framing | None, unknown: str
) -> SourceFraming:
    """The source framing: declared, else what the tokenizer adds itself, else what the model implies."""
    if framing is not None:
        ids = []
        for side, tokens in (("prefix", framing.prefix), ("suffix", framing.suffix)):
            resolved = []
            for t in tokens:
                i = t if isinstance(t, int) and not isinstance(t, bool) else None
                if isinstance(t, str):
                    i = tokenizer.source_id(t)
                    if i is None:
                        raise OptionsError(f"source_{side}: {t!r} is not a token of the source tokenizer")
                if i is None or not 0 <= i < adapter.source_vocab_size:
                    raise OptionsError(f"source_{side}: {t!r} is not a source token or id")
                resolved.append(i)
            ids.append(tuple(resolved))
        prefix, suffix = ids
    else:
        implied = tokenizer.implied_framing() or adapter.implied_framing
        if implied is None:
            raise OptionsError(
                "say how the model's sources are framed: source_prefix and source_suffix, the tokens the model "
                "saw before and after each source in training (e.g. [] and ['</s>'], ['<bos>'] and ['<eos>'], "
                "or [] and [] for none)"
            )
        prefix, suffix = (tuple(x) for x in implied)
    unk = tokenizer.source_unk() if unknown == "map" else None
    pad = adapter.source_pad_id
    if pad is None:
        pad = tokenizer.source_pad() if tokenizer.source_pad() is not None else adapter.source_pad
    adapter.source_pad_id = pad
    return SourceFraming(prefix, suffix, pad, unk)


# -- stage 3: manifest -------------------------------------------------------------------------------------------
def build_manifest(
    plan: Plan,
    specs: dict[str, GraphSpec],
    decoder: DecoderSpec,
    folder: Path,
    entry: dict[str, Any],
    made_from: dict[str, Any],
    generation: dict[str, Any],
    banned_tokens: Sequence[int],
) -> Manifest:
    adapter, options = plan.adapter, plan.options
    graphs = {name: replace(spec, sha256=file_sha256(folder / spec.file)) for name, spec in specs.items()}
    return Manifest(
        family=adapter.family,
        graphs=graphs,
        decoder=decoder,
        special_tokens=adapter.special_tokens(),
        source_vocab_size=adapter.source_vocab_size,
        target_vocab_size=specs["decoder_step"].output(decoder.logits_output).shape[-1],
        tokenizer=entry,
        max_source_length=options.max_source_length or adapter.max_source_length,
        max_new_tokens=options.max_new_tokens,
        source_framing=plan.framing,
        masked_padding=plan.masked_padding,
        max_target_length=adapter.max_target_length,
        files={f: file_sha256(folder / f) for f in (WEIGHTS_FILE, *tokenizer_files(entry))},
        generation=dict(generation),
        banned_tokens=tuple(banned_tokens),
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


# -- stage 4: checks ---------------------------------------------------------------------------------------------
@dataclass
class Checks:
    """What parity is checked on. Sources as ids (framed) or texts; the user's pipeline as a translate()
    function or as expected outputs (pairs), for the text level."""

    sources: Sequence[Sequence[int]] | None = None
    texts: Sequence[str] | None = None
    translate: Callable[[list[str]], list[str]] | None = None
    expected: Sequence[str] | None = None
    reference_name: str = "translate()"


def run_checks(plan: Plan, folder: Path, decoder: DecoderSpec, checks: Checks, progress) -> ParityReport:
    """Parity of the bundle in `folder` against PyTorch, and its text against the user's pipeline."""
    bundle = load_bundle(folder)
    options = plan.options
    if checks.sources is not None:
        sources = list(checks.sources)
    elif checks.texts and encodable(bundle, checks.texts):
        sources = encodable(bundle, checks.texts)  # the others are the text level's to report
    else:
        special = tuple(plan.adapter.special_tokens().values())
        sources = sample_sources(plan.adapter.source_vocab_size, seed=0, framing=plan.framing, special=special)
    progress("checking parity against PyTorch")
    reference = TorchBackend(plan.adapter, masked_padding=plan.masked_padding)
    decoding = DecodingOptions(max_new_tokens=options.max_new_tokens)
    report = check_parity(reference, OrtBackend(bundle), decoder, sources, options.thresholds, decoding)
    report.notes += plan.notes
    if checks.translate is not None or checks.expected is not None:
        progress(f"checking text against {checks.reference_name}")
        texts = list(checks.texts) if checks.texts else random_texts(bundle)
        expected = checks.expected
        if expected is None:
            expected = reference_outputs(checks.translate, texts, checks.reference_name)
        report.text = check_text(
            bundle, texts, expected, options.thresholds.min_text_match, checks.reference_name, decoding
        )
    if GRAPH in bundle.manifest.graphs:
        progress("checking generate.onnx against the Python loop")
        report.generate = check_generate(bundle, sources, options.max_new_tokens, bundle.manifest.banned_tokens)
    return report


def encodable(bundle, texts: Sequence[str]) -> list[list[int]]:
    """The sources among `texts` the bundle takes, encoded (a text it refuses is reported by the text level)."""
    out = []
    for text in texts:
        try:
            out.append(bundle.encode(text))
        except InputError:
            continue
    return out


# -- the pipeline ----------------------------------------------------------------------------------------------
def export_model(
    model: nn.Module,
    out_dir: str | Path,
    *,
    source_vocab: Vocab | None = None,
    target_vocab: Vocab | None = None,
    tokenizer: TokenizerExport | None = None,
    options: ExportOptions = ExportOptions(),
    framing: Framing | None = None,
    unknown: str = "map",
    checks: Checks | None = None,
    parity_sources: Sequence[Sequence[int]] | None = None,
    made_from: dict[str, Any] | None = None,
    generation: dict[str, Any] | None = None,
    banned_tokens: Sequence[int] = (),
    progress: Callable[[str], None] = lambda msg: None,
    inputs: Sequence[str | Path] = (),
) -> tuple[Path, ParityReport | None]:
    """Export `model` to a bundle at `out_dir`; returns the path and the parity report.

    The tokenizer is `source_vocab` and `target_vocab` (edgeseq vocabularies with the model's own ids) or a
    `tokenizer`. `framing` declares the tokens the model saw around each source in training (needed unless
    the tokenizer adds them itself or the model is one of edgeseq's own); `unknown` says what a source piece
    the vocabulary lacks becomes ("map": the vocabulary's <unk>; "refuse"). `checks` gives data and the
    user's own pipeline for parity (random sources when none are given). `inputs` are files the new bundle
    must not replace or sit around (the model's file, data files).
    """
    out = check_target(out_dir, options.force, inputs)  # before the slow part
    if tokenizer is None:
        if source_vocab is None or target_vocab is None:
            raise OptionsError("give source_vocab and target_vocab, or a tokenizer")
        tokenizer = VocabExport(source_vocab, target_vocab)
    checks = checks or Checks(sources=parity_sources)
    plan = plan_export(model, tokenizer, options, framing, unknown)
    with building(out, options.force, inputs) as tmp:
        specs, decoder, made = write_graphs(
            plan.adapter, tmp, plan.options.opset, plan.options.simplify, plan.options.head, progress
        )
        entry = tokenizer.write(tmp)
        manifest = build_manifest(
            plan, specs, decoder, tmp, entry, {**(made_from or {}), **made}, generation or {}, banned_tokens
        )
        if plan.options.generate_graph:
            progress("composing generate.onnx")
            manifest = with_generate(tmp, manifest)
        manifest.save(tmp)
        report = None
        if plan.options.check_parity:
            report = run_checks(plan, tmp, decoder, checks, progress)
            manifest.parity.update(reference="pytorch", **report.to_json())
            manifest.save(tmp)
            if not report.ok:
                raise ParityError(f"the bundle does not match: {'; '.join(report.failures())}")
    return out, report
