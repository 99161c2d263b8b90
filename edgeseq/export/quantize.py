"""quantize_bundle: a bundle -> a new, smaller bundle (int8 or fp16 per graph). The input is never touched.

Modes, per graph:
- fp32: unchanged;
- dynamic-int8: int8 weights, activations quantized at run time (MatMul/Gemm, embeddings, LSTM; GRUs are
  first rewritten as MatMuls and a Scan, export/gru.py, since ONNX Runtime has no int8 GRU);
- static-int8: calibrated QDQ int8, activation ranges from running the real decoding loop on calibration
  sentences (every graph, the decoder step included);
- fp16: fp16 weights and arithmetic, inputs and outputs kept fp32 (the runtime API does not change).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgeseq.bundle import ONE_ROW, Manifest, file_sha256
from edgeseq.errors import OptionsError, ParityError
from edgeseq.export.generate_check import check_generate, with_generate
from edgeseq.export.graph_edit import topological_sort
from edgeseq.export.gru import unfold_grus
from edgeseq.export.one_row import check_one_row, with_one_row
from edgeseq.export.tied_int8 import tie_int8
from edgeseq.export.trace import set_declared_types
from edgeseq.export.weights import WEIGHTS_FILE, share_weights, split_projections
from edgeseq.fsutil import building, check_target
from edgeseq.runtime.batching import random_sources
from edgeseq.runtime.bundle import Bundle, load_bundle
from edgeseq.runtime.generator import OrtBackend
from edgeseq.runtime.loop import decode
from edgeseq.runtime.options import DecodingOptions
from edgeseq.runtime.tokenizer import tokenizer_files

MODES = ("fp32", "dynamic-int8", "static-int8", "fp16")
ALIASES = {"int8": "dynamic-int8", "float32": "fp32", "float16": "fp16"}
DYNAMIC_OPS = ["MatMul", "Gemm", "Gather", "LSTM", "Attention"]
STATIC_OPS = ["MatMul", "Gemm", "Gather"]
FP16_UNSAFE = ["ReduceSum", "ReduceMean", "Pow", "Sqrt", "Exp", "Log", "CumSum"]  # overflow/precision: kept fp32


@dataclass(frozen=True)
class Recipe:
    """The mode of each graph."""

    encoder: str = "fp32"
    attention: str = "fp32"
    decoder_step: str = "fp32"

    def __post_init__(self) -> None:
        for f in fields(self):
            mode = ALIASES.get(getattr(self, f.name), getattr(self, f.name))
            if mode not in MODES:
                raise OptionsError(
                    f"{f.name}: unknown mode {getattr(self, f.name)!r}: choose one of {', '.join(MODES)}"
                )
            object.__setattr__(self, f.name, mode)

    @classmethod
    def uniform(cls, mode: str) -> Recipe:
        return cls(mode, mode, mode)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """A JSON file such as {"encoder": "dynamic-int8", "decoder_step": "fp32"}."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except RecursionError:
            raise OptionsError(f"cannot read recipe {path}: JSON nested too deeply") from None
        except (OSError, ValueError) as e:
            raise OptionsError(f"cannot read recipe {path}: {e}") from None
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) - names or not all(isinstance(v, str) for v in data.values()):
            raise OptionsError(f"{path}: a recipe maps graph names ({', '.join(sorted(names))}) to modes")
        return cls(**data)

    def mode(self, graph: str) -> str:
        return getattr(self, graph)

    @property
    def name(self) -> str:
        modes = {self.encoder, self.attention, self.decoder_step}
        return modes.pop() if len(modes) == 1 else f"enc={self.encoder},att={self.attention},dec={self.decoder_step}"


