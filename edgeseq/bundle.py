"""The bundle manifest (``edgeseq.json``): schema and writing. No torch, no onnx.

A bundle is a directory holding the graphs, the tokenizer files and this manifest. Reading and checking a
manifest is in ``edgeseq.manifest`` (every field validated, all problems reported together).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "edgeseq.json"
FORMAT = "edgeseq-bundle"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: no source framing (sources end with </s>), pad and bos required
REQUIRED_GRAPHS = ("encoder", "decoder_step")
LOOP_GRAPHS = ("encoder", "attention", "decoder_step")  # what the Python loop runs
# decoder_step for steps of one row (export/one_row.py): the same inputs and outputs; dynamic-int8 bundles
ONE_ROW = "decoder_step_one_row"
GRAPH_NAMES = ("encoder", "attention", "decoder_step", ONE_ROW, "generate")
DTYPES = ("float32", "float16", "int64", "int32", "bool")
Dim = str | int  # a symbolic axis name ("batch", "src_len") or a fixed size


@dataclass(frozen=True)
class TensorSpec:
    """One named graph input or output: dtype and shape (symbols for dynamic axes)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX file of the bundle and its declared I/O."""

    file: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sha256: str = ""

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)

    def to_json(self) -> dict:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
        }


@dataclass(frozen=True)
class StateSpec:
    """A tensor handed from one decoder step to the next: fed as `input`, returned as `output`.

    It starts as the encoder/attention output named `init_from`, or as zeros of `zeros_shape`
    (where the symbol "batch" stands for the batch size).
    """

    input: str
    output: str
    batch_axis: int
    init_from: str | None = None
    zeros_shape: tuple[Dim, ...] | None = None
    dtype: str = "float32"

    def to_json(self) -> dict:
        init = {"from": self.init_from} if self.init_from else {"zeros": list(self.zeros_shape or ())}
        return {
            "input": self.input,
            "output": self.output,
            "batch_axis": self.batch_axis,
            "dtype": self.dtype,
            "init": init,
        }


@dataclass(frozen=True)
class HeadSpec:
    """The step graph's head (export/head.py): input and output names.

    mode () int64 (0: nothing, 1: greedy, 2: beam); bias (V,) float32; beam_scores (sources, beams) float32;
    scores (A, k) float32 and ids (A, k) int64: greedy (rows, 1), beam (sources, 2 * beams).
    """

    mode: str
    bias: str
    beam_scores: str
    scores: str
    ids: str

    def names(self) -> tuple[str, ...]:
        return (self.mode, self.bias, self.beam_scores, self.scores, self.ids)


@dataclass(frozen=True)
class DecoderSpec:
    """How the generic loop drives decoder_step.onnx: which inputs are tokens/step, which are states."""

    tokens_input: str  # (batch,) int64: the previous token of each row
    logits_output: str  # (batch, vocab) float: next-token logits
    states: tuple[StateSpec, ...]
    step_input: str | None = None  # () int64: index of the token being generated, for positions
    alignment_output: str | None = None  # (batch, src_len): attention weights of this step
    head: HeadSpec | None = None  # what the step computes from its logits (export/head.py)
    # (rows,) int64: the previous step's row each row continues, gathered inside the step (export/reorder.py);
    # fed at every step (np.arange: none changed), or in bundles made before (False) empty when none changed
    reorder_input: str | None = None
    reorder_every_step: bool = False
    # the step's context inputs (encoder/attention outputs, src_mask) may be fed one row per source while the
    # rows are g consecutive rows per source, the same g for all (models/grouped.py); one per row is always valid
    context_per_source: bool = False
    # Bundles made before the head had modes: a greedy-only head, bias (V,) in, (rows,) token and
    # log-probability out. Still read and used.
    head_bias_input: str | None = None
    head_token_output: str | None = None
    head_logprob_output: str | None = None

    def head_names(self) -> tuple[str, ...]:
        """Every input and output name of the head (either kind)."""
        legacy = (self.head_bias_input, self.head_token_output, self.head_logprob_output)
        return (self.head.names() if self.head else ()) + tuple(n for n in legacy if n)

    def added_names(self) -> tuple[str, ...]:
        """What edgeseq adds to the model's own step graph: the head's names and the reorder input."""
        return self.head_names() + ((self.reorder_input,) if self.reorder_input else ())

    def to_json(self) -> dict:
        d = asdict(self)
        d["states"] = [s.to_json() for s in self.states]
        for legacy in ("head_bias_input", "head_token_output", "head_logprob_output", "reorder_input"):
            if d[legacy] is None:
                del d[legacy]
        for flag in ("reorder_every_step", "context_per_source"):
            if not d[flag]:
                del d[flag]
        return d


@dataclass(frozen=True)
class SourceFraming:
    """How source text becomes the encoder's input ids, as the model was trained: `prefix + pieces + suffix`.

    `pad` fills the positions of shorter sources in a batch (masked out); a piece the source tokenizer
    lacks becomes `unk`, or is refused when the model has none (None).
    """

    prefix: tuple[int, ...] = ()
    suffix: tuple[int, ...] = ()
    pad: int = 0
    unk: int | None = None

    def frame(self, ids: list[int]) -> list[int]:
        return [*self.prefix, *ids, *self.suffix]

    def to_json(self) -> dict:
        return {"prefix": list(self.prefix), "suffix": list(self.suffix), "pad": self.pad, "unk": self.unk}


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to know about a bundle."""

    family: str
    graphs: dict[str, GraphSpec]
    decoder: DecoderSpec
    special_tokens: dict[str, int]  # target ids: eos, decoder_start; pad, bos where the model has them
    source_vocab_size: int
    target_vocab_size: int
    tokenizer: dict[str, Any]  # {"type": "vocab", "source": file, "target": file}, ...
    max_source_length: int
    max_new_tokens: int  # the default generation limit
    source_framing: SourceFraming = field(default_factory=SourceFraming)
    # True: padded positions do not change a source's result (the model uses src_mask), so sources of
    # different lengths share a batch. False: only sources of equal length are decoded together.
    masked_padding: bool = True
    max_target_length: int | None = None  # most tokens the decoder can take (positions); None: no limit
    files: dict[str, str] = field(default_factory=dict)  # other files of the bundle (weights, vocab) -> sha256
    generation: dict[str, Any] = field(default_factory=dict)  # default DecodingOptions fields
    banned_tokens: tuple[int, ...] = ()  # target ids never generated (e.g. <pad>)
    provenance: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def loop_graphs(self) -> dict[str, GraphSpec]:
        """The graphs the Python loop runs (not the composed generate graph)."""
        return {k: g for k, g in self.graphs.items() if k in LOOP_GRAPHS}

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "family": self.family,
            "graphs": {k: g.to_json() for k, g in self.graphs.items()},
            "decoder": self.decoder.to_json(),
            "special_tokens": dict(self.special_tokens),
            "source_framing": self.source_framing.to_json(),
            "masked_padding": self.masked_padding,
            "source_vocab_size": self.source_vocab_size,
            "target_vocab_size": self.target_vocab_size,
            "tokenizer": dict(self.tokenizer),
            "max_source_length": self.max_source_length,
            "max_new_tokens": self.max_new_tokens,
            "max_target_length": self.max_target_length,
            "files": dict(self.files),
            "generation": dict(self.generation),
            "banned_tokens": list(self.banned_tokens),
            "provenance": self.provenance,
            "parity": self.parity,
        }

    def save(self, bundle_dir: Path) -> None:
        text = json.dumps(self.to_json(), indent=2, ensure_ascii=False)
        (Path(bundle_dir) / MANIFEST).write_text(text + "\n", encoding="utf-8")


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def wiring_problems(graphs: dict[str, GraphSpec], decoder: DecoderSpec) -> list[str]:
    """Every graph input must come from somewhere: the source, an earlier graph, or the decoding loop."""
    problems = []
    available = {"src_ids", "src_mask"}
    for name in LOOP_GRAPHS:
        if name not in graphs:
            continue
        feeds = available | (
            {decoder.tokens_input, decoder.step_input, *decoder.added_names()} | {s.input for s in decoder.states}
            if name == "decoder_step"
            else set()
        )
        for t in graphs[name].inputs:
            if t.name not in feeds:
                problems.append(f"{name} input {t.name!r} is not produced by any earlier graph nor fed by the loop")
        available |= {t.name for t in graphs[name].outputs}
    return problems


def read_manifest(bundle_dir: Path) -> Manifest:
    """Read and check ``bundle_dir/edgeseq.json``; raise BundleError listing every problem found."""
    from edgeseq.manifest import read_manifest as read

    return read(bundle_dir)


def parse_manifest(data: Any, where: str = MANIFEST) -> Manifest:
    """Build a Manifest from decoded JSON; every missing or ill-typed field is reported at once."""
    from edgeseq.manifest import parse_manifest as parse

    return parse(data, where)
