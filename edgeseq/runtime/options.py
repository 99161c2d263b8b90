"""DecodingOptions: one frozen, validated object for every way of decoding."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from edgeseq.errors import OptionsError


@dataclass(frozen=True)
class DecodingOptions:
    """How to decode. Invalid values are refused at construction; override with `.replace(**kw)`."""

    max_new_tokens: int = 64  # stop after this many generated tokens (</s> included)
    min_new_tokens: int = 0  # </s> is forbidden before this many tokens

    def __post_init__(self) -> None:
        problems = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (not isinstance(value, int) or isinstance(value, bool)):
                problems.append(f"{f.name} must be an integer, got {value!r}")
        if not problems:
            if self.max_new_tokens < 1:
                problems.append(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
            if self.min_new_tokens < 0:
                problems.append(f"min_new_tokens must be >= 0, got {self.min_new_tokens}")
            if self.min_new_tokens > self.max_new_tokens:
                problems.append(
                    f"min_new_tokens ({self.min_new_tokens}) must not exceed max_new_tokens ({self.max_new_tokens})"
                )
        if problems:
            raise OptionsError("invalid decoding options: " + "; ".join(problems))

    def replace(self, **changes) -> DecodingOptions:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)
