"""A complete example: a model built on torch.nn.Transformer (PyTorch's translation-tutorial pattern),
exported with a KV cache and run with the edgeseq runtime.

    .venv/bin/python examples/nn_transformer.py [OUT_DIR]

The model here has random weights; put your trained one in its place. Nothing in the model is changed, and
its ids stay as the tutorial made them (<unk>, <pad>, <bos>, <eos> = 0, 1, 2, 3; sources framed <bos> ... <eos>):
edgeseq only needs the parts named, the vocabulary in the model's own id order, and the framing.
"""

from __future__ import annotations

import math
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from edgeseq.export import Framing, export_model
from edgeseq.export.torch_transformer import TorchTransformerParts
from edgeseq.runtime import Generator
from edgeseq.vocab import Vocab

UNK_IDX, PAD_IDX, BOS_IDX, EOS_IDX = 0, 1, 2, 3  # the tutorial's own ids
SPECIALS = ["<unk>", "<pad>", "<bos>", "<eos>"]


class PositionalEncoding(nn.Module):
    def __init__(self, emb_size: int, dropout: float, maxlen: int = 256):
        super().__init__()
        den = torch.exp(-torch.arange(0, emb_size, 2) * math.log(10000) / emb_size)
        pos = torch.arange(0, maxlen).reshape(maxlen, 1)
        pos_embedding = torch.zeros((maxlen, emb_size))
        pos_embedding[:, 0::2] = torch.sin(pos * den)
        pos_embedding[:, 1::2] = torch.cos(pos * den)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pos_embedding", pos_embedding.unsqueeze(-2))

    def forward(self, token_embedding):
        return self.dropout(token_embedding + self.pos_embedding[: token_embedding.size(0), :])


class TokenEmbedding(nn.Module):
    def __init__(self, vocab_size: int, emb_size: int):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_size)
        self.emb_size = emb_size

    def forward(self, tokens):
        return self.embedding(tokens.long()) * math.sqrt(self.emb_size)


class Seq2SeqTransformer(nn.Module):
    def __init__(
        self,
        num_encoder_layers,
        num_decoder_layers,
        emb_size,
        nhead,
        src_vocab_size,
        tgt_vocab_size,
        dim_feedforward=512,
        dropout=0.1,
    ):
        super().__init__()
        self.transformer = nn.Transformer(
            d_model=emb_size,
            nhead=nhead,
            num_encoder_layers=num_encoder_layers,
            num_decoder_layers=num_decoder_layers,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
        )
        self.generator = nn.Linear(emb_size, tgt_vocab_size)
        self.src_tok_emb = TokenEmbedding(src_vocab_size, emb_size)
        self.tgt_tok_emb = TokenEmbedding(tgt_vocab_size, emb_size)
        self.positional_encoding = PositionalEncoding(emb_size, dropout=dropout)

    def forward(self, src, trg, src_mask, tgt_mask, src_padding_mask, tgt_padding_mask, memory_key_padding_mask):
        src_emb = self.positional_encoding(self.src_tok_emb(src))
        tgt_emb = self.positional_encoding(self.tgt_tok_emb(trg))
        outs = self.transformer(
            src_emb, tgt_emb, src_mask, tgt_mask, None, src_padding_mask, tgt_padding_mask, memory_key_padding_mask
        )
        return self.generator(outs)


def main(out: Path) -> None:
    # the model's vocabularies in its own id order (torchtext's vocab.get_itos() in the tutorial)
    roles = {"unk": "<unk>", "pad": "<pad>", "bos": "<bos>", "eos": "<eos>"}
    src_vocab = Vocab(SPECIALS + "the quick brown fox jumps over lazy dog".split(), "word", roles)
    tgt_vocab = Vocab(SPECIALS + "der schnelle braune fuchs springt über den faulen hund".split(), "word", roles)
    torch.manual_seed(0)
    user_model = Seq2SeqTransformer(3, 3, 256, 8, len(src_vocab), len(tgt_vocab)).eval()

    parts = TorchTransformerParts(
        src_embedding=user_model.src_tok_emb.embedding,
        tgt_embedding=user_model.tgt_tok_emb.embedding,
        generator=user_model.generator,
        positions=user_model.positional_encoding.pos_embedding,
        transformer=user_model.transformer,
        embedding_scale=math.sqrt(256),
        pad_id=PAD_IDX,
        bos_id=BOS_IDX,
        eos_id=EOS_IDX,
    )
    bundle, report = export_model(
        parts, out, source_vocab=src_vocab, target_vocab=tgt_vocab, framing=Framing(["<bos>"], ["<eos>"])
    )
    print(report.table())
    gen = Generator(bundle)
    for result in gen.generate(["the quick brown fox", "the lazy dog jumps"]):
        print(f"{result.text!r} (score {result.score:.2f})")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp) / "bundle")
