"""A bundle outside Python: the Node example (onnxruntime-node) and the web page (onnxruntime-web in headless
Chromium) run generate.onnx and must print exactly what `edgeseq generate` prints, greedy and beam, on a char
vocabulary (edgeseq's own layout) and a word vocabulary (the model's own ids, normalization, framing, unknown
words, a model whose results change with padding); and a dynamic-int8 bundle, whose contrib operators both run.

They need node, the examples' npm packages (`npm ci` in examples/node and examples/web) and Chromium
(/usr/bin/chromium, or $CHROMIUM); .ci/run installs them. A missing one fails these tests, it never skips them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from edgeseq.bundle import MANIFEST
from edgeseq.export import EncoderDecoder, ExportOptions, Framing, export_model
from edgeseq.export.quantize import Recipe, quantize_bundle
from edgeseq.vocab import Vocab
from tests.conftest import tiny_rnn

ROOT = Path(__file__).resolve().parents[1]
NODE = ROOT / "examples" / "node"
WEB = ROOT / "examples" / "web"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

# Date-like sources for the char bundle (its vocabulary: a-z 0-9 space , .): capitals, accents, tabs and
# newlines are unknown characters (<unk>); lengths differ, so batches are padded.
CHAR_TEXTS = [
    "tuesday, 24 november 2026",
    "11/24/2026",
    "monday the 9th of june 1969",
    "3 mar 1999",
    "Tuesday, 24 November 2026",
    "2026-11-24",
    "sat 1 jan 2000",
    "the 31st of december, 1999.",
    "x",
    "  spaced  out  ",
    "june 5",
    "été 1990",
    "tab\tinside",
    "two\nlines",
    "12.03.2021",
    "friday 13 october 2023",
    "0",
    "april first, two thousand and one",
    "9 9 9 9 9 9 9 9 9 9",
    "ΣΟΦΙΑ 1 ιαν 2001",
]

WORDS = (
    "monday tuesday wednesday thursday friday saturday sunday the of on in and january february march april may "
    "june july august september october november december 1st 2nd 3rd 9th 24th 31st 1969 1999 2000 2026 "
    "five cafe ete σας"
).split()
# One per line in a file read with --input: a byte order mark, a CRLF line, NFKC/accents/case, unknown words,
# Python's whitespace (U+001C, U+0085, U+3000 split words; U+FEFF does not).
WORD_LINES = [
    "\ufeffmonday the 9th of june 1969",
    "Tuesday 24th November 2026\r",
    "ﬁve  CAFÉ été",
    "the 31st of December 1999",
    "sunday\x1cjune\x85july\u3000august",
    "on the 2nd of may",
    "ΣΑΣ december",
    "yesterday at noon",
    "  friday  ",
    "saturday",
    "the the the the the the the the",
    "1st 2nd 3rd",
    "in march and in april",
    "wednesday,",
    "thursday 1969",
    "october\tnovember",
    "five 2000",
    "sunday \ufeffmonday",
    "of",
    "the 24th of february 2000",
]


class WordModel(nn.Module):
    """A tiny GRU encoder-decoder with dot attention whose encoder reads the padding (results change with it:
    the bundle's masked_padding is false)."""

    def __init__(self, sources: int, targets: int, d: int = 24) -> None:
        super().__init__()
        self.emb, self.tgt = nn.Embedding(sources, d), nn.Embedding(targets, d)
        self.rnn, self.cell = nn.GRU(d, d, batch_first=True), nn.GRUCell(d, d)
        self.out = nn.Linear(d, targets)
        torch.manual_seed(4)  # wide random weights: outputs differ from source to source, some stop early
        with torch.no_grad():
            for p in self.parameters():
                p.normal_(0.0, 1.0)
            self.out.weight.mul_(0.4)
            self.out.bias[0] += 2.5  # the target </s> (id 0)

    def encode(self, src_ids, src_mask):
        memory, h = self.rnn(self.emb(src_ids) * src_mask[..., None])  # (B, S, d), (1, B, d): runs over padding
        return {"memory": memory, "h": h[0]}

    def step(self, tokens, h, memory, src_mask):
        scores = (memory @ h[:, :, None]).squeeze(2).masked_fill(src_mask == 0, float("-inf"))  # (B, S)
        h = self.cell(self.tgt(tokens) + (scores.softmax(-1)[:, :, None] * memory).sum(1), h)
        return {"logits": self.out(h), "h": h}


@pytest.fixture(scope="module")
def tools():
    """node, the examples' npm packages and Chromium: a missing one fails the test, naming the fix."""
    missing = []
    if shutil.which("node") is None:
        missing.append("node (e.g. apt-get install nodejs)")
    for folder, package in ((NODE, "onnxruntime-node"), (WEB, "onnxruntime-web"), (WEB, "puppeteer-core")):
        if not (folder / "node_modules" / package / "package.json").is_file():
            missing.append(f"{package} (npm ci in {folder.relative_to(ROOT)})")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")
    if missing:
        pytest.fail("the outside-Python tests need " + ", ".join(missing) + " (.ci/run installs them)")


@pytest.fixture(scope="module")
def char_bundle(tmp_path_factory):
    """edgeseq's own LSTM + Bahdanau on char vocabularies (tests/conftest.py), random weights scaled so that
    outputs depend on the source, some stop early (one is empty) and some show <unk> tokens."""
    model, sv, tv = tiny_rnn(seed=2)
    with torch.no_grad():
        model.decoder.out.weight.mul_(2.0)
        model.decoder.out.bias[tv.eos_id] += 2.5
    out = tmp_path_factory.mktemp("char") / "bundle"
    # parity against PyTorch is tested elsewhere; here the Python runtime is the reference
    export_model(
        model, out, source_vocab=sv, target_vocab=tv, options=ExportOptions(max_new_tokens=12, check_parity=False)
    )
    return out


@pytest.fixture(scope="module")
def word_bundle(tmp_path_factory):
    """A word-level bundle with the model's own ids: source <bos> ... <eos> framing, pad 1, unk 0."""
    source = Vocab(
        ("<unk>", "<pad>", "<bos>", "<eos>", *WORDS),
        "word",
        specials={"unk": "<unk>", "pad": "<pad>", "bos": "<bos>", "eos": "<eos>"},
        normalize=("lower", "nfkc", "strip_accents"),
    )
    target = Vocab(
        ("EOS", "SOS", "PAD", "<unk>", *"0123456789", "-", "/"),
        "word",
        specials={"eos": "EOS", "bos": "SOS", "pad": "PAD", "unk": "<unk>"},
    )
    special = {"eos": target.eos_id, "decoder_start": target.bos_id, "pad": target.pad_id}
    model = EncoderDecoder(WordModel(len(source), len(target)), special_tokens=special, source_vocab_size=len(source))
    out = tmp_path_factory.mktemp("word") / "bundle"
    export_model(
        model,
        out,
        source_vocab=source,
        target_vocab=target,
        framing=Framing(prefix=["<bos>"], suffix=["<eos>"]),
        options=ExportOptions(max_new_tokens=10, check_parity=False),
    )
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["masked_padding"] is False and manifest["source_framing"]["unk"] == 0
    assert "generate" in manifest["graphs"]
    return out


def run(args: list, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kw)


def python_cli(bundle: Path, args: list) -> str:
    r = run([sys.executable, "-m", "edgeseq", "generate", bundle, *args])
    assert r.returncode == 0, r.stderr
    return r.stdout


def node_example(bundle: Path, args: list) -> subprocess.CompletedProcess:
    return run(["node", NODE / "translate.js", bundle, *args])


def web_example(bundle: Path, args: list) -> subprocess.CompletedProcess:
    return run(["node", WEB / "check.js", bundle, *args])


def same_output(expected: str, r: subprocess.CompletedProcess, count: int) -> None:
    assert r.returncode == 0, r.stderr
    assert len(expected.splitlines()) == count
    assert r.stdout == expected, "\n".join(
        f"line {i + 1}: python {a!r} != {b!r}"
        for i, (a, b) in enumerate(zip(expected.split("\n"), r.stdout.split("\n")))
        if a != b
    )


@pytest.mark.parametrize("options", [[], ["--beam", "4"]], ids=["greedy", "beam4"])
def test_char_bundle_outside_python(tools, char_bundle, options):
    bundle = char_bundle
    expected = python_cli(bundle, [*options, *CHAR_TEXTS])
    assert len(set(expected.splitlines())) > 10 and "<unk>" in expected  # outputs that depend on the source
    same_output(expected, node_example(bundle, [*options, *CHAR_TEXTS]), len(CHAR_TEXTS))
    same_output(expected, web_example(bundle, [*options, *CHAR_TEXTS]), len(CHAR_TEXTS))


def test_folded_rnn_bundle_outside_python(tools, tmp_path):
    """An attention-free GRU: generate.onnx's one-source Loop looks its input projection up from a table that
    ONNX Runtime folds at load (export/generate_fold.py). onnxruntime-node and -web decoding one text at a time
    give the Python loop's translations."""
    model, sv, tv = tiny_rnn("gru", "none", seed=2)
    with torch.no_grad():
        model.decoder.out.weight.mul_(2.0)
    bundle = tmp_path / "bundle"
    export_model(model, bundle, source_vocab=sv, target_vocab=tv, options=ExportOptions(max_new_tokens=12))
    texts = CHAR_TEXTS[:6]
    expected = python_cli(bundle, ["--engine", "loop", *texts]).splitlines(keepends=True)
    assert len(set(expected)) > 3
    for text, line in zip(texts, expected):
        same_output(line, node_example(bundle, [text]), 1)
    same_output(expected[0], web_example(bundle, [texts[0]]), 1)


@pytest.mark.parametrize("options", [[], ["--beam", "4", "--max-new-tokens", "6"]], ids=["greedy", "beam4"])
def test_word_bundle_outside_python(tools, word_bundle, tmp_path, options):
    lines = tmp_path / "in.txt"
    lines.write_bytes("\n".join(WORD_LINES).encode("utf-8") + b"\n")
    expected = python_cli(word_bundle, [*options, "--input", lines])
    assert len(set(expected.splitlines())) > 10 and " " in expected  # words joined by spaces
    same_output(expected, node_example(word_bundle, [*options, "--input", lines]), len(WORD_LINES))
    same_output(expected, web_example(word_bundle, [*options, "--input", lines]), len(WORD_LINES))


def test_int8_bundle_with_contrib_operators(tools, char_bundle, tmp_path):
    """A dynamic-int8 bundle's generate.onnx has com.microsoft operators (DynamicQuantizeLSTM); onnxruntime-node
    runs the same kernels as Python's onnxruntime (identical lines), onnxruntime-web runs them in WebAssembly,
    whose integer and rounding kernels differ from x86's: near-ties of this random model may break the other
    way there (about 1 line in 12 on random sources), so most lines, not all, must agree."""
    bundle = quantize_bundle(char_bundle, tmp_path / "int8", Recipe.uniform("dynamic-int8"))
    graph = onnx.load(str(bundle / "generate.onnx"), load_external_data=False)
    assert any(o.domain == "com.microsoft" for o in graph.opset_import)
    expected = python_cli(bundle, CHAR_TEXTS)
    same_output(expected, node_example(bundle, CHAR_TEXTS), len(CHAR_TEXTS))
    web = web_example(bundle, CHAR_TEXTS)
    assert web.returncode == 0, web.stderr
    agree = sum(a == b for a, b in zip(expected.splitlines(), web.stdout.splitlines()))
    assert len(web.stdout.splitlines()) == len(CHAR_TEXTS) and agree >= 0.75 * len(CHAR_TEXTS), (expected, web.stdout)


def test_a_line_the_model_cannot_take_stops_as_in_python(tools, word_bundle):
    texts = ["monday", "the 9th", "   ", "june"]
    python = run([sys.executable, "-m", "edgeseq", "generate", word_bundle, *texts])
    node = node_example(word_bundle, texts)
    assert python.returncode == node.returncode == 1
    assert node.stdout == python.stdout and len(node.stdout.splitlines()) == 2
    assert node.stderr.count("\n") == 1 and "line 3: empty source text" in node.stderr


@pytest.mark.parametrize("kind", ["sentencepiece", "tokenizers"])
def test_other_tokenizers_are_refused_in_one_line(tools, char_bundle, tmp_path, kind):
    bundle = tmp_path / "b"
    shutil.copytree(char_bundle, bundle)
    data = json.loads((bundle / MANIFEST).read_text())
    data["tokenizer"] = {"type": kind, "source_model": "x.model", "target_model": "x.model", "file": "t.json"}
    (bundle / MANIFEST).write_text(json.dumps(data))
    r = node_example(bundle, ["abc"])
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and f'tokenizer type "{kind}" is not supported by this example' in r.stderr
