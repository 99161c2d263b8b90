"""Recurrent encoder-decoders: LSTM/GRU encoder, plain decoder, Bahdanau and Luong attention decoders.

Shapes are batch-first throughout. B batch, S source length, E embedding size, H decoder state size,
L layers, V vocabulary size. A bidirectional encoder has H // 2 units per direction, so its memory and
its final states (forward and backward concatenated per layer) are H wide and feed the decoder as they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from edgeseq.errors import OptionsError
from edgeseq.models.limits import special_id_problems

CELLS = ("lstm", "gru")
ATTENTIONS = ("none", "bahdanau", "luong-dot", "luong-general")


@dataclass(frozen=True)
class RNNConfig:
    """Everything that builds an RNN encoder-decoder; invalid combinations cannot be constructed."""

    src_vocab_size: int
    tgt_vocab_size: int
    cell: str = "lstm"  # "lstm" or "gru", for encoder and decoder alike
    attention: str = "bahdanau"  # "none", "bahdanau" (additive), "luong-dot", "luong-general"
    emb_dim: int = 64  # token embedding size, source and target
    hidden: int = 128  # decoder state size H (a bidirectional encoder uses H // 2 per direction)
    layers: int = 1  # stacked RNN layers, encoder and decoder alike
    bidirectional: bool = False  # bidirectional encoder
    attn_dim: int = 128  # Bahdanau's scoring size
    dropout: float = 0.0  # between layers and on embeddings; off in eval and export
    pad_id: int = 0
    bos_id: int = 1  # the decoder's first input token
    eos_id: int = 2

    def __post_init__(self) -> None:
        problems = []
        if self.cell not in CELLS:
            problems.append(f"cell {self.cell!r} is not one of {', '.join(CELLS)}")
        if self.attention not in ATTENTIONS:
            problems.append(f"attention {self.attention!r} is not one of {', '.join(ATTENTIONS)}")
        for name in ("src_vocab_size", "tgt_vocab_size", "emb_dim", "hidden", "layers", "attn_dim"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.bidirectional and self.hidden % 2:
            problems.append(f"hidden must be even for a bidirectional encoder, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        problems += special_id_problems(self)
        if problems:
            raise OptionsError("invalid RNNConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


def _rnn(cfg: RNNConfig, input_size: int, hidden: int, bidirectional: bool, batch_first: bool = True) -> nn.RNNBase:
    cls = nn.LSTM if cfg.cell == "lstm" else nn.GRU
    dropout = cfg.dropout if cfg.layers > 1 else 0.0
    return cls(input_size, hidden, cfg.layers, batch_first=batch_first, dropout=dropout, bidirectional=bidirectional)


class RNNEncoder(nn.Module):
    """Embeds and runs the source; padded positions never touch the states (packed sequences)."""

    def __init__(self, cfg: RNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.dirs = 2 if cfg.bidirectional else 1
        self.emb = nn.Embedding(cfg.src_vocab_size, cfg.emb_dim, padding_idx=cfg.pad_id)
        self.drop = nn.Dropout(cfg.dropout)
        self.rnn = _rnn(cfg, cfg.emb_dim, cfg.hidden // self.dirs, cfg.bidirectional)

    def forward(self, src_ids: torch.Tensor, src_mask: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, S) ids and 1/0 mask -> memory (B, S, H) and final states [(L, B, H)] (h, and c for LSTM)."""
        lengths = src_mask.sum(1).cpu()  # (B,)
        x = self.drop(self.emb(src_ids))  # (B, S, E)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src_ids.shape[1])  # (B, S, H)
        states = list(state) if isinstance(state, tuple) else [state]  # each (L * dirs, B, H // dirs)
        return memory, [self._merge_directions(s) for s in states]

    def _merge_directions(self, s: torch.Tensor) -> torch.Tensor:
        if self.dirs == 1:
            return s  # (L, B, H)
        size = s.shape[-1]
        s = s.reshape(self.cfg.layers, 2, -1, size)  # (L, 2, B, H/2)
        return torch.cat([s[:, 0], s[:, 1]], dim=-1)  # (L, B, H)


