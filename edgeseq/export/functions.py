"""Your model as two functions: edgeseq reads the graphs, states and axes off them by running them.

    encode(src_ids, src_mask) -> {name: tensor}
        What decoding needs from the source. `src_ids` and `src_mask` are (B, S) int64 (mask 1 on real
        tokens); take only the ones your encoder uses. Return initial decoder states here too (e.g. the
        encoder's final hidden state, or `torch.zeros(B, H)` for an input-feeding vector).
    step(tokens, ...) -> {"logits": (B, V), name: tensor, ...}
        One decoding step. Its parameters are taken by name:
        - a name `encode` returns, which `step` also returns: a state. It starts as encode's value; each
          step's returned value is fed to the next step (an RNN's hidden state, an input-feeding vector, a
          KV cache that grows along an axis);
        - a name `encode` returns that `step` does not return: context, the same at every step;
        - `step`: the index of the token being generated (a 0-d int64 tensor), for positions;
        - `src_ids`, `src_mask`: the source;
        - the one remaining parameter: the previous token of each row, (B,) int64.
        Return "logits" (B, V), every state, and optionally "alignment" (B, S) attention weights.
    attention(...) -> {name: tensor} (optional)
        Computed once per source from encode's outputs (named parameters), e.g. Bahdanau's projected keys,
        so that steps do not recompute it; its outputs are context for `step`.

Give them as methods of one nn.Module (`EncoderDecoder(module, ...)`), or as functions
(`EncoderDecoder(encode=..., step=..., modules=[encoder, decoder], ...)`). Which axis is the batch, which
follow the source length, and which grow step by step is found by running the functions on small
batches; everything must trace with torch.onnx.export (tensor code, no Python branches on tensor values).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch
from torch import nn

from edgeseq.bundle import DecoderSpec, GraphSpec, StateSpec, TensorSpec
from edgeseq.errors import OptionsError
from edgeseq.export.adapter import Seq2SeqAdapter
from edgeseq.export.families import Family, register

_DTYPES = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.bool: "bool",
}
SOURCE = ("src_ids", "src_mask")
LOGITS, ALIGNMENT, STEP = "logits", "alignment", "step"


def _init(name: str) -> str:
    return f"init.{name}"


def _next(name: str) -> str:
    return f"next.{name}"


def _params(fn: Callable, what: str) -> list[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError) as e:
        raise OptionsError(f"{what}: cannot read its parameters ({e})") from None
    names = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise OptionsError(f"{what}: name every input as a parameter (no *args or **kwargs)")
        names.append(p.name)
    return names


def _dtype(t: torch.Tensor, where: str) -> str:
    if t.dtype not in _DTYPES:
        raise OptionsError(f"{where} is {t.dtype}; graph tensors must be one of {', '.join(_DTYPES.values())}")
    return _DTYPES[t.dtype]


def _outputs(out, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(out, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in out.items()):
        raise OptionsError(f"{what} must return a dict of named tensors, got {type(out).__name__}")
    return out


class EncoderDecoder(Seq2SeqAdapter):
    """A Seq2SeqAdapter read off a model's own encode/step functions (see the module docstring)."""

    def __init__(
        self,
        module: nn.Module | None = None,
        *,
        encode: Callable | None = None,
        step: Callable | None = None,
        attention: Callable | None = None,
        modules: Sequence[nn.Module] = (),
        special_tokens: dict[str, int],
        source_vocab_size: int,
        max_source_length: int = 1024,
        max_target_length: int | None = None,
        source_pad: int | None = None,
        family: str = "custom",
    ) -> None:
        super().__init__()
        self.module = module
        self.parts = nn.ModuleList([m for m in modules if isinstance(m, nn.Module)])
        self._encode = encode or getattr(module, "encode", None)
        self._step = step or getattr(module, "step", None)
        self._attention = attention or getattr(module, "attention", None)
        if not callable(self._encode) or not callable(self._step):
            raise OptionsError("EncoderDecoder needs encode and step: methods of the module, or functions")
        missing = [k for k in ("eos", "decoder_start") if k not in special_tokens]
        if missing:
            raise OptionsError(f"EncoderDecoder: special_tokens needs {', '.join(missing)}")
        self.family, self._special = family, dict(special_tokens)
        self.source_vocab_size, self.max_source_length = source_vocab_size, max_source_length
        self.max_target_length, self.source_pad_id = max_target_length, source_pad
        self.encode_params = _params(self._encode, "encode")
        bad = [p for p in self.encode_params if p not in SOURCE]
        if bad:
            raise OptionsError(f"encode takes only src_ids and src_mask, not {', '.join(bad)}")
        self.attention_params = _params(self._attention, "attention") if self._attention else []
        self.step_params = _params(self._step, "step")
        self.eval()
        with torch.no_grad():
            self._specs, self._decoder = self._probe()

    def special_tokens(self) -> dict[str, int]:
        return dict(self._special)

    def graph_specs(self) -> dict[str, GraphSpec]:
        return dict(self._specs)

    def decoder_spec(self) -> DecoderSpec:
        return self._decoder

    # -- the three graphs, on feeds named as the graph specs name them --------------------------------------
    def encoder(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = _outputs(self._encode(**{p: x[p] for p in self.encode_params}), "encode")
        return {(_init(k) if k in self.states else k): v for k, v in out.items()}

    def attention(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return _outputs(self._attention(**{p: x[p] for p in self.attention_params}), "attention")

    def decoder_step(self, x: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        args = {p: x[p] for p in self.step_params if p != self.tokens}
        args[self.tokens] = x[self.tokens]
        out = _outputs(self._step(**args), "step")
        return {(_next(k) if k in self.states else k): v for k, v in out.items()}

    # -- reading the specs off the functions -----------------------------------------------------------------
    def _run_context(self, batch: int, length: int) -> tuple[dict, dict, dict]:
        """encode (and attention) on a random (batch, length) source, its last row one token shorter."""
        g = torch.Generator().manual_seed(batch * 100 + length)
        src = torch.randint(0, self.source_vocab_size, (batch, length), generator=g)
        mask = torch.ones(batch, length, dtype=torch.int64)
        mask[-1, -1] = 0
        src[-1, -1] = self.source_pad
        feeds = {"src_ids": src, "src_mask": mask}
        try:
            enc = _outputs(self._encode(**{p: feeds[p] for p in self.encode_params}), "encode")
        except OptionsError:
            raise
        except Exception as e:
            raise OptionsError(f"encode failed on a ({batch}, {length}) source: {type(e).__name__}: {e}") from None
        att = {}
        if self._attention:
            missing = [p for p in self.attention_params if p not in enc and p not in SOURCE]
            if missing:
                raise OptionsError(f"attention takes {', '.join(missing)}, which encode does not return")
            att = _outputs(self._attention(**{p: {**feeds, **enc}[p] for p in self.attention_params}), "attention")
        return feeds, enc, att

    def _run_step(self, context: dict, states: dict, index: int, batch: int) -> dict[str, torch.Tensor]:
        args = {p: context[p] for p in self.step_params if p in context}
        args.update(states)
        args[self.tokens] = torch.full((batch,), self._special["decoder_start"], dtype=torch.int64)
        if STEP in self.step_params:
            args[STEP] = torch.tensor(index, dtype=torch.int64)
        try:
            return _outputs(self._step(**args), "step")
        except OptionsError:
            raise
        except Exception as e:
            raise OptionsError(f"step failed at step {index} with batch {batch}: {type(e).__name__}: {e}") from None

    def _probe(self) -> tuple[dict[str, GraphSpec], DecoderSpec]:
        runs = {(b, s): self._run_context(b, s) for b, s in ((2, 5), (3, 5), (2, 7))}
        feeds, enc, att = runs[2, 5]
        context = {**feeds, **enc, **att}
        clash = sorted(set(enc) & set(att) | (set(enc) | set(att)) & set(SOURCE))
        if clash:
            raise OptionsError(f"encode/attention outputs {clash} clash with other names: rename them")
        self.tokens = self._find_tokens(context)
        probe_states = {p: context[p] for p in self.step_params if p in enc}
        out0 = self._run_step(context, probe_states, 0, 2)
        self.states = [p for p in self.step_params if p in enc and p in out0]
        extra = sorted(set(out0) - {LOGITS, ALIGNMENT} - set(self.states))
        if extra:
            raise OptionsError(
                f"step returns {extra}, which are neither logits, alignment nor a state "
                "(a state is a step parameter that encode also returns)"
            )
        if LOGITS not in out0:
            raise OptionsError('step must return "logits": (batch, vocab) scores of the next token')
        out1 = self._run_step(context, {s: out0[s] for s in self.states}, 1, 2)
        other = {}
        for key in ((3, 5), (2, 7)):
            f, e, a = runs[key]
            ctx = {**f, **e, **a}
            other[key] = (ctx, self._run_step(ctx, {s: ctx[s] for s in self.states}, 0, key[0]))

        def axes(name: str, base, by_batch, by_len, grown=None, grown_symbol: str = "") -> tuple:
            if by_batch.dim() != base.dim() or by_len.dim() != base.dim():
                raise OptionsError(f"{name} changes rank with the batch size or source length")
            dims = []
            for i, d in enumerate(base.shape):
                if by_batch.shape[i] != d:
                    dims.append("batch")
                elif by_len.shape[i] != d:
                    dims.append("src_len")
                elif grown is not None and grown.shape[i] != d:
                    dims.append(f"{grown_symbol}{i}")
                else:
                    dims.append(int(d))
            return tuple(dims)

        def spec(name: str, graph_name: str, base, b, s, grown=None, grown_symbol="") -> TensorSpec:
            return TensorSpec(graph_name, _dtype(base, name), axes(name, base, b, s, grown, grown_symbol))

        (b_ctx, b_out), (s_ctx, s_out) = other[3, 5], other[2, 7]
        enc_specs = {}
        for k, v in enc.items():
            grown = out0[k] if k in self.states else None
            name = _init(k) if k in self.states else k
            enc_specs[k] = spec(f"encode output {k!r}", name, v, b_ctx[k], s_ctx[k])
            if grown is not None and grown.dim() != v.dim():
                raise OptionsError(f"state {k!r}: step returns rank {grown.dim()}, encode rank {v.dim()}")
        att_specs = {k: spec(f"attention output {k!r}", k, v, b_ctx[k], s_ctx[k]) for k, v in att.items()}
        state_in, state_out, state_specs = {}, {}, []
        for s in self.states:
            # a dim that differs between what a step takes and what it returns grows each step (a cache)
            inp = spec(f"state {s!r}", s, out0[s], b_out[s], s_out[s], out1[s], f"{s}_len")
            outp = spec(f"state {s!r}", _next(s), out1[s], b_out[s], s_out[s], out0[s], f"{s}_next_len")
            if "batch" not in inp.shape:
                raise OptionsError(f"state {s!r} has no batch axis (shape {list(out0[s].shape)})")
            state_in[s], state_out[s] = inp, outp
            state_specs.append(StateSpec(s, _next(s), inp.shape.index("batch"), init_from=_init(s), dtype=inp.dtype))
        logits = spec("logits", LOGITS, out0[LOGITS], b_out[LOGITS], s_out[LOGITS])
        if logits.shape[:1] != ("batch",) or len(logits.shape) != 2 or not isinstance(logits.shape[1], int):
            raise OptionsError(f"step's logits must be (batch, vocab), got shape {list(out0[LOGITS].shape)}")
        step_in = [TensorSpec(self.tokens, "int64", ("batch",))]
        for p in self.step_params:
            if p == self.tokens:
                continue
            if p == STEP:
                step_in.append(TensorSpec(STEP, "int64", ()))
            elif p in self.states:
                step_in.append(state_in[p])
            elif p in att_specs:
                step_in.append(att_specs[p])
            elif p in enc_specs:
                step_in.append(enc_specs[p])
            else:
                step_in.append(TensorSpec(p, "int64", ("batch", "src_len")))
        step_out = [logits, *(state_out[s] for s in self.states)]
        if ALIGNMENT in out0:
            step_out.append(spec("alignment", ALIGNMENT, out0[ALIGNMENT], b_out[ALIGNMENT], s_out[ALIGNMENT]))
        source = [TensorSpec(p, "int64", ("batch", "src_len")) for p in self.encode_params]
        specs = {"encoder": GraphSpec("encoder.onnx", tuple(source), tuple(enc_specs.values()))}
        if self._attention:
            att_in = [
                enc_specs[p] if p in enc_specs else TensorSpec(p, "int64", ("batch", "src_len"))
                for p in self.attention_params
            ]
            specs["attention"] = GraphSpec("attention.onnx", tuple(att_in), tuple(att_specs.values()))
        specs["decoder_step"] = GraphSpec("decoder_step.onnx", tuple(step_in), tuple(step_out))
        decoder = DecoderSpec(
            tokens_input=self.tokens,
            logits_output=LOGITS,
            states=tuple(state_specs),
            step_input=STEP if STEP in self.step_params else None,
            alignment_output=ALIGNMENT if ALIGNMENT in out0 else None,
        )
        return specs, decoder

    def _find_tokens(self, context: dict) -> str:
        rest = [p for p in self.step_params if p not in context and p != STEP]
        if len(rest) != 1:
            raise OptionsError(
                "step must take exactly one parameter that is not an encode/attention output, 'step', src_ids "
                f"or src_mask: the previous tokens; it has {rest or 'none'}"
            )
        return rest[0]


def has_functions(model) -> bool:
    """A module with encode and step methods, which EncoderDecoder can read."""
    return (
        isinstance(model, nn.Module)
        and callable(getattr(model, "encode", None))
        and callable(getattr(model, "step", None))
    )


register(
    Family(
        "functions",
        matches=lambda m: isinstance(m, EncoderDecoder),
        adapter=lambda m: m,
        describe="an edgeseq.export.EncoderDecoder (your encode and step functions)",
        fallback=True,
    )
)
