"""Transformer encoder-decoder with an explicit self-attention KV cache for step-by-step decoding.

B batch, S source length, T target length, P cached positions, d d_model, nh heads, hs = d / nh.
Layer attribute names mirror torch.nn.TransformerEncoderLayer / TransformerDecoderLayer (self_attn,
multihead_attn, linear1, linear2, norm1..3; attention weights packed as in_proj_weight/in_proj_bias), so
models built on nn.Transformer convert by loading their layers' state dicts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeseq.errors import OptionsError
from edgeseq.models.grouped import attend_by_source
from edgeseq.models.limits import special_id_problems

NORMS, POSITIONS, ACTIVATIONS = ("pre", "post"), ("sinusoidal", "learned"), ("relu", "gelu")


@dataclass(frozen=True)
class TransformerConfig:
    """Everything that builds a Transformer encoder-decoder; invalid combinations cannot be constructed."""

    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 256
    heads: int = 4
    encoder_layers: int = 3
    decoder_layers: int = 3
    ffn_dim: int = 1024
    dropout: float = 0.1  # off in eval and export
    norm: str = "pre"  # "pre": LayerNorm before each sublayer; "post": after the residual add
    positions: str = "sinusoidal"  # "sinusoidal" (fixed) or "learned"
    max_positions: int = 512  # longest source, and most target tokens
    share_embeddings: bool = False  # one embedding table for source and target (one vocabulary size)
    tie_output: bool = True  # the output projection reuses the target embedding (plus its own bias)
    activation: str = "relu"  # FFN activation: "relu" or "gelu"
    embedding_scale: float | None = None  # token embeddings times this; None: sqrt(d_model)
    final_norm: bool | None = None  # LayerNorm after each stack; None: only for pre-norm
    layer_norm_eps: float = 1e-5
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        p = []
        for name in (
            "src_vocab_size",
            "tgt_vocab_size",
            "d_model",
            "heads",
            "encoder_layers",
            "decoder_layers",
            "ffn_dim",
            "max_positions",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                p.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not p and self.d_model % self.heads:
            p.append(f"d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.norm not in NORMS:
            p.append(f"norm {self.norm!r} is not one of {', '.join(NORMS)}")
        if self.positions not in POSITIONS:
            p.append(f"positions {self.positions!r} is not one of {', '.join(POSITIONS)}")
        if self.activation not in ACTIVATIONS:
            p.append(f"activation {self.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        if self.share_embeddings and self.src_vocab_size != self.tgt_vocab_size:
            p.append("share_embeddings needs src_vocab_size == tgt_vocab_size")
        if not 0.0 <= self.dropout < 1.0:
            p.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not p:
            p += special_id_problems(self)
        if p:
            raise OptionsError("invalid TransformerConfig: " + "; ".join(p))

    @property
    def scale(self) -> float:
        return math.sqrt(self.d_model) if self.embedding_scale is None else self.embedding_scale

    @property
    def has_final_norm(self) -> bool:
        return self.norm == "pre" if self.final_norm is None else self.final_norm

    def to_dict(self) -> dict:
        return asdict(self)


def sinusoidal_table(positions: int, d: int) -> torch.Tensor:
    """(positions, d): sin on even, cos on odd dimensions (Vaswani et al.)."""
    pos = torch.arange(positions, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(positions, d)
    table[:, 0::2] = torch.sin(pos * div)
    table[:, 1::2] = torch.cos(pos * div)[:, : d // 2]
    return table


class MultiHeadAttention(nn.Module):
    """Multi-head attention with packed q/k/v weights (nn.MultiheadAttention's layout)."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.d, self.heads = d, heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d, d))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d))
        self.out_proj = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], x.shape[1], self.heads, self.d // self.heads).transpose(1, 2)  # (B, nh, T, hs)

    def query(self, x: torch.Tensor) -> torch.Tensor:
        return self._split(F.linear(x, self.in_proj_weight[: self.d], self.in_proj_bias[: self.d]))

    def keys_values(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, d) -> k, v each (B, nh, T, hs), from one matmul."""
        kv = F.linear(x, self.in_proj_weight[self.d :], self.in_proj_bias[self.d :])  # (B, T, 2d)
        return self._split(kv[..., : self.d]), self._split(kv[..., self.d :])

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """q (B, nh, Tq, hs), k/v (B, nh, Tk, hs), mask broadcastable to (B, nh, Tq, Tk), True = keep."""
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, nh, Tq, Tk)
        if mask is not None:
            att = att.masked_fill(~mask, float("-inf"))
        y = self.drop(torch.softmax(att, dim=-1)) @ v  # (B, nh, Tq, hs)
        y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], self.d)  # (B, Tq, d)
        return self.out_proj(y)

    def attend_by_source(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
        """x (R, Tq, d) against k/v (C, nh, Tk, hs) and mask one row per source, g consecutive rows each
        (models/grouped.py; inference only: no dropout) -> (R, Tq, d)."""
        q = F.linear(x, self.in_proj_weight[: self.d], self.in_proj_bias[: self.d])
        return self.out_proj(attend_by_source(q, k, v, mask, 1.0 / math.sqrt(self.d // self.heads)))


class _Block(nn.Module):
    """Shared pieces of encoder and decoder layers: FFN and the pre/post-norm residual."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.linear1 = nn.Linear(cfg.d_model, cfg.ffn_dim)
        self.linear2 = nn.Linear(cfg.ffn_dim, cfg.d_model)
        self.act = F.relu if cfg.activation == "relu" else F.gelu
        self.drop = nn.Dropout(cfg.dropout)

    def ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear2(self.drop(self.act(self.linear1(x))))

    def residual(self, x: torch.Tensor, norm: nn.LayerNorm, sublayer) -> torch.Tensor:
        if self.pre:
            return x + self.drop(sublayer(norm(x)))
        return norm(x + self.drop(sublayer(x)))


