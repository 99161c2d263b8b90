"""No traceback from any command on a user error, exit codes as the README says (1: a bad file or a failed
check; 2: bad options), options that would underflow, overflow or give NaN refused, JSON always valid, stdin
and stdout as '-', and memory that does not grow with the input."""

from __future__ import annotations

import json
import os
import re
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
    _transformer_checkpoint(root / "tf.safetensors")
    for name, change in HOSTILE_CONFIGS.items():
        _edited_checkpoint(root / "tf.safetensors", root / f"tf_{name}.safetensors", change)
    _edited_checkpoint(checkpoint_and_bundle[0], root / "ckpt_deep.safetensors", text=_nested_100k_deep)
    return {"B": bundle_factory()[0], "C": checkpoint_and_bundle[0], "R": root}


def _transformer_checkpoint(path):
    """A tiny Transformer checkpoint (d_model 64): its sinusoidal position table is not in the file."""
    import torch

    from edgeseq.export import save_checkpoint
    from edgeseq.models import TransformerConfig, TransformerSeq2Seq
    from tests.conftest import vocabs

    sv, tv = vocabs()
    torch.manual_seed(0)
    cfg = TransformerConfig(len(sv), len(tv), d_model=64, heads=4, encoder_layers=1, decoder_layers=1, ffn_dim=64)
    save_checkpoint(path, TransformerSeq2Seq(cfg), sv, tv)


def _nested_100k_deep(text: str) -> str:
    """The metadata with its 'info' replaced by lists nested 100,000 deep (json.dumps cannot write it)."""
    meta = json.loads(text)
    meta["info"] = "@@"
    return json.dumps(meta).replace('"@@"', "[" * 100_000 + "]" * 100_000)


# A checkpoint's config is untrusted: each of these must be refused with one line naming the field, before
# anything is allocated (the file's weights still fit the config: the position table is not stored).
HOSTILE_CONFIGS = {
    "positions": lambda m: m["config"].update(max_positions=1 << 24),  # a 4.3 GB table at d_model 64
    "table": lambda m: m["config"].update(max_positions=1 << 20),  # within the field's bound: 268 MB
    "layers": lambda m: m["config"].update(decoder_layers=1 << 30),
    "width": lambda m: m["config"].update(ffn_dim=1 << 40),
}


def _edited_checkpoint(src, dst, change=None, text=None):
    """A copy of a checkpoint whose edgeseq metadata `change` edits (or `text` rewrites as a string): a
    hostile or damaged checkpoint."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), framework="pt") as f:
        raw = f.metadata()["edgeseq"]
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if change is not None:
        meta = json.loads(raw)
        change(meta)
        raw = json.dumps(meta)
    save_file(tensors, str(dst), metadata={"edgeseq": text(raw) if text else raw})


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
    (("generate", "{B}", "--input", "/dev/zero"), 1),
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
    (("export", "{R}/ckpt_deep.safetensors", "--out", "{R}/x"), 1),
    (("validate", "{B}", "--reference", "{R}/ckpt_deep.safetensors"), 1),
    *((("export", f"{{R}}/tf_{name}.safetensors", "--out", "{R}/x"), 1) for name in HOSTILE_CONFIGS),
    (("bench", "{B}", "--reference", "{R}/tf_positions.safetensors", "--repeats", "1"), 1),
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
    "name, message",
    [
        ("tf_positions", "tf_positions.safetensors: invalid TransformerConfig: max_positions 16777216 is larger than"),
        (
            "tf_table",
            "tf_table.safetensors: its config asks for 268.4 MB of tensors the file does not store (pos_table "
            "(1048576, 64) float32, from max_positions 1048576, d_model 64); at most 67.1 MB",
        ),
        ("tf_layers", "decoder_layers 1073741824 is larger than 1024, the most edgeseq takes"),
        ("tf_width", "ffn_dim 1099511627776 is larger than 65536, the most edgeseq takes"),
        ("ckpt_deep", "ckpt_deep.safetensors: its edgeseq metadata is nested too deeply"),
    ],
)
def test_hostile_checkpoints_are_one_line_naming_the_field(files, name, message):
    """A config that asks for huge sizes, or metadata nested 100k deep: refused before anything is allocated."""
    r = cli("export", files["R"] / f"{name}.safetensors", "--out", files["R"] / "x")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert message in r.stderr, r.stderr
    assert not (files["R"] / "x").exists()


_UNDER_A_MEMORY_LIMIT = """
import resource, sys
import torch
import edgeseq.export.any_model, edgeseq.export.checkpoint, edgeseq.export.pipeline
from edgeseq.cli import main
torch.set_num_threads(1)
with torch.device("meta"):  # what building on the meta device imports (sympy), before the limit
    torch.nn.Embedding(2, 2)
