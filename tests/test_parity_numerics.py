"""Parity numerics a user can trust: tolerances relative to each output's scale (large logits pass when the
sequences agree, a 1% weight perturbation still fails), -inf agrees with -inf, counts are never rounded up,
token-id outputs are compared for equality, and check sources use the bundle's own special ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeseq.bundle import SourceFraming
from edgeseq.export import EncoderDecoder, ExportOptions, Framing, Thresholds, export_model
from edgeseq.export.parity import compare_output, count, difference, sample_sources
from edgeseq.export.quantize import Recipe, quantize_bundle
from edgeseq.export.validate import validate_bundle
from edgeseq.vocab import Vocab


def test_counts_are_never_rounded_up():
    assert count(1999, 2000) == "1999/2000 (99.9%)"
    assert count(2000, 2000) == "2000/2000 (100.0%)"
    assert count(1, 3) == "1/3 (33.3%)" and count(0, 0) == "0/0"


def test_infinities_agree_and_scale_is_relative():
    ref = np.array([[-np.inf, 250.0, 3.0], [1.0, -np.inf, -270.0]])
    got = ref + np.array([[0.0, 0.01, 0.0], [0.0, 0.0, -0.02]])
    err, scale = difference(got, ref)
    assert err == pytest.approx(0.02) and scale == 270.0
    assert compare_output("g", "logits", got, ref, Thresholds()).ok  # 0.02 <= 1e-4 + 1e-4 * 270
    assert not compare_output("g", "logits", ref * 1.01, ref, Thresholds()).ok  # a 1% error fails
    one_sided = ref.copy()
    one_sided[0, 0] = 5.0
    assert difference(one_sided, ref)[0] == np.inf  # -inf on one side only is an infinite error
    ids = compare_output("g", "next_token", np.array([3, 4, 5]), np.array([3, 9, 5]), Thresholds())
    assert (ids.differ, ids.total, ids.ok) == (1, 3, False) and "1/3 ids differ" in ids.describe()


def test_check_sources_use_the_bundles_own_ids():
    framing = SourceFraming(prefix=(2,), suffix=(3,), pad=1, unk=0)
    for src in sample_sources(50, count=20, framing=framing, special=(0, 1, 2, 3)):
        assert src[0] == 2 and src[-1] == 3 and not {0, 1, 2, 3} & set(src[1:-1])


class Masked(nn.Module):
    """A small GRU model whose step masks two tokens to -inf (as a user's constrained decoder would)."""

    def __init__(self, vocab: int, d: int = 24):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.tgt = nn.Embedding(vocab, d), nn.Embedding(vocab, d)
        self.rnn, self.cell = nn.GRU(d, d, batch_first=True), nn.GRUCell(d, d)
        self.out = nn.Linear(d, vocab)
        with torch.no_grad():
            self.out.weight.mul_(6.0)

    def encode(self, src_ids, src_mask):
        x = self.emb(src_ids) * src_mask[..., None]
        memory, h = self.rnn(x)
        return {"memory": memory, "h": h[0]}

    def step(self, tokens, h, memory, src_mask):
        scores = (memory @ h[:, :, None]).squeeze(2).masked_fill(src_mask == 0, float("-inf"))
        h = self.cell(self.tgt(tokens) + (scores.softmax(-1)[:, :, None] * memory).sum(1), h)
        logits = self.out(h)
        logits[:, 0] = float("-inf")  # never <pad>, never <unk>
        logits[:, 3] = float("-inf")
        return {"logits": logits, "h": h}


def test_masked_logits_export_without_nan(tmp_path):
    vocab = Vocab.build(["abcdefghij"], level="char")
    special = {"eos": vocab.eos_id, "decoder_start": vocab.bos_id, "pad": vocab.pad_id, "bos": vocab.bos_id}
    model = EncoderDecoder(Masked(len(vocab)), special_tokens=special, source_vocab_size=len(vocab))
    _, report = export_model(
        model,
        tmp_path / "b",
        source_vocab=vocab,
        target_vocab=vocab,
        framing=Framing(suffix=["</s>"]),
        options=ExportOptions(max_new_tokens=8),
    )
    assert report.ok, report.table()
    logits = next(c for c in report.outputs if c.output == "logits")
    assert np.isfinite(logits.max_abs) and np.isfinite(report.steps.max_abs)
    assert "nan" not in report.table()


def test_a_one_percent_weight_perturbation_fails(tmp_path):
    """T5 v1.1-style logits in the hundreds pass at the relative tolerance; 1% noise on one weight does not."""
    transformers = pytest.importorskip("transformers")
    from edgeseq.export.hf import load_hf_checkpoint
    from tests.hf_models import make_t5

    transformers.utils.logging.set_verbosity_error()
    folder = make_t5(tmp_path / "hf", v11=True)
    ckpt = load_hf_checkpoint(folder)
    export_model(ckpt.model, tmp_path / "b", tokenizer=ckpt.tokenizer, options=ExportOptions(max_new_tokens=10))
    assert validate_bundle(tmp_path / "b", folder, record=False).ok
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder)
    with torch.no_grad():
        w = hf.lm_head.weight
        w.add_(0.01 * w.abs().mean() * torch.randn_like(w))
    hf.save_pretrained(tmp_path / "hf")  # same folder layout, perturbed weights
    report = validate_bundle(tmp_path / "b", tmp_path / "hf", record=False)
    assert not report.ok
    assert any(c.graph == "decoder_step" and c.output == "logits" and not c.ok for c in report.outputs)


def test_token_ids_are_compared_for_equality(tmp_path, bundle_factory):
    src, *_ = bundle_factory()
    quantize_bundle(src, tmp_path / "q", Recipe.uniform("dynamic-int8"))
    report = validate_bundle(tmp_path / "q", src, record=False)
    tokens = next(c for c in report.outputs if c.output == "head_ids")  # the heads' greedy choices
    assert tokens.differ is not None and tokens.total > 0
    assert "ids differ" in report.table() and "head_ids max abs" not in report.table()


def test_nan_outputs_fail_even_when_both_sides_have_them(tmp_path, checkpoint_and_bundle):
    """A model with NaN weights gives NaN logits in PyTorch and in the bundle: that is a broken model, not parity."""
    import torch

    from edgeseq.errors import ParityError
    from edgeseq.export import load_checkpoint

    ckpt = load_checkpoint(checkpoint_and_bundle[0])
    with torch.no_grad():
        ckpt.model.decoder.out.weight.fill_(float("nan"))
    with pytest.raises(ParityError, match="logits max abs error inf"):
        export_model(
            ckpt.model,
            tmp_path / "b",
            source_vocab=ckpt.source_vocab,
            target_vocab=ckpt.target_vocab,
            options=ExportOptions(max_new_tokens=8),
        )
    assert not (tmp_path / "b").exists()
    assert not np.isfinite(difference(np.array([np.nan]), np.array([np.nan]))[0])
