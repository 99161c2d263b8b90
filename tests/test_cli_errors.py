"""No traceback from any command on a user error, exit codes as the README says (1: a bad file or a failed
check; 2: bad options), options that would underflow, overflow or give NaN refused, JSON always valid, stdin
and stdout as '-', and memory that does not grow with the input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseq", *map(str, args)], capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def files(bundle_factory, checkpoint_and_bundle, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-errors")
    (root / "lines.txt").write_text("abc\nhello world\n")
    (root / "empty.txt").write_text("")
    (root / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (root / "dir").mkdir()
    (root / "bad.json").write_text("{nope")
    for name, change in (
        ("list", lambda m: m.update(config=[1, 2])),
        ("pad", lambda m: m["config"].update(pad_id=999)),
        ("bos", lambda m: m["config"].update(bos_id=500)),
    ):
        _edited_checkpoint(checkpoint_and_bundle[0], root / f"ckpt_{name}.safetensors", change)
    return {"B": bundle_factory()[0], "C": checkpoint_and_bundle[0], "R": root}


def _edited_checkpoint(src, dst, change):
    """A copy of a checkpoint whose edgeseq metadata `change` edits (a hostile or damaged checkpoint)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        meta = json.loads(f.metadata()["edgeseq"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    change(meta)
    save_file(tensors, str(dst), metadata={"edgeseq": json.dumps(meta)})


SWEEP = [
    # (arguments, exit code); {B} bundle, {C} checkpoint, {R} a folder of test files
    (("generate",), 2),
    (("generate", "{B}"), 2),
    (("generate", "{R}/none", "abc"), 1),
    (("generate", "{R}/lines.txt", "abc"), 1),
    (("generate", "{B}", "--input", "{R}/none.txt"), 1),
    (("generate", "{B}", "--input", "{R}/dir"), 1),
    (("generate", "{B}", "--input", "{R}/empty.txt"), 1),
    (("generate", "{B}", "--input", "{R}/latin1.txt"), 1),
    (("generate", "{B}", "abc", "--input", "{R}/lines.txt"), 2),
    (("generate", "{B}", "abc", "--threads", "99999999999"), 2),
    (("generate", "{B}", "abc", "--threads", "0"), 2),
    (("generate", "{B}", "abc", "--beam", "1000000000"), 2),
    (("generate", "{B}", "abc", "--max-new-tokens", "100000000"), 2),
    (("generate", "{B}", "abc", "--max-new-tokens", "-3"), 2),
    (("generate", "{B}", "abc", "--batch-tokens", "0"), 2),
    (("generate", "{B}", "abc", "--top-p", "nan"), 2),
    (("generate", "{B}", "abc", "--length-penalty", "inf", "--beam", "2"), 2),
    (("generate", "{B}", "abc", "--provider", "tpu"), 2),
    (("generate", "{B}", "abc", "--output", "{R}/dir"), 1),
    (("generate", "{B}", "abc", "--output", "{R}/no/such/folder/out.txt"), 1),
    (("generate", "{B}", "abc", "--on-error", "maybe"), 2),
    (("export", "{R}/none.safetensors", "--out", "{R}/x"), 1),
    (("export", "{R}/lines.txt", "--out", "{R}/x"), 1),
    (("export", "{C}", "--out", "{R}/x", "--opset", "99"), 2),
    (("export", "{C}", "--out", "{R}/x", "--max-new-tokens", "0"), 2),
    (("export", "{C}", "--out", "{R}/x", "--data", "{R}/none.txt"), 1),
    (("export", "{C}", "--out", "{R}/x", "--data", "{R}/lines.txt", "--pairs", "{R}/lines.txt"), 2),
    (("export", "{R}/nomodule.py:fn", "--out", "{R}/x"), 2),
    (("export", "no.such.module:fn", "--out", "{R}/x"), 2),
    (("export", "{C}", "--out", "/proc/edgeseq/x"), 1),
    (("validate", "{B}"), 2),
    (("validate", "{B}", "--reference", "{R}/none"), 1),
    (("validate", "{B}", "--reference", "{R}/lines.txt"), 1),
    (("validate", "{B}", "--reference", "{C}", "--json", "{R}/dir"), 1),
    (("validate", "{B}", "--reference", "{C}", "--atol", "-1"), 2),
    (("validate", "{B}", "--reference", "{C}", "--min-exact-match", "nan"), 2),
    (("validate", "{B}", "--reference", "{C}", "--data", "{R}/empty.txt"), 1),
    (("validate", "{B}", "--reference", "{C}", "--pairs", "{R}/lines.txt"), 1),
    (("validate", "{R}/dir", "--reference", "{C}"), 1),
    (("quantize", "{B}", "--out", "{R}/q"), 2),
    (("quantize", "{B}", "--out", "{R}/q", "--mode", "int4"), 2),
    (("quantize", "{B}", "--out", "{R}/q", "--recipe", "{R}/bad.json"), 2),
    (("quantize", "{B}", "--out", "{R}/q", "--recipe", "{R}/none.json"), 2),
    (("quantize", "{B}", "--out", "{R}/q", "--mode", "static-int8"), 2),
    (("quantize", "{B}", "--out", "{R}/q", "--auto"), 2),
    (("quantize", "{B}", "--out", "{R}/q", "--auto", "--budget", "nan", "--data", "{R}/lines.txt"), 2),
    (("quantize", "{R}/none", "--out", "{R}/q", "--mode", "int8"), 1),
    (("info", "{R}/none"), 1),
    (("info", "{R}/lines.txt"), 1),
    (("bench", "{B}", "--repeats", "0"), 2),
    (("bench", "{B}", "--threads", "99999999999"), 2),
    (("bench", "{B}", "--batch", "0"), 2),
    (("bench", "{B}", "--json", "{R}/dir"), 1),
    (("bench", "{B}", "--reference", "{R}/none.safetensors", "--repeats", "1", "--new-tokens", "2"), 1),
    (("bench", "{B}", "--source-len", "5000", "--repeats", "1"), 2),
    (("export", "{R}/ckpt_list.safetensors", "--out", "{R}/x"), 1),
    (("export", "{R}/ckpt_pad.safetensors", "--out", "{R}/x"), 1),
    (("validate", "{B}", "--reference", "{R}/ckpt_pad.safetensors"), 1),
    (("bench", "{B}", "--reference", "{R}/ckpt_pad.safetensors", "--repeats", "1"), 1),
    (("export", "{R}/ckpt_bos.safetensors", "--out", "{R}/x"), 1),
    (("demo", "--steps", "0"), 2),
    (("demo", "--arch", "lstm"), 2),
    (("nosuchcommand",), 2),
]


@pytest.mark.parametrize("args, code", SWEEP, ids=[" ".join(a) for a, _ in SWEEP])
def test_every_command_refuses_bad_arguments_in_one_line(files, args, code):
    r = cli(*(a.format(**files) for a in args))
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    assert r.returncode == code, (r.returncode, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("edgeseq: error:")]
    assert len(errors) == 1 and r.stderr.rstrip("\n").endswith(errors[0]), r.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--sample", "--top-p", "1e-300"], "top_p must be in [1e-06, 1]"),
        (["--sample", "--temperature", "1e-300"], "temperature must be in [0.0001, 10000]"),
        (["--repetition-penalty", "1e-300"], "repetition_penalty must be in [0.001, 1000]"),
        (["--beam", "4", "--length-penalty", "1e300"], "length_penalty must be in [-100, 100]"),
        (["--beam", "4", "--length-penalty", "90", "--max-new-tokens", "1000000"], "overflows for 1000000 tokens"),
    ],
)
def test_options_that_would_underflow_or_overflow_are_refused(files, flags, message):
    r = cli("generate", files["B"], "abc", "--json", *flags)
    assert r.returncode == 2 and message in r.stderr and r.stdout == "", r.stderr


