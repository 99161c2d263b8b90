"""T5 and mT5 from Hugging Face checkpoints, with an explicit KV cache.

Quirks handled here: the relative position bias (bidirectional buckets in the encoder; in the cached step,
the bias row of the query at position `step` against keys 0..step), computed by the first layer of each
stack and shared by all; RMS LayerNorms before each sublayer; no 1/sqrt(d) attention scaling; the output
rescaled by d_model^-1/2 when the LM head is tied; the decoder starting from <pad>.
"""

from __future__ import annotations

import torch
from torch import nn

from edgeseq.export.families import Family, register
from edgeseq.export.hf.bart import CacheDims, _adapter, attend, output_logits, split_heads
from edgeseq.models.grouped import attend_by_source


class HFT5(nn.Module):
    """A T5ForConditionalGeneration / MT5ForConditionalGeneration, cut for edgeseq."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model.eval()
        c = hf_model.config
        self.model_type = c.model_type
        self.encoder, self.decoder = hf_model.get_encoder(), hf_model.get_decoder()
        self.heads = c.num_heads
        self.d_model = c.d_model
        self.cfg = CacheDims(
            src_vocab_size=c.vocab_size,
            tgt_vocab_size=hf_model.lm_head.out_features,
            d_model=c.d_model,
            heads=c.num_heads,
            head_dim=c.d_kv,
            decoder_layers=c.num_decoder_layers,
            max_positions=None,
            pad_id=c.pad_token_id,
            bos_id=c.decoder_start_token_id,
            eos_id=c.eos_token_id,
            decoder_start_id=c.decoder_start_token_id,
        )
        self.scale_output = self._output_is_rescaled()

    @torch.no_grad()
    def _output_is_rescaled(self) -> bool:
        """Whether the HF model multiplies the decoder output by d_model^-1/2 before its LM head.

        T5 does when its head is tied; mT5 did in transformers 4 and does not in 5. Ask the model itself: one
        decoder step both ways against its own forward pass on a dummy input.
        """
        src = torch.tensor([[self.cfg.eos_id]])
        start = torch.tensor([[self.cfg.decoder_start_id]])
        expected = self.hf(input_ids=src, decoder_input_ids=start).logits[0, 0]
        self.scale_output = False
        cross = self.cross_keys_values(self.encode(src, torch.ones_like(src)))
        empty = torch.zeros(1, self.heads, 0, self.cfg.head_dim)
        plain, _ = self.step(start[0], torch.tensor(0), [(empty, empty)] * len(cross), cross, torch.ones_like(src))
        return not torch.allclose(plain[0], expected, atol=1e-4, rtol=1e-4)

    def _bias(self, stack: nn.Module, query: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(Tq,) and (Tk,) positions -> (1, nh, Tq, Tk) relative position bias of `stack`'s first layer."""
        attn = stack.block[0].layer[0].SelfAttention
        buckets = attn._relative_position_bucket(
            keys[None, :] - query[:, None],
            bidirectional=not attn.is_decoder,
            num_buckets=attn.relative_attention_num_buckets,
            max_distance=attn.relative_attention_max_distance,
        )
        return attn.relative_attention_bias(buckets).permute(2, 0, 1).unsqueeze(0)

    def _attn(self, attn, h, k, v, keep, bias=None) -> torch.Tensor:
        return attn.o(attend(split_heads(attn.q(h), self.heads), k, v, keep, 1.0, bias))

    def _cross(self, attn, h, k, v, keep) -> torch.Tensor:
        """Cross-attention: k/v and keep one row per row, or per source for g consecutive rows each."""
        return attn.o(attend_by_source(attn.q(h), k, v, keep))

    def _kv(self, attn, x) -> tuple[torch.Tensor, torch.Tensor]:
        return split_heads(attn.k(x), self.heads), split_heads(attn.v(x), self.heads)

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """(B, S) -> memory (B, S, d)."""
        x = self.encoder.embed_tokens(src_ids)
        positions = torch.arange(src_ids.shape[1])
        bias = self._bias(self.encoder, positions, positions)  # (1, nh, S, S)
        keep = src_mask.bool()[:, None, None, :]
        for block in self.encoder.block:
            sa, ff = block.layer[0], block.layer[-1]
            h = sa.layer_norm(x)
            x = x + self._attn(sa.SelfAttention, h, *self._kv(sa.SelfAttention, h), keep, bias)
            x = x + ff.DenseReluDense(ff.layer_norm(x))
        return self.encoder.final_layer_norm(x)

    def cross_keys_values(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [self._kv(block.layer[1].EncDecAttention, memory) for block in self.decoder.block]

    def step(self, tokens, step, past, cross, src_mask):
        """tokens (B,), step () -> logits (B, V), the grown cache [(k, v)] each (B, nh, P + 1, d_kv)."""
        x = self.decoder.embed_tokens(tokens[:, None])  # (B, 1, d)
        keys = torch.arange(past[0][0].shape[2] + 1)  # positions 0..step
        bias = self._bias(self.decoder, step.reshape(1), keys)  # (1, nh, 1, P + 1)
        keep = src_mask.bool()[:, None, None, :]
        new = []
        for block, (pk, pv), (ck, cv) in zip(self.decoder.block, past, cross):
            sa, ca, ff = block.layer[0], block.layer[1], block.layer[-1]
            h = sa.layer_norm(x)
            k, v = self._kv(sa.SelfAttention, h)
            k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
            new.append((k, v))
            x = x + self._attn(sa.SelfAttention, h, k, v, None, bias)
            x = x + self._cross(ca.EncDecAttention, ca.layer_norm(x), ck, cv, keep)
            x = x + ff.DenseReluDense(ff.layer_norm(x))
        x = self.decoder.final_layer_norm(x[:, 0])
        if self.scale_output:
            x = x * self.d_model**-0.5
        return output_logits(self.hf.lm_head, x), new


register(
    Family(
        "hf-t5",
        matches=lambda m: isinstance(m, HFT5),
        adapter=_adapter,
        describe="a local Hugging Face T5 or mT5 folder",
        hf_model_types=("t5", "mt5"),
        from_hf=HFT5,
    )
)
