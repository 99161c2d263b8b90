"""Simplify, quantize and the parity harness: smaller bundles that still answer like the original."""

import hashlib
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeseq.bundle import MANIFEST, file_sha256
from edgeseq.errors import OptionsError
from edgeseq.export import ExportOptions, export_model
from edgeseq.export.quantize import Recipe, quantize_bundle
from edgeseq.export.validate import validate_bundle
from edgeseq.models import RNNConfig, RNNSeq2Seq
from edgeseq.runtime import DecodingOptions, Generator
from edgeseq.vocab import SPECIALS, Vocab
from tests.conftest import medium_transformer, tiny_rnn

MODES = ["dynamic-int8", "static-int8", "fp16"]


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeseq", *map(str, args)], capture_output=True, text=True)


def tree_digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """A Transformer large enough that weights, not graph structure, dominate the bundle (~5 MB)."""
    root = tmp_path_factory.mktemp("medium")
    return root, medium_transformer(root)


@pytest.mark.parametrize("mode", MODES)
def test_quantized_bundles_run_through_the_same_runtime(medium, mode):
    root, calibration = medium
    before = tree_digest(root / "fp32")
    out = quantize_bundle(root / "fp32", root / mode, Recipe.uniform(mode), calibration, force=True)
    assert tree_digest(root / "fp32") == before  # the input bundle is byte-identical afterwards
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["provenance"]["quantize"]["recipe"] == {"encoder": mode, "attention": mode, "decoder_step": mode}
    fp32, quantized = Generator(root / "fp32"), Generator(out)
    texts = calibration[:6]
    agree = sum(a.tokens == b.tokens for a, b in zip(fp32.generate(texts), quantized.generate(texts)))
    assert agree >= 5, f"{mode}: only {agree}/6 sentences match fp32"
    assert quantized.generate(texts, DecodingOptions(beam_size=3, max_new_tokens=8))  # every strategy still runs
    ratio = sum(f.stat().st_size for f in out.iterdir()) / sum(f.stat().st_size for f in (root / "fp32").iterdir())
    assert ratio <= {"dynamic-int8": 0.35, "static-int8": 0.40, "fp16": 0.55}[mode], ratio


def test_quantized_bundle_validates_against_fp32_with_int8_thresholds(medium):
    root, calibration = medium
    out = quantize_bundle(root / "fp32", root / "int8-validate", Recipe.uniform("dynamic-int8"), force=True)
    report = validate_bundle(out, root / "fp32", texts=calibration)
    assert report.ok, report.table()
    assert report.thresholds.atol is None and report.steps.agreement >= 0.95
    recorded = json.loads((out / MANIFEST).read_text())["parity"]
    assert recorded["precision"] == "int8" and recorded["ok"] is True
    Generator(out)  # recording parity leaves a loadable bundle (the manifest is not checksummed)


