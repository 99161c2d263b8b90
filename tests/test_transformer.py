"""Transformer family: the reference model (pre/post-norm), nn.Transformer-based models, the KV cache."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgeseq.export import ExportOptions, Framing, TorchBackend, adapter_for, export_model
from edgeseq.export.parity import teacher_forced_logits
from edgeseq.export.torch_transformer import TorchTransformerParts, from_torch_transformer
from edgeseq.models import TransformerConfig, TransformerSeq2Seq
from edgeseq.runtime import DecodingOptions, Generator
from edgeseq.runtime.batching import pad_batch
from edgeseq.runtime.generator import OrtBackend
from edgeseq.vocab import Vocab
from tests.conftest import inline_tensor_bytes, mixed_sources, vocabs


def tiny_transformer(norm="pre", seed=0, **kw):
    sv, tv = vocabs()
    torch.manual_seed(seed)
    cfg = TransformerConfig(
        len(sv),
        len(tv),
        d_model=32,
        heads=4,
        encoder_layers=2,
        decoder_layers=2,
        ffn_dim=64,
        norm=norm,
        max_positions=64,
        **kw,
    )
    model = TransformerSeq2Seq(cfg).eval()
    with torch.no_grad():
        model.tgt_emb.weight.mul_(3.0)  # sharper logits: greedy is not a near-tie lottery
        model.out_bias[tv.eos_id] = -3.0 if cfg.tie_output else 0.0
    return model, sv, tv


def full_forward_greedy(logits_fn, sources, bos, eos, pad, max_new_tokens):
    """Greedy decoding that re-runs the full (uncached) forward on the whole prefix at every step."""
    src, mask = (torch.from_numpy(a) for a in pad_batch(sources, pad))
    prefix = torch.full((len(sources), 1), bos)
    done = torch.zeros(len(sources), dtype=torch.bool)
    out = [[] for _ in sources]
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = torch.where(done, pad, logits_fn(src, mask, prefix)[:, -1].argmax(-1))
            for i in range(len(sources)):
                if not done[i] and nxt[i] != eos:
                    out[i].append(int(nxt[i]))
            done |= nxt == eos
            prefix = torch.cat([prefix, nxt[:, None]], dim=1)
            if done.all():
                break
    return out


@pytest.fixture(scope="module", params=["pre", "post"])
def reference_bundle(request, tmp_path_factory):
    model, sv, tv = tiny_transformer(request.param)
    out = tmp_path_factory.mktemp("tf") / request.param
    _, report = export_model(model, out, source_vocab=sv, target_vocab=tv, options=ExportOptions(max_new_tokens=16))
    return out, model, sv, tv, report


def test_graphs_match_pytorch(reference_bundle):
    *_, report = reference_bundle
    assert {c.graph for c in report.outputs} == {"encoder", "attention", "decoder_step", "step (1 row)"}
    assert len([c for c in report.outputs if c.graph == "attention"]) == 4  # k and v of 2 layers
    assert all(c.ok and c.max_abs < 1e-4 for c in report.outputs), report.table()


def test_cached_steps_equal_full_forward(reference_bundle):
    """Step t of the cached ONNX decoder gives the logits of a full PyTorch pass over the prefix."""
    bundle, model, sv, tv, _ = reference_bundle
    sources = mixed_sources(sv)
    targets = np.random.default_rng(0).integers(4, len(tv), size=(len(sources), 9))
    targets[:, 0] = tv.bos_id
    src, mask = (torch.from_numpy(a) for a in pad_batch(sources, sv.pad_id))
    with torch.no_grad():
        full = model(src, mask, torch.from_numpy(targets)).numpy()
    gen = Generator(bundle)
    cached = teacher_forced_logits(gen.backend, gen.bundle.manifest.decoder, sources, targets)
    np.testing.assert_allclose(cached, full, atol=1e-4, rtol=0)


def test_greedy_equals_pytorch_full_forward(reference_bundle):
    bundle, model, sv, tv, _ = reference_bundle
    gen = Generator(bundle)
    sources = mixed_sources(sv)
    expected = full_forward_greedy(model, sources, tv.bos_id, tv.eos_id, tv.pad_id, 16)
    assert any(len(e) > 2 for e in expected)
    assert [list(h[0].tokens) for h in gen.generate_ids(sources)] == expected
    assert [list(gen.generate_ids([s])[0][0].tokens) for s in sources] == expected


@pytest.mark.parametrize("share", [False, True])
def test_bundle_holds_each_weight_once(tmp_path, share):
    sv, _ = vocabs()
    torch.manual_seed(0)
    cfg = TransformerConfig(
        1000,
        1000,
        d_model=128,
        heads=4,
        encoder_layers=2,
        decoder_layers=2,
        ffn_dim=512,
        max_positions=32,
        share_embeddings=share,
    )
    model = TransformerSeq2Seq(cfg).eval()
    v = Vocab(tuple(sv.tokens[:4]) + tuple(f"w{i}" for i in range(996)), level="word")
    export_model(model, tmp_path / "b", source_vocab=v, target_vocab=v, options=ExportOptions(max_new_tokens=8))
    storages = {p.untyped_storage().data_ptr(): p.numel() * 4 for p in model.state_dict().values()}
    state_bytes = sum(storages.values())
    weights = (tmp_path / "b" / "weights.bin").stat().st_size
    assert weights <= 1.05 * state_bytes, (weights, state_bytes)
    assert inline_tensor_bytes(tmp_path / "b") <= 16 << 10  # the graphs (generate.onnx too) hold no weights


def test_max_new_tokens_beyond_positions_is_refused(reference_bundle):
    from edgeseq.errors import OptionsError

    with pytest.raises(OptionsError, match="exceeds this model's 64 target positions"):
        Generator(reference_bundle[0]).generate_ids([[5, 2]], DecodingOptions(max_new_tokens=65))


# A model as users write it: PyTorch's translation tutorial (nn.Transformer, sequence-first, sqrt(d) scale).


class PositionalEncoding(nn.Module):
    def __init__(self, emb_size, dropout, maxlen=100):
        super().__init__()
        den = torch.exp(-torch.arange(0, emb_size, 2) * math.log(10000) / emb_size)
        pos = torch.arange(0, maxlen).reshape(maxlen, 1)
        pos_embedding = torch.zeros((maxlen, emb_size))
        pos_embedding[:, 0::2] = torch.sin(pos * den)
        pos_embedding[:, 1::2] = torch.cos(pos * den)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("pos_embedding", pos_embedding.unsqueeze(-2))  # (maxlen, 1, emb)

    def forward(self, token_embedding):
        return self.dropout(token_embedding + self.pos_embedding[: token_embedding.size(0), :])


class TokenEmbedding(nn.Module):
    def __init__(self, vocab_size, emb_size):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, emb_size)
        self.emb_size = emb_size

    def forward(self, tokens):
        return self.embedding(tokens.long()) * math.sqrt(self.emb_size)


class Seq2SeqTransformer(nn.Module):
    def __init__(self, enc_layers, dec_layers, emb, nhead, src_vocab, tgt_vocab, ffn, norm_first, activation):
        super().__init__()
        self.transformer = nn.Transformer(
            d_model=emb,
            nhead=nhead,
            num_encoder_layers=enc_layers,
            num_decoder_layers=dec_layers,
            dim_feedforward=ffn,
            dropout=0.1,
            norm_first=norm_first,
            activation=activation,
        )
        self.generator = nn.Linear(emb, tgt_vocab)
        self.src_tok_emb = TokenEmbedding(src_vocab, emb)
        self.tgt_tok_emb = TokenEmbedding(tgt_vocab, emb)
        self.positional_encoding = PositionalEncoding(emb, dropout=0.1)

    def forward(self, src, tgt, src_padding_mask):
        """src (S, B), tgt (T, B), src_padding_mask (B, S) True at padding -> logits (T, B, V)."""
        src_emb = self.positional_encoding(self.src_tok_emb(src))
        tgt_emb = self.positional_encoding(self.tgt_tok_emb(tgt))
        tgt_mask = self.transformer.generate_square_subsequent_mask(tgt.size(0))
        outs = self.transformer(src_emb, tgt_emb, None, tgt_mask, None, src_padding_mask, None, src_padding_mask)
        return self.generator(outs)


@pytest.mark.parametrize("norm_first, activation", [(False, "relu"), (True, "gelu")])
def test_nn_transformer_model_exports_with_a_kv_cache(tmp_path, norm_first, activation):
    sv, tv = vocabs()
    torch.manual_seed(1)
    user = Seq2SeqTransformer(2, 2, 32, 4, len(sv), len(tv), 64, norm_first, activation).eval()
    with torch.no_grad():
        user.generator.weight.mul_(4.0)
        user.generator.bias[tv.eos_id] -= 2.0

    def user_logits(src, mask, prefix):  # batch-first adapter around the user's own forward
        return user(src.T, prefix.T, mask == 0).transpose(0, 1)

    parts = TorchTransformerParts(
        src_embedding=user.src_tok_emb.embedding,
        tgt_embedding=user.tgt_tok_emb.embedding,
        generator=user.generator,
        positions=user.positional_encoding.pos_embedding,
        transformer=user.transformer,
        embedding_scale=math.sqrt(32),
        pad_id=tv.pad_id,
        bos_id=tv.bos_id,
        eos_id=tv.eos_id,
    )
    model = from_torch_transformer(parts)
    _, report = export_model(
        model,
        tmp_path / "b",
        source_vocab=sv,
        target_vocab=tv,
        options=ExportOptions(max_new_tokens=16),
        framing=Framing(suffix=["</s>"]),  # a user's model: its framing is declared (these sources end in </s>)
    )
    assert report.ok and all(c.max_abs < 1e-4 for c in report.outputs)
    gen = Generator(tmp_path / "b")
    sources = mixed_sources(sv)
    # every cached step's logits against the user's full nn.Transformer forward over the same prefix
    targets = np.random.default_rng(2).integers(4, len(tv), size=(len(sources), 8))
    targets[:, 0] = tv.bos_id
    src, mask = (torch.from_numpy(a) for a in pad_batch(sources, sv.pad_id))
    with torch.no_grad():
        full = user_logits(src, mask, torch.from_numpy(targets)).numpy()
    cached = teacher_forced_logits(gen.backend, gen.bundle.manifest.decoder, sources, targets)
    np.testing.assert_allclose(cached, full, atol=1e-4, rtol=0)
    expected = full_forward_greedy(user_logits, sources, tv.bos_id, tv.eos_id, tv.pad_id, 16)
    assert any(len(e) > 2 for e in expected)
    assert [list(h[0].tokens) for h in gen.generate_ids(sources)] == expected
    assert [list(gen.generate_ids([s])[0][0].tokens) for s in sources] == expected


def test_nn_transformer_parts_are_checked():
    from edgeseq.errors import OptionsError

    sv, tv = vocabs()
    user = Seq2SeqTransformer(1, 1, 32, 4, len(sv), len(tv), 64, False, "relu")
    parts = TorchTransformerParts(
        user.src_tok_emb.embedding, user.tgt_tok_emb.embedding, user.generator, positions=torch.zeros(10, 16)
    )
    with pytest.raises(OptionsError, match="name either transformer="):
        from_torch_transformer(parts)
    parts.transformer = user.transformer
    with pytest.raises(OptionsError, match="positions have width 16, but the model's d_model is 32"):
        from_torch_transformer(parts)


def test_torch_reference_backend_matches_model(reference_bundle):
    """The PyTorch backend used for parity gives the model's own step logits."""
    _, model, sv, tv, _ = reference_bundle
    backend = TorchBackend(adapter_for(model))
    sources = mixed_sources(sv)[:2]
    targets = np.array([[tv.bos_id, 5, 6], [tv.bos_id, 7, 8]])
    got = teacher_forced_logits(backend, backend.adapter.decoder_spec(), sources, targets)
    src, mask = (torch.from_numpy(a) for a in pad_batch(sources, sv.pad_id))
    with torch.no_grad():
        np.testing.assert_allclose(got, model(src, mask, torch.from_numpy(targets)).numpy(), atol=1e-5)
    assert isinstance(OrtBackend, type)


