"""What a user who ported g2p_en's network to PyTorch writes to export it:
`edgeseq export export_g2p.py:edgeseq_model --out bundle/`."""

import numpy as np

from edgeseq.vocab import Vocab
from tests.tutorials.g2p import G2P, G2PGRU, GRAPHEMES, PHONEMES, checkpoint, predict


def edgeseq_model(decoder_gru: bool = False):
    variables = np.load(checkpoint())
    return {
        "model": (G2PGRU if decoder_gru else G2P)(variables).eval(),
        "source_tokenizer": Vocab(GRAPHEMES, "char", {"pad": "<pad>", "unk": "<unk>", "eos": "</s>"}),
        "target_tokenizer": Vocab(PHONEMES, "word", {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}),
        "source_prefix": [],
        "source_suffix": ["</s>"],
        "max_new_tokens": 20,
        "translate": lambda words: [" ".join(predict(variables, w)) for w in words],
    }


def edgeseq_model_gru():
    """The same with the decoder as an nn.GRU (tests/tutorials/g2p.py G2PGRU)."""
    return edgeseq_model(decoder_gru=True)
