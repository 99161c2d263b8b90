"""Users' own models, written in other authors' styles (tests/tutorials: the PyTorch seq2seq tutorial's GRU with
Bahdanau attention, the PyTorch nn.Transformer tutorial, a CS224n-style bidirectional LSTM with input feeding),
each trained for seconds, keeping its author's ids, framing and code. Each is exported from the CLI through the
user's own FILE.py:FUNCTION; the bundle's text must equal the author's own greedy decode, beam search must equal
the PyTorch reference, and misdeclared ids or framing must fail validation naming the cause."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeseq.bundle import MANIFEST
from edgeseq.export import TorchBackend
from edgeseq.export.user import call_user_function, prepare
from edgeseq.runtime import DecodingOptions, Generator
from edgeseq.runtime.loop import decode

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = Path(__file__).resolve().parent / "tutorials"
MODELS = ["rnn_attention", "nn_transformer", "cs224n"]


def save_trained(name: str, folder: Path) -> list[str]:
    """Train the tutorial model, save it the author's way beside a copy of the user's export file."""
    torch.manual_seed(0)
    if name == "rnn_attention":
        from tests.tutorials import rnn_attention as m

        (encoder, decoder, input_lang, output_lang), held_out = m.trained()
        saved = {"encoder": encoder.state_dict(), "decoder": decoder.state_dict(), "hidden_size": 48}
        saved.update(input_lang=input_lang, output_lang=output_lang)
    elif name == "nn_transformer":
        from tests.tutorials import nn_transformer as m

        (model, vocab_src, vocab_tgt), held_out = m.trained()
        saved = {"model": model.state_dict(), "vocab_src": vocab_src, "vocab_tgt": vocab_tgt}
    else:
        from tests.tutorials import cs224n as m

        model, held_out = m.trained()
        saved = {"state_dict": model.state_dict(), "vocab": model.vocab}
    torch.save(saved, folder / f"{name}.pt")
    shutil.copy(TUTORIALS / f"export_{name}.py", folder / f"export_{name}.py")
    return held_out


def edgeseq(*args, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseq", *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (folder, bundle, held-out sentences), each exported from the CLI through FILE.py:FUNCTION."""
    made = {}
    for name in MODELS:
        folder = tmp_path_factory.mktemp(name)
        held_out = save_trained(name, folder)
        (folder / "held_out.txt").write_text("\n".join(held_out) + "\n")
        r = edgeseq("export", f"{folder}/export_{name}.py:edgeseq_model", "--out", folder / "bundle")
        assert r.returncode == 0, r.stderr
        assert "PASS" in r.stdout and "text vs" in r.stdout, r.stdout
        made[name] = (folder, folder / "bundle", held_out)
    return made


@pytest.mark.parametrize("name", MODELS)
def test_text_equals_the_authors_own_greedy_decode(exported, name):
    folder, bundle, held_out = exported[name]
    r = edgeseq(
        "validate",
        bundle,
        "--reference",
        f"{folder}/export_{name}.py:edgeseq_model",
        "--data",
        folder / "held_out.txt",
        "--json",
        folder / "report.json",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = json.loads((folder / "report.json").read_text())["text"]
    assert text["sources"] == len(held_out) >= 200 and text["equal"] == text["sources"], text
    spec = call_user_function(f"{folder}/export_{name}.py:edgeseq_model")
    expected = spec.translate(held_out)
    got = [t.text for t in Generator(bundle).generate(held_out)]  # one batch: the runtime's own batching
    assert [" ".join(e.split()) for e in expected] == got
    assert len(set(got)) > 20  # a real model: many different outputs


@pytest.mark.parametrize("name", MODELS)
def test_beam_search_equals_the_pytorch_reference(exported, name):
    folder, bundle, held_out = exported[name]
    loaded = prepare(call_user_function(f"{folder}/export_{name}.py:edgeseq_model"), name)
    gen = Generator(bundle)
    m = gen.bundle.manifest
    loaded.adapter.source_pad_id = m.source_framing.pad
    reference = TorchBackend(loaded.adapter, masked_padding=m.masked_padding)
    options = DecodingOptions(max_new_tokens=m.max_new_tokens, beam_size=4, nbest=2)
    sources = [gen.encode(t) for t in held_out[:24]]
    ours = gen.generate_ids(sources, options)
    theirs = decode(reference, m.decoder, sources, options)
    for a, b in zip(ours, theirs):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        np.testing.assert_allclose([h.score for h in a], [h.score for h in b], atol=1e-4)


def test_what_export_found_out(exported):
    """The manifest keeps each author's ids and framing; the unmasked tutorial GRU is decoded by length."""
    manifests = {n: json.loads((exported[n][1] / MANIFEST).read_text()) for n in MODELS}
    rnn, tr, cs = (manifests[n] for n in MODELS)
    assert rnn["special_tokens"]["eos"] == 1 and rnn["special_tokens"]["decoder_start"] == 0
    assert rnn["source_framing"]["suffix"] == [1] and rnn["masked_padding"] is False
    assert tr["special_tokens"] == {"pad": 1, "bos": 2, "eos": 3, "decoder_start": 2}
    assert tr["source_framing"]["prefix"] == [2] and tr["source_framing"]["suffix"] == [3]
    assert tr["source_framing"]["unk"] == 0 and tr["masked_padding"] is True
    assert cs["source_framing"]["prefix"] == [] and cs["source_framing"]["suffix"] == []
    assert cs["masked_padding"] is True


CAUSES = {"misdeclared_framing": "source framing", "misdeclared_ids": "special ids"}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("variant", list(CAUSES))
def test_misdeclared_models_fail_naming_the_cause(exported, name, variant, tmp_path):
    folder, bundle, _ = exported[name]
    r = edgeseq("export", f"{folder}/export_{name}.py:{variant}", "--out", tmp_path / "b")
    assert r.returncode == 1 and not (tmp_path / "b").exists(), r.stdout + r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("edgeseq: error:")]
    assert "Traceback" not in r.stderr and len(errors) == 1 and r.stderr.endswith(errors[0] + "\n"), r.stderr
    assert "likely cause: " + CAUSES[variant] in errors[0], r.stderr