def _attend(scores: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Masked softmax over the source, then the weighted sum of memory: context (B, H), weights (B, S)."""
    scores = scores.masked_fill(src_mask == 0, float("-inf"))  # (B, S)
    weights = torch.softmax(scores, dim=-1)  # (B, S); padded positions get exactly 0
    context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)  # (B, H)
    return context, weights


class BahdanauAttention(nn.Module):
    """Additive attention: score_i = v . tanh(W_q q + W_k m_i); W_k m is precomputed once per source."""

    def __init__(self, query_dim: int, memory_dim: int, attn_dim: int) -> None:
        super().__init__()
        self.key = nn.Linear(memory_dim, attn_dim, bias=False)
        self.query = nn.Linear(query_dim, attn_dim)
        self.v = nn.Linear(attn_dim, 1, bias=False)

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return self.key(memory)  # (B, S, A)

    def forward(self, query, keys, memory, src_mask):
        scores = self.v(torch.tanh(keys + self.query(query).unsqueeze(1))).squeeze(2)  # (B, S)
        return _attend(scores, memory, src_mask)


class LuongAttention(nn.Module):
    """Multiplicative attention: dot (score_i = q . m_i) or general (score_i = q . W m_i, W m precomputed)."""

    def __init__(self, kind: str, hidden: int) -> None:
        super().__init__()
        self.w = nn.Linear(hidden, hidden, bias=False) if kind == "general" else None

    def keys(self, memory: torch.Tensor) -> torch.Tensor:
        return memory if self.w is None else self.w(memory)  # (B, S, H)

    def forward(self, query, keys, memory, src_mask):
        scores = torch.bmm(keys, query.unsqueeze(2)).squeeze(2)  # (B, S)
        return _attend(scores, memory, src_mask)


class RNNDecoder(nn.Module):
    """One decoder step at a time. States: h (and c for LSTM) of shape (L, B, H); Luong adds `feed` (B, H).

    - none: s_t = RNN(emb(y), state); logits = W s_t
    - bahdanau: c_t = attn(h_top_{t-1}); s_t = RNN([emb(y); c_t]); logits = W [s_t; c_t]
    - luong: s_t = RNN([emb(y); feed]); c_t = attn(s_t); feed' = tanh(W_c [c_t; s_t]); logits = W feed'
    """

    def __init__(self, cfg: RNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden
        self.emb = nn.Embedding(cfg.tgt_vocab_size, cfg.emb_dim, padding_idx=cfg.pad_id)
        self.drop = nn.Dropout(cfg.dropout)
        # time-major: one step is a (1, B, E) sequence, which ONNX's RNN ops take without transposes
        self.rnn = _rnn(cfg, cfg.emb_dim + (0 if cfg.attention == "none" else h), h, False, batch_first=False)
        self.attn: nn.Module | None = None
        self.combine: nn.Linear | None = None
        if cfg.attention == "bahdanau":
            self.attn = BahdanauAttention(h, h, cfg.attn_dim)
        elif cfg.attention.startswith("luong"):
            self.attn = LuongAttention(cfg.attention.split("-")[1], h)
            self.combine = nn.Linear(2 * h, h, bias=False)
        self.out = nn.Linear(2 * h if cfg.attention == "bahdanau" else h, cfg.tgt_vocab_size)

    @property
    def state_names(self) -> list[str]:
        names = ["h", "c"] if self.cfg.cell == "lstm" else ["h"]
        return names + (["feed"] if self.combine is not None else [])

    def initial_state(self, encoder_states: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        state = dict(zip(["h", "c"], encoder_states))
        if self.combine is not None:
            h = encoder_states[0]
            state["feed"] = h.new_zeros(h.shape[1], self.cfg.hidden)  # (B, H)
        return state

    def forward(self, tokens, state, keys, memory, src_mask):
        """tokens (B,) -> logits (B, V), the new state dict, attention weights (B, S) or None."""
        x = self.drop(self.emb(tokens))  # (B, E)
        context = weights = None
        if self.cfg.attention == "bahdanau":
            context, weights = self.attn(state["h"][-1], keys, memory, src_mask)  # (B, H), (B, S)
            x = torch.cat([x, context], dim=-1)
        elif self.combine is not None:
            x = torch.cat([x, state["feed"]], dim=-1)
        rnn_state = (state["h"], state["c"]) if self.cfg.cell == "lstm" else state["h"]
        out, rnn_state = self.rnn(x.unsqueeze(0), rnn_state)  # (1, B, H)
        s = out.squeeze(0)  # (B, H)
        new = dict(zip(["h", "c"], rnn_state)) if self.cfg.cell == "lstm" else {"h": rnn_state}
        if self.cfg.attention == "bahdanau":
            logits = self.out(self.drop(torch.cat([s, context], dim=-1)))
        elif self.combine is not None:
            context, weights = self.attn(s, keys, memory, src_mask)
            new["feed"] = torch.tanh(self.combine(torch.cat([context, s], dim=-1)))  # (B, H)
            logits = self.out(self.drop(new["feed"]))
        else:
            logits = self.out(self.drop(s))
        return logits, new, weights  # (B, V)


class RNNSeq2Seq(nn.Module):
    """Encoder + decoder; `forward` is teacher-forced for training, decoding lives elsewhere."""

    def __init__(self, cfg: RNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = RNNEncoder(cfg)
        self.decoder = RNNDecoder(cfg)

    def attention_keys(self, memory: torch.Tensor) -> torch.Tensor | None:
        """What every step attends over, computed once per source: (B, S, A) or None without attention."""
        return None if self.decoder.attn is None else self.decoder.attn.keys(memory)

    def forward(self, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: (B, S) source, (B, T) target inputs starting with <s> -> logits (B, T, V)."""
        memory, enc_states = self.encoder(src_ids, src_mask)
        keys = self.attention_keys(memory)
        state = self.decoder.initial_state(enc_states)
        logits = []
        for t in range(tgt_in.shape[1]):
            step_logits, state, _ = self.decoder(tgt_in[:, t], state, keys, memory, src_mask)
            logits.append(step_logits)
        return torch.stack(logits, dim=1)

    @torch.no_grad()
    def greedy(
        self, src_ids: torch.Tensor, src_mask: torch.Tensor, max_new_tokens: int, min_new_tokens: int = 0
    ) -> torch.Tensor:
        """Plain PyTorch greedy decoding, batch at once: (B, max_new_tokens) tokens, </s>-padded after </s>.

        What a PyTorch user runs without edgeseq; the benchmarks' eager baseline. </s> is forbidden for the
        first `min_new_tokens` steps.
        """
        cfg = self.cfg
        memory, enc_states = self.encoder(src_ids, src_mask)
        keys = self.attention_keys(memory)
        state = self.decoder.initial_state(enc_states)
        tokens = torch.full((src_ids.shape[0],), cfg.bos_id, dtype=torch.long)
        done = torch.zeros_like(tokens, dtype=torch.bool)
        out = []
        for step in range(max_new_tokens):
            logits, state, _ = self.decoder(tokens, state, keys, memory, src_mask)
            if step < min_new_tokens:
                logits[:, cfg.eos_id] = float("-inf")
            tokens = torch.where(done, cfg.eos_id, logits.argmax(-1))
            out.append(tokens)
            done |= tokens == cfg.eos_id
            if bool(done.all()):
                break
        return torch.stack(out, dim=1)
