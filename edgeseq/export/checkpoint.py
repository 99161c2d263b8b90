"""Checkpoints: a safetensors file of weights with the config and vocabularies in its metadata.

Loading never unpickles anything: a pickle (``torch.save``) file is refused, not executed. The config in a
checkpoint is untrusted: its size fields are bounded (edgeseq.models.limits), the tensors it implies that the
file does not store (a sinusoidal position table) may not outweigh the stored weights (or DERIVED_FLOOR),
and an allocation that fails while the model is built is one line (CheckpointError), not a traceback.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from edgeseq.errors import CheckpointError, EdgeseqError
from edgeseq.export.families import checkpoint_family, checkpoint_family_of
from edgeseq.fsutil import WriteError, default_file_mode
from edgeseq.vocab import Vocab

CHECKPOINT_VERSION = 1
DERIVED_FLOOR = 64 << 20  # bytes of tensors a config implies beyond the stored weights, at the least allowed


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
        os.chmod(tmp, default_file_mode())  # the user's umask, as bundles get (safetensors writes 0600)
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
            skeleton = model_cls(cfg)
        expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    except (AssertionError, ValueError, TypeError, RuntimeError, OverflowError) as e:  # torch's own checks
        raise CheckpointError(f"{path}: its config cannot build a model ({type(e).__name__}: {str(e)[:200]})") from None
    if expected != shapes:
        diff = sorted(set(expected) ^ set(shapes)) or [k for k in expected if expected[k] != shapes[k]]
        raise CheckpointError(
            f"{path}: weights do not fit the config (e.g. {diff[0]!r}: config {expected.get(diff[0])}, "
            f"file {shapes.get(diff[0])})"
        )
    _check_derived_tensors(path, skeleton, meta["config"])
    try:
        model = model_cls(cfg)
        with safe_open(str(path), framework="pt") as f:
            model.load_state_dict({k: f.get_tensor(k) for k in f.keys()}, strict=True)
    except (RuntimeError, MemoryError) as e:  # torch's allocator ("can't allocate memory"), or Python's
        need = sum(_nbytes(t) for t in _tensors(skeleton).values())
        raise CheckpointError(
            f"{path}: cannot allocate the model its config describes ({need / 1e6:.1f} MB): {_allocation_failure(e)}"
        ) from None
    return Checkpoint(model.eval(), *vocabs, meta.get("info", {}))


def _allocation_failure(e: BaseException) -> str:
    """torch's "[enforce fail at alloc_cpu.cpp:N] ... you tried to allocate N bytes ..." as a short cause."""
    tried = re.search(r"tried to allocate (\d+) bytes", str(e))
    if isinstance(e, MemoryError) or tried or "can't allocate memory" in str(e):
        return "out of memory" + (f" (an allocation of {int(tried[1]) / 1e6:.1f} MB failed)" if tried else "")
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, persistent or not, once each."""
    return dict(model.named_parameters()) | dict(model.named_buffers())


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _check_derived_tensors(path: Path, skeleton: nn.Module, config: dict) -> None:
    """Refuse a config whose tensors that the file does not store (e.g. a sinusoidal position table, a
    non-persistent buffer) would take more than the stored weights or DERIVED_FLOOR, naming the tensor and
    the config fields that size it (the model class's `derived_from`). `skeleton`: the model on the meta
    device."""
    stored = set(skeleton.state_dict())
    tensors = _tensors(skeleton)
    weights = sum(_nbytes(t) for name, t in tensors.items() if name in stored)
    derived = {name: t for name, t in tensors.items() if name not in stored}
    total = sum(_nbytes(t) for t in derived.values())
    limit = max(DERIVED_FLOOR, weights)
    if total <= limit:
        return
    name, biggest = max(derived.items(), key=lambda item: _nbytes(item[1]))
    fields = [f"{k} {config.get(k)}" for k in getattr(skeleton, "derived_from", {}).get(name, ())]
    dtype = str(biggest.dtype).removeprefix("torch.")
    raise CheckpointError(
        f"{path}: its config asks for {total / 1e6:.1f} MB of tensors the file does not store ({name} "
        f"{tuple(biggest.shape)} {dtype}, from {', '.join(fields) or 'its sizes'}); "
        f"at most {limit / 1e6:.1f} MB (the stored weights, or {DERIVED_FLOOR >> 20} MiB) is allowed"
    )
