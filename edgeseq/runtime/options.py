"""DecodingOptions: one frozen, validated object for every way of decoding (greedy, beam, sampling)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from edgeseq.errors import OptionsError

# Bounds checked at construction: values outside them underflow or overflow float32 scores (an empty or NaN
# result), or would allocate without limit.
MAX_NEW_TOKENS = 1 << 20
MAX_BEAM = 1024
MAX_NBEST = 1024
MIN_TEMPERATURE, MAX_TEMPERATURE = 1e-4, 1e4
MIN_TOP_P = 1e-6
MIN_PENALTY, MAX_PENALTY = 1e-3, 1e3  # repetition penalty
MAX_LENGTH_PENALTY = 100.0  # |length_penalty|


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode. Invalid values are refused at construction; override with `.replace(**kw)`.

    Semantics follow Hugging Face `generate()` for encoder-decoders.
    """

    max_new_tokens: int = 64  # stop after this many generated tokens (</s> included)
    min_new_tokens: int = 0  # </s> is forbidden before this many tokens
    beam_size: int = 1  # > 1: beam search
    length_penalty: float = 1.0  # beam: a hypothesis scores sum(log p) / length ** length_penalty
    early_stopping: bool = False  # beam: a source is done as soon as it has beam_size finished hypotheses
    nbest: int = 1  # hypotheses returned per source (beam: <= beam_size; sampling: independent samples)
    sample: bool = False  # sample from the (warped) distribution instead of taking the argmax
    temperature: float = 1.0  # sampling: logits / temperature
    top_k: int = 0  # sampling: keep the k most likely tokens (0: all)
    top_p: float = 1.0  # sampling: keep the smallest set of tokens whose probability reaches top_p
    seed: int | None = None  # sampling: makes it reproducible
    repetition_penalty: float = 1.0  # > 1 discourages tokens already generated (CTRL-style)
    no_repeat_ngram: int = 0  # > 0: never repeat an n-gram of this size
    return_alignments: bool = False  # attention weights per generated token, where the bundle exposes them
    forced_eos: bool = False  # the last allowed token is </s> (HF forced_eos_token_id)
    forced_bos_token: int | None = None  # the first generated token (HF forced_bos_token_id, e.g. mBART-50)

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                problems.append(f"{f.name} must be an integer, got {value!r}")
            elif f.type == "float" and (
                not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value)
            ):
                problems.append(f"{f.name} must be a finite number, got {value!r}")
            elif f.type == "bool" and not isinstance(value, bool):
                problems.append(f"{f.name} must be true or false, got {value!r}")
        if self.forced_bos_token is not None and (
            not isinstance(self.forced_bos_token, int)
            or isinstance(self.forced_bos_token, bool)
            or self.forced_bos_token < 0
        ):
            problems.append(f"forced_bos_token must be a token id, got {self.forced_bos_token!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0):
            problems.append(f"seed must be a non-negative integer, got {self.seed!r}")
        if not problems:
            problems = self._range_problems()
        if problems:
            raise OptionsError("invalid decoding options: " + "; ".join(problems))

    def _range_problems(self) -> list[str]:
        p = []
        if not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            p.append(
                f"max_new_tokens must be >= 1, got {self.max_new_tokens}"
                if self.max_new_tokens < 1
                else f"max_new_tokens must be at most {MAX_NEW_TOKENS}, got {self.max_new_tokens}"
            )
        if self.min_new_tokens < 0:
            p.append(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
        if self.min_new_tokens > self.max_new_tokens:
            p.append(f"min_new_tokens ({self.min_new_tokens}) must not exceed max_new_tokens ({self.max_new_tokens})")
        if not 1 <= self.beam_size <= MAX_BEAM:
            p.append(f"beam_size must be in 1..{MAX_BEAM}, got {self.beam_size}")
        if not 1 <= self.nbest <= MAX_NBEST:
            p.append(f"nbest must be in 1..{MAX_NBEST}, got {self.nbest}")
        elif not self.sample and self.beam_size >= 1 and self.nbest > self.beam_size:
            p.append(
                f"nbest ({self.nbest}) must not exceed beam_size ({self.beam_size}); use a larger beam or sampling"
            )
        if self.sample and self.beam_size > 1:
            p.append("sample and beam_size > 1 cannot be combined: choose sampling or beam search")
        if not MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE:
            p.append(
                f"temperature must be in [{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}] (a smaller one is greedy decoding: "
                f"leave out --sample), got {self.temperature:g}"
            )
        if self.top_k < 0:
            p.append(f"top_k must be >= 0 (0 turns it off), got {self.top_k}")
        if not MIN_TOP_P <= self.top_p <= 1:
            p.append(f"top_p must be in [{MIN_TOP_P:g}, 1], got {self.top_p:g}")
        if not MIN_PENALTY <= self.repetition_penalty <= MAX_PENALTY:
            p.append(
                f"repetition_penalty must be in [{MIN_PENALTY:g}, {MAX_PENALTY:g}] (1 turns it off), "
                f"got {self.repetition_penalty:g}"
            )
        if abs(self.length_penalty) > MAX_LENGTH_PENALTY:
            p.append(
                f"length_penalty must be in [-{MAX_LENGTH_PENALTY:g}, {MAX_LENGTH_PENALTY:g}], "
                f"got {self.length_penalty:g}"
            )
        elif self.beam_size > 1 and not _finite_pow(self.max_new_tokens, self.length_penalty):
            p.append(
                f"length_penalty {self.length_penalty:g} overflows for {self.max_new_tokens} tokens: "
                "use a smaller length penalty or max_new_tokens"
            )
        if self.no_repeat_ngram < 0:
            p.append(f"no_repeat_ngram must be >= 0 (0 turns it off), got {self.no_repeat_ngram}")
        return p

    def replace(self, **changes) -> DecodingOptions:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)


def _finite_pow(length: int, penalty: float) -> bool:
    """Whether length ** penalty (a beam hypothesis's divisor) is a finite, non-zero float for every length."""
    try:
        value = math.pow(float(length), penalty)
    except OverflowError:
        return False
    return math.isfinite(value) and value > 0 and math.pow(float(length), -abs(penalty)) > 0
