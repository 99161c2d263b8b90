"""The torch side of edgeseq: adapters, tracing, parity and the export pipeline."""

from edgeseq.export.adapter import GraphModule, Seq2SeqAdapter, TorchBackend
from edgeseq.export.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edgeseq.export.parity import ParityReport, Thresholds, check_parity
from edgeseq.export.pipeline import ExportOptions, adapter_for, export_model

__all__ = [
    "Checkpoint",
    "ExportOptions",
    "GraphModule",
    "ParityReport",
    "Seq2SeqAdapter",
    "Thresholds",
    "TorchBackend",
    "adapter_for",
    "check_parity",
    "export_model",
    "load_checkpoint",
    "save_checkpoint",
]
