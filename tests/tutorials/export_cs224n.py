"""What a user of a CS224n-style NMT model writes to export it:
`edgeseq export export_cs224n.py:edgeseq_model --out bundle/` (weights saved beside this file)."""

from pathlib import Path

import torch
from torch import nn

from edgeseq.vocab import Vocab
from tests.tutorials.cs224n import NMT, translate


class Glue(nn.Module):  # the cut edgeseq needs: encode once, then one decoder step
    def __init__(self, nmt):
        super().__init__()
        self.nmt = nmt

    def encode(self, src_ids, src_mask):
        enc_hiddens, (h, c) = self.nmt.encode(src_ids.t(), src_mask.sum(1))
        proj = self.nmt.att_projection(enc_hiddens)
        return {"enc_hiddens": enc_hiddens, "proj": proj, "h": h, "c": c, "o_prev": torch.zeros_like(h)}

    def step(self, y, h, c, o_prev, enc_hiddens, proj, src_mask):
        ybar = torch.cat([self.nmt.model_embeddings.target(y), o_prev], dim=1)
        (h, c), o, _ = self.nmt.step(ybar, (h, c), enc_hiddens, proj, src_mask == 0)
        return {"logits": self.nmt.target_vocab_projection(o), "h": h, "c": c, "o_prev": o}


def edgeseq_model():
    saved = torch.load(Path(__file__).with_name("cs224n.pt"), weights_only=False)
    model = NMT(32, 48, saved["vocab"], dropout_rate=0.1)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    src, tgt = saved["vocab"].src, saved["vocab"].tgt
    return {
        "model": Glue(model),
        "source_tokenizer": Vocab.from_mapping(src.word2id, "word"),
        "target_tokenizer": Vocab.from_mapping(tgt.word2id, "word"),
        "source_prefix": [],
        "source_suffix": [],
        "max_new_tokens": 70,
        "translate": lambda texts: [translate(model, t) for t in texts],
    }


def misdeclared_framing():  # sources get </s> appended, which the model never saw
    return {**edgeseq_model(), "source_suffix": ["</s>"]}


def misdeclared_ids():  # the decoder started from <pad> instead of <s>
    return {**edgeseq_model(), "decoder_start": "<pad>"}
