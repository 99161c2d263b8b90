"""IOBinding: graph outputs that stay where ONNX Runtime put them (GPU memory on CUDA) between runs.

With CUDA, copying every state, the attention memory and the self-attention cache to the host after each
step and back before the next costs more than the step. `BoundSession` runs a graph with an IOBinding:
outputs named in `keep` come back as `DeviceTensor`s, left in device memory, and a `DeviceTensor` given as an
input is bound as it is. Everything else (logits, attention weights) comes to the host as numpy.

The loop needs one operation on per-row tensors: `take(rows, axis)`, when rows finish or beams reorder. A
`DeviceTensor` does it through the host (download, numpy take, upload), which greedy decoding needs only
when a row finishes. On the CPU provider the same code runs with device "cpu" (no copies): that is how the
binding logic is tested on machines without a GPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import onnxruntime as ort

from edgeseq.runtime.session import GraphSession, run_error

DEVICES = {"CUDAExecutionProvider": "cuda", "CPUExecutionProvider": "cpu"}


class DeviceTensor:
    """An OrtValue on `device`; the loop sees `shape`, `take`, and `numpy()` (a copy to the host)."""

    __slots__ = ("value", "device", "device_id")

    def __init__(self, value: ort.OrtValue, device: str, device_id: int = 0) -> None:
        self.value, self.device, self.device_id = value, device, device_id

    @classmethod
    def upload(cls, array: np.ndarray, device: str, device_id: int = 0) -> DeviceTensor:
        array = np.ascontiguousarray(array)
        return cls(ort.OrtValue.ortvalue_from_numpy(array, device, device_id), device, device_id)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.value.shape())

    def numpy(self) -> np.ndarray:
        return _host_copy(self.value)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self.numpy()
        return array if dtype is None else array.astype(dtype)

    def take(self, rows: np.ndarray, axis: int) -> DeviceTensor:
        """The rows `rows` along `axis`, as a new tensor on the same device (through the host)."""
        return DeviceTensor.upload(np.take(self.numpy(), rows, axis=axis), self.device, self.device_id)


def _host_copy(value: ort.OrtValue) -> np.ndarray:
    """The tensor as a numpy array of its own: for CPU memory OrtValue.numpy() is a view that does not keep
    the OrtValue alive, so it would dangle once the binding's outputs are released."""
    return np.array(value.numpy(), copy=True)


class BoundSession:
    """Runs one graph with an IOBinding; outputs in `keep` stay on the device, the others come to the host."""

    def __init__(self, graph: GraphSession, device: str, keep: Iterable[str], device_id: int = 0) -> None:
        self.graph, self.device, self.device_id = graph, device, device_id
        self.keep = set(keep)
        unknown = self.keep - set(graph.output_names)
        if unknown:
            raise ValueError(f"{graph.name}: no outputs named {sorted(unknown)} to keep on the device")

    def run(self, feeds: dict[str, np.ndarray | DeviceTensor]) -> dict[str, np.ndarray | DeviceTensor]:
        binding = self.graph.session.io_binding()
        for name in self.graph.input_names:
            value = feeds[name]
            if isinstance(value, DeviceTensor):
                binding.bind_ortvalue_input(name, value.value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self.graph.output_names:
            binding.bind_output(name, self.device if name in self.keep else "cpu", self.device_id)
        try:
            self.graph.session.run_with_iobinding(binding)
        except Exception as e:  # onnxruntime's own exception types
            raise run_error(self.graph.name, self.graph.spec.file, e) from None
        out: dict[str, np.ndarray | DeviceTensor] = {}
        for name, value in zip(self.graph.output_names, binding.get_outputs()):
            out[name] = DeviceTensor(value, self.device, self.device_id) if name in self.keep else _host_copy(value)
        return out


class Outputs(Mapping):
    """A run's outputs by name: the arrays written where the caller asked, and the others copied out of ONNX
    Runtime's memory when first read (never, for logits a step's head has chosen from already). A copy: on
    CPU memory OrtValue.numpy() is a view that does not keep the OrtValue alive."""

    def __init__(self, written: dict[str, np.ndarray], values: dict[str, ort.OrtValue]) -> None:
        self.arrays, self.values = dict(written), values

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = _host_copy(self.values[name])
        return self.arrays[name]

    def __iter__(self):
        return iter([*self.arrays.keys() - self.values.keys(), *self.values])

    def __len__(self) -> int:
        return len(self.arrays.keys() | self.values.keys())


def run_into(graph: GraphSession, feeds: dict[str, np.ndarray], into: dict[str, np.ndarray]) -> Outputs:
    """Run a CPU graph writing the outputs named in `into` into those arrays (C-contiguous, of the output's
    exact shape and dtype; they may share memory with an input only where the graph reads that input in full
    before writing the output: runtime/inplace.py); the other outputs as ONNX Runtime allocates them."""
    binding = graph.session.io_binding()
    for name in graph.input_names:
        binding.bind_cpu_input(name, np.ascontiguousarray(feeds[name]))
    names = [*into, *(n for n in graph.output_names if n not in into)]
    for name in names:
        if name in into:
            array = into[name]
            binding.bind_output(name, "cpu", 0, array.dtype, array.shape, array.ctypes.data)
        else:
            binding.bind_output(name, "cpu")
    try:
        graph.session.run_with_iobinding(binding)
    except Exception as e:  # onnxruntime's own exception types
        raise run_error(graph.name, graph.spec.file, e) from None
    values = dict(zip(names, binding.get_outputs()))
    return Outputs(into, {k: v for k, v in values.items() if k not in into})