@pytest.mark.parametrize("name", MODELS)
def test_a_misdeclared_bundle_fails_validation_against_the_users_code(exported, name, tmp_path):
    """Exported without the user's decode to compare with, a wrong framing passes export's id-level checks;
    validating against the user's code (with translate) then fails, naming the cause."""
    folder, _, _ = exported[name]
    spec = folder / f"export_{name}.py"
    shutil.copy(spec, tmp_path / spec.name)
    shutil.copy(folder / f"{name}.pt", tmp_path / f"{name}.pt")
    (tmp_path / "no_translate.py").write_text(
        f"from export_{name} import misdeclared_framing\n\n"
        "def model():\n    return {**misdeclared_framing(), 'translate': None}\n"
    )
    r = edgeseq("export", f"{tmp_path}/no_translate.py:model", "--out", tmp_path / "b")
    assert r.returncode == 0, r.stderr
    r = edgeseq("validate", tmp_path / "b", "--reference", f"{tmp_path}/{spec.name}:edgeseq_model")
    assert r.returncode == 1, r.stdout
    assert "declared differently: source" in r.stdout and "likely cause: source framing" in r.stdout, r.stdout


@pytest.mark.parametrize("name", MODELS)
def test_int8_bundles_keep_the_answers(exported, name, tmp_path):
    """dynamic-int8 of a trained model (the tutorial's GRUs included): within the int8 thresholds against the
    fp32 bundle and against the user's own decode, at about a quarter of the size."""
    folder, bundle, _ = exported[name]
    r = edgeseq("quantize", bundle, "--out", tmp_path / "q", "--mode", "int8")
    assert r.returncode == 0, r.stderr
    r = edgeseq("validate", tmp_path / "q", "--reference", bundle, "--data", folder / "held_out.txt", "--no-record")
    assert r.returncode == 0, r.stdout + r.stderr
    r = edgeseq(
        "validate",
        tmp_path / "q",
        "--reference",
        f"{folder}/export_{name}.py:edgeseq_model",
        "--data",
        folder / "held_out.txt",
        "--json",
        tmp_path / "r.json",
        "--no-record",
    )
    assert r.returncode == 0, r.stdout + r.stderr
    text = json.loads((tmp_path / "r.json").read_text())["text"]
    assert text["equal"] >= 0.85 * text["sources"]
    from tests.conftest import inline_tensor_bytes

    # the weights (a tiny model's graph files, generate.onnx above all, are mostly structure)
    size = lambda p: (p / "weights.bin").stat().st_size + inline_tensor_bytes(p)  # noqa: E731
    assert size(tmp_path / "q") < 0.5 * size(bundle), (size(tmp_path / "q"), size(bundle))


