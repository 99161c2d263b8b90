"""Shared fixtures: tiny random-weight RNN models and their bundles, built in the test session."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from edgeseq.bundle import MANIFEST
from edgeseq.export import ExportOptions, export_model, save_checkpoint
from edgeseq.models import RNNConfig, RNNSeq2Seq, TransformerConfig, TransformerSeq2Seq
from edgeseq.vocab import SPECIALS, Vocab

SOURCE_TEXT = "abcdefghijklmnopqrstuvwxyz0123456789 ,."
TARGET_TEXT = "0123456789-"


def vocabs() -> tuple[Vocab, Vocab]:
    return Vocab.build([SOURCE_TEXT]), Vocab.build([TARGET_TEXT])


def tiny_rnn(
    cell="lstm", attention="bahdanau", bidirectional=True, layers=2, seed=0
) -> tuple[RNNSeq2Seq, Vocab, Vocab]:
    """A random-weight model, logits scaled up so that greedy decoding is not a near-tie lottery."""
    sv, tv = vocabs()
    torch.manual_seed(seed)
    cfg = RNNConfig(
        len(sv),
        len(tv),
        cell=cell,
        attention=attention,
        bidirectional=bidirectional,
        layers=layers,
        hidden=32,
        emb_dim=16,
        attn_dim=24,
    )
    model = RNNSeq2Seq(cfg).eval()
    with torch.no_grad():
        model.decoder.out.weight.mul_(4.0)
        model.decoder.out.bias[tv.eos_id] -= 2.0  # random models should not stop at the first token
    return model, sv, tv


def medium_transformer(root) -> list[str]:
    """A random Transformer large enough that weights, not graph structure, dominate its bundle (~5 MB), with a
    tied output projection: its fp32 bundle at root/fp32, its checkpoint at root/model.safetensors. Returns 16
    sentences of 8 words (calibration)."""
    torch.manual_seed(0)
    vocab = Vocab(SPECIALS + tuple(f"w{i}" for i in range(996)), level="word")
    cfg = TransformerConfig(
        1000, 1000, d_model=128, heads=4, encoder_layers=2, decoder_layers=2, ffn_dim=512, max_positions=64
    )
    model = TransformerSeq2Seq(cfg).eval()
    with torch.no_grad():
        model.tgt_emb.weight.mul_(3.0)
    export_model(model, root / "fp32", source_vocab=vocab, target_vocab=vocab, options=ExportOptions(max_new_tokens=12))
    save_checkpoint(root / "model.safetensors", model, vocab, vocab)
    return [" ".join(f"w{i}" for i in np.random.default_rng(s).integers(0, 996, 8)) for s in range(16)]


def mixed_sources(sv: Vocab, count=6, seed=3) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = [11, 2, 7, 1, 9, 4][:count]
    return [[int(i) for i in rng.integers(4, len(sv), size=n)] + [sv.eos_id] for n in lengths]


@pytest.fixture(scope="session")
def bundle_factory(tmp_path_factory):
    """export(cell, attention, bidirectional) -> (bundle path, model, sv, tv), cached per combination."""
    cache = {}

    def make(cell="lstm", attention="bahdanau", bidirectional=True):
        key = (cell, attention, bidirectional)
        if key not in cache:
            model, sv, tv = tiny_rnn(cell, attention, bidirectional)
            out = tmp_path_factory.mktemp("bundles") / f"{cell}-{attention}-{int(bidirectional)}"
            export_model(model, out, source_vocab=sv, target_vocab=tv, options=ExportOptions(max_new_tokens=12))
            cache[key] = (out, model, sv, tv)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def checkpoint_and_bundle(bundle_factory, tmp_path_factory):
    """A saved checkpoint and the bundle exported from it (LSTM + Bahdanau, bidirectional)."""
    bundle, model, sv, tv = bundle_factory()
    ckpt = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_checkpoint(ckpt, model, sv, tv)
    return ckpt, bundle


@pytest.fixture
def bundle_copy(bundle_factory, tmp_path):
    """A private copy of the default test bundle (LSTM + Bahdanau), free to damage."""
    src, *_ = bundle_factory()
    dst = tmp_path / "bundle"
    shutil.copytree(src, dst)
    return dst


def edit_manifest(bundle, change):
    """Apply `change(data)` to a bundle's edgeseq.json."""
    data = json.loads((bundle / MANIFEST).read_text())
    change(data)
    (bundle / MANIFEST).write_text(json.dumps(data))


def inline_tensor_bytes(bundle) -> int:
    """Bytes of tensor data stored inside a bundle's .onnx files (initializers, Constant attributes, in
    subgraphs too) rather than in weights.bin: the graphs should hold their structure only."""
    import onnx

    def graph_bytes(g) -> int:
        total = sum(len(t.raw_data) for t in g.initializer if not t.external_data)
        for node in g.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.TENSOR and not a.t.external_data:
                    total += len(a.t.raw_data)
                total += sum(
                    graph_bytes(sub) for sub in (*([a.g] if a.type == onnx.AttributeProto.GRAPH else []), *a.graphs)
                )
        return total

    return sum(graph_bytes(onnx.load(str(f), load_external_data=False).graph) for f in bundle.glob("*.onnx"))
