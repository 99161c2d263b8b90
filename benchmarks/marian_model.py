"""A Hugging Face Marian folder shaped like opus-mt-en-de, with random weights (for benchmarks/speed.py).

d_model 512, 6+6 layers, 8 heads, FFN 2048, vocabulary 58101; the tokenizer is a tiny SentencePiece model
padded out to the full vocabulary, so every engine can load the folder as it would the real checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

VOCAB, D, LAYERS, HEADS, FFN = 58101, 512, 6, 8, 2048


SMALL = {"vocab_size": 8000, "d": 256, "layers": 3, "heads": 4, "ffn": 1024}  # the file workload's model


def make_model(
    folder: Path, vocab_size: int = VOCAB, d: int = D, layers: int = LAYERS, heads: int = HEADS, ffn: int = FFN
) -> None:
    """An HF Marian folder with random weights, opus-mt-en-de's shape by default (tokenizer: tiny spm,
    padded out to the full vocabulary)."""
    import sentencepiece as spm
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog\nhello world\n" * 20)
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"),
        model_prefix=str(folder / "spm"),
        vocab_size=29,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(folder / "spm.model"))
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    while len(vocab) < vocab_size - 1:
        vocab[f"\u2581w{len(vocab)}"] = len(vocab)
    vocab["<pad>"] = vocab_size - 1
    (folder / "vocab.json").write_text(json.dumps(vocab))
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes((folder / "spm.model").read_bytes())
    MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json")).save_pretrained(
        folder
    )
    config = MarianConfig(
        vocab_size=vocab_size,
        d_model=d,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=heads,
        decoder_attention_heads=heads,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        max_position_embeddings=512,
        pad_token_id=vocab_size - 1,
        eos_token_id=0,
        decoder_start_token_id=vocab_size - 1,
        activation_function="swish",
    )
    torch.manual_seed(0)
    model = MarianMTModel(config).eval()
    model.generation_config = GenerationConfig(
        decoder_start_token_id=vocab_size - 1, eos_token_id=0, pad_token_id=vocab_size - 1, max_length=512
    )
    model.save_pretrained(folder)