def test_pairs_from_the_users_pipeline(exported, tmp_path):
    """--pairs: the user's own outputs as a TSV; any difference fails, naming the first differing source."""
    folder, bundle, held_out = exported["cs224n"]
    spec = call_user_function(f"{folder}/export_cs224n.py:edgeseq_model")
    outputs = spec.translate(held_out[:40])
    good, bad = tmp_path / "good.tsv", tmp_path / "bad.tsv"
    good.write_text("".join(f"{s}\t{o}\n" for s, o in zip(held_out, outputs)))
    wrong = list(outputs)
    wrong[7] = "the dog eats a cat"
    bad.write_text("".join(f"{s}\t{o}\n" for s, o in zip(held_out, wrong)))
    r = edgeseq("validate", bundle, "--reference", bundle, "--pairs", good, "--no-record")
    assert r.returncode == 0 and "text vs pairs" in r.stdout and "40/40" in r.stdout, r.stdout + r.stderr
    r = edgeseq("validate", bundle, "--reference", bundle, "--pairs", bad, "--no-record")
    assert r.returncode == 1 and "39/40" in r.stdout and f"first difference at source 7 {held_out[7]!r}" in r.stdout
    r = edgeseq("export", f"{folder}/export_cs224n.py:edgeseq_model", "--out", tmp_path / "b", "--pairs", bad)
    assert r.returncode == 1 and "text vs pairs" in r.stderr and not (tmp_path / "b").exists(), r.stderr


USER_ERRORS = {
    "raises": ("def f():\n    raise ValueError('no weights here')\n", "f.py:f raised ValueError: no weights here"),
    "returns a list": ("def f():\n    return [1, 2]\n", "f.py:f returned list; return a dict"),
    "unknown key": (
        "def f():\n    return {'model': 1, 'source_tokenizer': 2, 'modle': 3}\n",
        "f.py:f returned unknown keys ['modle']; valid keys: model, source_tokenizer",
    ),
    "no model": ("def f():\n    return {'source_tokenizer': 2}\n", "f.py:f must return 'model'"),
    "not a model": (
        "from edgeseq.vocab import Vocab\nv = Vocab.build(['ab'])\n"
        "def f():\n    return {'model': 42, 'source_tokenizer': v}\n",
        "f.py:f: cannot export a int: pass",
    ),
    "bad tokenizer": ("def f():\n    return {'model': 1, 'source_tokenizer': 3.5}\n", "source_tokenizer: expected"),
    "import fails": ("import not_a_module_anywhere\ndef f():\n    pass\n", "importing"),
    "no such function": ("def g():\n    pass\n", "has no function f"),
    "syntax error": ("def f(:\n", "SyntaxError"),
    "exits": ("import sys\nsys.exit(3)\ndef f():\n    pass\n", "SystemExit"),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_user_function_mistakes_are_one_line(case, tmp_path):
    source, message = USER_ERRORS[case]
    (tmp_path / "f.py").write_text(source)
    for command in (("export", "f.py:f", "--out", tmp_path / "b"), ("validate", tmp_path, "--reference", "f.py:f")):
        r = edgeseq(*command, cwd=tmp_path)
        errors = [line for line in r.stderr.splitlines() if line.startswith("edgeseq: error:")]
        if command[0] == "validate":  # the bundle is checked first: not one here
            assert r.returncode == 1 and "not a bundle" in r.stderr, r.stderr
            continue
        assert r.returncode in (1, 2) and len(errors) == 1 and message in errors[0], r.stderr
        assert "Traceback" not in r.stderr and not (tmp_path / "b").exists()


def test_translate_that_returns_the_wrong_thing_is_named(exported, tmp_path):
    folder, bundle, _ = exported["cs224n"]
    (tmp_path / "u.py").write_text(
        f"import sys\nsys.path.insert(0, {str(folder)!r})\nfrom export_cs224n import edgeseq_model\n\n"
        "def short():\n    return {**edgeseq_model(), 'translate': lambda texts: texts[:1]}\n\n"
        "def broken():\n    return {**edgeseq_model(), 'translate': lambda texts: 1 / 0}\n"
    )
    for fn, message in (("short", "must return a list of 24 strings, got list of 1"), ("broken", "ZeroDivisionError")):
        r = edgeseq("validate", bundle, "--reference", f"{tmp_path}/u.py:{fn}", "--no-record")
        assert r.returncode in (1, 2) and message in r.stderr and f"u.py:{fn}" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def words(count: int, seed: int = 0) -> list[str]:
    """English-looking words (and a few with capitals and digits, which g2p maps to <unk>)."""
    rng = np.random.default_rng(seed)
    onsets, vowels, codas = (
        ["b", "st", "tr", "ch", "p", "gr", "sh", "m", "th", "wr", ""],
        list("aeiou"),
        ["", "n", "ck", "ng", "s", "ll", "rt"],
    )
    out = []
    for i in range(count):
        word = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(rng.integers(1, 4)))
        out.append(word.capitalize() + "7" if i % 25 == 0 else word)
    return out