def test_per_graph_recipe(medium, tmp_path):
    root, _ = medium
    recipe_file = tmp_path / "recipe.json"
    recipe_file.write_text(json.dumps({"encoder": "int8", "decoder_step": "fp32"}))
    r = run_cli("quantize", root / "fp32", "--out", tmp_path / "mixed", "--recipe", recipe_file)
    assert r.returncode == 0, r.stderr
    recipe = json.loads((tmp_path / "mixed" / MANIFEST).read_text())["provenance"]["quantize"]["recipe"]
    assert recipe == {"encoder": "dynamic-int8", "attention": "fp32", "decoder_step": "fp32"}
    r = run_cli("quantize", root / "fp32", "--out", tmp_path / "mixed2", "--mode", "int8", "--decoder", "fp16")
    assert r.returncode == 0, r.stderr
    recipe = json.loads((tmp_path / "mixed2" / MANIFEST).read_text())["provenance"]["quantize"]["recipe"]
    assert recipe == {"encoder": "dynamic-int8", "attention": "dynamic-int8", "decoder_step": "fp16"}
    assert Generator(tmp_path / "mixed2").generate(["w1 w2 w3"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "{src}", "--mode", "int8"], "is the input"),
        (["--out", "{tmp}/x", "--mode", "int9"], "unknown mode 'int9': choose one of fp32, dynamic-int8"),
        (["--out", "{tmp}/x", "--mode", "static-int8"], "static-int8 needs --calibration FILE"),
        (["--out", "{tmp}/x"], "say how to quantize"),
        (["--out", "{src}2", "--mode", "int8"], "already exists: choose another --out, or pass --force"),
    ],
)
def test_quantize_user_errors(bundle_factory, tmp_path, args, message):
    src, *_ = bundle_factory()
    shutil.copytree(src, f"{src}2", dirs_exist_ok=True)
    r = run_cli("quantize", src, *[a.format(src=src, tmp=tmp_path) for a in args])
    assert r.returncode in (1, 2) and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_cells_are_quantized_dynamically(tmp_path, cell):
    """LSTMs become DynamicQuantizeLSTM; GRUs (which ONNX Runtime cannot quantize) become MatMuls, so both shrink
    alike. Parity of int8 recurrent bundles on trained models: tests/test_user_models.py."""
    vocab = Vocab(SPECIALS + tuple(f"w{i}" for i in range(496)), level="word")
    cfg = RNNConfig(500, 500, cell=cell, attention="bahdanau", bidirectional=True, layers=2, hidden=128, emb_dim=64)
    torch.manual_seed(0)
    export_model(
        RNNSeq2Seq(cfg).eval(),
        tmp_path / "fp32",
        source_vocab=vocab,
        target_vocab=vocab,
        options=ExportOptions(max_new_tokens=8),
    )
    out = quantize_bundle(tmp_path / "fp32", tmp_path / "int8", Recipe.uniform("dynamic-int8"))
    ops = {n.op_type for g in ("encoder", "decoder_step") for n in onnx.load(str(out / f"{g}.onnx")).graph.node}
    assert "MatMulInteger" in ops and "GRU" not in ops
    assert ("DynamicQuantizeLSTM" if cell == "lstm" else "Scan") in ops
    size = lambda p: sum(f.stat().st_size for f in p.iterdir())  # noqa: E731
    assert size(out) <= 0.35 * size(tmp_path / "fp32")
    sources = [vocab.encode("w5 w7 w9"), vocab.encode("w1 w2 w3 w4 w5 w6")]
    assert all(h[0].tokens for h in Generator(out).generate_ids(sources))  # it runs


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("steps", [1, 5])
def test_unfolded_grus_compute_what_the_gru_operator_does(tmp_path, bidirectional, layers, packed, steps):
    import onnxruntime as ort

    from edgeseq.export.gru import unfold_grus

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.gru = torch.nn.GRU(8, 16, num_layers=layers, bidirectional=bidirectional)

        def forward(self, x, lengths, h0):
            if packed:
                x = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
            y, h = self.gru(x, h0)
            if packed:
                y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, total_length=steps)
            return y, h

    torch.manual_seed(0)
    x, lengths = torch.randn(steps, 3, 8), torch.tensor([steps, max(1, steps - 3), max(1, steps - 1)])
    h0 = torch.randn(layers * (2 if bidirectional else 1), 3, 16)
    axes = {"x": {1: "B"}, "lengths": {0: "B"}, "h0": {1: "B"}} if steps == 1 else {"x": {0: "T", 1: "B"}}
    torch.onnx.export(
        Model().eval(),
        (x, lengths, h0),
        str(tmp_path / "g.onnx"),
        input_names=["x", "lengths", "h0"],
        output_names=["y", "h"],
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    model = onnx.load(str(tmp_path / "g.onnx"))
    assert unfold_grus(model) == layers
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(tmp_path / "u.onnx"))
    feeds = {"x": x.numpy(), "lengths": lengths.numpy(), "h0": h0.numpy()}
    a, b = (ort.InferenceSession(str(tmp_path / f)) for f in ("g.onnx", "u.onnx"))
    names = [i.name for i in a.get_inputs()]
    for want, got in zip(a.run(None, {k: feeds[k] for k in names}), b.run(None, {k: feeds[k] for k in names})):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_simplify_is_recorded_and_can_be_skipped(tmp_path, monkeypatch):
    model, sv, tv = tiny_rnn("gru", "luong-general")
    export_model(model, tmp_path / "s", source_vocab=sv, target_vocab=tv, options=ExportOptions(max_new_tokens=8))
    stats = json.loads((tmp_path / "s" / MANIFEST).read_text())["provenance"]["simplify"]
    assert stats["encoder"]["simplified"] and stats["encoder"]["nodes_after"] < stats["encoder"]["nodes_before"]
    export_model(
        model, tmp_path / "n", source_vocab=sv, target_vocab=tv, options=ExportOptions(max_new_tokens=8, simplify=False)
    )
    assert json.loads((tmp_path / "n" / MANIFEST).read_text())["provenance"]["simplify"] is None

    import onnxsim

    def broken(model, *a, **k):
        raise RuntimeError("simulated onnxsim failure")

    monkeypatch.setattr(onnxsim, "simplify", broken)
    _, report = export_model(
        model, tmp_path / "f", source_vocab=sv, target_vocab=tv, options=ExportOptions(max_new_tokens=8)
    )
    stats = json.loads((tmp_path / "f" / MANIFEST).read_text())["provenance"]["simplify"]
    assert stats["decoder_step"] == {
        **stats["decoder_step"],
        "simplified": False,
        "reason": "RuntimeError: simulated onnxsim failure",
    }
    assert report.ok  # the unsimplified graphs are exported and checked as usual


