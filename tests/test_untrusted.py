"""Untrusted bundles are parsed, not scanned: every hostile variant of a bundle is refused with one line naming
what is wrong, from the Python API and from the CLI (exit 1, no traceback), and never makes edgeseq read a
file outside the bundle."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeseq.bundle import MANIFEST, file_sha256
from edgeseq.errors import BundleError, OptionsError
from edgeseq.runtime import Generator, load_bundle
from edgeseq.runtime.external import external_data_locations
from tests.conftest import edit_manifest as edit


def rehash(b, name):
    def change(d):
        for g in d["graphs"].values():
            if g["file"] == name:
                g["sha256"] = file_sha256(b / name)
        if name in d["files"]:
            d["files"][name] = file_sha256(b / name)

    edit(b, change)


def point_weights(b, location: str, value_first: bool) -> None:
    """Make the step graph's first external tensor read `location`; with `value_first`, write its
    StringStringEntryProto with the value field before the key field (valid protobuf, unusual order)."""
    path = b / "decoder_step.onnx"
    model = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL)
    entry = next(e for e in tensor.external_data if e.key == "location")
    entry.value = location
    data = model.SerializeToString()
    key_first = b"\x0a\x08location\x12" + bytes([len(location)]) + location.encode()
    swapped = b"\x12" + bytes([len(location)]) + location.encode() + b"\x0a\x08location"
    if value_first:
        assert data.count(key_first) >= 1
        data = data.replace(key_first, swapped, 1)
    path.write_bytes(data)
    rehash(b, "decoder_step.onnx")


def constant_outside(b) -> None:
    """A Constant node in the encoder whose tensor attribute is external data outside the bundle."""
    path = b / "encoder.onnx"
    model = onnx.load(str(path), load_external_data=False)
    value = numpy_helper.from_array(np.zeros(4, np.float32), "c")
    value.ClearField("raw_data")
    value.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "/etc/passwd"), ("offset", "0"), ("length", "16")):
        e = value.external_data.add()
        e.key, e.value = k, v
    model.graph.node.insert(0, helper.make_node("Constant", [], ["unused_c"], value=value))
    path.write_bytes(model.SerializeToString())
    rehash(b, "encoder.onnx")


def failing_attention(b) -> None:
    """An attention graph with the declared I/O that fails on real inputs (an impossible Reshape)."""
    spec = json.loads((b / MANIFEST).read_text())["graphs"]["attention"]
    (inp,), (out,) = spec["inputs"], spec["outputs"]
    shape = numpy_helper.from_array(np.array([-1, 7, out["shape"][-1]], np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("Slice", [inp["name"], "s", "e", "a"], ["cut"]),
            helper.make_node("Reshape", ["cut", "shape"], [out["name"]]),
        ],
        "bad",
        [helper.make_tensor_value_info(inp["name"], TensorProto.FLOAT, inp["shape"])],
        [helper.make_tensor_value_info(out["name"], TensorProto.FLOAT, out["shape"])],
        [
            shape,
            *(
                numpy_helper.from_array(np.array([v], np.int64), n)
                for n, v in (("s", 0), ("e", out["shape"][-1]), ("a", 2))
            ),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(b / "attention.onnx"))
    rehash(b, "attention.onnx")
    # without generate.onnx (composed from the graphs as exported), decoding runs the swapped graph
    (b / "generate.onnx").unlink()
    edit(b, lambda d: d["graphs"].pop("generate"))


def tokenizer_json(b, text: str) -> None:
    (b / "tokenizer.json").write_text(text)
    edit(b, lambda d: d.update(tokenizer={"type": "tokenizers", "file": "tokenizer.json"}))
    edit(b, lambda d: d["files"].update({"tokenizer.json": file_sha256(b / "tokenizer.json")}))


def sentencepiece_garbage(b) -> None:
    for name in ("s.spm", "t.spm"):
        (b / name).write_bytes(b"\x00\x01 not a model")
    edit(b, lambda d: d.update(tokenizer={"type": "sentencepiece", "source_model": "s.spm", "target_model": "t.spm"}))
    edit(b, lambda d: d["files"].update({n: file_sha256(b / n) for n in ("s.spm", "t.spm")}))


def vocab_file(b, data) -> None:
    (b / "target_vocab.json").write_text(data if isinstance(data, str) else json.dumps(data))
    rehash(b, "target_vocab.json")


def swapped(b) -> None:
    shutil.copy(b / "decoder_step.onnx", b / "encoder.onnx")
    rehash(b, "encoder.onnx")


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def symlink_loop(b) -> None:
    (b / "encoder.onnx").unlink()
    (b / "encoder.onnx").symlink_to(b / "encoder.onnx")


CASES = {
    "external data, value before key, outside": (
        lambda b: point_weights(b, "/etc/passwd", True),
        "its weights point to '/etc/passwd', which is not a file of this bundle",
    ),
    "external data, value before key, parent": (
        lambda b: point_weights(b, "../weights.bin", True),
        "its weights point to '../weights.bin'",
    ),
    "external data in a Constant node": (constant_outside, "its weights point to '/etc/passwd'"),
    "graph that fails at run time": (failing_attention, "onnxruntime failed running the attention graph"),
    "manifest nested 100k deep": (lambda b: (b / MANIFEST).write_text(deep(100_000)), "nested too deeply"),
    "provenance nested 40 deep": (
        lambda b: edit(b, lambda d: d.update(provenance=json.loads(deep(40)))),
        "nested too deeply",
    ),
    "NUL in a file name": (
        lambda b: edit(b, lambda d: d["graphs"]["encoder"].update(file="enc\0oder.onnx")),
        "must be a plain file name",
    ),
    "lone surrogate in a file name": (
        lambda b: edit(b, lambda d: d["files"].update({"\ud800.bin": "0" * 64})),
        "must be a plain file name",
    ),
    "symlink loop": (symlink_loop, "encoder.onnx"),
    "negative state size": (
        lambda b: edit(
            b, lambda d: d["decoder"]["states"].append({**d["decoder"]["states"][0], "init": {"zeros": [-5, "batch"]}})
        ),
        "is neither a symbol nor a size",
    ),
    "huge state size": (
        lambda b: edit(b, lambda d: d["decoder"]["states"][0].update(init={"zeros": [1 << 23, "batch", 1 << 23]})),
        "more than 268435456 elements per row",
    ),
    "unknown dtype": (
        lambda b: edit(b, lambda d: d["graphs"]["encoder"]["outputs"][0].update(dtype="float128")),
        "'float128' is not one of float32",
    ),
    "batch axis beyond the rank": (
        lambda b: edit(b, lambda d: d["decoder"]["states"][0].update(batch_axis=5)),
        "batch_axis 5 is beyond the rank 3",
    ),
    "head shape that is a string": (
        lambda b: edit(b, lambda d: d["graphs"]["decoder_step"]["inputs"][-1].update(shape="vocab")),
        "expected list, got str",
    ),
    "vocabulary size far too large": (lambda b: edit(b, lambda d: d.update(target_vocab_size=10**15)), "out of range"),
    "sha256 that is not hex": (
        lambda b: edit(b, lambda d: d["files"].update({"weights.bin": "xyz"})),
        "expected a sha256 hex string",
    ),
    "tokenizer path with ..": (
        lambda b: edit(b, lambda d: d["tokenizer"].update(source="../source_vocab.json")),
        "must be a plain file name inside the bundle",
    ),
    "absolute tokenizer path": (
        lambda b: edit(b, lambda d: d["tokenizer"].update(target="/etc/passwd")),
        "must be a plain file name inside the bundle",
    ),
    "tokenizer file not in files": (
        lambda b: edit(b, lambda d: d["files"].pop("target_vocab.json")),
        "tokenizer file 'target_vocab.json' is not listed",
    ),
    "malformed tokenizer.json": (lambda b: tokenizer_json(b, '{"version": 1, "model": 7}'), "not a tokenizer.json"),
    "tokenizer.json nested 100k deep": (lambda b: tokenizer_json(b, deep(100_000)), "not a tokenizer.json"),
    "malformed sentencepiece": (sentencepiece_garbage, "not a SentencePiece model"),
    "vocabulary tokens not strings": (lambda b: vocab_file(b, {"tokens": [1, 2, 3]}), "every token must be a string"),
    "vocabulary nested 100k deep": (lambda b: vocab_file(b, deep(100_000)), "nested too deeply"),
    "vocabulary with duplicate tokens": (
        lambda b: vocab_file(b, {"tokens": ["<pad>", "<s>", "</s>", "<unk>", "a", "a"]}),
        "duplicate tokens",
    ),
    "graph swapped for another": (swapped, "do not match the manifest's graphs.encoder.inputs"),
    "end id unlike the vocabulary's": (
        lambda b: edit(b, lambda d: d["special_tokens"].update(eos=4)),
        "special_tokens.eos = 4 but the target vocabulary's eos is 2",
    ),
    "unknown id unlike the vocabulary's": (
        lambda b: edit(b, lambda d: d["source_framing"].update(unk=5)),
        "source_framing.unk = 5 but the source vocabulary's unk is 3",
    ),
    "every token banned": (
        lambda b: edit(b, lambda d: d.update(banned_tokens=list(range(d["target_vocab_size"])))),
        "bans every target token",
    ),
    "end token banned": (lambda b: edit(b, lambda d: d.update(banned_tokens=[2])), "bans the end token (2)"),
    "forced BOS outside the vocabulary": (
        lambda b: edit(b, lambda d: d.update(generation={"forced_bos_token": 999})),
        "forced_bos_token 999 is not a target token id",
    ),
    "manifest of 20 MB": (
        lambda b: edit(b, lambda d: d.update(provenance={"pad": "x" * (20 << 20)})),
        "a manifest has at most",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_bundles_are_refused_in_one_line(case, bundle_copy):
    mutate, message = CASES[case]
    mutate(bundle_copy)
    with pytest.raises((BundleError, OptionsError)) as info:
        Generator(bundle_copy).generate(["abc", "hello world"])
    assert message in str(info.value) and "\n" not in str(info.value)
    r = subprocess.run(
        [sys.executable, "-m", "edgeseq", "generate", bundle_copy, "abc"], capture_output=True, text=True
    )
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert message.split("'")[0][:30] in r.stderr


def test_locations_are_parsed_in_any_field_order(bundle_copy):
    point_weights(bundle_copy, "/etc/passwd", True)
    assert "/etc/passwd" in external_data_locations(bundle_copy / "decoder_step.onnx")


def test_a_multi_gigabyte_graph_is_not_read_into_memory(tmp_path):
    """The location check maps the file: a 3 GB graph (sparse) costs no memory to check."""
    import resource

    path = tmp_path / "big.onnx"
    model = helper.make_model(helper.make_graph([], "g", [], []))
    data = model.SerializeToString()
    with open(path, "wb") as f:
        f.write(data)
        f.write(b"\x72")  # field 14 (metadata_props) of the model: a 3 GB length-delimited value
        length = 3 << 30
        while True:
            byte = length & 0x7F
            length >>= 7
            f.write(bytes([byte | (0x80 if length else 0)]))
            if not length:
                break
        f.seek((3 << 30) - 1, 1)
        f.write(b"\0")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert external_data_locations(path) == set()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KB: far below 3 GB


def test_a_quantize_recipe_nested_deeply_is_one_line(tmp_path, bundle_factory):
    (tmp_path / "r.json").write_text(deep(100_000))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeseq",
            "quantize",
            bundle_factory()[0],
            "--out",
            tmp_path / "q",
            "--recipe",
            tmp_path / "r.json",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "nested too deeply" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "q").exists()


def test_loading_never_opens_a_file_outside_the_bundle(bundle_copy, monkeypatch):
    """Refused before onnxruntime ever sees the graph: nothing outside the bundle is opened."""
    point_weights(bundle_copy, "/etc/passwd", True)
    opened = []
    real_open = open

    def spy(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(BundleError):
        load_bundle(bundle_copy)
    assert not [f for f in opened if f.startswith("/etc")]
