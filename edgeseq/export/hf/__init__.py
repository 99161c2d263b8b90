"""Hugging Face checkpoints from a local folder: Marian, BART/mBART, T5/mT5 (and their generation defaults).

`transformers` is needed only here (pip install "edgeseq[hf]"); the bundle it writes runs without it.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeseq.errors import CheckpointError
from edgeseq.export.families import hf_family, hf_model_types
from edgeseq.export.tokenizers import TokenizerExport, TokenizerJsonFiles


def is_hf_checkpoint(path: str | Path) -> bool:
    """A folder with a config.json: a Hugging Face checkpoint."""
    return Path(path).is_dir() and (Path(path) / "config.json").is_file()


@dataclass
class HFCheckpoint:
    """Everything export needs from a Hugging Face folder."""

    model: Any  # the edgeseq module with a KV-cached step
    family: str  # marian, bart, mbart
    tokenizer: Any  # a TokenizerExport
    generation: dict[str, Any]  # DecodingOptions defaults
    banned_tokens: tuple[int, ...]
    hf_tokenizer: Any  # the transformers tokenizer, to encode parity sentences at export

    def encode(self, text: str) -> list[int]:
        return list(self.hf_tokenizer(text).input_ids)


def load_hf_checkpoint(path: str | Path) -> HFCheckpoint:
    """Load a local Marian / BART / mBART folder (no network)."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}/config.json: cannot read it ({e})") from None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    family = hf_family(model_type)
    if family is None:
        raise CheckpointError(
            f"{path}: model_type {str(model_type)[:40]!r} is not supported; supported Hugging Face "
            f"architectures: {', '.join(hf_model_types())}"
        )
    try:
        import transformers
    except ImportError:
        raise CheckpointError(
            "exporting Hugging Face checkpoints needs transformers: pip install 'edgeseq[hf]'"
        ) from None
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    try:
        hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(path), local_files_only=True).eval()
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: transformers cannot load it ({str(e).splitlines()[0]})") from None
    model = family.from_hf(hf)
    generation, banned = generation_defaults(hf.generation_config, model.cfg)
    from transformers import AutoTokenizer

    try:
        with warnings.catch_warnings():  # e.g. Marian's "Recommended: pip install sacremoses."
            warnings.simplefilter("ignore")
            hf_tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot load its tokenizer ({str(e).splitlines()[0]})") from None
    export = tokenizer_export(path, model_type, hf_tokenizer)
    return HFCheckpoint(model, model_type, export, generation, banned, hf_tokenizer)


def generation_defaults(gc, dims) -> tuple[dict[str, Any], tuple[int, ...]]:
    """A transformers GenerationConfig -> DecodingOptions fields and banned tokens (HF semantics)."""
    out: dict[str, Any] = {}
    if gc.num_beams and gc.num_beams > 1:
        out["beam_size"] = int(gc.num_beams)
    if gc.max_new_tokens:
        out["max_new_tokens"] = int(gc.max_new_tokens)
    elif gc.max_length:
        out["max_new_tokens"] = max(1, int(gc.max_length) - 1)  # HF's max_length counts the decoder start
    if dims.max_positions and out.get("max_new_tokens", 0) > dims.max_positions:
        out["max_new_tokens"] = dims.max_positions
    if gc.min_length:
        out["min_new_tokens"] = max(0, int(gc.min_length) - 1)
    if gc.length_penalty is not None:
        out["length_penalty"] = float(gc.length_penalty)
    if gc.early_stopping is True:
        out["early_stopping"] = True
    if gc.no_repeat_ngram_size:
        out["no_repeat_ngram"] = int(gc.no_repeat_ngram_size)
    if gc.repetition_penalty and gc.repetition_penalty != 1.0:
        out["repetition_penalty"] = float(gc.repetition_penalty)
    if getattr(gc, "forced_eos_token_id", None) is not None and gc.forced_eos_token_id == dims.eos_id:
        out["forced_eos"] = True
    if getattr(gc, "forced_bos_token_id", None) is not None:
        out["forced_bos_token"] = int(gc.forced_bos_token_id)
    if gc.do_sample:
        out.update(
            sample=True,
            temperature=float(gc.temperature or 1.0),
            top_k=int(gc.top_k or 0),
            top_p=float(gc.top_p or 1.0),
        )
    banned = tuple(ids[0] for ids in (gc.bad_words_ids or []) if len(ids) == 1)
    return out, banned


class SentencePieceExport(TokenizerExport):
    """Marian's tokenizer files, copied as they are; sources are its pieces, then </s>."""

    def __init__(self, folder: Path, vocab: dict[str, int]) -> None:
        self.folder, self.vocab = folder, vocab
        self.source_size = self.target_size = len(vocab)

    def write(self, bundle: Path) -> dict[str, Any]:
        for name in ("source.spm", "target.spm", "vocab.json"):
            shutil.copyfile(self.folder / name, bundle / name)
        return {
            "type": "sentencepiece",
            "source_model": "source.spm",
            "target_model": "target.spm",
            "vocab": "vocab.json",
            "eos": "</s>",
            "unk": "<unk>",
            "pad": "<pad>",
        }

    def implied_framing(self) -> tuple[list[int], list[int]]:
        return [], [self.vocab["</s>"]]

    def source_id(self, token: str) -> int | None:
        return self.vocab.get(token)


def tokenizer_export(path: Path, model_type: str, tok) -> TokenizerExport:
    if model_type == "marian":
        missing = [n for n in ("source.spm", "target.spm", "vocab.json") if not (path / n).is_file()]
        if missing:
            raise CheckpointError(f"{path}: a Marian folder needs {', '.join(missing)}")
        vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
        return SentencePieceExport(path, vocab)
    if getattr(tok, "backend_tokenizer", None) is None:
        raise CheckpointError(f"{path}: its tokenizer has no tokenizer.json (fast) form; edgeseq needs one")
    return TokenizerJsonFiles(tok)
