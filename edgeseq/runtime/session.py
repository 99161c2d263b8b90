"""ONNX Runtime sessions for a bundle's graphs, checked against the manifest at load."""

from __future__ import annotations

import sys
import threading
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgeseq.bundle import GraphSpec
from edgeseq.errors import BundleError, OptionsError
from edgeseq.runtime.bundle import Bundle
from edgeseq.runtime.external import declared_io

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


def resolve_providers(provider: str) -> list[str]:
    """'cpu' | 'cuda' | 'auto' -> ONNX Runtime provider list; a provider that cannot load is an error."""
    _warn_if_both_builds()
    available = ort.get_available_providers()
    if provider in ("cuda", "auto") and PROVIDERS["cuda"] in available:
        _preload_cuda_libraries()
    if provider == "auto":
        return [p for p in (PROVIDERS["cuda"], PROVIDERS["cpu"]) if p in available]
    if provider not in PROVIDERS:
        raise OptionsError(f"unknown provider {provider!r}: choose one of {', '.join([*PROVIDERS, 'auto'])}")
    if PROVIDERS[provider] not in available:
        raise OptionsError(
            f"provider {provider!r} is not available in this onnxruntime (available: {', '.join(available)}); "
            "for CUDA install edgeseq[gpu] (onnxruntime-gpu) instead of onnxruntime"
        )
    return [PROVIDERS[provider]] + ([PROVIDERS["cpu"]] if provider != "cpu" else [])


def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from the nvidia-* wheels (as PyTorch installs them) when the system lacks them."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # noqa: BLE001 - best effort: the session's own load reports what is missing
            pass


def check_provider(requested: str, session: ort.InferenceSession, graph: str) -> str | None:
    """ONNX Runtime falls back to the CPU, with only a log line, when a listed provider fails to load.

    'cuda' makes that an error; 'auto' returns a note saying the fallback happened (None: no fallback).
    """
    if requested == "cpu" or PROVIDERS["cuda"] in session.get_providers():
        return None
    if requested == "auto" and PROVIDERS["cuda"] not in ort.get_available_providers():
        return "provider auto: this onnxruntime has no CUDA provider; running on the CPU"
    why = (
        f"onnxruntime lists CUDAExecutionProvider but could not load it for {graph} (its CUDA or cuDNN libraries "
        "are missing or do not match: onnxruntime-gpu 1.31+ needs CUDA 13 and cuDNN 9, e.g. from the nvidia-* "
        "wheels that PyTorch installs)"
    )
    if requested == "cuda":
        raise OptionsError(f"provider 'cuda': {why}")
    return f"provider auto: {why}; running on the CPU"


def installed_builds() -> set[str]:
    """Which onnxruntime distributions are installed, from their dist-info folders (importlib.metadata
    would cost this process ~3 MB of modules for one question)."""
    found = set()
    for entry in sys.path:
        folder = Path(entry or ".")
        for dist, pattern in (("onnxruntime", "onnxruntime-*.dist-info"), ("onnxruntime-gpu", "onnxruntime_gpu-*")):
            if folder.is_dir() and any(folder.glob(pattern)):
                found.add(dist)
    return found


def _warn_if_both_builds() -> None:
    if len(installed_builds()) == 2:
        warnings.warn(
            "both onnxruntime and onnxruntime-gpu are installed and overwrite each other; keep one: "
            "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu (or onnxruntime)",
            RuntimeWarning,
            stacklevel=3,
        )


