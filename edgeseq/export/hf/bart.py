"""Marian, BART and mBART from Hugging Face checkpoints, run from their own submodules with an explicit KV cache.

Quirks handled here: the embedding scale (Marian multiplies after the lookup, BART's scaled embedding inside
it), positions (Marian's sinusoidal table from 0, BART's learned table offset by 2), BART's embedding
LayerNorm, mBART's pre-norm layers and final LayerNorms, the final logits bias, the decoder start token.
The module has the interface of edgeseq's reference Transformer (encode / cross_keys_values / step), so
the Transformer adapter exports it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeseq.export.families import Family, register
from edgeseq.models.grouped import attend_by_source

PRE_NORM = {"mbart"}


@dataclass(frozen=True)
class CacheDims:
    """What the cached-Transformer adapter needs to know about a model."""

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int
    heads: int
    head_dim: int
    decoder_layers: int
    max_positions: int | None
    pad_id: int
    bos_id: int
    eos_id: int
    decoder_start_id: int


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)  # (B, nh, T, hs)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)  # (B, T, nh * hs)


def output_logits(head: nn.Linear, h: torch.Tensor, extra_bias: torch.Tensor | None = None) -> torch.Tensor:
    """(B, d) -> (B, V) as one linear with a bias, which exports as a Gemm reading the weight as it is stored.

    Without a bias the exporter writes MatMul with a transposed copy of the weight, and a head tied to the
    embeddings would then be stored twice.
    """
    bias = head.bias if head.bias is not None else torch.zeros(head.out_features)
    if extra_bias is not None:
        bias = bias + extra_bias.reshape(-1)
    return torch.nn.functional.linear(h, head.weight, bias)


def attend(q, k, v, keep=None, scale=1.0, bias=None) -> torch.Tensor:
    """q (B, nh, Tq, hs), k/v (B, nh, Tk, hs); keep broadcastable to scores, True = attend."""
    scores = (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias
    if keep is not None:
        scores = scores.masked_fill(~keep, float("-inf"))
    return merge_heads(torch.softmax(scores, dim=-1) @ v)


class HFBartLike(nn.Module):
    """A MarianMTModel / BartForConditionalGeneration / MBartForConditionalGeneration, cut for edgeseq."""

    def __init__(self, hf_model: nn.Module) -> None:
        super().__init__()
        self.hf = hf_model.eval()
        c = hf_model.config
        self.model_type = c.model_type
        self.pre_norm = c.model_type in PRE_NORM
        self.encoder, self.decoder = hf_model.get_encoder(), hf_model.get_decoder()
        heads = c.decoder_attention_heads
        self.cfg = CacheDims(
            src_vocab_size=c.vocab_size,
            tgt_vocab_size=hf_model.lm_head.out_features,
            d_model=c.d_model,
            heads=heads,
            head_dim=c.d_model // heads,
            decoder_layers=c.decoder_layers,
            max_positions=c.max_position_embeddings,
            pad_id=c.pad_token_id,
            bos_id=c.bos_token_id if c.bos_token_id is not None else c.decoder_start_token_id,
            eos_id=c.eos_token_id,
            decoder_start_id=c.decoder_start_token_id,
        )
        self.enc_heads = c.encoder_attention_heads

    # -- pieces shared by encoder and decoder ------------------------------------------------------------
    def _embed(self, stack: nn.Module, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        x = stack.embed_tokens(tokens) * getattr(stack, "embed_scale", 1.0)  # BART scales inside embed_tokens
        table = stack.embed_positions
        x = x + table.weight[positions + getattr(table, "offset", 0)]
        ln = getattr(stack, "layernorm_embedding", None)
        return ln(x) if ln is not None else x

    def _self_attn(self, attn, h, keep, heads):
        k, v = split_heads(attn.k_proj(h), heads), split_heads(attn.v_proj(h), heads)
        out = attend(split_heads(attn.q_proj(h), heads), k, v, keep, attn.scaling)
        return attn.out_proj(out), k, v

    def _ffn(self, layer, h):
        return layer.fc2(layer.activation_fn(layer.fc1(h)))

    def _residual(self, x, norm, fn):
        if self.pre_norm:
            out = fn(norm(x))
            return x + out[0] if isinstance(out, tuple) else x + out, out
        out = fn(x)
        return norm(x + (out[0] if isinstance(out, tuple) else out)), out

    # -- the three cuts ----------------------------------------------------------------------------------
    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """(B, S) -> memory (B, S, d)."""
        x = self._embed(self.encoder, src_ids, torch.arange(src_ids.shape[1]))
        keep = src_mask.bool()[:, None, None, :]
        for layer in self.encoder.layers:
            x, _ = self._residual(
                x, layer.self_attn_layer_norm, lambda h, a=layer.self_attn: self._self_attn(a, h, keep, self.enc_heads)
            )
            x, _ = self._residual(x, layer.final_layer_norm, lambda h, ly=layer: self._ffn(ly, h))
        final = getattr(self.encoder, "layer_norm", None)
        return final(x) if final is not None else x

    def cross_keys_values(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        heads = self.cfg.heads
        return [
            (split_heads(ly.encoder_attn.k_proj(memory), heads), split_heads(ly.encoder_attn.v_proj(memory), heads))
            for ly in self.decoder.layers
        ]

    def step(self, tokens, step, past, cross, src_mask):
        """tokens (B,), step () -> logits (B, V), the grown cache [(k, v)] each (B, nh, P + 1, hs).

        cross [(k, v)] and src_mask: one row per row, or per source for g consecutive rows each (models/grouped.py).
        One new position per row, so the step keeps its activations (B, d): self-attention's reshapes have
        constant shapes and its heads split without a transpose (small Marian: 162 -> 124 nodes once ONNX
        Runtime has fused them, ~2% faster).
        """
        x = self._embed(self.decoder, tokens, step.reshape(1))  # (B, d)
        keep = src_mask.bool()[:, None, None, :]
        new = []
        for layer, (pk, pv), (ck, cv) in zip(self.decoder.layers, past, cross):
            x, (_, k, v) = self._residual(
                x,
                layer.self_attn_layer_norm,
                lambda h, a=layer.self_attn, pk=pk, pv=pv: self._self_attn_step(a, h, pk, pv),
            )
            new.append((k, v))
            x, _ = self._residual(
                x,
                layer.encoder_attn_layer_norm,
                lambda h, a=layer.encoder_attn, ck=ck, cv=cv: a.out_proj(
                    attend_by_source(a.q_proj(h), ck, cv, keep, a.scaling)
                ),
            )
            x, _ = self._residual(x, layer.final_layer_norm, lambda h, ly=layer: self._ffn(ly, h))
        final = getattr(self.decoder, "layer_norm", None)
        if final is not None:
            x = final(x)
        return output_logits(self.hf.lm_head, x, getattr(self.hf, "final_logits_bias", None)), new

    def _self_attn_step(self, attn, h, past_k, past_v):
        """h (B, d): one position per row, (B, d) is (B, nh, 1, hs) as it lies in memory."""
        nh, hs = self.cfg.heads, self.cfg.head_dim
        k = torch.cat([past_k, attn.k_proj(h).reshape(-1, nh, 1, hs)], dim=2)
        v = torch.cat([past_v, attn.v_proj(h).reshape(-1, nh, 1, hs)], dim=2)
        scores = (attn.q_proj(h).reshape(-1, nh, 1, hs) @ k.transpose(-2, -1)) * attn.scaling
        out = (torch.softmax(scores, dim=-1) @ v).reshape(-1, nh * hs)
        return attn.out_proj(out), k, v


def _adapter(model: nn.Module):
    from edgeseq.export.transformer import TransformerAdapter

    return TransformerAdapter(model, family=model.model_type)


register(
    Family(
        "hf-bart",
        matches=lambda m: isinstance(m, HFBartLike),
        adapter=_adapter,
        describe="a local Hugging Face Marian, BART or mBART folder",
        hf_model_types=("marian", "bart", "mbart"),
        from_hf=HFBartLike,
    )
)
