"""The exceptions edgeseq raises for problems a user can fix.

Every user-facing failure is an :class:`EdgeseqError`; the CLI prints its message as one line on stderr
and exits non-zero, without a traceback. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgeseqError(Exception):
    """Base class: a problem with the user's input, files or options (not a bug in edgeseq)."""

    exit_code = 1


class BundleError(EdgeseqError):
    """A bundle directory is missing, malformed, or does not match its manifest."""


class CheckpointError(EdgeseqError):
    """A checkpoint file cannot be read as an edgeseq checkpoint."""


class InputError(EdgeseqError):
    """Source text or token ids that the model cannot take (empty, unknown characters, ids out of range)."""


class OptionsError(EdgeseqError):
    """Invalid decoding or export options."""

    exit_code = 2


class ParityError(EdgeseqError):
    """An exported graph or decoded sequence does not match the PyTorch reference within tolerance."""
