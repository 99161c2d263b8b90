"""Streaming gives exactly the final text, for every tokenizer kind: the pieces a detokenizer releases, joined,
equal decode(all tokens), for real tokenizers trained here (SentencePiece with its Metaspace, byte-level BPE,
WordPiece with its clean-up, SentencePiece models, edgeseq's char and word vocabularies), on random token
sequences and on encoded sentences; and end to end through Generator.stream on a tokenizer.json bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeseq.runtime.tokenizer import HFTokenizer, SentencePieceTokenizer, VocabTokenizer
from edgeseq.vocab import Vocab
from tests.hf_models import SENTENCES

TEXTS = SENTENCES + [
    "it's a test, isn't it? yes: don't stop.",
    "über naïve café — 東京 2026!",
    "spaces  and\ttabs , commas .",
]


def _hf(tmp_path, name: str):
    from tokenizers import implementations as impl

    corpus = TEXTS * 3
    if name == "metaspace-bpe":
        tok = impl.SentencePieceBPETokenizer()
        tok.train_from_iterator(corpus, vocab_size=120, show_progress=False)
    elif name == "metaspace-unigram":
        tok = impl.SentencePieceUnigramTokenizer()
        tok.train_from_iterator(corpus, vocab_size=120, show_progress=False)
    elif name == "byte-level-bpe":
        tok = impl.ByteLevelBPETokenizer()
        tok.train_from_iterator(corpus, vocab_size=300, show_progress=False)
    else:
        tok = impl.BertWordPieceTokenizer()
        tok.train_from_iterator(corpus, vocab_size=120, show_progress=False)
    tok.save(str(tmp_path / "tokenizer.json"))
    return HFTokenizer(tmp_path, {"type": "tokenizers", "file": "tokenizer.json"})


def _spm(tmp_path):
    import sentencepiece as spm

    (tmp_path / "corpus.txt").write_text("\n".join(TEXTS * 3) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(tmp_path / "corpus.txt"),
        model_prefix=str(tmp_path / "m"),
        vocab_size=340,
        byte_fallback=True,
        character_coverage=1.0,
        minloglevel=2,
    )
    for side in ("source.spm", "target.spm"):
        (tmp_path / side).write_bytes((tmp_path / "m.model").read_bytes())
    return SentencePieceTokenizer(tmp_path, {"source_model": "source.spm", "target_model": "target.spm"})


def _vocab(level: str):
    v = Vocab.build(TEXTS, level=level)
    return VocabTokenizer(v, v)


KINDS = ["metaspace-bpe", "metaspace-unigram", "byte-level-bpe", "wordpiece", "sentencepiece", "char", "word"]


def make(kind, tmp_path):
    if kind in ("char", "word"):
        return _vocab(kind)
    return _spm(tmp_path) if kind == "sentencepiece" else _hf(tmp_path, kind)


def streamed(tok, ids) -> str:
    d = tok.detokenizer()
    return "".join(d.add(i) for i in ids) + d.finish()


@pytest.mark.parametrize("kind", KINDS)
def test_streamed_text_equals_the_decoded_text(kind, tmp_path):
    tok = make(kind, tmp_path)
    sequences = [tok.encode(t) for t in TEXTS]  # real sentences
    rng = np.random.default_rng(0)
    regular = list(range(4, tok.target_size)) if kind in ("char", "word") else list(range(tok.target_size))
    sequences += [[int(i) for i in rng.choice(regular, size=rng.integers(1, 25))] for _ in range(300)]
    for ids in sequences:
        assert streamed(tok, ids) == tok.decode(ids), ids
    # and text does come out before the end: streaming is not one piece at the finish
    long = tok.encode(" ".join(TEXTS[:4]))
    d = tok.detokenizer()
    assert "".join(d.add(i) for i in long[: len(long) // 2])


def test_streaming_a_tokenizer_json_bundle_gives_the_generated_text(tmp_path):
    """End to end: a T5-like bundle (Metaspace tokenizer.json): stream pieces join to generate()'s text."""
    from edgeseq.export import ExportOptions, export_model
    from edgeseq.export.hf import load_hf_checkpoint
    from edgeseq.runtime import Generator
    from tests.hf_models import make_t5

    folder = make_t5(tmp_path / "t5")
    hf = load_hf_checkpoint(folder)
    export_model(hf.model, tmp_path / "b", tokenizer=hf.tokenizer, options=ExportOptions(max_new_tokens=12))
    gen = Generator(tmp_path / "b")
    texts = ["hello world and good morning", "the quick brown fox", "edge devices run models"]
    events = list(gen.stream(texts))
    for i, result in enumerate(gen.generate(texts)):
        assert "".join(e.piece for e in events if e.source == i) == result.text
    assert json.loads((tmp_path / "b" / "edgeseq.json").read_text())["tokenizer"]["type"] == "tokenizers"
