"""The export protocol on a model that edgeseq has never seen: written here, exported through a Seq2SeqAdapter."""

import pytest
import torch
from torch import nn

from edgeseq.bundle import DecoderSpec, GraphSpec, StateSpec, TensorSpec
from edgeseq.errors import OptionsError
from edgeseq.export import ExportOptions, Framing, Seq2SeqAdapter, export_model
from edgeseq.export.trace import ExportError
from edgeseq.runtime import Generator
from edgeseq.runtime.batching import pad_batch
from tests.conftest import mixed_sources, vocabs


class ConvGRU(nn.Module):
    """A convolutional encoder, a GRUCell decoder with scaled dot attention and a learned step embedding."""

    def __init__(self, src_vocab, tgt_vocab, d=24):
        super().__init__()
        self.src_emb, self.tgt_emb = nn.Embedding(src_vocab, d), nn.Embedding(tgt_vocab, d)
        self.conv = nn.Conv1d(d, d, kernel_size=3, padding=1)
        self.init = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.step_emb = nn.Embedding(32, d)
        self.cell = nn.GRUCell(2 * d, d)
        self.out = nn.Linear(2 * d, tgt_vocab)

    def encode(self, src, mask):
        x = self.src_emb(src) * mask[..., None]  # (B, S, d)
        memory = torch.tanh(self.conv(x.transpose(1, 2)).transpose(1, 2)) * mask[..., None]  # (B, S, d)
        mean = memory.sum(1) / mask.sum(1, keepdim=True)  # (B, d)
        return memory, torch.tanh(self.init(mean))

    def step(self, tokens, step, h, keys, memory, mask):
        scores = (keys @ h[:, :, None]).squeeze(2) / keys.shape[-1] ** 0.5  # (B, S)
        weights = torch.softmax(scores.masked_fill(mask == 0, float("-inf")), dim=-1)
        context = (weights[:, None, :] @ memory).squeeze(1)  # (B, d)
        x = torch.cat([self.tgt_emb(tokens) + self.step_emb(step), context], dim=-1)
        h = self.cell(x, h)
        return self.out(torch.cat([h, context], dim=-1)), h


class ConvGRUAdapter(Seq2SeqAdapter):
    family = "conv-gru"
    max_source_length = 64
    max_target_length = 32

    def __init__(self, model, src_vocab, tgt_vocab):
        super().__init__()
        self.model, self.source_vocab_size, self.v = model, src_vocab, tgt_vocab

    def special_tokens(self):
        return {"pad": 0, "bos": 1, "eos": 2, "decoder_start": 1}

    def graph_specs(self):
        src = (
            TensorSpec("src_ids", "int64", ("batch", "src_len")),
            TensorSpec("src_mask", "int64", ("batch", "src_len")),
        )
        memory = TensorSpec("memory", "float32", ("batch", "src_len", 24))
        keys = TensorSpec("keys", "float32", ("batch", "src_len", 24))
        h = TensorSpec("h", "float32", ("batch", 24))
        return {
            "encoder": GraphSpec("encoder.onnx", src, (memory, TensorSpec("h0", "float32", ("batch", 24)))),
            "attention": GraphSpec("attention.onnx", (memory,), (keys,)),
            "decoder_step": GraphSpec(
                "decoder_step.onnx",
                (TensorSpec("tokens", "int64", ("batch",)), TensorSpec("step", "int64", ()), h, keys, memory, src[1]),
                (TensorSpec("logits", "float32", ("batch", self.v)), TensorSpec("h_next", "float32", ("batch", 24))),
            ),
        }

    def decoder_spec(self):
        return DecoderSpec("tokens", "logits", (StateSpec("h", "h_next", 0, init_from="h0"),), step_input="step")

    def encoder(self, x):
        memory, h0 = self.model.encode(x["src_ids"], x["src_mask"])
        return {"memory": memory, "h0": h0}

    def attention(self, x):
        return {"keys": self.model.key(x["memory"])}

    def decoder_step(self, x):
        logits, h = self.model.step(x["tokens"], x["step"], x["h"], x["keys"], x["memory"], x["src_mask"])
        return {"logits": logits, "h_next": h}


def make(seed=0):
    sv, tv = vocabs()
    torch.manual_seed(seed)
    model = ConvGRU(len(sv), len(tv)).eval()
    with torch.no_grad():
        model.out.weight.mul_(4.0)
        model.out.bias[2] -= 2.0
    return model, sv, tv


def test_custom_model_exports_and_decodes_like_pytorch(tmp_path):
    model, sv, tv = make()
    _, report = export_model(
        ConvGRUAdapter(model, len(sv), len(tv)),
        tmp_path / "b",
        source_vocab=sv,
        target_vocab=tv,
        options=ExportOptions(max_new_tokens=12),
        framing=Framing(suffix=["</s>"]),
    )
    assert report.ok, report.table()
    assert {c.graph for c in report.outputs} == {"encoder", "attention", "decoder_step", "step (1 row)"}
    sources = mixed_sources(sv)
    src, mask = (torch.from_numpy(a) for a in pad_batch(sources, 0))
    expected = [[] for _ in sources]
    with torch.no_grad():
        memory, h = model.encode(src, mask)
        keys, tokens, done = (
            model.key(memory),
            torch.ones(len(sources), dtype=torch.long),
            torch.zeros(len(sources), dtype=torch.bool),
        )
        for step in range(12):
            logits, h = model.step(tokens, torch.tensor(step), h, keys, memory, mask)
            tokens = torch.where(done, 0, logits.argmax(-1))
            for i in range(len(sources)):
                if not done[i] and tokens[i] != 2:
                    expected[i].append(int(tokens[i]))
            done |= tokens == 2
    gen = Generator(tmp_path / "b")
    assert gen.bundle.manifest.family == "conv-gru"
    assert [list(h[0].tokens) for h in gen.generate_ids(sources)] == expected
    assert any(len(e) > 2 for e in expected)


def with_extra_input(graph, tensor):
    class Sloppy(ConvGRUAdapter):
        def graph_specs(self):
            specs = super().graph_specs()
            g = specs[graph]
            specs[graph] = GraphSpec(g.file, (*g.inputs, tensor), g.outputs)
            return specs

    return Sloppy


def test_spec_that_declares_an_unused_input_is_refused(tmp_path):
    model, sv, tv = make()
    sloppy = with_extra_input("attention", TensorSpec("src_mask", "int64", ("batch", "src_len")))
    with pytest.raises(ExportError, match=r"declares \['memory', 'src_mask'\].*remove it from the graph spec"):
        export_model(
            sloppy(model, len(sv), len(tv)), tmp_path / "b", source_vocab=sv, target_vocab=tv, framing=Framing()
        )
    assert not list(tmp_path.iterdir())  # nothing half-written beside the target


def test_spec_with_an_input_from_nowhere_is_refused(tmp_path):
    model, sv, tv = make()
    sloppy = with_extra_input("decoder_step", TensorSpec("lang_id", "int64", ("batch",)))
    with pytest.raises(ExportError, match="decoder_step input 'lang_id' is not produced by any earlier graph"):
        export_model(sloppy(model, len(sv), len(tv)), tmp_path / "b", source_vocab=sv, target_vocab=tv)


def test_unknown_model_type_is_refused(tmp_path):
    sv, tv = vocabs()
    with pytest.raises(OptionsError, match="cannot export a Linear: pass .*an edgeseq.models.RNNSeq2Seq"):
        export_model(nn.Linear(2, 2), tmp_path / "b", source_vocab=sv, target_vocab=tv)
