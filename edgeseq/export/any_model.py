"""`edgeseq export MODEL`: one path for every kind of model the CLI takes.

MODEL is FILE.py:FUNCTION or package.module:FUNCTION (the user's own code: export/user.py), a local Hugging
Face folder (Marian, BART, mBART, T5, mT5), or a .safetensors checkpoint written by edgeseq.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgeseq.bundle import file_sha256
from edgeseq.export.checkpoint import load_checkpoint
from edgeseq.export.hf import is_hf_checkpoint
from edgeseq.export.parity import ParityReport
from edgeseq.export.pipeline import Checks, ExportOptions, export_model
from edgeseq.export.user import call_user_function, prepare
from edgeseq.export.validate import is_user_function
from edgeseq.fsutil import check_target


def export_any(
    model: str,
    out: str | Path,
    options: ExportOptions,
    texts: Sequence[str] | None = None,
    expected: Sequence[str] | None = None,
    expected_name: str = "pairs",
    progress: Callable[[str], None] = lambda msg: None,
    inputs: Sequence[str | Path] = (),
) -> tuple[Path, ParityReport | None]:
    """Export MODEL (see the module docstring) to `out`. `texts` are sources to check parity on; with
    `expected`, the outputs the user's own pipeline gives for them (the text level). `inputs`: the files the
    command read (the model's file, data files), which the new bundle must not replace or sit around."""
    inputs = list(inputs)
    check_target(out, options.force, inputs)  # before the slow part
    if is_user_function(model):
        progress(f"running {model}")
        loaded = prepare(call_user_function(model), model)
        spec = loaded.spec
        options = replace(
            options,
            max_new_tokens=options.max_new_tokens or spec.max_new_tokens,
            max_source_length=options.max_source_length or spec.max_source_length,
        )
        texts = list(texts) if texts else (list(spec.sources) if spec.sources else None)
        checks = Checks(
            texts=texts,
            translate=spec.translate if expected is None else None,
            expected=expected,
            reference_name=expected_name if expected is not None else f"{model} translate()",
        )
        return export_model(
            loaded.adapter,
            out,
            tokenizer=loaded.tokenizer,
            options=options,
            framing=loaded.framing,
            unknown=spec.unknown,
            checks=checks,
            made_from={"function": model},
            progress=progress,
            inputs=inputs,
        )
    checks = Checks(texts=texts, expected=expected, reference_name=expected_name)
    if is_hf_checkpoint(model):
        from edgeseq.export.hf import load_hf_checkpoint

        hf = load_hf_checkpoint(model)
        return export_model(
            hf.model,
            out,
            tokenizer=hf.tokenizer,
            options=options,
            generation=hf.generation,
            banned_tokens=hf.banned_tokens,
            checks=checks,
            made_from={"checkpoint": Path(model).name, "hf_model_type": hf.family},
            progress=progress,
            inputs=inputs,
        )
    ckpt = load_checkpoint(model)
    made: dict[str, Any] = {"checkpoint": Path(model).name, "checkpoint_sha256": file_sha256(Path(model))}
    return export_model(
        ckpt.model,
        out,
        source_vocab=ckpt.source_vocab,
        target_vocab=ckpt.target_vocab,
        options=options,
        checks=checks,
        made_from=made,
        progress=progress,
        inputs=inputs,
    )
