"""The protocol between a PyTorch encoder-decoder and edgeseq's exporter, and the PyTorch reference backend.

To export any encoder-decoder, subclass :class:`Seq2SeqAdapter` (an ``nn.Module`` holding your model) and
implement five things:

- ``graph_specs()``: the I/O table of each graph ("encoder", optionally "attention", "decoder_step"),
  as :class:`edgeseq.bundle.GraphSpec` objects. The encoder's inputs are ``src_ids`` and ``src_mask``
  (both ``(batch, src_len)`` int64, mask 1 for real tokens). Symbols in shapes are dynamic axes.
- ``decoder_spec()``: which step input takes the previous tokens (``(batch,)`` int64), which output holds
  the logits (``(batch, vocab)``), the optional step index input (a scalar int64), and the state pairs:
  each state's step input and output names, its batch axis, and how it starts (an encoder/attention
  output, or zeros).
- ``encoder(x)``, ``attention(x)``, ``decoder_step(x)``: each takes a dict of that graph's inputs by name
  and returns a dict of its outputs by name. Any step input that is neither the tokens, the step index
  nor a state is looked up by name among ``src_ids``, ``src_mask`` and the encoder and attention outputs.
- ``special_tokens()``: the target vocabulary's ``eos`` and ``decoder_start`` ids, and ``pad`` and ``bos``
  where the model has them.
- ``source_vocab_size`` and ``max_source_length`` attributes (``max_target_length`` where positions limit
  the number of generated tokens).

Everything must be traceable by ``torch.onnx.export``: plain tensor code, no data-dependent Python
control flow on tensor values.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from edgeseq.bundle import DecoderSpec, GraphSpec


class Seq2SeqAdapter(nn.Module):
    """Base class of every family's export adapter; see the module docstring for the contract."""

    family = "custom"
    source_vocab_size: int
    max_source_length: int = 1024
    max_target_length: int | None = None  # most tokens the decoder can position (None: no limit)
    source_pad_id: int | None = None  # the id that pads src_ids (None: the target's pad id, or 0)
    # (prefix, suffix) source ids the model was trained with, where the model itself implies them
    # (edgeseq's reference models: the pieces, then </s>); None: the exporter must be told
    implied_framing: tuple[tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def source_pad(self) -> int:
        if self.source_pad_id is not None:
            return self.source_pad_id
        return self.special_tokens().get("pad", 0)

    def graph_specs(self) -> dict[str, GraphSpec]:
        raise NotImplementedError

    def decoder_spec(self) -> DecoderSpec:
        raise NotImplementedError

    def special_tokens(self) -> dict[str, int]:
        raise NotImplementedError

    def encoder(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def attention(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def decoder_step(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class GraphModule(nn.Module):
    """Positional tensors in, positional tensors out, in the order of a GraphSpec: what tracing needs."""

    def __init__(self, adapter: Seq2SeqAdapter, graph: str, spec: GraphSpec) -> None:
        super().__init__()
        self.adapter, self.graph, self.spec = adapter, graph, spec

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feeds = dict(zip((t.name for t in self.spec.inputs), args))
        out = getattr(self.adapter, self.graph)(feeds)
        return tuple(out[t.name] for t in self.spec.outputs)


class TorchBackend:
    """The generation loop's backend on the PyTorch model itself: the parity reference."""

    def __init__(self, adapter: Seq2SeqAdapter, masked_padding: bool = True) -> None:
        self.adapter = adapter.eval()
        self.graphs = adapter.graph_specs()
        self.step_graph = self.graphs["decoder_step"]
        self.special_tokens = adapter.special_tokens()
        self.source_pad = adapter.source_pad
        self.masked_padding = masked_padding  # as the bundle says: decode only equal-length sources together
        self.offers: frozenset[str] = frozenset()  # no head: strategies read the logits

    @torch.no_grad()
    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One graph on numpy feeds (picked by the graph's declared inputs) -> numpy outputs."""
        spec = self.graphs[graph]
        x = {t.name: torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in spec.inputs}
        out = getattr(self.adapter, graph)(x)
        return {t.name: out[t.name].numpy() for t in spec.outputs}

    def context(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.run("encoder", feeds)
        if "attention" in self.graphs:
            out.update(self.run("attention", {**feeds, **out}))
        return out

    def step(self, feeds: dict[str, np.ndarray], request=None) -> dict[str, np.ndarray]:
        return self.run("decoder_step", feeds)

    def chosen(self, out):
        raise NotImplementedError("the PyTorch reference has no head: it offers nothing to choose")
