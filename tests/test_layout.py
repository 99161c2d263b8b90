"""The bundle's weight layout for ONNX Runtime's memory: page-aligned large tensors, split output projections."""

import onnx
import pytest
import torch

from edgeseq.export import ExportOptions, export_model
from edgeseq.export import weights as weights_module
from edgeseq.models import TransformerConfig, TransformerSeq2Seq
from edgeseq.runtime import Generator
from edgeseq.vocab import Vocab
from tests.conftest import mixed_sources, vocabs


def _external(t):
    return {e.key: e.value for e in t.external_data}


@pytest.fixture(scope="module")
def tied_model():
    sv, _ = vocabs()
    torch.manual_seed(0)
    cfg = TransformerConfig(
        1000, 1000, d_model=64, heads=4, encoder_layers=1, decoder_layers=1, ffn_dim=128, max_positions=32,
        share_embeddings=True,
    )  # fmt: skip
    model = TransformerSeq2Seq(cfg).eval()
    with torch.no_grad():
        model.tgt_emb.weight.mul_(3.0)
    vocab = Vocab(tuple(sv.tokens[:4]) + tuple(f"w{i}" for i in range(996)), level="word")
    return model, vocab


def _export(model, vocab, out):
    export_model(model, out, source_vocab=vocab, target_vocab=vocab, options=ExportOptions(max_new_tokens=12))
    return out


@pytest.fixture(scope="module")
def bundles(tied_model, tmp_path_factory):
    """The same model exported whole, and with its output projection split into 60 KiB blocks."""
    model, vocab = tied_model
    root = tmp_path_factory.mktemp("layout")
    whole = _export(model, vocab, root / "whole")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(weights_module, "SPLIT_BYTES", 60 * 1024)  # the [1000, 64] fp32 weight is 250 KiB
        split = _export(model, vocab, root / "split")  # the export's own parity check runs on the split graph
    return whole, split


def test_large_tensors_start_on_a_page(bundles):
    whole, _ = bundles
    for name in ("encoder.onnx", "decoder_step.onnx"):
        model = onnx.load(str(whole / name), load_external_data=False)
        for t in model.graph.initializer:
            ext = _external(t)
            if ext and int(ext["length"]) >= weights_module.PAGE_ALIGN_BYTES:
                assert int(ext["offset"]) % weights_module.PAGE == 0, (name, t.name)


def test_split_projection_reads_row_ranges_of_the_tied_embedding(bundles):
    whole, split = bundles
    model = onnx.load(str(split / "decoder_step.onnx"), load_external_data=False)
    init = {t.name: t for t in model.graph.initializer}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm" and init[n.input[1]].dims[0] != 64]
    gathers = [n for n in model.graph.node if n.op_type == "Gather" and n.input[0] in init]
    embedding = next(init[n.input[0]] for n in gathers if init[n.input[0]].dims[0] == 1000)
    blocks = [init[n.input[1]] for n in gemms if n.name.endswith(tuple(f".block{i}" for i in range(10)))]
    assert len(blocks) == 5, [b.dims for b in blocks]  # 250 KiB in blocks of at most 60 KiB, 240 rows each
    base = int(_external(embedding)["offset"])
    rows = 0
    for b in blocks:  # consecutive row ranges of the embedding's own bytes, each on a page
        ext = _external(b)
        assert int(ext["offset"]) == base + rows * 64 * 4 and int(ext["offset"]) % weights_module.PAGE == 0
        rows += b.dims[0]
    assert rows == 1000
    assert not any(n.input[1] == embedding.name for n in model.graph.node if n.op_type == "Gemm")
    assert any(n.op_type == "Concat" and n.output[0] == "logits" for n in model.graph.node)
    size = {b: sum(f.stat().st_size for f in b.iterdir() if f.suffix == ".bin") for b in (whole, split)}
    assert size[split] == size[whole]  # nothing was written twice


def test_split_projection_decodes_the_same(bundles, tied_model):
    whole, split = bundles
    _, vocab = tied_model
    sources = mixed_sources(vocab)
    a, b = Generator(whole), Generator(split)
    ids = [list(h[0].tokens) for h in a.generate_ids(sources)]
    assert ids == [list(h[0].tokens) for h in b.generate_ids(sources)]
    assert any(len(i) > 2 for i in ids)
    scores = [h[0].score for h in a.generate_ids(sources)]
    assert [h[0].score for h in b.generate_ids(sources)] == pytest.approx(scores, abs=1e-4)
