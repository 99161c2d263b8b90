"""Checkpoints: a safetensors file of weights with the config and vocabularies in its metadata.

Loading never unpickles anything: a pickle (``torch.save``) file is refused, not executed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from edgeseq.errors import CheckpointError, EdgeseqError
from edgeseq.export.families import checkpoint_family, checkpoint_family_of
from edgeseq.fsutil import WriteError
from edgeseq.vocab import Vocab

CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    """A model rebuilt from its config and weights, with its vocabularies and free-form info."""

    model: nn.Module
    source_vocab: Vocab
    target_vocab: Vocab
    info: dict[str, Any]


def save_checkpoint(path: str | Path, model: nn.Module, source_vocab: Vocab, target_vocab: Vocab, **info: Any) -> Path:
    """Write `model` (a reference model from edgeseq.models) as one .safetensors file."""
    path = Path(path)
    meta = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "family": checkpoint_family_of(model).name,
        "config": model.cfg.to_dict(),
        "source_vocab": source_vocab.to_json(),
        "target_vocab": target_vocab.to_json(),
        "info": info,
    }
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata={"edgeseq": json.dumps(meta)})
        tmp.replace(path)
    except (SafetensorError, OSError) as e:  # a full disk, no permission: one line, no half-written file
        tmp.unlink(missing_ok=True)
        raise WriteError(f"cannot write checkpoint {path}: {str(e).splitlines()[0][:200]}") from None
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Rebuild the model of an edgeseq checkpoint, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta_text = (f.metadata() or {}).get("edgeseq")
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not an edgeseq checkpoint ({e}); edgeseq reads only the .safetensors files it writes "
            "(pickled torch.save files are refused: loading them can run arbitrary code)"
        ) from None
    if meta_text is None:
        raise CheckpointError(
            f"{path}: a safetensors file without edgeseq metadata; save it with edgeseq.export.save_checkpoint"
        )
    try:
        meta = json.loads(meta_text)
        if not isinstance(meta, dict):
            raise TypeError("the edgeseq metadata is not a JSON object")
        config_cls, model_cls = checkpoint_family(meta["family"]).checkpoint
        names = {f.name for f in fields(config_cls)}
        if not isinstance(meta["config"], dict):
            raise TypeError(f"'config' must be an object, got {type(meta['config']).__name__}")
        cfg = config_cls(**{k: v for k, v in meta["config"].items() if k in names})
        vocabs = Vocab.from_json(meta["source_vocab"]), Vocab.from_json(meta["target_vocab"])
    except EdgeseqError as e:
        raise CheckpointError(f"{path}: {e}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: its edgeseq metadata is nested too deeply") from None
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: malformed edgeseq metadata ({type(e).__name__}: {str(e)[:200]})") from None
    try:
        with torch.device("meta"):  # the config's shapes, without allocating them
            expected = {k: tuple(v.shape) for k, v in model_cls(cfg).state_dict().items()}
    except (AssertionError, ValueError, TypeError, RuntimeError, OverflowError) as e:  # torch's own checks
        raise CheckpointError(f"{path}: its config cannot build a model ({type(e).__name__}: {str(e)[:200]})") from None
    if expected != shapes:
        diff = sorted(set(expected) ^ set(shapes)) or [k for k in expected if expected[k] != shapes[k]]
        raise CheckpointError(
            f"{path}: weights do not fit the config (e.g. {diff[0]!r}: config {expected.get(diff[0])}, "
            f"file {shapes.get(diff[0])})"
        )
    model = model_cls(cfg)
    with safe_open(str(path), framework="pt") as f:
        model.load_state_dict({k: f.get_tensor(k) for k in f.keys()}, strict=True)
    return Checkpoint(model.eval(), *vocabs, meta.get("info", {}))