def capture_feeds(
    bundle: Bundle, sources: Sequence[Sequence[int]], max_steps: int = 256, batch: int = 8
) -> dict[str, list[dict[str, np.ndarray]]]:
    """The inputs each graph really receives while greedy-decoding `sources` (for static calibration)."""
    backend = OrtBackend(bundle)
    feeds: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in bundle.manifest.loop_graphs}

    class Recording:
        graphs, step_graph, special_tokens = backend.graphs, backend.step_graph, backend.special_tokens
        source_pad, masked_padding, offers = backend.source_pad, backend.masked_padding, frozenset()

        def context(self, f):
            feeds["encoder"].append(_pick(bundle, "encoder", f))
            out = backend.context(f)
            if "attention" in feeds:
                feeds["attention"].append(_pick(bundle, "attention", {**f, **out}))
            return out

        def step(self, f, request=None):
            out = backend.step(f)  # the head's inputs added as the graph receives them
            if len(feeds["decoder_step"]) < max_steps:
                feeds["decoder_step"].append(_pick(bundle, "decoder_step", backend.step_feeds(f)))
            return out

    options = DecodingOptions(max_new_tokens=bundle.manifest.max_new_tokens)
    for i in range(0, len(sources), batch):
        decode(Recording(), bundle.manifest.decoder, sources[i : i + batch], options)
    return feeds


