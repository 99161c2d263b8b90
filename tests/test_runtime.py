"""The runtime alone: import isolation, manifest checks, refusing mismatched or altered bundles, options."""

import subprocess
import sys

import pytest

from edgeseq.bundle import MANIFEST, read_manifest
from edgeseq.errors import BundleError, InputError, OptionsError
from edgeseq.runtime import DecodingOptions, Generator, load_bundle
from tests.conftest import edit_manifest


def test_runtime_imports_no_torch_onnx_or_onnxsim():
    code = (
        "import edgeseq.runtime, sys; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'onnx', 'onnxsim')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(format_version=99), "unsupported format_version 99; this edgeseq reads versions 1, 2"),
        (lambda d: d.update(format="other"), "'format' is 'other', expected 'edgeseq-bundle'"),
        (lambda d: d.pop("decoder"), "decoder: missing"),
        (lambda d: d.update(max_new_tokens="64"), "max_new_tokens: expected int, got str"),
        (lambda d: d["graphs"].pop("encoder"), "graphs.encoder: missing"),
        (
            lambda d: d["graphs"]["encoder"].update(file="../encoder.onnx"),
            "must be a plain file name inside the bundle",
        ),
        (
            lambda d: d["decoder"].update(tokens_input="nope"),
            "decoder.tokens_input 'nope' is not an input of decoder_step",
        ),
        (lambda d: d["decoder"]["states"][0]["init"].update({"from": "zzz"}), "init.from 'zzz' is not an output"),
        (lambda d: d["special_tokens"].update(eos=999), "special_tokens.eos = 999 is outside the target vocabulary"),
        (lambda d: d["graphs"]["encoder"]["inputs"][0].update(dtype="complex"), "'complex' is not one of float32"),
    ],
)
def test_manifest_problems_are_named(bundle_copy, change, message):
    edit_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_bundle(bundle_copy)


def test_manifest_reports_every_problem_at_once(bundle_copy):
    edit_manifest(bundle_copy, lambda d: [d.pop("family"), d.pop("max_new_tokens"), d.update(target_vocab_size="x")])
    with pytest.raises(BundleError, match="family: missing.*target_vocab_size: expected int.*max_new_tokens: missing"):
        read_manifest(bundle_copy)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "nowhere", "does not exist"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "is not a bundle: it has no edgeseq.json"),
        (lambda p: (p / "f.txt").write_text("x") and p / "f.txt", "is not a bundle: expected a directory"),
        (lambda p: (p / "j").mkdir() or (p / "j" / MANIFEST).write_text("{nope") and p / "j", "not valid JSON"),
    ],
)
def test_not_a_bundle(tmp_path, make, message):
    with pytest.raises(BundleError, match=message):
        load_bundle(make(tmp_path))


def test_modified_graph_is_refused_by_name(bundle_copy):
    path = bundle_copy / "decoder_step.onnx"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"decoder_step\.onnx: checksum mismatch"):
        load_bundle(bundle_copy)
    load_bundle(bundle_copy, verify_checksums=False)  # the opt-out for very large bundles


def test_missing_and_truncated_graphs(bundle_copy):
    attention = bundle_copy / "attention.onnx"
    saved = attention.read_bytes()
    attention.unlink()
    with pytest.raises(BundleError, match=r"attention\.onnx: missing \(listed in the manifest as graphs\.attention"):
        load_bundle(bundle_copy)
    attention.write_bytes(saved)
    enc = bundle_copy / "encoder.onnx"
    enc.write_bytes(enc.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"encoder\.onnx: not a valid ONNX file"):
        Generator(load_bundle(bundle_copy, verify_checksums=False))


def test_manifest_wiring_is_checked(bundle_copy):
    edit_manifest(bundle_copy, lambda d: d["graphs"].pop("attention"))
    with pytest.raises(BundleError, match="decoder_step input 'attn_keys' is not produced by any earlier graph"):
        load_bundle(bundle_copy)


def test_graph_io_that_differs_from_manifest_is_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda d: d["graphs"]["decoder_step"]["outputs"][0].update(shape=["batch", 7]))
    with pytest.raises(BundleError, match=r"output 'logits' has shape \['batch', 15\] in the graph but \['batch', 7\]"):
        Generator(bundle_copy)
    edit_manifest(bundle_copy, lambda d: d["graphs"]["decoder_step"]["outputs"][0].update(shape=["batch", 15]))
    edit_manifest(bundle_copy, lambda d: d["graphs"]["encoder"]["outputs"][0].update(dtype="float16"))
    with pytest.raises(BundleError, match=r"output 'memory' is float32 in the graph but float16 in the manifest"):
        Generator(bundle_copy)
    edit_manifest(bundle_copy, lambda d: d["graphs"]["encoder"]["outputs"][0].update(dtype="float32"))

    def rename(d):
        output = next(o for o in d["graphs"]["decoder_step"]["outputs"] if o["name"] == "attn_weights")
        output["name"] = "align"
        d["decoder"]["alignment_output"] = "align"

    edit_manifest(bundle_copy, rename)
    with pytest.raises(BundleError, match=r"decoder_step\.onnx: graph outputs .* do not match the manifest"):
        Generator(load_bundle(bundle_copy))


def test_bad_source_input(bundle_factory, bundle_copy):
    gen = Generator(bundle_factory()[0])
    with pytest.raises(InputError, match="empty source text"):
        gen.generate(["  "])
    assert gen.encode("ab#")[2] == gen.bundle.manifest.source_framing.unk  # not in the vocabulary: <unk>
    edit_manifest(bundle_copy, lambda d: d["source_framing"].update(unk=None))  # a model without <unk>
    with pytest.raises(InputError, match="cannot encode '#' in 'ab#'"):
        Generator(bundle_copy).generate(["ab#"])
    with pytest.raises(InputError, match="token id 500 is out of range"):
        gen.generate_ids([[4, 500, 2]])
    with pytest.raises(InputError, match="no sources given"):
        gen.generate_ids([])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"min_new_tokens": -1}, "min_new_tokens must be >= 0"),
        ({"min_new_tokens": 9, "max_new_tokens": 4}, r"min_new_tokens \(9\) must not exceed max_new_tokens \(4\)"),
        ({"max_new_tokens": 2.5}, "max_new_tokens must be an integer"),
    ],
)
def test_invalid_decoding_options(kwargs, message):
    with pytest.raises(OptionsError, match=message):
        DecodingOptions(**kwargs)


def test_min_and_max_new_tokens(bundle_factory):
    bundle, _, sv, _ = bundle_factory()
    gen = Generator(bundle)
    src = [[5, 6, 2]]
    short = gen.generate_ids(src, DecodingOptions(max_new_tokens=3))[0][0]
    assert len(short.tokens) <= 3
    long = gen.generate_ids(src, DecodingOptions(max_new_tokens=12, min_new_tokens=12))[0][0]
    assert len(long.tokens) == 12  # </s> forbidden, so all 12 are real tokens


def test_unknown_provider_is_refused(bundle_factory):
    with pytest.raises(OptionsError, match="unknown provider 'tpu': choose one of cpu, cuda, auto"):
        Generator(bundle_factory()[0], provider="tpu")


def test_unavailable_provider_says_why(bundle_factory):
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(OptionsError, match="provider 'cuda' is not available in this onnxruntime"):
        Generator(bundle_factory()[0], provider="cuda")
