"""The greedy head: the next token and its log-probability, computed inside the decoder step graph.

Greedy decoding needs, per row, only argmax(logits + bias) and its log-probability. Appending that to the
step graph saves the loop its per-token numpy work on a (rows, vocabulary) array, and on CUDA lets the
logits stay in device memory: only the token ids and their log-probabilities cross to the host. The bias
input is how the loop applies banned tokens and the minimum length (-inf at those ids; zeros otherwise).
The logits output stays, for beam search, sampling and the other logits processors.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from edgeseq.bundle import DecoderSpec, GraphSpec, TensorSpec

BIAS, TOKEN, LOGPROB = "head_bias", "next_token", "next_logprob"


def add_greedy_head(path: Path, spec: GraphSpec, decoder: DecoderSpec) -> tuple[GraphSpec, DecoderSpec]:
    """Append the head to the step graph at `path`; return its GraphSpec and DecoderSpec with the head."""
    logits = spec.output(decoder.logits_output)
    vocab = logits.shape[-1]
    model = onnx.load(str(path), load_external_data=False)
    names = {v for n in model.graph.node for v in (*n.input, *n.output)} | {i.name for i in model.graph.input}
    if logits.dtype != "float32" or not isinstance(vocab, int) or names & {BIAS, TOKEN, LOGPROB}:
        return spec, decoder  # (float32 logits of a fixed vocabulary, and free names: else no head)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    g = model.graph

    def reduce(op: str, x: str, out: str, keepdims: int) -> list[onnx.NodeProto]:
        if opset >= 18 or op == "ReduceSum":  # axes became an input (ReduceSum: already in opset 13)
            axes = helper.make_tensor(f"{out}.axes", TensorProto.INT64, [1], [-1])
            return [
                helper.make_node("Constant", [], [f"{out}.axes"], value=axes),
                helper.make_node(op, [x, f"{out}.axes"], [out], keepdims=keepdims),
            ]
        return [helper.make_node(op, [x], [out], axes=[-1], keepdims=keepdims)]

    biased, top, shifted, exp, total, lse = (f"head.{n}" for n in ("biased", "top", "shifted", "exp", "total", "lse"))
    g.node.extend(
        [
            helper.make_node("Add", [decoder.logits_output, BIAS], [biased]),
            helper.make_node("ArgMax", [biased], [TOKEN], axis=-1, keepdims=0),
            *reduce("ReduceMax", biased, top, 1),
            helper.make_node("Sub", [biased, top], [shifted]),
            helper.make_node("Exp", [shifted], [exp]),
            *reduce("ReduceSum", exp, total, 0),
            helper.make_node("Log", [total], [lse]),
            helper.make_node("Neg", [lse], [LOGPROB]),  # the argmax's log-probability: 0 - logsumexp(shifted)
        ]
    )
    g.input.append(helper.make_tensor_value_info(BIAS, TensorProto.FLOAT, [vocab]))
    batch = logits.shape[0]
    g.output.extend(
        [
            helper.make_tensor_value_info(TOKEN, TensorProto.INT64, [batch]),
            helper.make_tensor_value_info(LOGPROB, TensorProto.FLOAT, [batch]),
        ]
    )
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    spec = dataclasses.replace(
        spec,
        inputs=(*spec.inputs, TensorSpec(BIAS, "float32", (vocab,))),
        outputs=(*spec.outputs, TensorSpec(TOKEN, "int64", (batch,)), TensorSpec(LOGPROB, "float32", (batch,))),
    )
    decoder = dataclasses.replace(decoder, head_bias_input=BIAS, head_token_output=TOKEN, head_logprob_output=LOGPROB)
    return spec, decoder


def without_head(spec: GraphSpec, decoder: DecoderSpec) -> GraphSpec:
    """The graph's I/O as the model declares it: the head's input and outputs taken out (for comparisons)."""
    head = {decoder.head_bias_input, decoder.head_token_output, decoder.head_logprob_output} - {None}
    return dataclasses.replace(
        spec,
        inputs=tuple(t for t in spec.inputs if t.name not in head),
        outputs=tuple(t for t in spec.outputs if t.name not in head),
    )