def test_a_trained_model_from_a_package(tmp_path):
    """g2p_en's trained GRU encoder-decoder (weights from the package), ported to PyTorch as a user would: the
    bundle's phonemes equal the package's own numpy decode on 250 words, unknown characters mapped to <unk>."""
    from tests.tutorials.g2p import checkpoint

    if checkpoint() is None:
        pytest.skip("g2p_en is not installed (.ci/run installs it: pip install --no-deps g2p_en)")
    shutil.copy(TUTORIALS / "export_g2p.py", tmp_path / "export_g2p.py")
    data = words(250)
    (tmp_path / "words.txt").write_text("\n".join(data) + "\n")
    ref = f"{tmp_path}/export_g2p.py:edgeseq_model"
    r = edgeseq("export", ref, "--out", tmp_path / "b", "--data", tmp_path / "words.txt")
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr
    assert "250/250 (100.0%) identical" in r.stdout, r.stdout
    assert "decodes only sources of equal length together" in r.stdout  # its encoder runs over padding
    spec = call_user_function(ref)
    expected = spec.translate(data)
    gen = Generator(tmp_path / "b")
    assert [t.text for t in gen.generate(data)] == expected
    assert len(set(expected)) > 200 and any(e.startswith("HH") for e in expected)
    assert gen.encode("Ab7") == [1, 4, 1, 2]  # capitals and digits: <unk>, as g2p_en does
    loaded = prepare(spec, ref)
    m = gen.bundle.manifest
    reference = TorchBackend(loaded.adapter, masked_padding=m.masked_padding)
    options = DecodingOptions(max_new_tokens=20, beam_size=4)
    sources = [gen.encode(w) for w in data[:30]]
    for a, b in zip(gen.generate_ids(sources, options), decode(reference, m.decoder, sources, options)):
        assert a[0].tokens == b[0].tokens and abs(a[0].score - b[0].score) < 1e-4


def test_a_trained_gru_decoder_one_word_a_call_through_the_generate_graph(tmp_path):
    """g2p_en's trained network with its decoder as an nn.GRU: generate.onnx's one-source Loop looks the GRU's
    input projection up from a table (export/generate_fold.py); one word a call, its phonemes equal the
    package's own numpy decode."""
    from tests.test_generate_graph import _folded_rnns
    from tests.tutorials.g2p import checkpoint

    if checkpoint() is None:
        pytest.skip("g2p_en is not installed (.ci/run installs it: pip install --no-deps g2p_en)")
    shutil.copy(TUTORIALS / "export_g2p.py", tmp_path / "export_g2p.py")
    ref = f"{tmp_path}/export_g2p.py:edgeseq_model_gru"
    r = edgeseq("export", ref, "--out", tmp_path / "b")
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr
    assert _folded_rnns(tmp_path / "b") == 1
    data = words(60)
    expected = call_user_function(ref).translate(data)
    gen = Generator(tmp_path / "b", engine="graph")
    assert [gen.generate([w])[0].text for w in data] == expected
    assert len(set(expected)) > 50


def test_text_normalization_is_declared_or_named(exported, tmp_path):
    """A pipeline that lowercases sources: undeclared, the text level names it; declared, the bundle does it too."""
    folder, _, held_out = exported["rnn_attention"]
    (tmp_path / "caps.txt").write_text("\n".join(s.capitalize() for s in held_out[:60]) + "\n")
    r = edgeseq(
        "export",
        f"{folder}/export_rnn_attention.py:lowercasing_pipeline",
        "--out",
        tmp_path / "a",
        "--data",
        tmp_path / "caps.txt",
    )
    assert r.returncode == 1 and "likely cause: text normalization: with lower applied" in r.stderr, r.stderr
    r = edgeseq(
        "export",
        f"{folder}/export_rnn_attention.py:lowercasing_declared",
        "--out",
        tmp_path / "b",
        "--data",
        tmp_path / "caps.txt",
    )
    assert r.returncode == 0 and "60/60 (100.0%) identical" in r.stdout, r.stdout + r.stderr
    assert Generator(tmp_path / "b").generate(["LE CHAT NOIR VOIT UN CHIEN"])[0].text == "the black cat sees a dog"
