"""Reference PyTorch encoder-decoders that edgeseq trains, exports and checks against."""

from edgeseq.models.rnn import ATTENTIONS, CELLS, RNNConfig, RNNSeq2Seq
from edgeseq.models.transformer import TransformerConfig, TransformerSeq2Seq

__all__ = ["ATTENTIONS", "CELLS", "RNNConfig", "RNNSeq2Seq", "TransformerConfig", "TransformerSeq2Seq"]
