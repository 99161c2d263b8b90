"""The user's own model, from the user's own code: `edgeseq export FILE.py:FUNCTION` and
`edgeseq validate BUNDLE --reference FILE.py:FUNCTION`.

FUNCTION takes no arguments, builds the model and loads its weights however they were saved, and returns a
`UserModel` or a plain dict with the same keys:

    def edgeseq_model():
        encoder, decoder = EncoderRNN(...), AttnDecoderRNN(...)
        ...load the weights...
        return {
            "model": Glue(encoder, decoder),           # encode/step methods, an adapter, TorchTransformerParts...
            "source_tokenizer": Vocab.from_mapping(input_lang.index2word, "word", specials={"eos": "EOS"}),
            "target_tokenizer": Vocab.from_mapping(output_lang.index2word, "word",
                                                   specials={"bos": "SOS", "eos": "EOS"}),
            "source_prefix": [], "source_suffix": ["EOS"],
            "decoder_start": "SOS",
            "translate": lambda sentences: [my_greedy_decode(s) for s in sentences],
        }
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from edgeseq.errors import EdgeseqError, OptionsError
from edgeseq.export.adapter import Seq2SeqAdapter
from edgeseq.export.functions import EncoderDecoder, has_functions
from edgeseq.export.pipeline import Framing, adapter_for
from edgeseq.export.tokenizers import TokenizerExport, make_tokenizer_export

ROLES = ("eos", "decoder_start", "pad", "bos")


@dataclass
class UserModel:
    """What FILE.py:FUNCTION returns (or a dict with these keys)."""

    model: Any  # an edgeseq reference model, TorchTransformerParts, a Seq2SeqAdapter, an EncoderDecoder, or an
    # nn.Module with encode/step methods (read as an EncoderDecoder: see edgeseq/export/functions.py)
    source_tokenizer: Any  # an edgeseq Vocab with the model's own ids, a SentencePiece .model, a tokenizer.json
    target_tokenizer: Any = None  # the same kinds; default: the source tokenizer (a shared vocabulary)
    source_prefix: Sequence[str | int] | None = None  # tokens the model saw before each source in training
    source_suffix: Sequence[str | int] | None = None  # ... and after it ([] and [] for none)
    eos: str | int | None = None  # target end token (default: the target tokenizer's)
    decoder_start: str | int | None = None  # the decoder's first input (default: the target's bos)
    pad: str | int | None = None  # target padding token, where the model has one
    bos: str | int | None = None  # target start token, where the model has one
    unknown: str = "map"  # a source piece the vocabulary lacks: "map" to its <unk>, or "refuse"
    translate: Callable[[list[str]], list[str]] | None = None  # the user's own decode: texts in, texts out
    sources: Sequence[str] | None = None  # source texts to check parity on (else --data, else random)
    max_new_tokens: int | None = None  # the bundle's default generation limit
    max_source_length: int | None = None  # longest source, in tokens, the bundle accepts
    family: str = "custom"  # a name for the model, recorded in the manifest


@dataclass
class Loaded:
    """A user's model made ready for export and validation."""

    where: str  # FILE.py:FUNCTION, for messages
    spec: UserModel
    adapter: Seq2SeqAdapter
    tokenizer: TokenizerExport
    framing: Framing | None


def load_user_function(ref: str) -> Callable[[], Any]:
    """`FILE.py:FUNCTION` or `package.module:FUNCTION` -> the function (its module imported)."""
    module_part, _, name = ref.rpartition(":")
    if not module_part or not name.isidentifier():
        raise OptionsError(f"{ref}: expected FILE.py:FUNCTION or package.module:FUNCTION")
    path = Path(module_part)
    try:
        if module_part.endswith(".py") or path.is_file():
            if not path.is_file():
                raise OptionsError(f"{ref}: no such file {module_part}")
            module_name = f"edgeseq_user_{abs(hash(str(path.resolve())))}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            sys.path.insert(0, str(path.resolve().parent))  # so it can import its neighbours
            try:
                spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.resolve().parent))
        else:
            module = importlib.import_module(module_part)
    except EdgeseqError:
        raise
    except BaseException as e:  # the user's code: SystemExit, ImportError, anything, is reported as theirs
        if isinstance(e, KeyboardInterrupt):
            raise
        raise OptionsError(f"{ref}: importing {module_part} failed: {type(e).__name__}: {_first_line(e)}") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise OptionsError(f"{ref}: {module_part} has no function {name}")
    return fn


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else "(no message)"