class EncoderLayer(_Block):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__(cfg)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, src_keep: torch.Tensor) -> torch.Tensor:
        def attn(h):
            return self.self_attn.attend(self.self_attn.query(h), *self.self_attn.keys_values(h), src_keep)

        x = self.residual(x, self.norm1, attn)
        return self.residual(x, self.norm2, self.ffn)


class DecoderLayer(_Block):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__(cfg)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.multihead_attn = MultiHeadAttention(cfg.d_model, cfg.heads, cfg.dropout)
        self.norm1 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.norm2 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)
        self.norm3 = nn.LayerNorm(cfg.d_model, eps=cfg.layer_norm_eps)

    def forward(self, x, cross_k, cross_v, src_keep, past_k=None, past_v=None, causal=None):
        """x (B, T, d) -> (B, T, d) and this layer's keys/values over past + new positions (B, nh, P+T, hs).

        Full forward: no past, a (T, T) causal mask. Cached step: T = 1, the past cache, no mask.
        """
        cache = {}

        def self_attn(h):
            k, v = self.self_attn.keys_values(h)
            if past_k is not None:
                k, v = torch.cat([past_k, k], dim=2), torch.cat([past_v, v], dim=2)
            cache["k"], cache["v"] = k, v
            return self.self_attn.attend(self.self_attn.query(h), k, v, causal)

        def cross_attn(h):  # a cached step may take cross_k/v and src_keep one row per source (models/grouped.py)
            a = self.multihead_attn
            if past_k is not None:
                return a.attend_by_source(h, cross_k, cross_v, src_keep)
            return a.attend(a.query(h), cross_k, cross_v, src_keep)

        x = self.residual(x, self.norm1, self_attn)
        x = self.residual(x, self.norm2, cross_attn)
        x = self.residual(x, self.norm3, self.ffn)
        return x, cache["k"], cache["v"]


