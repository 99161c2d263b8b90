"""What a user of the PyTorch seq2seq tutorial writes to export it:
`edgeseq export export_rnn_attention.py:edgeseq_model --out bundle/` (weights saved beside this file)."""

from pathlib import Path

import torch
from torch import nn

from edgeseq.vocab import Vocab
from tests.tutorials.rnn_attention import MAX_LENGTH, AttnDecoderRNN, EncoderRNN, translate


class Glue(nn.Module):  # the cut edgeseq needs: encode once, then one decoder step
    def __init__(self, encoder, decoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def encode(self, src_ids):
        encoder_outputs, hidden = self.encoder(src_ids)
        return {"encoder_outputs": encoder_outputs, "hidden": hidden}

    def step(self, tokens, hidden, encoder_outputs):
        output, hidden, _ = self.decoder.forward_step(tokens[:, None], hidden, encoder_outputs)
        return {"logits": output[:, 0], "hidden": hidden}


def edgeseq_model():
    saved = torch.load(Path(__file__).with_name("rnn_attention.pt"), weights_only=False)
    input_lang, output_lang = saved["input_lang"], saved["output_lang"]
    encoder = EncoderRNN(input_lang.n_words, saved["hidden_size"])
    decoder = AttnDecoderRNN(saved["hidden_size"], output_lang.n_words)
    encoder.load_state_dict(saved["encoder"])
    decoder.load_state_dict(saved["decoder"])
    encoder.eval(), decoder.eval()
    return {
        "model": Glue(encoder, decoder),
        "source_tokenizer": Vocab.from_mapping(input_lang.index2word, "word", {"bos": "SOS", "eos": "EOS"}),
        "target_tokenizer": Vocab.from_mapping(output_lang.index2word, "word", {"bos": "SOS", "eos": "EOS"}),
        "source_prefix": [],
        "source_suffix": ["EOS"],
        "max_new_tokens": MAX_LENGTH,
        "translate": lambda texts: [translate(encoder, decoder, input_lang, output_lang, t) for t in texts],
    }


def misdeclared_framing():  # forgot that the tutorial appends EOS to every source
    return {**edgeseq_model(), "source_suffix": []}


def misdeclared_ids():  # SOS and EOS swapped
    spec = edgeseq_model()
    index2word = spec["target_tokenizer"].tokens
    spec["target_tokenizer"] = Vocab(index2word, "word", {"bos": "EOS", "eos": "SOS"})
    return spec


def lowercasing_pipeline():  # the user's pipeline lowercases (the tutorial's normalizeString), the bundle does not
    spec = edgeseq_model()
    translate_lower = spec["translate"]
    return {**spec, "translate": lambda texts: translate_lower([t.lower() for t in texts])}


def lowercasing_declared():  # ... declared: the bundle lowercases sources too
    spec = lowercasing_pipeline()
    source = spec["source_tokenizer"]
    spec["source_tokenizer"] = Vocab(source.tokens, source.level, source.specials, normalize=("lower",))
    return spec
