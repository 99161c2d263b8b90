"""Tiny random-weight Hugging Face checkpoints with tokenizers trained in the test session (no downloads)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a small model translates short sentences",
    "edge devices run models without python",
    "hello world and good morning to you",
    "seven green apples fell from the old tree",
    "she reads books in the quiet library",
    "we export graphs and check every step",
    "numbers like 42 and 2026 appear here too",
] * 4


def _randomize(model, eos: int, std: float, eos_bias: float) -> None:
    """Random models with HF's tiny init ignore their source; wider weights make outputs differ per source,
    and an </s> bias makes some sentences end early (tuned per family so lengths are mixed)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, std)
        model.final_logits_bias[0, eos] += eos_bias


def make_marian(folder: Path, seed: int = 0, d_model: int = 32, ffn: int = 64) -> Path:
    import sentencepiece as spm
    from transformers import GenerationConfig, MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "spm"),
        vocab_size=60,
        character_coverage=1.0,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(folder / "spm.model"))
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {"</s>": 0, "<unk>": 1}
    for p in pieces:
        vocab.setdefault(p, len(vocab))
    vocab["<pad>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    for name in ("source.spm", "target.spm"):
        (folder / name).write_bytes((folder / "spm.model").read_bytes())
    MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json")).save_pretrained(
        folder
    )
    pad = vocab["<pad>"]
    config = MarianConfig(
        vocab_size=len(vocab),
        d_model=d_model,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=ffn,
        decoder_ffn_dim=ffn,
        max_position_embeddings=64,
        pad_token_id=pad,
        eos_token_id=0,
        decoder_start_token_id=pad,
        forced_eos_token_id=0,
        activation_function="swish",
    )
    torch.manual_seed(seed)
    model = MarianMTModel(config).eval()
    _randomize(model, 0, std=0.5, eos_bias=5.0)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=pad,
        eos_token_id=0,
        pad_token_id=pad,
        forced_eos_token_id=0,
        bad_words_ids=[[pad]],
        num_beams=4,
        max_length=24,
    )
    model.save_pretrained(folder)
    for name in ("corpus.txt", "spm.model", "spm.vocab"):
        (folder / name).unlink()
    return folder


def make_bart(folder: Path, model_type: str = "bart", seed: int = 0) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        GenerationConfig,
        MBartConfig,
        MBartForConditionalGeneration,
        PreTrainedTokenizerFast,
    )

    folder.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok.train_from_iterator(
        SENTENCES,
        trainers.BpeTrainer(
            vocab_size=120, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    size = tok.get_vocab_size()
    common = dict(
        vocab_size=size,
        d_model=32,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        max_position_embeddings=64,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
        forced_eos_token_id=2,
    )
    config_cls, model_cls = (
        (MBartConfig, MBartForConditionalGeneration)
        if model_type == "mbart"
        else (BartConfig, BartForConditionalGeneration)
    )
    torch.manual_seed(seed)
    model = model_cls(config_cls(**common)).eval()
    _randomize(model, 2, std=0.3, eos_bias=6.0)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=2,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
        forced_eos_token_id=2,
        num_beams=4,
        max_length=24,
        no_repeat_ngram_size=3,
    )
    model.save_pretrained(folder)
    return folder


def make_t5(folder: Path, model_type: str = "t5", seed: int = 0, v11: bool = False) -> Path:
    """A T5 (or mT5); `v11`: T5 v1.1-style, gated-GELU feed-forward, untied LM head, initializer factor 3
    (the model's own initialization: logits in the hundreds)."""
    import sentencepiece as spm
    from transformers import (
        GenerationConfig,
        MT5Config,
        MT5ForConditionalGeneration,
        T5Config,
        T5ForConditionalGeneration,
        T5Tokenizer,
    )

    folder.mkdir(parents=True, exist_ok=True)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(folder / "spiece"),
        vocab_size=60,
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    T5Tokenizer.from_pretrained(folder, extra_ids=0).save_pretrained(folder)  # converts spiece.model
    config_cls, model_cls = (
        (MT5Config, MT5ForConditionalGeneration) if model_type == "mt5" else (T5Config, T5ForConditionalGeneration)
    )
    config = config_cls(
        vocab_size=60,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=16,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        **({"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "initializer_factor": 3.0} if v11 else {}),
    )
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    if v11:
        _untie_head(model, config.initializer_factor)
    else:
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0.0, 0.5)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=0, eos_token_id=1, pad_token_id=0, num_beams=4, max_length=24
    )
    model.save_pretrained(folder)
    for name in ("corpus.txt", "spiece.vocab"):
        (folder / name).unlink()
    if v11:
        from safetensors import safe_open

        with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
            assert {"lm_head.weight", "shared.weight"} <= set(f.keys()), "the v1.1 head must be saved untied"
            assert not torch.equal(f.get_tensor("lm_head.weight"), f.get_tensor("shared.weight"))
        assert json.loads((folder / "config.json").read_text())["tie_word_embeddings"] is False
    return folder


def _untie_head(model, factor: float) -> None:
    """Give the LM head its own weights, as T5 v1.1 checkpoints have (transformers 5's T5Config forces
    tie_word_embeddings=True and ties lm_head to shared; a real v1.1 config.json says false, and loading a
    file with both weights, unequal, leaves them untied). N(0, factor), T5's own init of an untied head."""
    model.config.tie_word_embeddings = False  # written to config.json, so that from_pretrained does not tie
    model.all_tied_weights_keys.pop("lm_head.weight", None)
    vocab, d = model.lm_head.weight.shape
    model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, d) * factor)
    assert model.lm_head.weight is not model.shared.weight
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
