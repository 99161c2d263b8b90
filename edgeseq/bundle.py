"""The bundle manifest (``edgeseq.json``): schema, reading and writing. No torch, no onnx.

A bundle is a directory holding the three graphs, the tokenizer files and this manifest. Every field is
checked on load; all problems are collected and reported together, each naming its field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeseq.errors import BundleError

MANIFEST = "edgeseq.json"
FORMAT = "edgeseq-bundle"
FORMAT_VERSION = 1
GRAPH_NAMES = ("encoder", "attention", "decoder_step")
REQUIRED_GRAPHS = ("encoder", "decoder_step")
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
class DecoderSpec:
    """How the generic loop drives decoder_step.onnx: which inputs are tokens/step, which are states."""

    tokens_input: str  # (batch, 1) int64: the previous token of each row
    logits_output: str  # (batch, vocab) float: next-token logits
    states: tuple[StateSpec, ...]
    step_input: str | None = None  # () int64: index of the token being generated, for positions
    alignment_output: str | None = None  # (batch, src_len): attention weights of this step
    # The greedy head (export/head.py), when the step graph has one: the loop feeds a (vocab,) additive
    # bias (banned tokens, </s> before the minimum length) and reads the argmax token and its log-probability
    # instead of the logits.
    head_bias_input: str | None = None
    head_token_output: str | None = None
    head_logprob_output: str | None = None

    @property
    def has_head(self) -> bool:
        return self.head_bias_input is not None

    def to_json(self) -> dict:
        d = asdict(self)
        d["states"] = [s.to_json() for s in self.states]
        return d


@dataclass(frozen=True)
class Manifest:
    """Everything the runtime needs to know about a bundle."""

    family: str
    graphs: dict[str, GraphSpec]
    decoder: DecoderSpec
    special_tokens: dict[str, int]  # pad, bos, eos, decoder_start (unk where the tokenizer has one)
    source_vocab_size: int
    target_vocab_size: int
    tokenizer: dict[str, Any]  # {"type": "vocab", "source": file, "target": file}
    max_source_length: int
    max_new_tokens: int  # the default generation limit
    max_target_length: int | None = None  # most tokens the decoder can take (positions); None: no limit
    files: dict[str, str] = field(default_factory=dict)  # other files of the bundle (weights, vocab) -> sha256
    generation: dict[str, Any] = field(default_factory=dict)  # default DecodingOptions fields
    banned_tokens: tuple[int, ...] = ()  # target ids never generated (e.g. <pad>)
    provenance: dict[str, Any] = field(default_factory=dict)
    parity: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": self.format_version,
            "family": self.family,
            "graphs": {k: g.to_json() for k, g in self.graphs.items()},
            "decoder": self.decoder.to_json(),
            "special_tokens": dict(self.special_tokens),
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


def read_manifest(bundle_dir: Path) -> Manifest:
    """Read and check ``bundle_dir/edgeseq.json``; raise BundleError listing every problem found."""
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.exists():
        raise BundleError(f"bundle {bundle_dir} does not exist")
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir} is not a bundle: expected a directory holding {MANIFEST}")
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a bundle: it has no {MANIFEST} (export one with `edgeseq export`)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    return parse_manifest(data, where=str(path))


def parse_manifest(data: Any, where: str = MANIFEST) -> Manifest:
    """Build a Manifest from decoded JSON; every missing or ill-typed field is reported at once."""
    r = _Reader(where)
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected a JSON object at the top level")
    if data.get("format") != FORMAT:
        raise BundleError(f"{where}: 'format' is {data.get('format')!r}, expected {FORMAT!r}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{where}: unsupported format_version {version!r}; this edgeseq reads version {FORMAT_VERSION} "
            "(re-export the bundle, or upgrade edgeseq)"
        )
    graphs_raw = r.get(data, "graphs", dict, {})
    graphs = {}
    for name, g in graphs_raw.items():
        if name not in GRAPH_NAMES:
            r.problem(f"graphs.{name}", f"unknown graph (valid: {', '.join(GRAPH_NAMES)})")
        elif g is not None:
            graphs[name] = _graph(r, g, f"graphs.{name}")
    for name in REQUIRED_GRAPHS:
        if graphs_raw.get(name) is None:
            r.problem(f"graphs.{name}", "missing")
    dec = r.get(data, "decoder", dict, {})
    states = tuple(
        _state(r, s, f"decoder.states[{i}]") for i, s in enumerate(r.get(dec, "states", list, [], "decoder."))
    )
    decoder = DecoderSpec(
        tokens_input=r.get(dec, "tokens_input", str, "", "decoder."),
        logits_output=r.get(dec, "logits_output", str, "", "decoder."),
        states=states,
        step_input=r.get(dec, "step_input", (str, type(None)), None, "decoder."),
        alignment_output=r.get(dec, "alignment_output", (str, type(None)), None, "decoder."),
        **{
            k: r.get(dec, k, (str, type(None)), None, "decoder.")
            for k in ("head_bias_input", "head_token_output", "head_logprob_output")
        },
    )
    special = r.get(data, "special_tokens", dict, {})
    for key in ("pad", "bos", "eos", "decoder_start"):
        if not isinstance(special.get(key), int):
            r.problem(f"special_tokens.{key}", "missing or not an integer")
    m = Manifest(
        family=r.get(data, "family", str, ""),
        graphs=graphs,
        decoder=decoder,
        special_tokens=special,
        source_vocab_size=r.get(data, "source_vocab_size", int, 0),
        target_vocab_size=r.get(data, "target_vocab_size", int, 0),
        tokenizer=r.get(data, "tokenizer", dict, {}),
        max_source_length=r.get(data, "max_source_length", int, 0),
        max_new_tokens=r.get(data, "max_new_tokens", int, 0),
        max_target_length=r.get(data, "max_target_length", (int, type(None)), None),
        files=_files(r, r.get(data, "files", (dict, type(None)), None) or {}),
        generation=r.get(data, "generation", (dict, type(None)), None) or {},
        banned_tokens=tuple(r.get(data, "banned_tokens", (list, type(None)), None) or ()),
        provenance=r.get(data, "provenance", dict, {}),
        parity=r.get(data, "parity", dict, {}),
    )
    r.raise_if_any()
    _check_references(m, where)
    return m


def wiring_problems(graphs: dict[str, GraphSpec], decoder: DecoderSpec) -> list[str]:
    """Every graph input must come from somewhere: the source, an earlier graph, or the decoding loop."""
    problems = []
    available = {"src_ids", "src_mask"}
    for name in ("encoder", "attention", "decoder_step"):
        if name not in graphs:
            continue
        feeds = available | (
            {decoder.tokens_input, decoder.step_input, decoder.head_bias_input} | {s.input for s in decoder.states}
            if name == "decoder_step"
            else set()
        )
        for t in graphs[name].inputs:
            if t.name not in feeds:
                problems.append(f"{name} input {t.name!r} is not produced by any earlier graph nor fed by the loop")
        available |= {t.name for t in graphs[name].outputs}
    return problems


def _check_references(m: Manifest, where: str) -> None:
    """Cross-field checks: decoder names exist in decoder_step, states start from something real."""
    problems = wiring_problems(m.graphs, m.decoder)
    step = m.graphs["decoder_step"]
    step_in = {t.name for t in step.inputs}
    step_out = {t.name for t in step.outputs}
    produced = {t.name for g in m.graphs.values() if g is not step for t in g.outputs}
    if m.decoder.tokens_input not in step_in:
        problems.append(f"decoder.tokens_input {m.decoder.tokens_input!r} is not an input of decoder_step")
    if m.decoder.logits_output not in step_out:
        problems.append(f"decoder.logits_output {m.decoder.logits_output!r} is not an output of decoder_step")
    if m.decoder.alignment_output and m.decoder.alignment_output not in step_out:
        problems.append(f"decoder.alignment_output {m.decoder.alignment_output!r} is not an output of decoder_step")
    head = (m.decoder.head_bias_input, m.decoder.head_token_output, m.decoder.head_logprob_output)
    if any(head) and not (head[0] in step_in and head[1] in step_out and head[2] in step_out):
        problems.append(f"decoder.head_* {list(head)} must name an input and two outputs of decoder_step, or none")
    if m.decoder.step_input and m.decoder.step_input not in step_in:
        problems.append(f"decoder.step_input {m.decoder.step_input!r} is not an input of decoder_step")
    for i, s in enumerate(m.decoder.states):
        if s.input not in step_in or s.output not in step_out:
            problems.append(
                f"decoder.states[{i}] ({s.input} -> {s.output}) is not an input/output pair of decoder_step"
            )
        if s.init_from and s.init_from not in produced:
            problems.append(f"decoder.states[{i}].init.from {s.init_from!r} is not an output of encoder or attention")
    for t in m.banned_tokens:
        if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < m.target_vocab_size:
            problems.append(f"banned_tokens: {t!r} is not a target token id (0..{m.target_vocab_size - 1})")
    for name, value in m.special_tokens.items():
        if isinstance(value, int) and not 0 <= value < m.target_vocab_size and name != "unk":
            problems.append(
                f"special_tokens.{name} = {value} is outside the target vocabulary (0..{m.target_vocab_size - 1})"
            )
    if problems:
        raise BundleError(f"{where}: " + "; ".join(problems))


class _Reader:
    """Reads typed fields and collects every problem, so one error can name them all."""

    def __init__(self, where: str) -> None:
        self.where, self.problems = where, []

    def problem(self, key: str, what: str) -> None:
        self.problems.append(f"{key}: {what}")

    def get(self, obj: dict, key: str, typ, default, prefix: str = ""):
        if not isinstance(obj, dict) or key not in obj:
            if not (isinstance(typ, tuple) and type(None) in typ):
                self.problem(prefix + key, "missing")
            return default
        value = obj[key]
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            names = typ.__name__ if isinstance(typ, type) else " or ".join(t.__name__ for t in typ)
            self.problem(prefix + key, f"expected {names}, got {type(value).__name__}")
            return default
        return value

    def raise_if_any(self) -> None:
        if self.problems:
            raise BundleError(f"{self.where}: invalid manifest: " + "; ".join(self.problems))


def _plain_name(name: str) -> bool:
    return (
        bool(name)
        and not Path(name).is_absolute()
        and ".." not in Path(name).parts
        and "/" not in name
        and "\\" not in name
    )


def _files(r: _Reader, files: dict, key: str = "files") -> dict[str, str]:
    for name, digest in files.items():
        if not _plain_name(name):
            r.problem(f"{key}.{name}", "must be a plain file name inside the bundle")
        if not isinstance(digest, str):
            r.problem(f"{key}.{name}", "expected a sha256 hex string")
    return dict(files)


def _tensor(r: _Reader, t: Any, key: str) -> TensorSpec:
    if not isinstance(t, dict):
        r.problem(key, "expected an object with name, dtype, shape")
        return TensorSpec("", "float32", ())
    name = r.get(t, "name", str, "", key + ".")
    dtype = r.get(t, "dtype", str, "float32", key + ".")
    if dtype not in DTYPES:
        r.problem(key + ".dtype", f"{dtype!r} is not one of {', '.join(DTYPES)}")
    shape = r.get(t, "shape", list, [], key + ".")
    if not all(isinstance(d, (str, int)) and not isinstance(d, bool) for d in shape):
        r.problem(key + ".shape", "every dimension must be a symbol (string) or a size (integer)")
    return TensorSpec(name, dtype, tuple(shape))


def _graph(r: _Reader, g: Any, key: str) -> GraphSpec:
    if not isinstance(g, dict):
        r.problem(key, "expected an object")
        return GraphSpec("", (), ())
    file = r.get(g, "file", str, "", key + ".")
    if file and not _plain_name(file):
        r.problem(key + ".file", f"{file!r} must be a plain file name inside the bundle")
    inputs = tuple(_tensor(r, t, f"{key}.inputs[{i}]") for i, t in enumerate(r.get(g, "inputs", list, [], key + ".")))
    outputs = tuple(
        _tensor(r, t, f"{key}.outputs[{i}]") for i, t in enumerate(r.get(g, "outputs", list, [], key + "."))
    )
    return GraphSpec(file, inputs, outputs, r.get(g, "sha256", str, "", key + "."))


def _state(r: _Reader, s: Any, key: str) -> StateSpec:
    if not isinstance(s, dict):
        r.problem(key, "expected an object")
        return StateSpec("", "", 0)
    init = r.get(s, "init", dict, {}, key + ".")
    zeros = init.get("zeros")
    if "from" not in init and not isinstance(zeros, list):
        r.problem(key + ".init", "expected {'from': OUTPUT_NAME} or {'zeros': SHAPE}")
    return StateSpec(
        input=r.get(s, "input", str, "", key + "."),
        output=r.get(s, "output", str, "", key + "."),
        batch_axis=r.get(s, "batch_axis", int, 0, key + "."),
        init_from=init.get("from") if isinstance(init.get("from"), str) else None,
        zeros_shape=tuple(zeros) if isinstance(zeros, list) else None,
        dtype=r.get(s, "dtype", str, "float32", key + "."),
    )
