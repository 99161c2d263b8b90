"""The edgeseq runtime: numpy + onnxruntime only (never torch, onnx or onnxsim)."""

from edgeseq.runtime.bundle import Bundle, load_bundle
from edgeseq.runtime.generator import Generator, OrtBackend, StreamedToken, Translation
from edgeseq.runtime.options import DecodingOptions
from edgeseq.runtime.search import Hypothesis

__all__ = [
    "Bundle",
    "DecodingOptions",
    "Generator",
    "Hypothesis",
    "OrtBackend",
    "StreamedToken",
    "Translation",
    "load_bundle",
]
