"""What a user of the PyTorch nn.Transformer translation tutorial writes to export it:
`edgeseq export export_nn_transformer.py:edgeseq_model --out bundle/` (weights saved beside this file)."""

import math
from pathlib import Path

import torch

from edgeseq.export.torch_transformer import TorchTransformerParts
from edgeseq.vocab import Vocab
from tests.tutorials.nn_transformer import BOS_IDX, EOS_IDX, PAD_IDX, Seq2SeqTransformer, translate


def edgeseq_model():
    saved = torch.load(Path(__file__).with_name("nn_transformer.pt"), weights_only=False)
    vocab_src, vocab_tgt = saved["vocab_src"], saved["vocab_tgt"]
    model = Seq2SeqTransformer(2, 2, 64, 4, len(vocab_src), len(vocab_tgt), dim_feedforward=128)
    model.load_state_dict(saved["model"])
    model.eval()
    specials = {"unk": "<unk>", "pad": "<pad>", "bos": "<bos>", "eos": "<eos>"}
    return {
        "model": TorchTransformerParts(
            src_embedding=model.src_tok_emb.embedding,
            tgt_embedding=model.tgt_tok_emb.embedding,
            generator=model.generator,
            positions=model.positional_encoding.pos_embedding,
            transformer=model.transformer,
            embedding_scale=math.sqrt(64),
            pad_id=PAD_IDX,
            bos_id=BOS_IDX,
            eos_id=EOS_IDX,
        ),
        "source_tokenizer": Vocab(vocab_src.itos, "word", specials),
        "target_tokenizer": Vocab(vocab_tgt.itos, "word", specials),
        "source_prefix": ["<bos>"],
        "source_suffix": ["<eos>"],
        "translate": lambda texts: [translate(model, t, vocab_src, vocab_tgt) for t in texts],
    }


def misdeclared_framing():  # the tutorial frames sources <bos> ... <eos>; this says "... <eos>" only
    return {**edgeseq_model(), "source_prefix": []}


def misdeclared_ids():  # eos given as <unk>'s id: a typo in the ids
    spec = edgeseq_model()
    spec["model"].eos_id = 0
    specials = {"unk": "<unk>", "pad": "<pad>", "bos": "<bos>", "eos": "<unk>"}
    spec["target_tokenizer"] = Vocab(spec["target_tokenizer"].tokens, "word", specials)
    return spec