def test_the_readme_example_runs(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "examples" / "nn_transformer.py"
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "b")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "PASS" in r.stdout and (tmp_path / "b" / "weights.bin").is_file()


@pytest.mark.parametrize(
    "sources, rows",
    [
        ([0, 0, 0, 1, 1, 1], [0, 1]),  # beams: one context row per source
        ([0, 1, 2], [0, 1, 2]),  # greedy
        ([2, 2, 0, 0], [2, 0]),  # reordered sources
        ([0, 0, 1], [0, 0, 1]),  # uneven: one per row
        ([0, 0, 1, 1, 0, 0], [0, 1, 0]),  # a source twice, runs of equal length
        ([1, 1, 1, 1], [1]),
        ([], []),
    ],
)
def test_context_rows(sources, rows):
    from edgeseq.runtime.loop import context_rows

    got = context_rows(np.array(sources, dtype=np.int64), per_source=True)
    assert got.tolist() == rows
    assert context_rows(np.array(sources, dtype=np.int64), per_source=False).tolist() == sources


@pytest.fixture(scope="module")
def eager_eos_bundle(tmp_path_factory):
    """A tiny Transformer whose rows end at different steps (a sampled row ends at </s> often)."""
    model, sv, tv = tiny_transformer("pre", seed=3)
    with torch.no_grad():
        model.out_bias[model.cfg.eos_id] = 12.0
    out = tmp_path_factory.mktemp("tf") / "eos"
    export_model(model, out, source_vocab=sv, target_vocab=tv, options=ExportOptions(max_new_tokens=16))
    return out, sv


