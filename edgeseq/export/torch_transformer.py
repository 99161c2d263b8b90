"""Models built on torch.nn.Transformer: name the parts, get a TransformerSeq2Seq with a KV-cached step.

The common seq2seq pattern is token embeddings (often scaled by sqrt(d_model)) + a positional table +
``nn.Transformer`` (or ``nn.TransformerEncoder`` and ``nn.TransformerDecoder``) + a generator
``nn.Linear``. ``nn.Transformer`` has no incremental decoding, so exporting it as it is re-runs the whole
target prefix at every step. :func:`from_torch_transformer` rebuilds it as edgeseq's reference Transformer
from the modules' own weights (same layer layout, the weights copied as they are); edgeseq then exports it
with a KV cache, and parity is checked against the original model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edgeseq.errors import OptionsError
from edgeseq.export.families import Family, register
from edgeseq.models.transformer import TransformerConfig, TransformerSeq2Seq


@dataclass
class TorchTransformerParts:
    """The parts of a user's nn.Transformer-based model, named.

    Embedded source = src_embedding(ids) * embedding_scale + positions[:S]; likewise for the target; logits
    = generator(decoder output).
    """

    src_embedding: nn.Embedding
    tgt_embedding: nn.Embedding
    generator: nn.Linear
    positions: torch.Tensor | nn.Embedding  # (max_len, d_model) table; singleton axes are squeezed
    transformer: nn.Transformer | None = None  # or encoder= and decoder=
    encoder: nn.TransformerEncoder | None = None
    decoder: nn.TransformerDecoder | None = None
    embedding_scale: float = 1.0  # math.sqrt(d_model) in PyTorch's translation tutorial
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2


def _activation(layer: nn.Module) -> str:
    act = layer.activation
    if act is F.relu or isinstance(act, nn.ReLU):
        return "relu"
    if act is F.gelu or (isinstance(act, nn.GELU) and act.approximate == "none"):
        return "gelu"
    raise OptionsError(f"unsupported activation {act!r} in {type(layer).__name__}: supported are relu and gelu")


def _same(values: list, what: str):
    if len(set(values)) != 1:
        raise OptionsError(f"every layer must have the same {what}, found {sorted(set(map(str, values)))}")
    return values[0]


def from_torch_transformer(parts: TorchTransformerParts) -> TransformerSeq2Seq:
    """A TransformerSeq2Seq with the weights of `parts`, in eval mode, giving the same logits."""
    encoder = parts.transformer.encoder if parts.transformer is not None else parts.encoder
    decoder = parts.transformer.decoder if parts.transformer is not None else parts.decoder
    if encoder is None or decoder is None:
        raise OptionsError("name either transformer= (an nn.Transformer) or both encoder= and decoder=")
    enc_layers, dec_layers = list(encoder.layers), list(decoder.layers)
    layers = enc_layers + dec_layers
    for layer in layers:
        if not layer.self_attn._qkv_same_embed_dim:
            raise OptionsError("attention with separate key/value sizes (kdim/vdim) is not supported")
        if layer.self_attn.batch_first is not enc_layers[0].self_attn.batch_first:
            raise OptionsError("encoder and decoder layers disagree on batch_first")
    if (encoder.norm is None) != (decoder.norm is None):
        raise OptionsError("the encoder and decoder must both have a final norm, or neither")
    table = parts.positions.weight if isinstance(parts.positions, nn.Embedding) else parts.positions
    table = table.detach().reshape(-1, table.shape[-1])  # (max_len, d)
    d = enc_layers[0].self_attn.embed_dim
    if table.shape[1] != d:
        raise OptionsError(f"positions have width {table.shape[1]}, but the model's d_model is {d}")
    tied = parts.generator.weight is parts.tgt_embedding.weight
    cfg = TransformerConfig(
        src_vocab_size=parts.src_embedding.num_embeddings,
        tgt_vocab_size=parts.tgt_embedding.num_embeddings,
        d_model=d,
        heads=_same([layer.self_attn.num_heads for layer in layers], "number of heads"),
        encoder_layers=len(enc_layers),
        decoder_layers=len(dec_layers),
        ffn_dim=_same([layer.linear1.out_features for layer in layers], "feed-forward size"),
        dropout=0.0,
        norm="pre" if _same([layer.norm_first for layer in layers], "norm_first") else "post",
        positions="learned",
        max_positions=table.shape[0],
        share_embeddings=parts.src_embedding.weight is parts.tgt_embedding.weight,
        tie_output=tied,
        activation=_same([_activation(layer) for layer in layers], "activation"),
        embedding_scale=float(parts.embedding_scale),
        final_norm=encoder.norm is not None,
        layer_norm_eps=_same([layer.norm1.eps for layer in layers], "layer norm eps"),
        pad_id=parts.pad_id,
        bos_id=parts.bos_id,
        eos_id=parts.eos_id,
    )
    model = TransformerSeq2Seq(cfg)
    model.edgeseq_framing = False  # the user's model: its source framing is the user's to declare
    with torch.no_grad():
        for ours, theirs in zip([*model.encoder_layers, *model.decoder_layers], layers):
            _load_layer(ours, theirs)
        model.src_emb.weight.copy_(parts.src_embedding.weight)
        model.tgt_emb.weight.copy_(parts.tgt_embedding.weight)
        model.pos_emb.weight.copy_(table)
        if cfg.has_final_norm:
            model.encoder_norm.load_state_dict(encoder.norm.state_dict())
            model.decoder_norm.load_state_dict(decoder.norm.state_dict())
        bias = parts.generator.bias if parts.generator.bias is not None else torch.zeros(cfg.tgt_vocab_size)
        if tied:
            model.out_bias.copy_(bias)
        else:
            model.out.weight.copy_(parts.generator.weight)
            model.out.bias.copy_(bias)
    return model.eval()


def _load_layer(ours: nn.Module, theirs: nn.Module) -> None:
    """Same parameter names; layers built with bias=False lack the biases, which stay zero here."""
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    if unexpected or any(not k.endswith("bias") for k in missing):
        raise OptionsError(f"{type(theirs).__name__} does not have the standard layout: {missing + unexpected}")
    for key in missing:
        ours.get_parameter(key).zero_()


def _adapter(parts: TorchTransformerParts):
    from edgeseq.export.transformer import TransformerAdapter

    return TransformerAdapter(from_torch_transformer(parts))


register(
    Family(
        "nn.Transformer",
        matches=lambda m: isinstance(m, TorchTransformerParts),
        adapter=_adapter,
        describe="a TorchTransformerParts naming the parts of a model built on torch.nn.Transformer",
    )
)
