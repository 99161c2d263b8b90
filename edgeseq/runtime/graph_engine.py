"""Decoding with a bundle's generate.onnx: the whole loop in one ONNX Runtime call (export/generate_graph.py).

The same results as the Python loop (runtime/loop.py) for what the graph does: greedy decoding and beam
search with bans, minimum length and forced tokens. Sampling, penalties, n-gram bans and alignments are the
loop's alone; asking the graph for them is refused, naming the option.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edgeseq.errors import BundleError, OptionsError
from edgeseq.runtime.batching import pad_batch
from edgeseq.runtime.bundle import Bundle
from edgeseq.runtime.loop import batches
from edgeseq.runtime.options import DecodingOptions
from edgeseq.runtime.pages import drop_loaded_pages
from edgeseq.runtime.search import Hypothesis
from edgeseq.runtime.session import GraphSession, check_provider, resolve_providers, session_options

GRAPH = "generate"


def graph_problems(options: DecodingOptions) -> list[str]:
    """What of `options` generate.onnx does not do (empty: it decodes them exactly as the loop)."""
    problems = []
    if options.sample:
        problems.append("sampling")
    if options.repetition_penalty != 1.0:
        problems.append("repetition_penalty")
    if options.no_repeat_ngram:
        problems.append("no_repeat_ngram")
    if options.return_alignments:
        problems.append("return_alignments")
    return problems


def option_feeds(options: DecodingOptions, banned: Sequence[int]) -> dict[str, np.ndarray]:
    """generate.onnx's inputs that come from the decoding options."""
    forced_bos = -1 if options.forced_bos_token is None else options.forced_bos_token
    return {
        "max_new_tokens": np.array(options.max_new_tokens, np.int64),
        "min_new_tokens": np.array(options.min_new_tokens, np.int64),
        "beam_size": np.array(options.beam_size, np.int64),
        "length_penalty": np.array(options.length_penalty, np.float32),
        "early_stopping": np.array(int(options.early_stopping), np.int64),
        "banned_ids": np.array(list(banned), np.int64),
        "forced_eos": np.array(int(options.forced_eos), np.int64),
        "forced_bos_token": np.array(forced_bos, np.int64),
    }


def hypotheses(tokens: np.ndarray, lengths: np.ndarray, scores: np.ndarray, nbest: int) -> list[list[Hypothesis]]:
    """generate.onnx's outputs -> per source its hypotheses, best first (slots it left empty skipped).

    Read through `tolist()`, not element by element: right after a run ONNX Runtime has flushed the caches,
    and each numpy call then costs microseconds (~8 us of a ~450 us call for one short source)."""
    out = []
    for rows, counts, values in zip(tokens.tolist(), lengths.tolist(), scores.tolist()):
        out.append([Hypothesis(tuple(r[:n]), s) for r, n, s in zip(rows, counts, values) if n >= 0][:nbest])
    return out


class GraphEngine:
    """A bundle's generate.onnx on ONNX Runtime: sources and options in, hypotheses out."""

    def __init__(self, bundle: Bundle, provider: str = "cpu", threads: int | None = None) -> None:

        if GRAPH not in bundle.manifest.graphs:
            raise BundleError(
                f"{bundle.path} has no generate graph (generate.onnx): export or quantize it again with this "
                "edgeseq, or decode with the Python loop (engine 'loop')"
            )
        self.bundle = bundle
        providers = resolve_providers(provider)
        self.session = GraphSession(bundle, GRAPH, providers, session_options(threads, step=True))
        drop_loaded_pages(bundle.path)  # (runtime/pages.py)
        self.note = check_provider(provider, self.session.session, GRAPH)
        m = bundle.manifest
        self.source_pad, self.masked_padding = m.source_framing.pad, m.masked_padding
        # the dtypes the graph declares (flags were bool in bundles made before they became int64)
        self.dtypes = {t.name: t.dtype for t in m.graphs[GRAPH].inputs}
        self._options: tuple[tuple, dict[str, np.ndarray]] | None = None  # the last options' feeds, cast
        # one source's mask, sliced to its length (see _source)
        self._ones = np.ones((1, min(m.max_source_length, 4096)), self.dtypes["src_mask"])

    def _option_feeds(self, options: DecodingOptions, banned: Sequence[int]) -> dict[str, np.ndarray]:
        """option_feeds cast to the graph's dtypes, kept for the next call with the same options (a call
        for one short source costs ~0.5 ms: building them each time was ~5% of it)."""
        key, last = (options, tuple(banned)), self._options  # (read once: threads may share this engine)
        if last is None or last[0] != key:
            feeds = option_feeds(options, banned)
            last = self._options = (key, {k: v.astype(self.dtypes[k], copy=False) for k, v in feeds.items()})
        return last[1]

    def decode(
        self, sources: Sequence[Sequence[int]], options: DecodingOptions, banned: Sequence[int] = ()
    ) -> list[list[Hypothesis]]:
        """Per source in input order, its hypotheses best first; sources a model without masked padding
        cannot share a batch with are decoded in groups of equal length, as by the loop."""
        problems = graph_problems(options)
        if problems:
            raise OptionsError(
                f"the generate graph does not do {', '.join(problems)}: decode with the Python loop (engine 'loop')"
            )
        results: list[list[Hypothesis]] = [[] for _ in sources]
        fixed = self._option_feeds(options, banned)
        for group in batches(self, sources):
            ids, mask = self._source([sources[i] for i in group])
            out = self.session.run({"src_ids": ids, "src_mask": mask, **fixed})
            for i, hyps in zip(group, hypotheses(out["tokens"], out["lengths"], out["scores"], options.nbest)):
                results[i] = hyps
        return results

    def _source(self, batch: list[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """src_ids and src_mask for `batch`, in the graph's dtypes. One source (the latency case) takes one
        numpy call: after a run each costs microseconds (see hypotheses), pad_batch's ~16 us in all."""
        if len(batch) == 1 and 0 < len(batch[0]) <= self._ones.shape[1]:
            return np.array(batch, self.dtypes["src_ids"]), self._ones[:, : len(batch[0])]
        ids, mask = pad_batch(batch, self.source_pad)
        return tuple(a.astype(self.dtypes[k], copy=False) for k, a in (("src_ids", ids), ("src_mask", mask)))