def call_user_function(ref: str) -> UserModel:
    """Run FILE.py:FUNCTION and check what it returned."""
    fn = load_user_function(ref)
    try:
        value = fn()
    except EdgeseqError as e:
        raise OptionsError(f"{ref}: {e}") from None
    except Exception as e:  # noqa: BLE001 - the user's code
        raise OptionsError(f"{ref} raised {type(e).__name__}: {_first_line(e)}") from None
    return as_user_model(value, ref)


def as_user_model(value: Any, where: str) -> UserModel:
    """A UserModel from a UserModel or a dict of its fields; unknown or missing keys are named."""
    if isinstance(value, UserModel):
        return value
    names = [f.name for f in fields(UserModel)]
    if not isinstance(value, dict):
        raise OptionsError(
            f"{where} returned {type(value).__name__}; return a dict (or edgeseq.export.UserModel) with keys "
            + ", ".join(names)
        )
    unknown = sorted(str(k) for k in value if k not in names)
    if unknown:
        raise OptionsError(f"{where} returned unknown keys {unknown}; valid keys: {', '.join(names)}")
    missing = [k for k in ("model", "source_tokenizer") if value.get(k) is None]
    if missing:
        raise OptionsError(f"{where} must return {' and '.join(repr(k) for k in missing)}")
    return UserModel(**value)


def prepare(spec: UserModel, where: str) -> Loaded:
    """The adapter, tokenizer and declared framing of a user's model; every mistake named with `where`."""
    try:
        return _prepare(spec, where)
    except EdgeseqError as e:
        message = str(e)
        raise type(e)(message if message.startswith(where) else f"{where}: {message}") from None


def _prepare(spec: UserModel, where: str) -> Loaded:
    if spec.translate is not None and not callable(spec.translate):
        raise OptionsError("translate must be a function: list of source texts -> list of output texts")
    if spec.sources is not None and (
        isinstance(spec.sources, str) or not all(isinstance(s, str) for s in spec.sources)
    ):
        raise OptionsError("sources must be a list of source texts")
    tokenizer = make_tokenizer_export(spec.source_tokenizer, spec.target_tokenizer or spec.source_tokenizer)
    declared = {r: _target_id(tokenizer, getattr(spec, r), r) for r in ROLES if getattr(spec, r) is not None}
    model = spec.model
    if isinstance(model, Seq2SeqAdapter):
        adapter = model
    else:
        try:
            adapter = adapter_for(model)
        except OptionsError:
            if not has_functions(model):
                raise
            adapter = EncoderDecoder(
                model,
                special_tokens=_special_tokens(tokenizer, declared),
                source_vocab_size=tokenizer.source_size,
                max_source_length=spec.max_source_length or 1024,
                source_pad=tokenizer.source_pad(),
                family=spec.family,
            )
    own = adapter.special_tokens()
    wrong = [f"{r}={declared[r]} (the model says {own[r]})" for r in declared if r in own and own[r] != declared[r]]
    if wrong:
        raise OptionsError(f"declared special ids {', '.join(wrong)} disagree with the model's")
    framing = None
    if spec.source_prefix is not None or spec.source_suffix is not None:
        framing = Framing(tuple(spec.source_prefix or ()), tuple(spec.source_suffix or ()))
    return Loaded(where, spec, adapter, tokenizer, framing)


def _target_id(tokenizer: TokenizerExport, value: str | int, role: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        i = tokenizer.target_id(value)
        if i is None:
            raise OptionsError(f"{role}: {value!r} is not a token of the target tokenizer")
        return i
    raise OptionsError(f"{role} must be a token (text) or an id, got {value!r}")


def _special_tokens(tokenizer: TokenizerExport, declared: dict[str, int]) -> dict[str, int]:
    special = {**{r: i for r, i in tokenizer.target_specials().items() if r in ("pad", "bos", "eos")}, **declared}
    if "decoder_start" not in special and "bos" in special:
        special["decoder_start"] = special["bos"]
    missing = [r for r in ("eos", "decoder_start") if r not in special]
    if missing:
        raise OptionsError(
            f"say which target token is {' and which is '.join(missing)}: the tokenizer does not name it "
            f"(keys {', '.join(repr(m) for m in missing)})"
        )
    return special
