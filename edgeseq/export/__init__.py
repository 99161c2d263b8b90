"""The torch side of edgeseq: adapters, tracing, parity and the export pipeline."""

from edgeseq.export.adapter import GraphModule, Seq2SeqAdapter, TorchBackend
from edgeseq.export.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edgeseq.export.functions import EncoderDecoder
from edgeseq.export.parity import ParityReport, Thresholds, check_parity
from edgeseq.export.pipeline import Checks, ExportOptions, Framing, adapter_for, export_model
from edgeseq.export.user import UserModel

__all__ = [
    "Checkpoint",
    "Checks",
    "EncoderDecoder",
    "ExportOptions",
    "Framing",
    "GraphModule",
    "ParityReport",
    "Seq2SeqAdapter",
    "Thresholds",
    "TorchBackend",
    "UserModel",
    "adapter_for",
    "check_parity",
    "export_model",
    "load_checkpoint",
    "save_checkpoint",
]
