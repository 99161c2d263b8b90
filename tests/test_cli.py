"""The CLI, run as a user runs it: a subprocess, its output, its exit status."""

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeseq.bundle import MANIFEST, file_sha256


def edgeseq(*args, input=None):
    return subprocess.run(
        [sys.executable, "-m", "edgeseq", *map(str, args)], capture_output=True, text=True, input=input, timeout=600
    )


def assert_user_error(result, message, code=1):
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert message in lines[0]


def test_export_writes_a_bundle_and_refuses_to_overwrite(checkpoint_and_bundle, tmp_path):
    ckpt, _ = checkpoint_and_bundle
    out = tmp_path / "b"
    r = edgeseq("export", ckpt, "--out", out, "--max-new-tokens", "10")
    assert r.returncode == 0, r.stderr
    assert "PASS" in r.stdout and "decoder_step" in r.stdout
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["parity"]["ok"] and manifest["provenance"]["checkpoint_sha256"] == file_sha256(ckpt)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert_user_error(edgeseq("export", ckpt, "--out", out), "already exists: choose another --out, or pass --force")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    r = edgeseq("export", ckpt, "--out", out, "--force")
    assert r.returncode == 0, r.stderr
    assert not list(tmp_path.glob(".b.*"))  # no temporary directory left beside it


def test_generate_text_file_and_json(checkpoint_and_bundle, tmp_path):
    _, bundle = checkpoint_and_bundle
    r = edgeseq("generate", bundle, "abc", "hello world 42")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2
    src = tmp_path / "in.txt"
    src.write_text("abc\nhello world 42\n")
    r2 = edgeseq("generate", bundle, "--input", src, "--json")
    assert r2.returncode == 0, r2.stderr
    data = json.loads(r2.stdout)
    assert [d["source"] for d in data] == ["abc", "hello world 42"]
    assert [d["hypotheses"][0]["text"] for d in data] == r.stdout.splitlines()
    assert all(len(d["hypotheses"]) == 1 for d in data)
    assert all(isinstance(h["score"], float) and isinstance(h["tokens"], list) for d in data for h in d["hypotheses"])


def test_generate_user_errors(checkpoint_and_bundle, tmp_path):
    ckpt, bundle = checkpoint_and_bundle
    assert_user_error(edgeseq("generate", tmp_path / "missing", "x"), "does not exist")
    assert_user_error(edgeseq("generate", ckpt, "x"), "is not a bundle: expected a directory")
    assert_user_error(edgeseq("generate", tmp_path, "x"), "is not a bundle: it has no edgeseq.json")
    assert_user_error(edgeseq("generate", bundle, ""), "empty source text")
    assert_user_error(edgeseq("generate", bundle), "no sources: pass text arguments or --input FILE", code=2)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_user_error(edgeseq("generate", bundle, "--input", empty), "is empty: give one source sentence per line")
    gap = tmp_path / "gap.txt"
    gap.write_text("abc\n\nxyz\n")
    assert_user_error(edgeseq("generate", bundle, "--input", gap), "line 2: empty source text")
    assert_user_error(edgeseq("generate", bundle, "x", "--max-new-tokens", "0"), "max_new_tokens must be >= 1", code=2)
    assert_user_error(edgeseq("generate", bundle, "x", "--nope"), "No such option '--nope'", code=2)
    newer = tmp_path / "newer"
    shutil.copytree(bundle, newer)
    data = json.loads((newer / MANIFEST).read_text())
    data["format_version"] = 7
    (newer / MANIFEST).write_text(json.dumps(data))
    assert_user_error(edgeseq("generate", newer, "x"), "unsupported format_version 7")


def test_validate_passes_and_writes_json(checkpoint_and_bundle, tmp_path):
    ckpt, bundle = checkpoint_and_bundle
    report = tmp_path / "report.json"
    r = edgeseq("validate", bundle, "--reference", ckpt, "--json", report)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS" in r.stdout
    data = json.loads(report.read_text())
    graphs = {g["graph"] for g in data["graphs"]}
    assert data["ok"] and graphs == {"encoder", "attention", "decoder_step", "step (1 row)"}
    assert all(g["max_abs"] < 1e-4 for g in data["graphs"])
    assert [s["exact_match"] for s in data["sequences"]] == [1.0, 1.0, 1.0]


