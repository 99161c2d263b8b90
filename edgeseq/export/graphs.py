"""Export stage 2: the graphs. Trace each graph of an adapter, simplify it, fold attention's score scales into
the query projections, add the head to the step, and store every weight once in the bundle's weights file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgeseq.bundle import DecoderSpec, GraphSpec
from edgeseq.export.adapter import Seq2SeqAdapter, TorchBackend
from edgeseq.export.head import add_head
from edgeseq.export.parity import sample_sources
from edgeseq.export.reorder import add_reorder
from edgeseq.export.score_scale import fold_score_scales_in
from edgeseq.export.simplify import simplify_graph
from edgeseq.export.trace import trace_graph
from edgeseq.export.weights import share_weights, split_projections
from edgeseq.runtime.batching import pad_batch
from edgeseq.runtime.loop import initial_state


def write_graphs(
    adapter: Seq2SeqAdapter,
    folder: Path,
    opset: int,
    simplify: bool,
    head: bool,
    progress: Callable[[str], None] = lambda msg: None,
) -> tuple[dict[str, GraphSpec], DecoderSpec, dict[str, Any]]:
    """Trace, simplify and store the graphs in `folder`; returns their specs, the decoder spec (with the
    head, if added) and what was done, for the manifest's provenance."""
    specs, decoder = adapter.graph_specs(), adapter.decoder_spec()
    feeds = example_feeds(TorchBackend(adapter))
    simplified, scales = {}, {}
    for name, spec in specs.items():
        progress(f"tracing {name}")
        trace_graph(adapter, name, spec, feeds[name], folder / spec.file, opset)
        if simplify:
            simplified[name] = simplify_graph(folder / spec.file, spec)
        scales[name] = fold_score_scales_in(folder / spec.file)
    if head:
        step = specs["decoder_step"]
        specs = dict(specs)
        specs["decoder_step"], decoder = add_head(folder / step.file, step, decoder)
        specs["decoder_step"], decoder = add_reorder(folder / step.file, specs["decoder_step"], decoder)
    progress("sharing weights between graphs")
    files = [spec.file for spec in specs.values()]
    sharing = share_weights(folder, files)
    split = split_projections(folder, files)
    made = {
        "weights": {**asdict(sharing), "projections_split": split},
        "simplify": simplified or None,
        "score_scales_folded": {name: n for name, n in scales.items() if n},
    }
    return specs, decoder, made


def example_feeds(reference: TorchBackend) -> dict[str, dict[str, torch.Tensor]]:
    """Inputs of a real second decoding step (non-empty caches), per graph, for tracing (batch 2, padded)."""
    adapter = reference.adapter
    spec = adapter.decoder_spec()
    special = set(adapter.special_tokens().values())
    sources = sample_sources(adapter.source_vocab_size, count=2, max_len=7, seed=1, special=tuple(special))
    src_ids, src_mask = pad_batch(sources, reference.source_pad)
    state = initial_state(reference, src_ids, src_mask, spec)
    tokens = np.full(2, reference.special_tokens["decoder_start"], dtype=np.int64)
    step = {}
    for index in range(2):
        step = {**state.context, **state.states, spec.tokens_input: tokens}
        if spec.step_input:
            step[spec.step_input] = np.array(index, dtype=np.int64)
        if index == 0:
            out = reference.step(step)
            state.states = {s.input: out[s.output] for s in spec.states}
            tokens = np.asarray(out[spec.logits_output]).argmax(-1).astype(np.int64)
    pools = {"encoder": state.context, "attention": state.context, "decoder_step": step}
    return {
        g: {t.name: torch.from_numpy(np.ascontiguousarray(pools[g][t.name])) for t in s.inputs}
        for g, s in reference.graphs.items()
    }


def padding_is_masked(reference: TorchBackend, sources: list[list[int]], steps: int = 3) -> bool:
    """Whether padding leaves a source's results unchanged: its first steps' logits alone and in a padded
    batch with longer sources (a model that ignores src_mask, such as an unpacked RNN, fails this)."""
    from edgeseq.export.parity import difference, teacher_forced_logits

    spec = reference.adapter.decoder_spec()
    start = reference.special_tokens["decoder_start"]
    inputs = np.full((len(sources), steps), start, dtype=np.int64)
    batched = teacher_forced_logits(reference, spec, sources, inputs)
    for i, source in enumerate(sources):
        alone = teacher_forced_logits(reference, spec, [source], inputs[i : i + 1])
        err, scale = difference(batched[i], alone[0])
        if err > 1e-4 + 1e-3 * scale:
            return False
    return True
