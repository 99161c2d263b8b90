"""Export adapter for the Transformer family (edgeseq.models.transformer).

encoder.onnx    src_ids, src_mask -> memory (B, S, d)
attention.onnx  memory -> cross_k_i, cross_v_i (B, nh, S, hs) for every decoder layer i, once per source
decoder_step    prev_tokens (B,), step (), self_k_i, self_v_i (B, nh, P, hs), cross_k_i, cross_v_i (C, nh, S, hs),
                src_mask (C, S) -> logits (B, V), self_k_i_out, self_v_i_out (B, nh, P + 1, hs)

The step takes the cross keys/values and the mask one row per source when each source has the same number
of consecutive rows (B = C * g: beam search), else one per row (C = B); DecoderSpec.context_per_source.

The self-attention cache starts empty (P = 0) and grows by one position per step; one decoder-step graph
serves every step, so each weight is stored once.
"""

from __future__ import annotations

import torch

from edgeseq.bundle import DecoderSpec, GraphSpec, StateSpec, TensorSpec
from edgeseq.export.adapter import Seq2SeqAdapter
from edgeseq.export.families import Family, register
from edgeseq.models.transformer import TransformerConfig, TransformerSeq2Seq

FLOAT, INT = "float32", "int64"
SOURCES = "sources"  # the step's context inputs: one row per source (or per row)


class TransformerAdapter(Seq2SeqAdapter):
    """Cuts a TransformerSeq2Seq into encoder, cross-attention K/V, and a cached decoder step."""

    family = "transformer"

    def __init__(self, model: TransformerSeq2Seq, family: str = "transformer") -> None:
        super().__init__()
        self.model, self.family = model, family
        self.cfg = cfg = model.cfg  # a TransformerConfig, or any object with the same fields
        self.source_vocab_size = cfg.src_vocab_size
        self.max_source_length = cfg.max_positions or 4096
        self.max_target_length = cfg.max_positions
        self.layers = range(cfg.decoder_layers)
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.d_model // cfg.heads
        if getattr(model, "edgeseq_framing", False):  # trained by edgeseq on Vocab.encode sources: pieces, </s>
            self.implied_framing = ((), (cfg.eos_id,))

    def special_tokens(self) -> dict[str, int]:
        c = self.cfg
        return {
            "pad": c.pad_id,
            "bos": c.bos_id,
            "eos": c.eos_id,
            "decoder_start": getattr(c, "decoder_start_id", c.bos_id),
        }

    def graph_specs(self) -> dict[str, GraphSpec]:
        c = self.cfg
        nh, hs = c.heads, self.head_dim
        src_ids = TensorSpec("src_ids", INT, ("batch", "src_len"))
        src_mask = TensorSpec("src_mask", INT, ("batch", "src_len"))
        memory = TensorSpec("memory", FLOAT, ("batch", "src_len", c.d_model))
        cross = tuple(
            TensorSpec(f"cross_{kv}_{i}", FLOAT, ("batch", nh, "src_len", hs)) for i in self.layers for kv in "kv"
        )
        # the step takes the context one row per source or per row (models/grouped.py): its own batch symbol
        by_source = tuple(TensorSpec(t.name, t.dtype, (SOURCES, *t.shape[1:])) for t in (*cross, src_mask))
        past = tuple(
            TensorSpec(f"self_{kv}_{i}", FLOAT, ("batch", nh, "past_len", hs)) for i in self.layers for kv in "kv"
        )
        grown = tuple(
            TensorSpec(f"self_{kv}_{i}_out", FLOAT, ("batch", nh, "past_len_plus_1", hs))
            for i in self.layers
            for kv in "kv"
        )
        step_in = (TensorSpec("prev_tokens", INT, ("batch",)), TensorSpec("step", INT, ()), *past, *by_source)
        return {
            "encoder": GraphSpec("encoder.onnx", (src_ids, src_mask), (memory,)),
            "attention": GraphSpec("attention.onnx", (memory,), cross),
            "decoder_step": GraphSpec(
                "decoder_step.onnx", step_in, (TensorSpec("logits", FLOAT, ("batch", c.tgt_vocab_size)), *grown)
            ),
        }

    def decoder_spec(self) -> DecoderSpec:
        nh, hs = self.cfg.heads, self.head_dim
        states = tuple(
            StateSpec(f"self_{kv}_{i}", f"self_{kv}_{i}_out", 0, zeros_shape=("batch", nh, 0, hs))
            for i in self.layers
            for kv in "kv"
        )
        return DecoderSpec(
            tokens_input="prev_tokens",
            logits_output="logits",
            states=states,
            step_input="step",
            context_per_source=True,
        )

    def encoder(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"memory": self.model.encode(x["src_ids"], x["src_mask"])}

    def attention(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for i, (k, v) in enumerate(self.model.cross_keys_values(x["memory"])):
            out[f"cross_k_{i}"], out[f"cross_v_{i}"] = k, v
        return out

    def decoder_step(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        past = [(x[f"self_k_{i}"], x[f"self_v_{i}"]) for i in self.layers]
        cross = [(x[f"cross_k_{i}"], x[f"cross_v_{i}"]) for i in self.layers]
        logits, new = self.model.step(x["prev_tokens"], x["step"], past, cross, x["src_mask"])
        out = {"logits": logits}
        for i, (k, v) in enumerate(new):
            out[f"self_k_{i}_out"], out[f"self_v_{i}_out"] = k, v
        return out


register(
    Family(
        "transformer",
        matches=lambda m: isinstance(m, TransformerSeq2Seq),
        adapter=TransformerAdapter,
        describe="an edgeseq.models.TransformerSeq2Seq",
        checkpoint=(TransformerConfig, TransformerSeq2Seq),
    )
)