def test_validate_catches_a_small_perturbation_at_step_level(medium, tmp_path):
    """Nudge one weight of the decoder step's output projection; validation must fail and name the graph."""
    root, calibration = medium
    broken = tmp_path / "broken"
    shutil.copytree(root / "fp32", broken)
    path = broken / "decoder_step.onnx"
    model = onnx.load(str(path))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    init = next(i for i in model.graph.initializer if i.name == gemm.input[2])  # the output bias, decoder-only
    b = numpy_helper.to_array(init).copy()
    b[5] += 0.01
    init.CopyFrom(numpy_helper.from_array(b, init.name))
    onnx.save(model, str(path))
    data = json.loads((broken / MANIFEST).read_text())
    data["graphs"]["decoder_step"]["sha256"] = file_sha256(path)
    (broken / MANIFEST).write_text(json.dumps(data))
    report = validate_bundle(broken, root / "model.safetensors", texts=calibration)
    assert not report.ok and not report.steps.ok
    # the step is off in the batch and for its first source alone (a step of one row)
    assert report.steps.graphs_off == ["decoder_step", "step (1 row)"]
    assert "step: logits max abs error" in "; ".join(report.failures())
    assert {c.graph for c in report.outputs if not c.ok} == {"decoder_step", "step (1 row)"}
    r = run_cli("validate", broken, "--reference", root / "model.safetensors", "--no-record")
    assert r.returncode == 1 and "graphs off: decoder_step" in r.stdout


def test_auto_keeps_the_smallest_recipe_within_budget(medium, tmp_path):
    root, calibration = medium
    data = tmp_path / "data.txt"
    data.write_text("\n".join(calibration) + "\n")
    r = run_cli("quantize", root / "fp32", "--out", tmp_path / "auto", "--auto", "--budget", "20", "--data", data)
    assert r.returncode == 0, r.stderr
    assert "<- kept" in r.stdout and "dynamic-int8" in r.stdout and "fp16" in r.stdout
    assert Generator(tmp_path / "auto").generate(calibration[:2])
    from edgeseq.export.auto import auto_quantize

    best, trials = auto_quantize(root / "fp32", tmp_path / "auto2", calibration, None, -1.0, None, False)
    assert best is None and len(trials) > 3 and not any(t.within_budget for t in trials[1:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auto", "data.txt"]  # nothing written, nothing left
    r = run_cli("quantize", root / "fp32", "--out", tmp_path / "auto3", "--auto", "--budget", "-1", "--data", data)
    assert r.returncode == 2 and "'--budget': -1.0 is not in the range" in r.stderr


def test_recipe_refuses_unknown_graphs(tmp_path):
    f = tmp_path / "r.json"
    f.write_text(json.dumps({"decoder": "int8"}))
    with pytest.raises(OptionsError, match="a recipe maps graph names"):
        Recipe.load(f)
