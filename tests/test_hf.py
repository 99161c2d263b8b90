"""Hugging Face Marian, BART and mBART: tiny random checkpoints made here, exported, checked against HF."""

import json
import subprocess
import sys
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")

from edgeseq.errors import CheckpointError  # noqa: E402
from edgeseq.export import ExportOptions, export_model  # noqa: E402
from edgeseq.export.hf import load_hf_checkpoint  # noqa: E402
from edgeseq.runtime import Generator  # noqa: E402
from tests.conftest import inline_tensor_bytes  # noqa: E402
from tests.hf_models import make_bart, make_marian, make_t5  # noqa: E402

TEXTS = [
    "the quick brown fox",
    "hello world",
    "we export graphs and check every step of the way",
    "apples",
    "seven green apples fell",
    "she reads",
]
FAMILIES = ["marian", "bart", "mbart", "t5", "mt5", "t5v11"]  # t5v11: gated-GELU, untied head, logits ~100s


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    made = {}
    for family in FAMILIES:
        root = tmp_path_factory.mktemp(family)
        if family == "marian":
            folder = make_marian(root / "hf")
        elif family in ("t5", "mt5", "t5v11"):
            folder = make_t5(root / "hf", "t5" if family == "t5v11" else family, v11=family == "t5v11")
        else:
            folder = make_bart(root / "hf", family)
        ckpt = load_hf_checkpoint(folder)
        bundle, report = export_model(
            ckpt.model,
            root / "bundle",
            tokenizer=ckpt.tokenizer,
            options=ExportOptions(),
            generation=ckpt.generation,
            banned_tokens=ckpt.banned_tokens,
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tok = transformers.AutoTokenizer.from_pretrained(folder)
        hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
        made[family] = (folder, bundle, report, hf, tok)
    return made


def hf_generate(hf, tok, texts, beams, max_new_tokens):
    """model.generate with the checkpoint's generation config, tokens between the start and </s>."""
    with torch.no_grad():
        out = hf.generate(
            **tok(texts, return_tensors="pt", padding=True), num_beams=beams, max_new_tokens=max_new_tokens
        )
    eos = hf.config.eos_token_id
    rows = [row[1:] for row in out.tolist()]
    return [row[: row.index(eos)] if eos in row else row for row in rows]  # padding only ever follows </s>


@pytest.mark.parametrize("family", FAMILIES)
def test_graphs_match_pytorch(exported, family):
    _, bundle, report, _, _ = exported[family]
    assert report.ok, report.table()
    assert all(c.max_rel < 1e-4 for c in report.outputs)  # relative to each output's scale (T5 v1.1: logits ~100s)
    manifest = json.loads((bundle / "edgeseq.json").read_text())
    assert manifest["family"] == family.replace("t5v11", "t5") and manifest["generation"]["beam_size"] == 4
    assert manifest["generation"].get("forced_eos", False) is (family not in ("t5", "mt5", "t5v11"))


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_matches_hugging_face(exported, family):
    _, bundle, _, _, tok = exported[family]
    gen = Generator(bundle)
    for text in TEXTS + ["unseen wörds 123 !"]:
        ids = gen.encode(text)
        assert ids == tok(text).input_ids
        assert gen.bundle.tokenizer.decode(ids) == tok.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("beams", [1, 4])
def test_tokens_equal_model_generate(exported, family, beams):
    _, bundle, _, hf, tok = exported[family]
    gen = Generator(bundle)
    options = gen.options.replace(beam_size=beams)
    expected = hf_generate(hf, tok, TEXTS, beams, options.max_new_tokens)
    assert [list(r.tokens) for r in gen.generate(TEXTS, options)] == expected  # a padded mixed-length batch
    assert [list(gen.generate([t], options)[0].tokens) for t in TEXTS[:3]] == [
        hf_generate(hf, tok, [t], beams, options.max_new_tokens)[0] for t in TEXTS[:3]
    ]
    if family == "bart":  # its random weights are tuned to end sentences at different lengths
        assert len({len(x) for x in expected}) > 1


def test_t5v11_head_is_untied(exported):
    """The v1.1 fixture really has its own LM head (transformers 5 ties T5 heads unless the file holds two
    different weights), and the export reads it: the bundle's logits follow lm_head, not shared."""
    folder, bundle, _, hf, tok = exported["t5v11"]
    assert hf.lm_head.weight.data_ptr() != hf.shared.weight.data_ptr()
    assert not torch.equal(hf.lm_head.weight, hf.shared.weight) and not hf.config.scale_decoder_outputs
    ckpt = load_hf_checkpoint(folder)
    assert ckpt.model.hf.lm_head.weight.data_ptr() != ckpt.model.hf.shared.weight.data_ptr()
    with torch.no_grad():
        ids = tok(TEXTS[:1], return_tensors="pt").input_ids
        logits = hf(input_ids=ids, decoder_input_ids=torch.zeros_like(ids[:, :1])).logits
    assert logits.abs().max() > 50  # initializer factor 3, no rescaling: logits in the hundreds


def test_marian_bundle_is_the_size_of_its_weights(tmp_path):
    """One weights file shared by the graphs (embeddings tied three ways): within 5% of model.safetensors."""
    folder = make_marian(tmp_path / "hf", d_model=256, ffn=1024)
    ckpt = load_hf_checkpoint(folder)
    bundle, _ = export_model(
        ckpt.model,
        tmp_path / "bundle",
        tokenizer=ckpt.tokenizer,
        options=ExportOptions(max_new_tokens=8),
        generation=ckpt.generation,
    )
    weights = (folder / "model.safetensors").stat().st_size
    assert (bundle / "weights.bin").stat().st_size <= 1.05 * weights
    assert inline_tensor_bytes(bundle) <= 16 << 10  # the graphs (generate.onnx too) hold no weights


def test_cli_export_and_generate_equal_the_transformers_pipeline(exported, tmp_path):
    folder, *_ = exported["marian"]
    r = subprocess.run(
        [sys.executable, "-m", "edgeseq", "export", folder, "--out", tmp_path / "b"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "edgeseq", "generate", tmp_path / "b", *TEXTS[:3]], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    # transformers 5 removed the "translation" pipeline; this is what it did: tokenize, generate, decode
    _, _, _, hf, tok = exported["marian"]
    with torch.no_grad():
        out = hf.generate(**tok(TEXTS[:3], return_tensors="pt", padding=True))
    expected = tok.batch_decode(out, skip_special_tokens=True)
    assert r.stdout.splitlines() == expected


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(
        CheckpointError, match="model_type 'gpt2' is not supported; supported .*: bart, marian, mbart, mt5, t5"
    ):
        load_hf_checkpoint(tmp_path / "hf")
    r = subprocess.run(
        [sys.executable, "-m", "edgeseq", "export", tmp_path / "hf", "--out", tmp_path / "b"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not supported" in r.stderr
