"""Generator: a loaded bundle on ONNX Runtime; text or ids in, translations out (all at once or streamed)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeseq.bundle import ONE_ROW
from edgeseq.errors import BundleError, EdgeseqError, InputError, OptionsError
from edgeseq.runtime.binding import DEVICES, BoundSession, DeviceTensor, run_into
from edgeseq.runtime.bundle import Bundle, load_bundle
from edgeseq.runtime.graph_engine import GraphEngine, graph_problems
from edgeseq.runtime.inplace import BufferPool
from edgeseq.runtime.lines import Batching, LineResult, translate_lines
from edgeseq.runtime.loop import Decoding, batches, decode
from edgeseq.runtime.options import DecodingOptions
from edgeseq.runtime.pages import drop_loaded_pages, trim_heap
from edgeseq.runtime.search import Hypothesis
from edgeseq.runtime.session import (
    GraphSession,
    check_file_io,
    check_provider,
    resolve_providers,
    session_options,
)
from edgeseq.runtime.step import BEAM, GREEDY, INPLACE, REORDER, HeadRequest

HEAD_MODES = {  # the step graph's head_mode input (export/head.py)
    None: np.array(0, dtype=np.int64),
    GREEDY: np.array(1, dtype=np.int64),
    BEAM: np.array(2, dtype=np.int64),
}


class OrtBackend:
    """The loop's backend on ONNX Runtime: encoder and attention once per batch, then one step at a time.

    `io_binding` (default: on for CUDA) keeps every tensor the loop carries between runs (encoder and
    attention outputs, the source, the decoder states and cache) in the provider's memory. With the step
    graph's head (export/head.py; `use_head=False` leaves it unused), greedy decoding reads only each row's
    token id and log-probability and beam search only each source's best continuations; the logits stay
    where they are unless a strategy asks for them. See runtime/binding.py. `inplace_states` (on the CPU,
    bundles made since reorder_every_step) lets the loop write each step's states over the previous ones
    (runtime/inplace.py): one copy of the caches instead of two. `one_row` (on the CPU, bundles with the graph):
    a step of one row runs decoder_step.one_row.onnx (export/one_row.py: int8 weight products as GEMVs); each
    step graph is loaded when first run, so decoding one source at a time never loads the batched one.
    """

    def __init__(
        self,
        bundle: Bundle,
        provider: str = "cpu",
        threads: int | None = None,
        io_binding: bool | None = None,
        use_head: bool = True,
        inplace_states: bool = True,
        one_row: bool = True,
    ) -> None:
        self.providers = resolve_providers(provider)
        self.bundle, self.threads = bundle, threads
        binding = io_binding if io_binding is not None else provider != "cpu"
        self.one_row = one_row and provider == "cpu" and not binding and ONE_ROW in bundle.manifest.graphs
        self._loading = threading.Lock()
        self.sessions = {
            name: GraphSession(bundle, name, self.providers, session_options(threads, step=name == "decoder_step"))
            for name in bundle.manifest.loop_graphs
            if not (self.one_row and name == "decoder_step")  # (loaded when a step of several rows runs)
        }
        drop_loaded_pages(bundle.path)  # what prepacking read is in the sessions' copies (runtime/pages.py)
        notes = {check_provider(provider, s.session, name) for name, s in self.sessions.items()} - {None}
        self.note = "; ".join(sorted(notes)) or None  # a fallback that `auto` made, for the user to see
        step = self.providers[0] if self.one_row else self.sessions["decoder_step"].session.get_providers()[0]
        self.device = DEVICES[step]
        self.graphs = bundle.manifest.loop_graphs
        self.step_graph = bundle.manifest.graphs["decoder_step"]
        self.special_tokens = bundle.manifest.special_tokens
        self.source_pad = bundle.manifest.source_framing.pad
        self.masked_padding = bundle.manifest.masked_padding
        dec = self.decoder = bundle.manifest.decoder
        vocab = bundle.manifest.target_vocab_size
        self.offers: frozenset[str] = frozenset()
        self.idle: dict[str, np.ndarray] = {}  # the head's inputs when nothing is asked of it
        if dec.head is not None:
            self.offers = frozenset({GREEDY, BEAM}) if use_head else frozenset()
            self.idle = {
                dec.head.mode: HEAD_MODES[None],
                dec.head.bias: np.zeros(vocab, dtype=np.float32),
                dec.head.beam_scores: np.zeros((0, 0), dtype=np.float32),
            }
        elif dec.head_bias_input:  # a bundle made when the head was greedy-only
            self.offers = frozenset({GREEDY}) if use_head else frozenset()
            self.idle = {dec.head_bias_input: np.zeros(vocab, dtype=np.float32)}
        # the step gathers its states for the new rows: fed every step (each row itself where the loop gives
        # none), or in bundles made before reorder_every_step, empty for none
        self.every_row = dec.reorder_input if dec.reorder_every_step else None
        if dec.reorder_input:
            inplace = {INPLACE} if self.every_row and inplace_states else set()
            self.offers |= {REORDER, *inplace} if use_head else set()
            if not self.every_row:
                self.idle = {**self.idle, dec.reorder_input: np.zeros(0, dtype=np.int64)}
        self.pool = BufferPool()  # the states' buffers, from one decode to the next (runtime/inplace.py)
        self.bound: dict[str, BoundSession] | None = None
        if io_binding if io_binding is not None else self.device != "cpu":
            self.offers -= {INPLACE}
            # with a head, the logits stay on the device unless a strategy asks for them
            host_outputs = {dec.alignment_output, dec.head_token_output, dec.head_logprob_output}
            if dec.head is not None:
                host_outputs |= {dec.head.scores, dec.head.ids}
            if not self.idle.keys() - {dec.reorder_input}:
                host_outputs.add(dec.logits_output)
            self.bound = {
                name: BoundSession(s, self.device, [o for o in s.output_names if o not in host_outputs])
                for name, s in self.sessions.items()
            }

    def context(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray | DeviceTensor]:
        if self.bound is None:
            out = self.sessions["encoder"].run(feeds)
            if "attention" in self.sessions:
                out.update(self.sessions["attention"].run({**feeds, **out}))
            return out
        # the source goes to the device once; the loop's context then refers to these copies
        out = {k: DeviceTensor.upload(v, self.device) for k, v in feeds.items()}
        out.update(self.bound["encoder"].run(out))
        if "attention" in self.bound:
            out.update(self.bound["attention"].run(out))
        return out

    def step(
        self,
        feeds: dict[str, np.ndarray | DeviceTensor],
        request: HeadRequest | None = None,
        into: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray | DeviceTensor]:
        """One decoder step; `request` asks the head to choose (runtime/step.py), else it computes nothing;
        `into`: arrays to write these outputs into (the states, in place: runtime/inplace.py)."""
        feeds = self.step_feeds(feeds, request)
        if self.bound is not None:
            return self.bound["decoder_step"].run(feeds)
        session = self._step(len(feeds[self.decoder.tokens_input]))
        if into:
            try:
                return run_into(session, feeds, into)
            except BundleError as e:
                raise BundleError(
                    f"{e}; a state changed shape otherwise than in the first steps, after the states it had "
                    "written in place: decode this model with Generator(..., inplace_states=False)"
                ) from None
        return session.run(feeds)

    def _step(self, rows: int) -> GraphSession:
        """The step graph's session for `rows` rows (loaded the first time: see the class docstring)."""
        name = ONE_ROW if self.one_row and rows == 1 else "decoder_step"
        session = self.sessions.get(name)
        if session is None:
            with self._loading:  # (threads decoding batches side by side share this backend)
                session = self.sessions.get(name)
                if session is None:
                    session = GraphSession(self.bundle, name, self.providers, session_options(self.threads, step=True))
                    drop_loaded_pages(self.bundle.path)
                    trim_heap()
                    self.sessions[name] = session
        return session

    def step_feeds(self, feeds: dict, request: HeadRequest | None = None) -> dict:
        """The loop's feeds with what it leaves out: the head's (idle unless `request`), and the rows to
        reorder the states by (each row itself, or for bundles made before reorder_every_step, none)."""
        if self.idle:
            feeds = {**self.idle, **self._head_feeds(request), **feeds} if request else {**self.idle, **feeds}
        if self.every_row and self.every_row not in feeds:
            feeds = {**feeds, self.every_row: np.arange(len(feeds[self.decoder.tokens_input]), dtype=np.int64)}
        return feeds

    def _head_feeds(self, request: HeadRequest) -> dict[str, np.ndarray]:
        head = self.decoder.head
        if head is None:  # the greedy-only head
            return {self.decoder.head_bias_input: request.bias}
        scores = request.beam_scores if request.beam_scores is not None else self.idle[head.beam_scores]
        return {head.mode: HEAD_MODES[request.kind], head.bias: request.bias, head.beam_scores: scores}

    def chosen(self, out: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The head's (scores, ids): greedy (rows, 1), beam (sources, 2 x beams)."""
        head = self.decoder.head
        if head is None:
            return out[self.decoder.head_logprob_output][:, None], out[self.decoder.head_token_output][:, None]
        return out[head.scores], out[head.ids]

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One graph by name (for parity checks)."""
        return self.step(feeds) if graph == "decoder_step" else self.sessions[graph].run(feeds)


@dataclass(frozen=True)
class Translation:
    """One source's result: the best hypothesis as text, and all returned hypotheses (best first)."""

    text: str
    tokens: tuple[int, ...]
    score: float
    alignment: np.ndarray | None  # (generated tokens incl. </s>, source tokens), when asked for
    nbest: tuple[Translation, ...] = ()


@dataclass(frozen=True)
class StreamedToken:
    """A token decided during streaming: which source, its id, and the text it adds.

    The pieces of a source, joined, are exactly its final text. A tokenizer whose decoder may still change
    the last word (SentencePiece, WordPiece, byte-level BPE) releases it with a later token: a piece can be
    empty, and the last event of a source (`done`, for </s> or the length limit) brings the rest.
    """

    source: int
    token: int | None  # None: the event that ends a source stopped by the length limit
    piece: str
    done: bool = False


ENGINES = ("auto", "loop", "graph")
# engine "auto" decodes with generate.onnx where it was measured faster than the loop (2 threads, the demo
# LSTM): greedy decoding of at most AUTO_GRAPH_SOURCES sources by a model of at most AUTO_GRAPH_WEIGHTS bytes,
# whose steps are short enough for the Python between them to count (1 source: 0.99 ms against 1.50; 16
# sources 1.41x faster, 64 1.12x, 256 the same). Elsewhere the loop is used: beam search (the graph's is
# slower: 0.69x for one source, 0.93-0.98x for 4-16) and larger models, whose graph engine is a little faster
# for greedy (a Marian base: 1.11x fp32) but needs more memory: ONNX Runtime keeps both the repacked weights
# of a Loop body and their mapped originals (+178 MB).
AUTO_GRAPH_WEIGHTS = 8 << 20
AUTO_GRAPH_SOURCES = 64


class Generator:
    """Decodes with a bundle: `Generator("bundle/").generate(["Tuesday, 24 November 2026"])`.

    `engine`: "loop" runs the Python generation loop over the bundle's encoder, attention and decoder-step
    graphs (every decoding option, streaming, CUDA with IOBinding); "graph" runs the bundle's generate.onnx,
    the whole loop in one ONNX Runtime call (greedy and beam search; runtime/graph_engine.py): the same
    tokens, without Python between steps: faster for small models and a few sources at a time. "auto" (the
    default) uses the graph on the CPU where it is faster (greedy decoding of a few sources by a small model:
    AUTO_GRAPH_WEIGHTS, AUTO_GRAPH_SOURCES) and the loop for the rest; each engine's sessions load when
    first needed. `one_row` (dynamic-int8 bundles, on the CPU): the loop runs a step of one row with the
    bundle's one-row step graph (export/one_row.py), loaded when first needed (see OrtBackend).
    """

    def __init__(
        self,
        bundle: Bundle | str | Path,
        provider: str = "cpu",
        threads: int | None = None,
        options: DecodingOptions | None = None,
        io_binding: bool | None = None,
        use_head: bool = True,
        engine: str = "auto",
        inplace_states: bool = True,
        one_row: bool = True,
    ) -> None:
        if engine not in ENGINES:
            raise OptionsError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.engine = engine
        self._loop_args = (provider, threads, io_binding, use_head, inplace_states, one_row)
        self._backend: OrtBackend | None = None
        self._graph: GraphEngine | None = None
        self._loading = threading.Lock()  # threads sharing this Generator load each engine once
        self._graph_args = (provider, threads)
        self.auto_graph = (
            engine == "auto"
            and provider == "cpu"
            and not io_binding
            and "generate" in self.bundle.manifest.graphs
            and self.bundle.weights_bytes() <= AUTO_GRAPH_WEIGHTS
        )
        if engine == "graph":
            self._graph = GraphEngine(self.bundle, provider, threads)
        else:
            self._backend = OrtBackend(self.bundle, *self._loop_args)
        # the graphs not loaded yet may load later: their declared I/O is checked now all the same
        for name in self.bundle.manifest.graphs:
            if (name == "generate") != (engine == "graph"):
                check_file_io(self.bundle, name)
        self.options = options or self.default_options()

    @property
    def graph(self) -> GraphEngine | None:
        """generate.onnx's engine, if this Generator may decode with it (loaded the first time it is needed)."""
        if self._graph is None and self.auto_graph:
            with self._loading:  # (taken only until it is loaded: a short call reads this every time)
                if self._graph is None:
                    self._graph = GraphEngine(self.bundle, *self._graph_args)
        return self._graph

    @property
    def backend(self) -> OrtBackend:
        """The Python loop's backend (its sessions load the first time it is needed)."""
        if self._backend is None:
            if self.engine == "graph":
                raise OptionsError("this Generator decodes with the generate graph only (engine 'graph')")
            with self._loading:
                if self._backend is None:
                    self._backend = OrtBackend(self.bundle, *self._loop_args)
        return self._backend

    @property
    def note(self) -> str | None:
        """A provider fallback that 'auto' made, for the user to see."""
        return (self._graph or self.backend).note

    def takes_graph(self, options: DecodingOptions, sources: int) -> bool:
        """Whether the generate graph decodes `sources` sources with `options` (engine 'graph', or 'auto' where
        it is faster: see AUTO_GRAPH_WEIGHTS)."""
        if self.engine != "auto":
            return self.engine == "graph"
        greedy = options.beam_size == 1 and not graph_problems(options)
        return self.auto_graph and greedy and sources <= AUTO_GRAPH_SOURCES

    def default_options(self) -> DecodingOptions:
        """The bundle's decoding defaults (its manifest's `generation`, and max_new_tokens)."""
        m = self.bundle.manifest
        try:
            return self._check_options(DecodingOptions(**{"max_new_tokens": m.max_new_tokens, **m.generation}))
        except (TypeError, EdgeseqError) as e:
            raise BundleError(f"{self.bundle.path}: invalid generation defaults in the manifest: {e}") from None

    def encode(self, text: str) -> list[int]:
        """Source text -> the encoder's input ids, framed as the model was trained (the manifest's
        source_framing: prefix + pieces + suffix); unknown pieces become the model's <unk> or are refused."""
        return self.bundle.encode(text)

    def generate(self, texts: Sequence[str], options: DecodingOptions | None = None) -> list[Translation]:
        """Translate a batch of texts (one batch: for many, use translate_lines); results in input order."""
        if isinstance(texts, str):
            texts = [texts]
        return self.translate_ids([self.encode(t) for t in texts], options)

    def translate_ids(
        self, sources: Sequence[Sequence[int]], options: DecodingOptions | None = None, auto_graph: bool = True
    ) -> list[Translation]:
        """Like generate_ids, with each source's hypotheses as text; `auto_graph` False: engine 'auto' decodes
        with the loop (lines.py: a stream of batches holds one engine's sessions and memory, not both)."""
        return [self._translation(h) for h in self.generate_ids(sources, options, auto_graph)]

    def translate_lines(
        self, lines: Iterable[str], options: DecodingOptions | None = None, batching: Batching = Batching()
    ) -> Iterator[LineResult]:
        """Translate a stream of lines of any length with bounded memory, in token-sized batches sorted by
        length, giving results back in input order as they are ready (runtime/lines.py)."""
        options = self._check_options(options or self.options)
        return translate_lines(self, lines, options, batching)

    def generate_ids(
        self, sources: Sequence[Sequence[int]], options: DecodingOptions | None = None, auto_graph: bool = True
    ) -> list[list[Hypothesis]]:
        """Decode source id lists; per source, its hypotheses best first.

        Each list is exactly what the encoder reads: framed already (what `encode(text)` returns, e.g.
        `<bos> ... <eos>` or `... </s>` as the bundle's source_framing says), ids in 0..source_vocab_size-1.
        `auto_graph` False: engine 'auto' decodes with the loop.
        """
        options = self._check(sources, options or self.options)
        if self.takes_graph(options, len(sources)) and (auto_graph or self.engine == "graph"):
            return self.graph.decode(sources, options, self._banned())
        return decode(self.backend, self.bundle.manifest.decoder, sources, options, self._banned())

    def stream(self, texts: str | Sequence[str], options: DecodingOptions | None = None) -> Iterator[StreamedToken]:
        """Yield each token as soon as it is decided (greedy or sampling), with its text piece."""
        if isinstance(texts, str):
            texts = [texts]
        options = options or self.options
        if options.beam_size > 1:
            raise OptionsError(
                "streaming needs greedy decoding or sampling: beam search decides tokens only at the end"
            )
        if options.nbest > 1:
            raise OptionsError("streaming gives one hypothesis per source: use nbest 1")
        if self.engine == "graph":
            raise OptionsError(
                "streaming needs the Python loop: the generate graph gives whole results (engine 'loop' or 'auto')"
            )
        sources = [self.encode(t) for t in texts]
        options = self._check(sources, options)
        eos = self.bundle.manifest.special_tokens["eos"]
        for group in batches(self.backend, sources):
            decoding = Decoding(
                self.backend, self.bundle.manifest.decoder, [sources[i] for i in group], options, self._banned()
            )
            texts_of = {i: self.bundle.tokenizer.detokenizer() for i in group}
            for emitted in decoding.steps():
                for row, token in emitted:
                    source = group[row]
                    if token == eos:
                        yield StreamedToken(source, token, texts_of.pop(source).finish(), done=True)
                    else:
                        yield StreamedToken(source, token, texts_of[source].add(token))
            for source, rest in texts_of.items():  # stopped by the length limit
                yield StreamedToken(source, None, rest.finish(), done=True)

    def _translation(self, hyps: list[Hypothesis]) -> Translation:
        vocab = self.bundle.tokenizer
        nbest = tuple(Translation(vocab.decode(h.tokens), h.tokens, h.score, h.alignment) for h in hyps)
        best = nbest[0]
        return Translation(best.text, best.tokens, best.score, best.alignment, nbest)

    def _banned(self) -> tuple[int, ...]:
        return tuple(self.bundle.manifest.banned_tokens)

    def _check(self, sources: Sequence[Sequence[int]], options: DecodingOptions) -> DecodingOptions:
        self.check_sources(sources)
        return self._check_options(options)

    def check_sources(self, sources: Sequence[Sequence[int]]) -> None:
        """Refuse source id lists the model cannot take: ids out of range, longer than max_source_length."""
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

    def _check_options(self, options: DecodingOptions) -> DecodingOptions:
        m = self.bundle.manifest
        if not isinstance(options, DecodingOptions):
            raise OptionsError(f"options must be a DecodingOptions, got {type(options).__name__}")
        if m.max_target_length and options.max_new_tokens > m.max_target_length:
            raise OptionsError(
                f"max_new_tokens {options.max_new_tokens} exceeds this model's {m.max_target_length} target positions"
            )
        if options.return_alignments and not m.decoder.alignment_output:
            raise OptionsError(f"this {m.family} bundle's decoder step does not expose attention weights")
        if options.forced_bos_token is not None and options.forced_bos_token >= m.target_vocab_size:
            raise OptionsError(
                f"forced_bos_token {options.forced_bos_token} is not a target token id (0..{m.target_vocab_size - 1})"
            )
        if options.min_new_tokens and len(set(m.banned_tokens) | {m.special_tokens["eos"]}) >= m.target_vocab_size:
            raise OptionsError("min_new_tokens: every token but </s> is banned, so nothing can be generated before it")
        return options