@pytest.mark.parametrize("strategy", ["beam", "samples"])
def test_step_takes_the_context_once_per_source(reference_bundle, eager_eos_bundle, strategy):
    """Beam rows attend their source's cross keys/values fed once per source; the same hypotheses as fed per row.
    Samples that end unevenly fall back to one context row per row."""
    import dataclasses

    from edgeseq.runtime.loop import decode

    bundle, sv = reference_bundle[0], reference_bundle[2]
    if strategy == "samples":
        bundle, sv = eager_eos_bundle
    gen = Generator(bundle, engine="loop")
    spec, backend = gen.bundle.manifest.decoder, gen.backend
    assert spec.context_per_source
    seen, step = [], backend.step

    def spy(feeds, *a, **kw):
        seen.append((len(feeds["prev_tokens"]), len(feeds["cross_k_0"]), len(feeds["src_mask"])))
        return step(feeds, *a, **kw)

    backend.step = spy
    sources = [sv.encode(s) for s in ("a b c d", "b c", "d d a b c", "c")]
    if strategy == "beam":
        options = gen.options.replace(beam_size=3, nbest=3, max_new_tokens=10)
    else:
        options = gen.options.replace(sample=True, nbest=3, seed=5, max_new_tokens=16)
    grouped = decode(backend, spec, sources, options)
    grouped_feeds, seen[:] = list(seen), []
    per_row = decode(backend, dataclasses.replace(spec, context_per_source=False), sources, options)
    assert all(ctx == mask == rows for rows, ctx, mask in seen)
    if strategy == "samples":
        assert grouped_feeds[0] == (12, 4, 4)
        assert any(ctx == rows and rows % 4 for rows, ctx, _ in grouped_feeds)  # rows ended unevenly
    else:  # (the first step runs one row per source: all beams start identical)
        assert grouped_feeds[:2] == [(4, 4, 4), (12, 4, 4)]
        assert all(rows == 3 * ctx for rows, ctx, _ in grouped_feeds[1:])
    for a, b in zip(grouped, per_row):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], rtol=1e-5, atol=1e-5)
