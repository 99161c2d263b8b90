"""generate.onnx against the Python loop: the same hypotheses and scores, greedy and beam search.

Both run the bundle's own graphs on ONNX Runtime, so they must agree exactly on tokens (scores to float
rounding): a difference is a fault in the composed graph, and export and quantize refuse the bundle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeseq.bundle import Manifest, file_sha256
from edgeseq.export.generate_graph import GRAPH, build_generate
from edgeseq.export.parity import count, precision_of
from edgeseq.runtime.bundle import Bundle
from edgeseq.runtime.generator import OrtBackend
from edgeseq.runtime.graph_engine import GraphEngine
from edgeseq.runtime.loop import decode
from edgeseq.runtime.options import DecodingOptions

# precision -> (share of sources whose hypotheses must agree, score tolerance relative to the score). Inside a
# Loop body ONNX Runtime fuses quantized and fp16 kernels otherwise than in the step graph alone, so their
# numbers differ in the last bits and near-tied beams may part: there only each source's best hypothesis is
# compared, and most must agree. fp32 agrees to the last hypothesis, its scores to 1e-4 of their size (the
# step's GEMMs inside a Loop body sum in another order: 3.4e-5 seen on a small Marian, tokens all identical).
# int8 scores part by more on processors with AVX-512 VNNI, whose integer kernels ONNX Runtime fuses otherwise
# inside a Loop (2.7e-3 seen on a trained nn.Transformer, every token identical): 1e-2, as fp16.
TOLERANCE = {"fp32": (1.0, 1e-4), "int8": (0.75, 1e-2), "fp16": (0.75, 1e-2)}
BEAM, BEAM_SOURCES = 4, 8


@dataclass
class GenerateCheck:
    """How many sources' hypotheses generate.onnx gave exactly as the loop, per search."""

    agreed: dict[str, int]
    sources: dict[str, int]
    max_score_diff: float  # relative to the score (or 1)
    precision: str = "fp32"  # the bundle's: what must agree, and how closely (TOLERANCE)
    first_difference: str | None = None

    @property
    def ok(self) -> bool:
        share, rtol = TOLERANCE[self.precision]
        return all(self.agreed[k] >= share * self.sources[k] for k in self.sources) and self.max_score_diff <= rtol

    def describe(self) -> str:
        parts = ", ".join(f"{k} {count(self.agreed[k], self.sources[k])}" for k in self.sources)
        where = f"; first difference: {self.first_difference}" if self.first_difference else ""
        return f"generate.onnx vs the Python loop: {parts} identical, scores within {self.max_score_diff:.2g}{where}"

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "ok": self.ok}


def with_generate(folder: Path, m: Manifest) -> Manifest:
    """Build `folder`/generate.onnx and return the manifest listing it (file, checksum, I/O)."""
    spec = build_generate(folder, m)
    spec = dataclasses.replace(spec, sha256=file_sha256(folder / spec.file))
    return dataclasses.replace(m, graphs={**{k: g for k, g in m.graphs.items() if k != GRAPH}, GRAPH: spec})


def check_generate(
    bundle: Bundle, sources: Sequence[Sequence[int]], max_new_tokens: int, banned: Sequence[int] = ()
) -> GenerateCheck:
    """Decode `sources` greedily and `BEAM_SOURCES` of them with beam 4, by the loop and by generate.onnx."""
    loop, graph = OrtBackend(bundle, one_row=False), GraphEngine(bundle)  # (both run decoder_step)
    runs = {
        "greedy": (list(sources), DecodingOptions(max_new_tokens=max_new_tokens)),
        f"beam {BEAM}": (
            list(sources)[:BEAM_SOURCES],
            DecodingOptions(max_new_tokens=max_new_tokens, beam_size=BEAM, nbest=BEAM),
        ),
    }
    agreed, total, worst, first = {}, {}, 0.0, None
    recipe = (bundle.manifest.provenance.get("quantize") or {}).get("recipe") or {}
    precision = "fp16" if "fp16" in recipe.values() else precision_of(bundle.manifest)  # (any fp16 graph)
    compared = None if precision == "fp32" else 1  # (TOLERANCE)
    for name, (srcs, options) in runs.items():
        want = decode(loop, bundle.manifest.decoder, srcs, options, tuple(banned))
        got = graph.decode(srcs, options, banned)
        agreed[name], total[name] = 0, len(srcs)
        for i, (w, g) in enumerate(zip(want, got)):
            w, g = w[:compared], g[:compared]
            same = [h.tokens for h in w] == [h.tokens for h in g]
            agreed[name] += same
            if same:
                for a, b in zip(w, g):
                    if a.score != b.score:
                        worst = max(worst, abs(a.score - b.score) / max(1.0, abs(a.score)))
            elif first is None:
                first = f"{name}, source {i}: loop {[h.tokens for h in w][:1]}, graph {[h.tokens for h in g][:1]}"
    return GenerateCheck(agreed, total, worst, precision, first)
