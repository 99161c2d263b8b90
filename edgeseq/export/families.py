"""The one registry of model families. A family is one module that calls `register(Family(...))`; adding
one is that module plus its name in FAMILY_MODULES.

A family says which models it takes (`matches`), how to cut them into graphs (`adapter`), and optionally
how to save and rebuild them as edgeseq checkpoints (`checkpoint`: config and model classes) and which
Hugging Face `model_type`s it loads (`hf_model_types`, `from_hf`).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from edgeseq.errors import CheckpointError, OptionsError

# The modules that register families.
FAMILY_MODULES = (
    "edgeseq.export.rnn",
    "edgeseq.export.transformer",
    "edgeseq.export.torch_transformer",
    "edgeseq.export.hf.bart",
    "edgeseq.export.hf.t5",
    "edgeseq.export.functions",
)


@dataclass(frozen=True)
class Family:
    """One kind of model edgeseq exports."""

    name: str
    matches: Callable[[Any], bool]  # does this family take that model object?
    adapter: Callable[[Any], Any]  # model -> Seq2SeqAdapter
    describe: str  # what to pass, for error messages
    checkpoint: tuple[type, type] | None = None  # (config class, model class) for .safetensors checkpoints
    hf_model_types: tuple[str, ...] = ()  # Hugging Face config.model_type values it loads
    from_hf: Callable[[Any], Any] | None = None  # transformers model -> the module `adapter` takes
    fallback: bool = False  # matched by duck typing: asked only after every other family


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add a family (called once by its module, at import)."""
    _FAMILIES[family.name] = family
    return family


def families() -> dict[str, Family]:
    """Every registered family, in lookup order."""
    for module in FAMILY_MODULES:
        importlib.import_module(module)
    return {name: _FAMILIES[name] for name in sorted(_FAMILIES, key=lambda n: _FAMILIES[n].fallback)}


def family_of(model: Any) -> Family:
    """The family that takes `model`; an error listing what edgeseq takes otherwise."""
    for f in families().values():
        if f.matches(model):
            return f
    raise OptionsError(
        f"cannot export a {type(model).__name__}: pass "
        + "; ".join(f.describe for f in families().values())
        + "; or a Seq2SeqAdapter subclass"
    )


def checkpoint_family(name: str) -> Family:
    """The family whose checkpoints are saved under `name`."""
    f = families().get(name)
    if f is None or f.checkpoint is None:
        known = [n for n, f in families().items() if f.checkpoint]
        raise CheckpointError(f"unknown checkpoint family {str(name)[:40]!r}; known: {', '.join(known)}")
    return f


def checkpoint_family_of(model: Any) -> Family:
    """The family a reference model is saved as."""
    for f in families().values():
        if f.checkpoint and isinstance(model, f.checkpoint[1]):
            return f
    known = [f.checkpoint[1].__name__ for f in families().values() if f.checkpoint]
    raise CheckpointError(f"cannot save a {type(model).__name__}: supported models are {', '.join(known)}")


def hf_family(model_type: Any) -> Family | None:
    """The family that loads Hugging Face checkpoints of `model_type`, if any."""
    return next((f for f in families().values() if model_type in f.hf_model_types), None)


def hf_model_types() -> list[str]:
    return sorted(t for f in families().values() for t in f.hf_model_types)
