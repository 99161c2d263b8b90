"""Reading and checking a bundle's manifest. Bundles travel between machines and people: every field is
validated before use (types, sizes bounded, dtypes from a fixed list, axes within rank, names plain, nesting
bounded), and every problem found is reported at once, each naming its field. No torch, no onnx.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from edgeseq.bundle import (
    DTYPES,
    FORMAT,
    GRAPH_NAMES,
    MANIFEST,
    ONE_ROW,
    READABLE_VERSIONS,
    REQUIRED_GRAPHS,
    DecoderSpec,
    GraphSpec,
    HeadSpec,
    Manifest,
    SourceFraming,
    StateSpec,
    TensorSpec,
    wiring_problems,
)
from edgeseq.errors import BundleError

MAX_MANIFEST_BYTES = 16 << 20
MAX_DEPTH = 32  # nesting of any JSON value in the manifest
MAX_DIM = 1 << 24  # any fixed size: a dimension, a vocabulary
MAX_LENGTH = 1 << 20  # source length, tokens to generate
MAX_RANK = 8
MAX_STATE_ELEMENTS = 1 << 28  # zeros a state may start from, per row
MAX_FRAMING = 64
SHA256 = re.compile(r"[0-9a-f]{64}")


def read_manifest(bundle_dir: str | Path) -> Manifest:
    """Read and check ``bundle_dir/edgeseq.json``; raise BundleError listing every problem found."""
    bundle_dir = Path(bundle_dir)
    try:
        if not bundle_dir.exists():
            raise BundleError(f"bundle {bundle_dir} does not exist")
        if not bundle_dir.is_dir():
            raise BundleError(f"{bundle_dir} is not a bundle: expected a directory holding {MANIFEST}")
        path = bundle_dir / MANIFEST
        if not path.is_file():
            raise BundleError(f"{bundle_dir} is not a bundle: it has no {MANIFEST} (export one with `edgeseq export`)")
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise BundleError(f"{path}: {path.stat().st_size} bytes; a manifest has at most {MAX_MANIFEST_BYTES}")
        text = path.read_text(encoding="utf-8")
    except (OSError, ValueError) as e:  # permissions, a symlink loop, a name the OS refuses
        raise BundleError(f"{bundle_dir}: cannot read the bundle ({type(e).__name__}: {e})") from None
    try:
        data = json.loads(text)
    except RecursionError:
        raise BundleError(f"{path}: JSON nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as e:
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    return parse_manifest(data, where=str(path))


def json_depth(value: Any) -> int:
    """How deeply a decoded JSON value nests (iteratively: no recursion limit)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            return depth
        if isinstance(v, dict):
            stack.extend((x, depth + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
    return deepest


def parse_manifest(data: Any, where: str = MANIFEST) -> Manifest:
    """Build a Manifest from decoded JSON; every missing, ill-typed or out-of-range field is reported at once."""
    if not isinstance(data, dict):
        raise BundleError(f"{where}: expected a JSON object at the top level")
    if json_depth(data) > MAX_DEPTH:
        raise BundleError(f"{where}: JSON nested too deeply (at most {MAX_DEPTH} levels)")
    if data.get("format") != FORMAT:
        raise BundleError(f"{where}: 'format' is {_short(data.get('format'))}, expected {FORMAT!r}")
    version = data.get("format_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise BundleError(
            f"{where}: unsupported format_version {_short(version)}; this edgeseq reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))} (re-export the bundle, or upgrade edgeseq)"
        )
    r = _Reader(where)
    family = r.get(data, "family", str, "")
    graphs_raw = r.get(data, "graphs", dict, {})
    graphs = {}
    for name, g in graphs_raw.items():
        if name not in GRAPH_NAMES:
            r.problem(f"graphs.{_short(name)}", f"unknown graph (valid: {', '.join(GRAPH_NAMES)})")
        elif g is not None:
            graphs[name] = _graph(r, g, f"graphs.{name}")
    for name in REQUIRED_GRAPHS:
        if graphs_raw.get(name) is None:
            r.problem(f"graphs.{name}", "missing")
    dec = r.get(data, "decoder", dict, {})
    states = tuple(
        _state(r, s, f"decoder.states[{i}]") for i, s in enumerate(r.get(dec, "states", list, [], "decoder."))
    )
    head_raw = r.get(dec, "head", (dict, type(None)), None, "decoder.")
    head = None
    if head_raw is not None:
        head = HeadSpec(
            **{k: r.name(head_raw, k, "decoder.head.") for k in ("mode", "bias", "beam_scores", "scores", "ids")}
        )
    decoder = DecoderSpec(
        tokens_input=r.name(dec, "tokens_input", "decoder."),
        logits_output=r.name(dec, "logits_output", "decoder."),
        states=states,
        head=head,
        **{
            k: r.name(dec, k, "decoder.", optional=True)
            for k in (
                "step_input",
                "alignment_output",
                "head_bias_input",
                "head_token_output",
                "head_logprob_output",
                "reorder_input",
            )
        },
        **{
            k: r.get(dec, k, (bool, type(None)), False, "decoder.") or False
            for k in ("reorder_every_step", "context_per_source")
        },
    )
    source_size = r.size(data, "source_vocab_size", MAX_DIM)
    target_size = r.size(data, "target_vocab_size", MAX_DIM)
    special = _special_tokens(r, r.get(data, "special_tokens", dict, {}), version)
    tokenizer = r.get(data, "tokenizer", dict, {})
    framing = _framing(r, data, version, special, tokenizer)
    m = Manifest(
        family=family,
        graphs=graphs,
        decoder=decoder,
        special_tokens=special,
        source_vocab_size=source_size,
        target_vocab_size=target_size,
        tokenizer=tokenizer,
        max_source_length=r.size(data, "max_source_length", MAX_LENGTH),
        max_new_tokens=r.size(data, "max_new_tokens", MAX_LENGTH),
        source_framing=framing,
        masked_padding=r.get(data, "masked_padding", bool, True) if version >= 2 else True,
        max_target_length=r.size(data, "max_target_length", MAX_LENGTH, optional=True),
        files=_files(r, r.get(data, "files", (dict, type(None)), None) or {}),
        generation=r.get(data, "generation", (dict, type(None)), None) or {},
        banned_tokens=tuple(r.get(data, "banned_tokens", (list, type(None)), None) or ()),
        provenance=r.get(data, "provenance", dict, {}),
        parity=r.get(data, "parity", dict, {}),
        format_version=version,
    )
    r.raise_if_any()
    _check_references(m, where)
    return m


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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

    def name(self, obj: dict, key: str, prefix: str = "", optional: bool = False) -> str | None:
        """A tensor name: a non-empty string of at most 256 characters."""
        value = self.get(obj, key, (str, type(None)) if optional else str, None if optional else "", prefix)
        if value is not None and not _plain_tensor_name(value):
            self.problem(prefix + key, f"{_short(value)} is not a tensor name (1-256 printable characters)")
            return None if optional else ""
        return value

    def size(self, obj: dict, key: str, limit: int, optional: bool = False) -> Any:
        value = self.get(obj, key, (int, type(None)) if optional else int, None if optional else 1)
        if value is None:
            return None
        if isinstance(value, bool) or not 1 <= value <= limit:
            self.problem(key, f"{_short(value)} is out of range (1..{limit})")
            return None if optional else 1
        return value

    def raise_if_any(self) -> None:
        if self.problems:
            shown = self.problems[:12]
            more = f"; and {len(self.problems) - 12} more" if len(self.problems) > 12 else ""
            raise BundleError(f"{self.where}: invalid manifest: " + "; ".join(shown) + more)


def _plain_tensor_name(name: str) -> bool:
    return 0 < len(name) <= 256 and name.isprintable()


def plain_file_name(name: Any) -> bool:
    """A file directly inside the bundle: no directories, no '..', nothing absolute, printable, UTF-8."""
    if not isinstance(name, str) or not 0 < len(name) <= 255 or not name.isprintable():
        return False
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def _files(r: _Reader, files: dict, key: str = "files") -> dict[str, str]:
    for name, digest in files.items():
        if not plain_file_name(name):
            r.problem(f"{key}.{_short(name)}", "must be a plain file name inside the bundle")
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            r.problem(f"{key}.{_short(name)}", "expected a sha256 hex string")
    return dict(files)


def _dims(r: _Reader, shape: Any, key: str, symbols: bool = True) -> tuple:
    if not isinstance(shape, list) or len(shape) > MAX_RANK:
        r.problem(key, f"expected a list of at most {MAX_RANK} dimensions")
        return ()
    for d in shape:
        if isinstance(d, bool) or not (
            (isinstance(d, int) and 0 <= d <= MAX_DIM) or (symbols and isinstance(d, str) and 0 < len(d) <= 64)
        ):
            r.problem(key, f"dimension {_short(d)} is neither a symbol nor a size in 0..{MAX_DIM}")
            return ()
    return tuple(shape)


def _tensor(r: _Reader, t: Any, key: str) -> TensorSpec:
    if not isinstance(t, dict):
        r.problem(key, "expected an object with name, dtype, shape")
        return TensorSpec("", "float32", ())
    name = r.name(t, "name", key + ".")
    dtype = r.get(t, "dtype", str, "float32", key + ".")
    if dtype not in DTYPES:
        r.problem(key + ".dtype", f"{_short(dtype)} is not one of {', '.join(DTYPES)}")
        dtype = "float32"
    return TensorSpec(name, dtype, _dims(r, r.get(t, "shape", list, [], key + "."), key + ".shape"))


def _graph(r: _Reader, g: Any, key: str) -> GraphSpec:
    if not isinstance(g, dict):
        r.problem(key, "expected an object")
        return GraphSpec("", (), ())
    file = r.get(g, "file", str, "", key + ".")
    if not plain_file_name(file):
        r.problem(key + ".file", f"{_short(file)} must be a plain file name inside the bundle")
        file = ""
    inputs = tuple(_tensor(r, t, f"{key}.inputs[{i}]") for i, t in enumerate(r.get(g, "inputs", list, [], key + ".")))
    outputs = tuple(
        _tensor(r, t, f"{key}.outputs[{i}]") for i, t in enumerate(r.get(g, "outputs", list, [], key + "."))
    )
    for kind, tensors in (("inputs", inputs), ("outputs", outputs)):
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            r.problem(f"{key}.{kind}", "names must be unique")
    digest = r.get(g, "sha256", str, "", key + ".")
    if digest and not SHA256.fullmatch(digest):
        r.problem(key + ".sha256", "expected a sha256 hex string")
    return GraphSpec(file, inputs, outputs, digest)


def _state(r: _Reader, s: Any, key: str) -> StateSpec:
    if not isinstance(s, dict):
        r.problem(key, "expected an object")
        return StateSpec("", "", 0)
    init = r.get(s, "init", dict, {}, key + ".")
    zeros = init.get("zeros")
    start = init.get("from")
    if not (isinstance(start, str) and _plain_tensor_name(start)) and not isinstance(zeros, list):
        r.problem(key + ".init", "expected {'from': OUTPUT_NAME} or {'zeros': SHAPE}")
    shape = None
    if isinstance(zeros, list):
        shape = _dims(r, zeros, key + ".init.zeros")
        if any(isinstance(d, str) and d != "batch" for d in shape):
            r.problem(key + ".init.zeros", "may use only the symbol 'batch' and sizes")
        elif math.prod(d for d in shape if isinstance(d, int)) > MAX_STATE_ELEMENTS:
            r.problem(key + ".init.zeros", f"more than {MAX_STATE_ELEMENTS} elements per row")
    dtype = r.get(s, "dtype", str, "float32", key + ".")
    if dtype not in DTYPES:
        r.problem(key + ".dtype", f"{_short(dtype)} is not one of {', '.join(DTYPES)}")
    axis = r.get(s, "batch_axis", int, 0, key + ".")
    if not 0 <= axis < MAX_RANK:
        r.problem(key + ".batch_axis", f"{axis} is out of range (0..{MAX_RANK - 1})")
        axis = 0
    return StateSpec(
        input=r.name(s, "input", key + "."),
        output=r.name(s, "output", key + "."),
        batch_axis=axis,
        init_from=start if isinstance(start, str) else None,
        zeros_shape=shape,
        dtype=dtype if dtype in DTYPES else "float32",
    )


def _special_tokens(r: _Reader, special: dict, version: int) -> dict[str, int]:
    required = ("pad", "bos", "eos", "decoder_start") if version == 1 else ("eos", "decoder_start")
    out = {}
    for key, value in special.items():
        if key not in ("pad", "bos", "eos", "decoder_start", "unk"):
            r.problem(f"special_tokens.{_short(key)}", "unknown (valid: pad, bos, eos, decoder_start, unk)")
        elif isinstance(value, int) and not isinstance(value, bool):
            out[key] = value
        elif value is not None:
            r.problem(f"special_tokens.{key}", "not an integer")
    for key in required:
        if key not in out:
            r.problem(f"special_tokens.{key}", "missing or not an integer")
    return out


def _ids(r: _Reader, value: Any, key: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_FRAMING:
        r.problem(key, f"expected a list of at most {MAX_FRAMING} token ids")
        return ()
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in value):
        r.problem(key, "every entry must be a token id (an integer)")
        return ()
    return tuple(value)


def _framing(r: _Reader, data: dict, version: int, special: dict, tokenizer: dict) -> SourceFraming | None:
    if version == 1:  # sources ended with </s>; a Hugging Face tokenizer.json framed them itself
        if tokenizer.get("type") == "tokenizers":
            return None  # the runtime reads it off the tokenizer's post-processor (runtime/bundle.py)
        unk = special.get("unk") if tokenizer.get("type") == "sentencepiece" else None
        return SourceFraming((), (special.get("eos", 0),), special.get("pad", 0), unk)
    f = r.get(data, "source_framing", dict, {})
    pad = r.get(f, "pad", int, 0, "source_framing.")
    unk = r.get(f, "unk", (int, type(None)), None, "source_framing.")
    return SourceFraming(
        _ids(r, f.get("prefix", []), "source_framing.prefix"),
        _ids(r, f.get("suffix", []), "source_framing.suffix"),
        pad,
        None if isinstance(unk, bool) else unk,
    )


def _check_references(m: Manifest, where: str) -> None:
    """Cross-field checks: decoder names exist in decoder_step, states start from something real, ids fit."""
    problems = wiring_problems(m.graphs, m.decoder)
    step = m.graphs["decoder_step"]
    step_in = {t.name: t for t in step.inputs}
    step_out = {t.name: t for t in step.outputs}
    produced = {t.name for k, g in m.loop_graphs.items() if k != "decoder_step" for t in g.outputs}
    d = m.decoder
    if d.tokens_input not in step_in:
        problems.append(f"decoder.tokens_input {d.tokens_input!r} is not an input of decoder_step")
    elif step_in[d.tokens_input].dtype != "int64" or len(step_in[d.tokens_input].shape) != 1:
        problems.append(f"decoder.tokens_input {d.tokens_input!r} must be a (batch,) int64 input")
    if d.logits_output not in step_out:
        problems.append(f"decoder.logits_output {d.logits_output!r} is not an output of decoder_step")
    elif len(step_out[d.logits_output].shape) != 2 or step_out[d.logits_output].dtype not in ("float32", "float16"):
        problems.append(f"decoder.logits_output {d.logits_output!r} must be a (batch, vocab) float output")
    if d.alignment_output and d.alignment_output not in step_out:
        problems.append(f"decoder.alignment_output {d.alignment_output!r} is not an output of decoder_step")
    legacy = (d.head_bias_input, d.head_token_output, d.head_logprob_output)
    if any(legacy):
        if not (legacy[0] in step_in and legacy[1] in step_out and legacy[2] in step_out):
            problems.append(
                f"decoder.head_* {list(legacy)} must name an input and two outputs of decoder_step, or none"
            )
        elif step_in[legacy[0]].shape != (m.target_vocab_size,):
            problems.append(f"decoder.head_bias_input {legacy[0]!r} must have shape [{m.target_vocab_size}]")
    if d.head is not None:
        h = d.head
        wanted = [
            (h.mode, step_in, ()),
            (h.bias, step_in, (m.target_vocab_size,)),
            (h.beam_scores, step_in, 2),
            (h.scores, step_out, 2),
            (h.ids, step_out, 2),
        ]
        for name, table, shape in wanted:
            if name not in table:
                problems.append(f"decoder.head: {name!r} is not a tensor of decoder_step")
            elif (len(table[name].shape) != shape) if isinstance(shape, int) else (table[name].shape != shape):
                problems.append(f"decoder.head: {name!r} has shape {list(table[name].shape)}")
    if d.reorder_input and (
        d.reorder_input not in step_in
        or step_in[d.reorder_input].dtype != "int64"
        or len(step_in[d.reorder_input].shape) != 1
    ):
        problems.append(f"decoder.reorder_input {d.reorder_input!r} must be a (rows,) int64 input of decoder_step")
    if d.reorder_every_step and not d.reorder_input:
        problems.append("decoder.reorder_every_step is true but there is no decoder.reorder_input")
    if d.step_input and d.step_input not in step_in:
        problems.append(f"decoder.step_input {d.step_input!r} is not an input of decoder_step")
    one_row = m.graphs.get(ONE_ROW)
    if one_row is not None and (one_row.inputs, one_row.outputs) != (step.inputs, step.outputs):
        problems.append(f"graphs.{ONE_ROW} must have decoder_step's inputs and outputs (it replaces it for one row)")
    for i, s in enumerate(d.states):
        if s.input not in step_in or s.output not in step_out:
            problems.append(
                f"decoder.states[{i}] ({s.input} -> {s.output}) is not an input/output pair of decoder_step"
            )
            continue
        rank = len(step_in[s.input].shape)
        if not 0 <= s.batch_axis < rank:
            problems.append(f"decoder.states[{i}].batch_axis {s.batch_axis} is beyond the rank {rank} of {s.input!r}")
        if s.init_from and s.init_from not in produced:
            problems.append(f"decoder.states[{i}].init.from {s.init_from!r} is not an output of encoder or attention")
        if s.zeros_shape is not None and len(s.zeros_shape) != rank:
            problems.append(f"decoder.states[{i}].init.zeros has rank {len(s.zeros_shape)}, {s.input!r} has {rank}")
    if len(m.banned_tokens) >= m.target_vocab_size:
        problems.append("banned_tokens: bans every target token (nothing could be generated)")
    elif m.special_tokens.get("eos") in m.banned_tokens:
        problems.append(f"banned_tokens: bans the end token ({m.special_tokens.get('eos')}): no output could end")
    else:
        for t in m.banned_tokens:
            if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < m.target_vocab_size:
                problems.append(f"banned_tokens: {_short(t)} is not a target token id (0..{m.target_vocab_size - 1})")
                break
    for name, value in m.special_tokens.items():
        if not 0 <= value < m.target_vocab_size and name != "unk":
            problems.append(
                f"special_tokens.{name} = {value} is outside the target vocabulary (0..{m.target_vocab_size - 1})"
            )
    f = m.source_framing
    if f is not None:
        for key, ids in (("prefix", f.prefix), ("suffix", f.suffix), ("pad", (f.pad,)), ("unk", (f.unk,))):
            bad = [i for i in ids if i is not None and not 0 <= i < m.source_vocab_size]
            if bad:
                problems.append(
                    f"source_framing.{key}: {bad[0]} is outside the source vocabulary (0..{m.source_vocab_size - 1})"
                )
    if problems:
        raise BundleError(f"{where}: " + "; ".join(problems[:12]))