def test_validate_catches_a_perturbed_decoder_weight(checkpoint_and_bundle, tmp_path):
    ckpt, bundle = checkpoint_and_bundle
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    path = broken / "decoder_step.onnx"
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the output projection
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.01
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))
    data = json.loads((broken / MANIFEST).read_text())
    data["graphs"]["decoder_step"]["sha256"] = file_sha256(path)
    (broken / MANIFEST).write_text(json.dumps(data))
    r = edgeseq("validate", broken, "--reference", ckpt)
    assert r.returncode == 1
    assert "FAIL" in r.stdout and "decoder_step" in r.stdout.splitlines()[-1]


def test_validate_user_errors(checkpoint_and_bundle, tmp_path):
    ckpt, bundle = checkpoint_and_bundle
    pickled = tmp_path / "model.pt"
    pickled.write_bytes(b"\x80\x04\x95" + b"\x00" * 64)
    assert_user_error(edgeseq("validate", bundle, "--reference", pickled), "pickled torch.save files are refused")
    assert_user_error(edgeseq("validate", bundle, "--reference", tmp_path / "no.safetensors"), "does not exist")
    assert_user_error(edgeseq("validate", bundle), "Missing option '--reference'", code=2)


def test_info(checkpoint_and_bundle):
    _, bundle = checkpoint_and_bundle
    r = edgeseq("info", bundle)
    assert r.returncode == 0, r.stderr
    assert "rnn bundle" in r.stdout and "prev_tokens" in r.stdout and "parity: PASS" in r.stdout


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["rnn", "transformer"])
def test_demo_end_to_end(tmp_path, arch):
    """The README's main job: trains, exports, validates, translates; at least 95% held-out exact match."""
    out = tmp_path / "demo"
    r = edgeseq("demo", "--out", out, "--arch", arch)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    final = next(line for line in lines if line.startswith("[5/5]"))
    right, total = map(int, re.search(r"exact match (\d+)/(\d+) \(\d+\.\d%\)", final).groups())  # never rounded up
    assert right >= 0.95 * total
    assert "parity with PyTorch: PASS" in r.stdout
    assert (
        sum(
            line.rstrip().split()[-2] == "ok"
            for line in lines
            if line.count("-") >= 2 and line.endswith(tuple("0123456789"))
        )
        >= 6
    )
    assert (out / "dates.safetensors").is_file() and (out / "bundle" / MANIFEST).is_file()
    r = edgeseq("generate", out / "bundle", "Tuesday, 24 November 2026", "11/24/2026")
    assert r.stdout.splitlines() == ["2026-11-24", "2026-11-24"]


def test_bench_prints_both_engines_side_by_side(checkpoint_and_bundle, tmp_path):
    ckpt, bundle = checkpoint_and_bundle
    out = tmp_path / "bench.json"
    r = edgeseq("bench", bundle, "--reference", ckpt, "--new-tokens", "12", "--repeats", "1", "--json", out)
    assert r.returncode == 0, r.stderr
    assert "onnxruntime / pytorch tokens/s:" in r.stdout
    data = json.loads(out.read_text())
    assert [d["engine"] for d in data] == ["onnxruntime", "pytorch"]
    assert all(len(d["step_ms"]) == 12 and d["tokens_per_s"] > 0 for d in data)


@pytest.mark.parametrize(
    "blocked, args, extra",
    [
        ("torch", ["export", "x.safetensors", "--out", "y"], "export"),
        ("transformers", ["export", "{hf}", "--out", "y"], "hf"),
    ],
)
def test_missing_optional_dependency_names_the_extra(tmp_path, blocked, args, extra):
    """The base install is the runtime: export-side commands say which extra to install, in one line."""
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "marian"}))
    code = (
        f"import sys; sys.modules[{blocked!r}] = None; from edgeseq.cli import main; "
        f"main({[a.format(hf=hf) for a in args]!r})"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith("edgeseq: error: ") and "Traceback" not in line
    assert f"needs {blocked}" in line and f"pip install 'edgeseq[{extra}]'" in line