class GraphSession:
    """One graph: an InferenceSession whose inputs/outputs were checked against its GraphSpec."""

    def __init__(self, bundle: Bundle, name: str, providers: list[str], options: ort.SessionOptions) -> None:
        self.name, self.spec = name, bundle.manifest.graphs[name]
        path = bundle.graph_path(name)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for unreadable models
            raise BundleError(f"{path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
        check_io(name, self.spec, self.session)
        self.input_names = [t.name for t in self.spec.inputs]
        self.output_names = [t.name for t in self.spec.outputs]
        # The binding under InferenceSession.run: that wrapper re-validates the input names on every call,
        # which the check above has done once. Falls back to the public method if the binding moves.
        self._run = getattr(getattr(self.session, "_sess", None), "run", None)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Feeds by name (extra names ignored) -> outputs by name."""
        feeds = {n: feeds[n] for n in self.input_names}
        try:
            values = (
                self._run(self.output_names, feeds, None) if self._run else self.session.run(self.output_names, feeds)
            )
        except Exception as e:  # onnxruntime's own exception types: a graph that fails on real inputs
            raise run_error(self.name, self.spec.file, e) from None
        return dict(zip(self.output_names, values))


def run_error(graph: str, file: str, e: Exception) -> BundleError:
    """An onnxruntime failure while running a graph, as one line naming it."""
    text = " ".join(str(e).split())
    return BundleError(f"{file}: onnxruntime failed running the {graph} graph ({text[:300]})")


def check_io(name: str, spec: GraphSpec, session: ort.InferenceSession) -> None:
    """Refuse a graph whose real inputs/outputs differ from the manifest, naming the first difference."""
    _compare_io(name, spec, session.get_inputs(), session.get_outputs())


def check_file_io(bundle: Bundle, name: str) -> None:
    """check_io for a graph no session has loaded: its inputs and outputs as its file declares them."""
    inputs, outputs = declared_io(bundle.graph_path(name))
    _compare_io(name, bundle.manifest.graphs[name], inputs, outputs)


def _compare_io(name: str, spec: GraphSpec, inputs, outputs) -> None:
    for kind, declared, actual in (
        ("input", spec.inputs, inputs),
        ("output", spec.outputs, outputs),
    ):
        want = {t.name: t for t in declared}
        got = {a.name: a for a in actual}
        if set(want) != set(got):
            raise BundleError(
                f"{spec.file}: graph {kind}s {sorted(got)} do not match "
                f"the manifest's graphs.{name}.{kind}s {sorted(want)}"
            )
        for t in declared:
            a = got[t.name]
            dtype = _ORT_DTYPES.get(a.type, a.type)
            if dtype != t.dtype:
                raise BundleError(
                    f"{spec.file}: {kind} {t.name!r} is {dtype} in the graph but {t.dtype} in the manifest"
                )
            if len(a.shape) != len(t.shape) or any(
                isinstance(d, int) and isinstance(g, int) and d != g for d, g in zip(t.shape, a.shape)
            ):
                raise BundleError(
                    f"{spec.file}: {kind} {t.name!r} has shape {list(a.shape)} in the graph "
                    f"but {list(t.shape)} in the manifest"
                )


_ARENA: list[bool] = []
_ARENA_LOCK = threading.Lock()


def shared_cpu_arena() -> bool:
    """One CPU memory arena for every session of the process (registered once; False if this onnxruntime
    cannot). Each session's own arena would keep its peak to itself: the encoder's activations of the
    largest batch stay held while the decoder step grows its caches in a second arena, and a file
    translated in batches needs the sum of both peaks instead of the larger one."""
    with _ARENA_LOCK:
        if not _ARENA:
            try:
                info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
                ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, 0, -1, -1))  # defaults: grow by doubling
                _ARENA.append(True)
            except Exception:  # noqa: BLE001 - an older build, or one registered already: per-session arenas
                _ARENA.append(False)
        return _ARENA[0]


def session_options(threads: int | None, step: bool) -> ort.SessionOptions:
    """Full graph optimisation, `threads` intra-op threads, weights repacked for the GEMM kernels at load.

    Only the decoder step's session spins its threads: each session has its own pool, and a pool left
    spinning after the encoder would steal the step's cores. Every graph repacks its weights: the encoder
    and attention graphs run once per batch, but read from where they lie (mapped from the bundle) their
    GEMMs were 18-24% slower (Marian base and small, 16-23 sources of 32 tokens), and the mapped pages a run
    reads are resident as the packed copy is (runtime/pages.py drops the ones prepacking read).
    """
    options = ort.SessionOptions()
    options.log_severity_level = 4  # fatal only: edgeseq reports a failure itself, in one line
    if shared_cpu_arena():
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if step else "0")
    return options
