"""Export adapter for the RNN family (edgeseq.models.rnn): LSTM/GRU, with or without attention.

encoder.onnx    src_ids, src_mask -> memory (B, S, H), init_h (L, B, H) [, init_c]
attention.onnx  memory -> attn_keys (B, S, A)            (Bahdanau and Luong-general only: their keys are
                                                          a projection of memory, computed once per source)
decoder_step    prev_tokens, h [, c] [, feed] [, attn_keys], memory, src_mask
                -> logits (B, V), h_out [, c_out] [, feed_out], attn_weights (B, S)
"""

from __future__ import annotations

import torch

from edgeseq.bundle import DecoderSpec, GraphSpec, StateSpec, TensorSpec
from edgeseq.export.adapter import Seq2SeqAdapter
from edgeseq.export.families import Family, register
from edgeseq.models.rnn import RNNConfig, RNNSeq2Seq

FLOAT, INT = "float32", "int64"


class RNNAdapter(Seq2SeqAdapter):
    """Cuts an RNNSeq2Seq into encoder, attention (where it has keys to precompute) and decoder step."""

    family = "rnn"

    def __init__(self, model: RNNSeq2Seq) -> None:
        super().__init__()
        self.model = model
        cfg = model.cfg
        self.cfg = cfg
        self.source_vocab_size = cfg.src_vocab_size
        self.has_keys = cfg.attention in ("bahdanau", "luong-general")
        self.state_names = model.decoder.state_names
        self.implied_framing = ((), (cfg.eos_id,))  # trained on Vocab.encode sources: the pieces, then </s>

    def special_tokens(self) -> dict[str, int]:
        c = self.cfg
        return {"pad": c.pad_id, "bos": c.bos_id, "eos": c.eos_id, "decoder_start": c.bos_id}

    def graph_specs(self) -> dict[str, GraphSpec]:
        c = self.cfg
        src = (TensorSpec("src_ids", INT, ("batch", "src_len")), TensorSpec("src_mask", INT, ("batch", "src_len")))
        memory = TensorSpec("memory", FLOAT, ("batch", "src_len", c.hidden))
        init = tuple(
            TensorSpec(f"init_{n}", FLOAT, (c.layers, "batch", c.hidden))
            for n in ("h", "c")[: 2 if c.cell == "lstm" else 1]
        )
        specs = {"encoder": GraphSpec("encoder.onnx", src, (memory, *init))}
        key_dim = c.attn_dim if c.attention == "bahdanau" else c.hidden
        keys = TensorSpec("attn_keys", FLOAT, ("batch", "src_len", key_dim))
        if self.has_keys:
            specs["attention"] = GraphSpec("attention.onnx", (memory,), (keys,))
        states_in, states_out = [], []
        for n in self.state_names:
            shape = ("batch", c.hidden) if n == "feed" else (c.layers, "batch", c.hidden)
            states_in.append(TensorSpec(n, FLOAT, shape))
            states_out.append(TensorSpec(f"{n}_out", FLOAT, shape))
        step_in = [TensorSpec("prev_tokens", INT, ("batch",)), *states_in]
        step_out = [TensorSpec("logits", FLOAT, ("batch", c.tgt_vocab_size)), *states_out]
        if c.attention != "none":
            step_in += [keys] if self.has_keys else []
            step_in += [memory, src[1]]
            step_out.append(TensorSpec("attn_weights", FLOAT, ("batch", "src_len")))
        specs["decoder_step"] = GraphSpec("decoder_step.onnx", tuple(step_in), tuple(step_out))
        return specs

    def decoder_spec(self) -> DecoderSpec:
        states = []
        for n in self.state_names:
            if n == "feed":
                states.append(StateSpec("feed", "feed_out", 0, zeros_shape=("batch", self.cfg.hidden)))
            else:
                states.append(StateSpec(n, f"{n}_out", 1, init_from=f"init_{n}"))
        return DecoderSpec(
            tokens_input="prev_tokens",
            logits_output="logits",
            states=tuple(states),
            alignment_output=None if self.cfg.attention == "none" else "attn_weights",
        )

    def encoder(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        memory, states = self.model.encoder(x["src_ids"], x["src_mask"])
        return {"memory": memory, **{f"init_{n}": s for n, s in zip(("h", "c"), states)}}

    def attention(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"attn_keys": self.model.attention_keys(x["memory"])}

    def decoder_step(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = {n: x[n] for n in self.state_names}
        memory = x.get("memory")
        keys = x.get("attn_keys", memory)
        logits, new, weights = self.model.decoder(x["prev_tokens"], state, keys, memory, x.get("src_mask"))
        out = {"logits": logits, **{f"{n}_out": new[n] for n in self.state_names}}
        if weights is not None:
            out["attn_weights"] = weights
        return out


register(
    Family(
        "rnn",
        matches=lambda m: isinstance(m, RNNSeq2Seq),
        adapter=RNNAdapter,
        describe="an edgeseq.models.RNNSeq2Seq",
        checkpoint=(RNNConfig, RNNSeq2Seq),
    )
)