class TransformerSeq2Seq(nn.Module):
    """Encoder-decoder Transformer: `forward` is the full teacher-forced pass; `step` decodes one token."""

    # tensors built from the config and never stored in a checkpoint, and the config fields that size them
    derived_from = {"pos_table": ("max_positions", "d_model")}

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        # trained by edgeseq's trainers on Vocab.encode sources (pieces, then </s>); False for a converted model
        self.edgeseq_framing = True
        self.cfg = cfg
        d = cfg.d_model
        self.src_emb = nn.Embedding(cfg.src_vocab_size, d, padding_idx=cfg.pad_id)
        self.tgt_emb = (
            self.src_emb if cfg.share_embeddings else nn.Embedding(cfg.tgt_vocab_size, d, padding_idx=cfg.pad_id)
        )
        if cfg.positions == "learned":
            self.pos_emb = nn.Embedding(cfg.max_positions, d)
        else:
            self.register_buffer("pos_table", sinusoidal_table(cfg.max_positions, d), persistent=False)
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        eps = cfg.layer_norm_eps
        self.encoder_norm = nn.LayerNorm(d, eps=eps) if cfg.has_final_norm else nn.Identity()
        self.decoder_norm = nn.LayerNorm(d, eps=eps) if cfg.has_final_norm else nn.Identity()
        if cfg.tie_output:
            self.out_bias = nn.Parameter(torch.zeros(cfg.tgt_vocab_size))
        else:
            self.out = nn.Linear(d, cfg.tgt_vocab_size)
        for emb in {self.src_emb, self.tgt_emb}:  # std d^-1/2, so that sqrt(d)-scaled embeddings are ~N(0, 1)
            nn.init.normal_(emb.weight, std=d**-0.5)

    def positions(self, index: torch.Tensor) -> torch.Tensor:
        """Position vectors for an index tensor of any shape -> (*index.shape, d)."""
        return self.pos_emb(index) if self.cfg.positions == "learned" else self.pos_table[index]

    def _embed(self, emb: nn.Embedding, tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return self.drop(emb(tokens) * self.cfg.scale + self.positions(index))

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """(..., d) decoder output -> (..., V). The tied projection keeps a bias, so it exports as one Gemm."""
        if self.cfg.tie_output:
            return F.linear(h, self.tgt_emb.weight, self.out_bias)
        return self.out(h)

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        """(B, S) ids and 1/0 mask -> memory (B, S, d)."""
        index = torch.arange(src_ids.shape[1], device=src_ids.device)
        x = self._embed(self.src_emb, src_ids, index)  # (B, S, d)
        keep = src_mask.bool()[:, None, None, :]  # (B, 1, 1, S)
        for layer in self.encoder_layers:
            x = layer(x, keep)
        return self.encoder_norm(x)

    def cross_keys_values(self, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each decoder layer's cross-attention (k, v), each (B, nh, S, hs): computed once per source."""
        return [layer.multihead_attn.keys_values(memory) for layer in self.decoder_layers]

    def step(self, tokens, step, past, cross, src_mask):
        """One token per row at position `step` (a 0-dim tensor).

        tokens (B,), past [(k, v)] each (B, nh, P, hs), cross [(k, v)] each (C, nh, S, hs), src_mask (C, S)
        -> logits (B, V) and the grown cache [(k, v)] each (B, nh, P + 1, hs). Cross keys/values and the mask
        may be one row per source (C sources, B = C * g consecutive rows each) or one per row (C = B).
        """
        x = self._embed(self.tgt_emb, tokens[:, None], step.reshape(1))  # (B, 1, d)
        keep = src_mask.bool()[:, None, None, :]
        new = []
        for layer, (pk, pv), (ck, cv) in zip(self.decoder_layers, past, cross):
            x, k, v = layer(x, ck, cv, keep, pk, pv)
            new.append((k, v))
        return self.logits(self.decoder_norm(x[:, 0])), new

    def forward(self, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing without a cache: (B, S), (B, S), (B, T) starting with <s> -> logits (B, T, V)."""
        cross = self.cross_keys_values(self.encode(src_ids, src_mask))
        t = tgt_in.shape[1]
        x = self._embed(self.tgt_emb, tgt_in, torch.arange(t, device=tgt_in.device))  # (B, T, d)
        causal = torch.ones(t, t, dtype=torch.bool, device=tgt_in.device).tril()  # (T, T)
        keep = src_mask.bool()[:, None, None, :]
        for layer, (ck, cv) in zip(self.decoder_layers, cross):
            x, _, _ = layer(x, ck, cv, keep, causal=causal)
        return self.logits(self.decoder_norm(x))
