"""Reference PyTorch encoder-decoders that edgeseq trains, exports and checks against."""

from edgeseq.models.rnn import ATTENTIONS, CELLS, RNNConfig, RNNSeq2Seq

__all__ = ["ATTENTIONS", "CELLS", "RNNConfig", "RNNSeq2Seq"]
