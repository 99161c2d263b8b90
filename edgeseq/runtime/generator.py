"""Generator: a loaded bundle on ONNX Runtime, text or ids in, hypotheses out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeseq.errors import InputError, OptionsError
from edgeseq.runtime.bundle import Bundle, load_bundle
from edgeseq.runtime.loop import decode
from edgeseq.runtime.options import DecodingOptions
from edgeseq.runtime.search import Hypothesis
from edgeseq.runtime.session import GraphSession, resolve_providers


def session_options(threads: int | None, spin: bool) -> ort.SessionOptions:
    """Full graph optimisation, `threads` intra-op threads. Only the step session spins its threads: each
    session has its own pool, and a pool left spinning after the encoder would steal the step's cores."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return options


class OrtBackend:
    """The loop's backend on ONNX Runtime: encoder and attention once per batch, then one step at a time."""

    def __init__(self, bundle: Bundle, provider: str = "cpu", threads: int | None = None) -> None:
        self.providers = resolve_providers(provider)
        self.sessions = {
            name: GraphSession(bundle, name, self.providers, session_options(threads, spin=name == "decoder_step"))
            for name in bundle.manifest.graphs
        }
        self.graphs = bundle.manifest.graphs
        self.step_graph = bundle.manifest.graphs["decoder_step"]
        self.special_tokens = bundle.manifest.special_tokens

    def context(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.sessions["encoder"].run(feeds)
        if "attention" in self.sessions:
            out.update(self.sessions["attention"].run({**feeds, **out}))
        return out

    def step(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.sessions["decoder_step"].run(feeds)


@dataclass(frozen=True)
class Translation:
    """One source's result: the best text and tokens, its score, and every hypothesis returned."""

    text: str
    tokens: tuple[int, ...]
    score: float
    hypotheses: tuple[Hypothesis, ...]


class Generator:
    """Decodes with a bundle: `Generator("bundle/").generate(["Tuesday, 24 November 2026"])`."""

    def __init__(
        self,
        bundle: Bundle | str | Path,
        provider: str = "cpu",
        threads: int | None = None,
        options: DecodingOptions | None = None,
    ) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.backend = OrtBackend(self.bundle, provider, threads)
        m = self.bundle.manifest
        self.options = options or DecodingOptions(max_new_tokens=m.max_new_tokens)

    def encode(self, text: str) -> list[int]:
        """Source text -> ids (with </s>), refusing text the model cannot take."""
        if not text.strip():
            raise InputError("empty source text: give at least one character")
        return self.bundle.source_vocab.encode(text)

    def generate(self, texts: Sequence[str], options: DecodingOptions | None = None) -> list[Translation]:
        """Translate a batch of texts; results come back in input order."""
        if isinstance(texts, str):
            texts = [texts]
        results = self.generate_ids([self.encode(t) for t in texts], options)
        vocab = self.bundle.target_vocab
        return [Translation(vocab.decode(h[0].tokens), h[0].tokens, h[0].score, tuple(h)) for h in results]

    def generate_ids(
        self, sources: Sequence[Sequence[int]], options: DecodingOptions | None = None
    ) -> list[list[Hypothesis]]:
        """Decode source id lists (each ending in </s>); per source, its hypotheses best first."""
        m = self.bundle.manifest
        for i, src in enumerate(sources):
            bad = [t for t in src if not 0 <= int(t) < m.source_vocab_size]
            if bad:
                raise InputError(f"source {i}: token id {bad[0]} is out of range 0..{m.source_vocab_size - 1}")
            if len(src) > m.max_source_length:
                raise InputError(
                    f"source {i} has {len(src)} tokens; this bundle takes at most {m.max_source_length} "
                    "(max_source_length): split the input"
                )
        options = options or self.options
        if m.max_target_length and options.max_new_tokens > m.max_target_length:
            raise OptionsError(
                f"max_new_tokens {options.max_new_tokens} exceeds this model's {m.max_target_length} target positions"
            )
        return decode(self.backend, m.decoder, sources, options)