with open("/proc/self/status") as f:
    size = next(int(line.split()[1]) for line in f if line.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + (24 << 20), resource.RLIM_INFINITY))
main(sys.argv[1:])
"""


def test_a_model_that_cannot_be_allocated_is_one_line(files, tmp_path):
    """Within every bound (a 51 MB position table) but over the process's memory limit: torch's allocator
    fails while the model is built, and that is one line, not a traceback from checkpoint.py."""
    ckpt = tmp_path / "positions.safetensors"
    _edited_checkpoint(files["R"] / "tf.safetensors", ckpt, lambda m: m["config"].update(max_positions=200_000))
    r = subprocess.run(
        [sys.executable, "-c", _UNDER_A_MEMORY_LIMIT, "export", ckpt, "--out", tmp_path / "x"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert "positions.safetensors: cannot allocate the model its config describes (51.5 MB): out of memory" in r.stderr
    assert not (tmp_path / "x").exists()


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


def _read_lines(stream, count: int, seconds: float) -> tuple[list[str], bytes]:
    """At least `count` lines from a pipe unless `seconds` pass first (the writer may be stuck): the whole
    lines read, and the start of the next one."""
    import selectors

    lines, buffer, deadline = [], b"", time.monotonic() + seconds
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while len(lines) < count and time.monotonic() < deadline:
            if not sel.select(timeout=max(deadline - time.monotonic(), 0)):
                break
            chunk = os.read(stream.fileno(), 1 << 16)
            if not chunk:
                break
            buffer += chunk
            *done, buffer = buffer.split(b"\n")
            lines += [line.decode() for line in done]
    return lines, buffer


def test_translations_are_written_before_the_input_ends(files, tmp_path):
    """`generate B --input -` with stdin held open: the first windows' translations are on stdout while the
    writer still has stdin open (nothing waits for the end of the input), in input order, then the rest."""
    import numpy as np

    rng = np.random.default_rng(1)
    lines = ["".join(rng.choice(list("abcdefghij"), size=rng.integers(1, 8))) for _ in range(400)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    expected = cli("generate", files["B"], "--input", tmp_path / "in.txt").stdout.splitlines()
    proc = subprocess.Popen(  # windows of 16 x 64 tokens: about 55 lines each
        [sys.executable, "-m", "edgeseq", "generate", files["B"], "--input", "-", "--batch-tokens", "64"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        proc.stdin.write(("\n".join(lines[:300]) + "\n").encode())
        proc.stdin.flush()
        early, started = _read_lines(proc.stdout, 100, seconds=60)
        assert len(early) >= 100, (len(early), proc.stderr.read1() if proc.poll() is not None else "")
        assert early == expected[: len(early)] and proc.poll() is None  # still running: stdin is open
        proc.stdin.write(("\n".join(lines[300:]) + "\n").encode())
        proc.stdin.close()
        rest = (started + proc.stdout.read()).decode().splitlines()
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert early + rest == expected and len(expected) == 400


PROGRESS = re.compile(rb"(\redgeseq: \d+ lines?, \d+ lines/s *)+\redgeseq: 300 lines in \d+\.\d s \(\d+ lines/s\) *\n")


def test_progress_on_stderr(files, tmp_path):
    """--progress (and, by default, a terminal on stderr) shows 'edgeseq: N lines, R lines/s' redrawn in place
    with \\r, then 'edgeseq: N lines in S s' on its own line; no progress when stderr is not a terminal."""
    import pty

    (tmp_path / "in.txt").write_text("abc\nhello world\n" * 150)
    args = ["generate", files["B"], "--input", tmp_path / "in.txt", "--output", tmp_path / "out.txt"]
    r = subprocess.run([sys.executable, "-m", "edgeseq", *map(str, args), "--progress"], capture_output=True)
    assert r.returncode == 0 and PROGRESS.fullmatch(r.stderr), r.stderr
    assert cli(*args).stderr == "" and cli(*args, "--progress", "--no-progress").stderr == ""
    leader, follower = pty.openpty()  # stderr a terminal: progress by default
    try:
        proc = subprocess.Popen([sys.executable, "-m", "edgeseq", *map(str, args)], stderr=follower)
        os.close(follower)
        assert proc.wait(120) == 0
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 1 << 16)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert PROGRESS.fullmatch(shown.replace(b"\r\n", b"\n")), shown  # the terminal writes \n as \r\n
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 300


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
    """100,000 lines take about the memory of 1,000 (benchmarks/file_memory.py reports the figures): lines of
    1-30 characters of the whole source alphabet (spaces and punctuation too), 12 new tokens each, so that
    batches hold sources of many lengths and the caches grow over many steps."""
    import numpy as np

    from tests.conftest import SOURCE_TEXT

    rng = np.random.default_rng(0)
    alphabet = list(SOURCE_TEXT)
    lines = [" ".join("".join(rng.choice(alphabet, size=rng.integers(1, 31))).split()) or "a" for _ in range(100_000)]
    (tmp_path / "small.txt").write_text("\n".join(lines[:1000]) + "\n")
    (tmp_path / "big.txt").write_text("\n".join(lines) + "\n")
    common = ["--max-new-tokens", "12", "--threads", "1", "--output", tmp_path / "out.txt"]
    small, _ = _peak_rss_kb(["generate", files["B"], "--input", tmp_path / "small.txt", *common])
    big, _ = _peak_rss_kb(["generate", files["B"], "--input", tmp_path / "big.txt", *common])
    assert big <= 1.3 * small, (big, small)
    out = (tmp_path / "out.txt").read_text().splitlines()
    assert len(out) == 100_000 and len(set(out)) > 50  # every line translated, and not all alike


@pytest.mark.parametrize(
    "data, message, before",
    [
        (None, "/dev/zero, line 1: longer than 1048576 bytes", 0),  # no newline, ever
        (b"abc\nhello\n" + b"a" * (3 << 20) + b"\nabc\n", "in.txt, line 3: longer than 1048576 bytes", 2),
        (b"abc\ncaf\xe9\nabc\n", "in.txt, line 2: not UTF-8 text", 1),
    ],
    ids=["dev-zero", "long-line", "latin1"],
)
def test_input_that_is_not_lines_of_text_stops_naming_the_line(files, tmp_path, data, message, before):
    """A line is read up to 1 MiB, never whole: /dev/zero is refused at once with bounded memory; the lines
    before a bad one are translated and written first."""
    source = "/dev/zero" if data is None else tmp_path / "in.txt"
    if data is not None:
        source.write_bytes(data)
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeseq", "generate", str(files["B"]), "--input", str(source)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert len(out.splitlines()) == before


def test_reading_dev_zero_stays_small(files):
    """/dev/zero takes the memory of one translation plus a 1 MiB line, not of the endless stream."""
    peak, _ = _peak_rss_kb(["generate", files["B"], "abc"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeseq", "generate", str(files["B"]), "--input", "/dev/zero"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1
    assert usage.ru_maxrss < peak + 32 * 1024, (usage.ru_maxrss, peak)  # a 1 MiB line, not the whole stream


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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "2", "--provider", "cuda"], "--workers decodes batches side by side on the CPU: leave out"),
        (["--workers", "2", "--stream"], "--workers decodes batches side by side on the CPU: leave out"),
        (["--workers", "2", "--ray"], "--ray decodes whole lines on CPUs: leave out --stream, --provider, --engine"),
        (["--workers", "0"], "Invalid value for '--workers': 0 is not in the range 1<=x<=256"),
    ],
)
def test_workers_that_cannot_apply_are_refused(files, args, message):
    r = cli("generate", files["B"], "abc", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_a_file_gives_the_same_output_whatever_the_workers(files, tmp_path):
    import numpy as np

    rng = np.random.default_rng(2)
    lines = ["".join(rng.choice(list("abcdefghij"), size=rng.integers(1, 12))) for _ in range(300)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    outputs = []
    for workers in ("1", "3"):
        out = tmp_path / f"out{workers}.txt"
        r = cli("generate", files["B"], "--input", tmp_path / "in.txt", "--output", out, "--batch-tokens", "256",
                "--workers", workers, "--threads", "2")  # fmt: skip
        assert r.returncode == 0, r.stderr
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] and len(outputs[0].splitlines()) == 300
