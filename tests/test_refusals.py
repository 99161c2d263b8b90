"""What edgeseq refuses, and how it says so: a catalogue of bad input, each case checking its message.

Every case raises a documented edgeseq exception (BundleError, InputError, OptionsError, CheckpointError) from
the Python API; the CLI cases print exactly one line on stderr and exit non-zero.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys

import onnx
import pytest
import torch
from safetensors.torch import save_file

from edgeseq.bundle import MANIFEST, file_sha256
from edgeseq.errors import BundleError, CheckpointError, EdgeseqError, InputError, OptionsError
from edgeseq.export import load_checkpoint
from edgeseq.export.hf import load_hf_checkpoint
from edgeseq.runtime import DecodingOptions, Generator, load_bundle
from edgeseq.runtime.sources import read_sources
from tests.conftest import edit_manifest


@pytest.fixture
def bundle(bundle_copy):
    return bundle_copy


edit = edit_manifest


def rehash(bundle, file):
    def change(d):
        for g in d["graphs"].values():
            if g["file"] == file:
                g["sha256"] = file_sha256(bundle / file)
        if file in d["files"]:
            d["files"][file] = file_sha256(bundle / file)

    edit(bundle, change)


def write(path, text):
    path.write_text(text)


def corrupt(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncated_graph(b):
    (b / "encoder.onnx").write_bytes((b / "encoder.onnx").read_bytes()[:200])
    rehash(b, "encoder.onnx")
    return lambda: Generator(b)


def symlink_out(b):
    outside = b.parent / "outside.onnx"
    shutil.copy(b / "encoder.onnx", outside)
    (b / "encoder.onnx").unlink()
    os.symlink(outside, b / "encoder.onnx")
    return lambda: load_bundle(b)


def external_data_out(b):
    """Point the decoder step's weights at ../weights.bin (a valid ONNX file, written by onnx)."""
    path = b / "decoder_step.onnx"
    shutil.copy(b / "weights.bin", b.parent / "weights.bin")
    model = onnx.load(str(path), load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../weights.bin"
    onnx.save(model, str(path))
    rehash(b, "decoder_step.onnx")
    return lambda: load_bundle(b)


def long_source(b, bundle_factory):
    return lambda: Generator(b).generate_ids([[5] * 2000 + [2]])


BUNDLE_CASES = {
    "missing graph": (
        lambda b: (b / "attention.onnx").unlink() or (lambda: load_bundle(b)),
        BundleError,
        "attention.onnx: missing (listed in the manifest as graphs.attention.file)",
    ),
    "truncated graph": (truncated_graph, BundleError, "encoder.onnx: not a valid ONNX file"),
    "graph modified": (
        lambda b: corrupt(b / "decoder_step.onnx") or (lambda: load_bundle(b)),
        BundleError,
        "decoder_step.onnx: checksum mismatch with the manifest (graphs.decoder_step.sha256)",
    ),
    "weights modified": (
        lambda b: corrupt(b / "weights.bin") or (lambda: load_bundle(b)),
        BundleError,
        "weights.bin: checksum mismatch with the manifest (files.weights.bin)",
    ),
    "vocabulary modified": (
        lambda b: write(b / "target_vocab.json", '{"tokens": []}') or (lambda: load_bundle(b)),
        BundleError,
        "target_vocab.json: checksum mismatch",
    ),
    "unknown format version": (
        lambda b: edit(b, lambda d: d.update(format_version=3)) or (lambda: load_bundle(b)),
        BundleError,
        "unsupported format_version 3; this edgeseq reads versions 1, 2",
    ),
    "manifest not JSON": (
        lambda b: write(b / MANIFEST, "{") or (lambda: load_bundle(b)),
        BundleError,
        "edgeseq.json: not valid JSON",
    ),
    "manifest not an object": (
        lambda b: write(b / MANIFEST, "[1, 2]") or (lambda: load_bundle(b)),
        BundleError,
        "expected a JSON object at the top level",
    ),
    "manifest field missing": (
        lambda b: edit(b, lambda d: d.pop("special_tokens")) or (lambda: load_bundle(b)),
        BundleError,
        "special_tokens: missing",
    ),
    "manifest field of the wrong type": (
        lambda b: edit(b, lambda d: d.update(max_source_length="9")) or (lambda: load_bundle(b)),
        BundleError,
        "max_source_length: expected int, got str",
    ),
    "graph dtype differs from manifest": (
        lambda b: (
            edit(b, lambda d: d["graphs"]["encoder"]["inputs"][0].update(dtype="int32")) or (lambda: Generator(b))
        ),
        BundleError,
        "input 'src_ids' is int64 in the graph but int32 in the manifest",
    ),
    "graph outputs differ from manifest": (
        lambda b: (
            edit(b, lambda d: d["graphs"]["attention"]["outputs"][0].update(name="keys")) or (lambda: load_bundle(b))
        ),
        BundleError,
        "decoder_step input 'attn_keys' is not produced by any earlier graph",
    ),
    "graph path with ..": (
        lambda b: edit(b, lambda d: d["graphs"]["encoder"].update(file="../encoder.onnx")) or (lambda: load_bundle(b)),
        BundleError,
        "graphs.encoder.file: '../encoder.onnx' must be a plain file name inside the bundle",
    ),
    "absolute graph path": (
        lambda b: edit(b, lambda d: d["graphs"]["encoder"].update(file="/etc/passwd")) or (lambda: load_bundle(b)),
        BundleError,
        "'/etc/passwd' must be a plain file name inside the bundle",
    ),
    "symlink out of the bundle": (
        symlink_out,
        BundleError,
        "encoder.onnx: graphs.encoder.file points outside the bundle",
    ),
    "external data out of the bundle": (
        external_data_out,
        BundleError,
        "its weights point to '../weights.bin', which is not a file of this bundle",
    ),
    "file entry out of the bundle": (
        lambda b: edit(b, lambda d: d["files"].update({"../x": "0"})) or (lambda: load_bundle(b)),
        BundleError,
        "files.'../x': must be a plain file name inside the bundle",
    ),
    "state from nowhere": (
        lambda b: (
            edit(b, lambda d: d["decoder"]["states"][0]["init"].update({"from": "h0"})) or (lambda: load_bundle(b))
        ),
        BundleError,
        "decoder.states[0].init.from 'h0' is not an output of encoder or attention",
    ),
    "special token out of range": (
        lambda b: edit(b, lambda d: d["special_tokens"].update(pad=-1)) or (lambda: load_bundle(b)),
        BundleError,
        "special_tokens.pad = -1 is outside the target vocabulary",
    ),
    "banned token out of range": (
        lambda b: edit(b, lambda d: d.update(banned_tokens=[10**6])) or (lambda: load_bundle(b)),
        BundleError,
        "banned_tokens: 1000000 is not a target token id",
    ),
    "bad generation defaults": (
        lambda b: edit(b, lambda d: d.update(generation={"beam_size": 0})) or (lambda: Generator(b)),
        BundleError,
        "invalid generation defaults in the manifest: invalid decoding options: beam_size",
    ),
    "not a directory": (
        lambda b: lambda: load_bundle(b / MANIFEST),
        BundleError,
        "is not a bundle: expected a directory",
    ),
    "no manifest": (
        lambda b: (b / MANIFEST).unlink() or (lambda: load_bundle(b)),
        BundleError,
        "it has no edgeseq.json",
    ),
    "token id out of range": (
        lambda b: lambda: Generator(b).generate_ids([[4, 99999, 2]]),
        InputError,
        "source 0: token id 99999 is out of range 0..42",
    ),
    "empty text": (lambda b: lambda: Generator(b).generate([""]), InputError, "empty source text"),
    "no sources": (lambda b: lambda: Generator(b).generate_ids([]), InputError, "no sources given"),
    "empty token list": (lambda b: lambda: Generator(b).generate_ids([[]]), InputError, "source 0 is empty"),
    "character the tokenizer lacks": (
        lambda b: edit(b, lambda d: d["source_framing"].update(unk=None)) or (lambda: Generator(b).generate(["abc§"])),
        InputError,
        "cannot encode '§' in 'abc§': it is not in the vocabulary, which has no <unk>",
    ),
    "source longer than the bundle takes": (
        lambda b: (
            edit(b, lambda d: d.update(max_source_length=16)) or (lambda: Generator(b).generate_ids([[5] * 20 + [2]]))
        ),
        InputError,
        "source 0 has 21 tokens; this bundle takes at most 16",
    ),
    "invalid decoding options": (
        lambda b: lambda: DecodingOptions(beam_size=0, top_p=2.0),
        OptionsError,
        "beam_size must be in 1..1024",
    ),
    "unknown provider": (lambda b: lambda: Generator(b, provider="tpu"), OptionsError, "unknown provider 'tpu'"),
    "alignments the bundle lacks": (
        lambda b: (
            edit(b, lambda d: d["decoder"].update(alignment_output=None))
            or (lambda: Generator(b).generate(["abc"], DecodingOptions(return_alignments=True)))
        ),
        OptionsError,
        "does not expose attention weights",
    ),
}


@pytest.mark.parametrize("case", list(BUNDLE_CASES))
def test_refused(bundle, case):
    setup, error, message = BUNDLE_CASES[case]
    action = setup(bundle)
    with pytest.raises(error) as info:
        action()
    assert message in str(info.value)
    assert isinstance(info.value, EdgeseqError) and "\n" not in str(info.value)


class Exploit:
    """Unpickling this would create a file: a pickle checkpoint must be refused, not executed."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickled_checkpoint_is_refused_and_never_executed(tmp_path):
    Exploit.path = str(tmp_path / "pwned")
    bad = tmp_path / "model.pt"
    bad.write_bytes(pickle.dumps({"state": Exploit()}))
    with pytest.raises(CheckpointError, match="pickled torch.save files are refused"):
        load_checkpoint(bad)
    torch.save({"w": torch.zeros(2)}, tmp_path / "real.pt")
    with pytest.raises(CheckpointError, match="not an edgeseq checkpoint"):
        load_checkpoint(tmp_path / "real.pt")
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_refusals(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="a safetensors file without edgeseq metadata"):
        load_checkpoint(tmp_path / "plain.safetensors")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(
        CheckpointError, match="model_type 'llama' is not supported; supported Hugging Face architectures"
    ):
        load_hf_checkpoint(tmp_path / "hf")


def test_input_file_refusals(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "gap.txt").write_text("a\n\nb\n")
    with pytest.raises(InputError, match="empty.txt is empty"):
        read_sources(tmp_path / "empty.txt")
    with pytest.raises(InputError, match="gap.txt, line 2 is empty"):
        read_sources(tmp_path / "gap.txt")


def cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeseq", *map(str, args)], capture_output=True, text=True)


def test_cli_refusals_are_one_line(bundle, checkpoint_and_bundle, tmp_path):
    ckpt, _ = checkpoint_and_bundle
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    corrupt(bundle / "weights.bin")
    cases = [
        (("generate", bundle, "abc"), 1, "checksum mismatch"),
        (("generate", tmp_path / "none", "abc"), 1, "does not exist"),
        (("export", ckpt, "--out", tmp_path / "taken"), 1, "exists and is not an edgeseq bundle"),
        (("export", ckpt, "--out", tmp_path / "taken", "--force"), 1, "refusing to replace it, even with --force"),
        (
            ("export", ckpt, "--out", checkpoint_and_bundle[1]),
            1,
            "already exists: choose another --out, or pass --force",
        ),
        (("quantize", checkpoint_and_bundle[1], "--out", tmp_path / "taken", "--mode", "int8"), 1, "not an edgeseq"),
        (("demo", "--out", tmp_path / "taken"), 1, "already exists"),
        (("export", tmp_path / "none.safetensors", "--out", tmp_path / "x"), 1, "does not exist"),
        (("generate", checkpoint_and_bundle[1], "abc", "--provider", "cuda"), 2, "provider 'cuda' is not available"),
    ]
    for args, code, message in cases:
        r = cli(*args)
        assert r.returncode == code and message in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, (args, r.stderr)
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]  # nothing written into what was refused
    r = cli("generate", bundle, "abc", "--no-verify")  # the opt-out for very large bundles
    assert r.returncode != 0 or r.stdout  # a corrupted weights file may then fail or decode; never a traceback
    assert "Traceback" not in r.stderr