def test_json_output_is_always_valid_json(files):
    for flags in ([], ["--beam", "3", "--nbest", "3"], ["--repetition-penalty", "0.001"], ["--sample", "--seed", "1"]):
        r = cli("generate", files["B"], "abc", "hello world", "x", "--json", *flags)
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout, parse_constant=lambda c: pytest.fail(f"{c} in JSON output"))
        assert [d["source"] for d in data] == ["abc", "hello world", "x"]


def test_stdin_and_stdout_as_dash(files):
    r = cli("generate", files["B"], "--input", "-", input="abc\nhello world\n")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2, r.stderr
    assert cli("generate", files["B"], "-", input="abc\nhello world\n").stdout == r.stdout
    assert cli("generate", files["B"], "--input", files["R"] / "lines.txt", "--output", "-").stdout == r.stdout
    r = cli("generate", files["B"], "--input", "-", input="")
    assert r.returncode == 1 and "stdin is empty" in r.stderr


def test_control_characters_are_escaped_in_plain_output():
    from edgeseq.cli_output import escape_controls

    assert escape_controls("a\nb\tc\x1bd") == "a\\nb\\tc\\x1bd" and escape_controls("plain é") == "plain é"


def _peak_rss_kb(args) -> tuple[int, float]:
    """Peak RSS of `edgeseq generate` as a child process (VmHWM through wait4's rusage), and its seconds."""
    t = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeseq", *map(str, args)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read()
    return usage.ru_maxrss, time.perf_counter() - t


def test_memory_does_not_grow_with_the_input(files, tmp_path):
    """100,000 lines take about the memory of 1,000 (benchmarks/file_memory.py reports the figures)."""
    import numpy as np

    rng = np.random.default_rng(0)
    letters = list("abcdefghij")
    lines = ["".join(rng.choice(letters, size=rng.integers(1, 6))) for _ in range(100_000)]
    (tmp_path / "small.txt").write_text("\n".join(lines[:1000]) + "\n")
    (tmp_path / "big.txt").write_text("\n".join(lines) + "\n")
    common = ["--max-new-tokens", "4", "--threads", "1", "--output", tmp_path / "out.txt"]
    small, _ = _peak_rss_kb(["generate", files["B"], "--input", tmp_path / "small.txt", *common])
    big, _ = _peak_rss_kb(["generate", files["B"], "--input", tmp_path / "big.txt", *common])
    assert big <= 1.3 * small, (big, small)
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 100_000


def test_text_that_is_not_utf8_is_refused(files):
    r = subprocess.run(
        [sys.executable, "-m", "edgeseq", "generate", str(files["B"]), b"ab\xff", "--json"], capture_output=True
    )
    assert r.returncode == 1 and b"is not valid UTF-8 text" in r.stderr, r.stderr
    assert json.loads(r.stdout) == []  # stopped at its first line: still a valid JSON list


@pytest.mark.parametrize("extra", [[], ["--beam", "4"], ["--sample", "--seed", "1"]])
def test_constraints_that_exhaust_the_vocabulary_end_the_output(files, extra):
    """--no-repeat-ngram 1 with a long minimum length runs out of tokens: the output ends (score null, -inf),
    no token repeats, no NaN and no warning."""
    r = cli(
        "generate",
        files["B"],
        "abc",
        "--no-repeat-ngram",
        "1",
        "--min-new-tokens",
        "14",
        "--max-new-tokens",
        "20",
        "--json",
        *extra,
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr
    hyp = json.loads(r.stdout)[0]["hypotheses"][0]
    assert len(hyp["tokens"]) == len(set(hyp["tokens"])) and hyp["score"] is None