def _pick(bundle: Bundle, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {t.name: np.array(feeds[t.name]) for t in bundle.manifest.graphs[graph].inputs}


def quantize_graph(model: onnx.ModelProto, mode: str, path: Path, calibration: list[dict] | None) -> None:
    """Write `model` quantized in `mode` to `path`."""
    root = logging.getLogger()  # onnxruntime.quantization logs advice through the root logger
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        _quantize_graph(model, mode, path, calibration)
    finally:
        root.setLevel(level)


def _quantize_graph(model: onnx.ModelProto, mode: str, path: Path, calibration: list[dict] | None) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if mode == "dynamic-int8":
        unfold_grus(model)  # ONNX Runtime has no int8 GRU: its weights become MatMuls that quantize
        tied = tie_int8(model)  # embeddings and the projections tied to them: one int8 copy for both
        if tied and not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
        quantize_dynamic(
            model,
            str(path),
            op_types_to_quantize=DYNAMIC_OPS,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=tied,
            extra_options={"MatMulConstBOnly": True, "EnableSubgraph": True},
        )
    elif mode == "static-int8":

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.items = iter(calibration or [])

            def get_next(self):
                return next(self.items, None)

        quantize_static(
            model,
            str(path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=STATIC_OPS,
            per_channel=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"MatMulConstBOnly": True},
        )
    elif mode == "fp16":
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        # the head and, in bundles made before reorder_every_step, the reorder's If (export/head.py, reorder.py)
        # stay float32: the converter misplaces the casts of If branches (the reorder's Gathers convert)
        head = [
            n.name
            for n in model.graph.node
            if n.name.startswith(("head.", "reorder.")) and not n.name.startswith("reorder.gather.")
        ]
        half = convert_float_to_float16(
            model, keep_io_types=True, op_block_list=DEFAULT_OP_BLOCK_LIST + FP16_UNSAFE, node_block_list=head
        )
        onnx.save(half, str(path))
    else:
        onnx.save(model, str(path))
    # the quantizers append nodes after their consumers, and do not see what a subgraph (the head) reads
    written = onnx.load(str(path), load_external_data=False)
    topological_sort(written.graph)
    onnx.save(written, str(path))


def quantize_bundle(
    src: str | Path,
    out: str | Path,
    recipe: Recipe,
    calibration: Sequence[str] | None = None,
    force: bool = False,
    progress: Callable[[str], None] = lambda msg: None,
    inputs: Sequence[str | Path] = (),
    generate_graph: bool = True,
) -> Path:
    """Write a quantized copy of bundle `src` at `out` (built beside it, moved into place when whole).
    `inputs`: other files read (calibration, recipe), which the new bundle must not replace or sit around."""
    src, out = Path(src), Path(out)
    inputs = [src, *inputs]
    check_target(out, force, inputs)  # before any work: never over, into or around an input
    bundle = load_bundle(src)
    feeds = calibration_feeds(bundle, recipe, calibration, progress)
    with building(out, force, inputs) as tmp:
        quantize_into(bundle, tmp, recipe, feeds, progress, generate_graph)
    return out


def calibration_feeds(
    bundle: Bundle, recipe: Recipe, calibration: Sequence[str] | None, progress: Callable[[str], None]
) -> dict[str, list[dict[str, np.ndarray]]]:
    """What static-int8 graphs are calibrated on (nothing for other recipes)."""
    static = [g for g in bundle.manifest.loop_graphs if recipe.mode(g) == "static-int8"]
    if not static:
        return {}
    if not calibration:
        raise OptionsError("static-int8 needs --calibration FILE: source sentences to measure activations on")
    progress(f"capturing calibration inputs from {len(calibration)} sentences")
    return capture_feeds(bundle, [bundle.encode(t) for t in calibration])


def quantize_into(
    bundle: Bundle,
    folder: Path,
    recipe: Recipe,
    feeds: dict,
    progress: Callable[[str], None] = lambda msg: None,
    generate_graph: bool = True,
) -> None:
    """Write the quantized bundle into the empty directory `folder` (with its generate.onnx, checked against
    the Python loop, unless `generate_graph` is False); it must load cleanly."""
    src = bundle.path
    sizes = {}
    for name, spec in bundle.manifest.loop_graphs.items():
        mode = recipe.mode(name)
        progress(f"{name}: {mode}")
        quantize_graph(onnx.load(str(src / spec.file)), mode, folder / spec.file, feeds.get(name))
        model = onnx.load(str(folder / spec.file))
        set_declared_types(model, spec)
        onnx.save(model, str(folder / spec.file))
        sizes[name] = model.ByteSize()
    for f in tokenizer_files(bundle.manifest.tokenizer):
        shutil.copyfile(src / f, folder / f)
    files = [g.file for g in bundle.manifest.loop_graphs.values()]
    sharing = share_weights(folder, files)
    split = split_projections(folder, files)
    manifest = _manifest(bundle.manifest, folder, recipe, src, sizes, {**asdict(sharing), "projections_split": split})
    if recipe.mode("decoder_step") == "dynamic-int8":
        manifest = _with_one_row(folder, manifest, progress)
    if generate_graph:
        progress("composing generate.onnx")
        manifest = with_generate(folder, manifest)
        manifest.save(folder)
        m = manifest
        sources = random_sources(
            m.source_vocab_size, 8, max_len=12, framing=m.source_framing, special=tuple(m.special_tokens.values())
        )
        check = check_generate(load_bundle(folder), sources, m.max_new_tokens, m.banned_tokens)
        if not check.ok:
            raise ParityError(f"{check.describe()}: the composed graph is wrong; quantize with --no-generate-graph")
        manifest.parity["generate"] = check.to_json()
    manifest.save(folder)
    load_bundle(folder)  # the new bundle must open cleanly before it takes the target name


def _with_one_row(folder: Path, m: Manifest, progress: Callable[[str], None]) -> Manifest:
    """`m` with the one-row step graph (export/one_row.py) if the step has int8 products for it, checked
    against decoder_step on sources decoded one at a time; left out (and said why) if they disagree."""
    with_graph = with_one_row(folder, m)
    if ONE_ROW not in with_graph.graphs:
        return m
    progress("one-row step graph: int8 products as GEMVs")
    with_graph.save(folder)
    sources = random_sources(
        m.source_vocab_size, 8, max_len=12, framing=m.source_framing, special=tuple(m.special_tokens.values())
    )
    check = check_one_row(load_bundle(folder), sources, m.max_new_tokens)
    if not check["ok"]:
        (folder / with_graph.graphs[ONE_ROW].file).unlink()
        progress(f"one-row step graph left out: {check['agreed']}/{check['sources']} sources as decoder_step's")
        return dataclasses.replace(m, parity={**m.parity, "one_row": check})
    return dataclasses.replace(with_graph, parity={**with_graph.parity, "one_row": check})


def _manifest(m: Manifest, bundle: Path, recipe: Recipe, src: Path, sizes: dict, sharing: dict) -> Manifest:
    graphs = {k: type(g)(g.file, g.inputs, g.outputs, file_sha256(bundle / g.file)) for k, g in m.loop_graphs.items()}
    files = {f: file_sha256(bundle / f) for f in m.files if (bundle / f).exists()}
    quantize: dict[str, Any] = {
        "recipe": asdict(recipe),
        "source_bundle": src.name,
        "graph_bytes": sizes,
        "weights": sharing,
    }
    return Manifest(
        **{
            **{f.name: getattr(m, f.name) for f in fields(m)},
            "graphs": graphs,
            "files": files,
            "provenance": {**m.provenance, "quantize": quantize},
            "parity": {},
        }
    )


__all__ = ["MODES", "Recipe", "capture_feeds", "quantize_bundle", "quantize_graph", "WEIGHTS_FILE"]
