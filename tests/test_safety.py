"""Nothing the user did not name is removed or replaced, and every filesystem failure is one line.

Each refusal is checked three ways: the message, the exit code, and a digest of every file under the test's
folder before and after (nothing on disk changed). Writers take an exclusive lock on their target; a killed
writer leaves the old bundle whole; bundles get the user's umask.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeseq.runtime import Generator, load_bundle


def tree(folder: Path) -> dict[str, str]:
    """Every file (and symlink, and empty directory) under `folder`, with its content's sha256."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in files:
            p = Path(root) / name
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "special"
        for name in dirs:
            out[str((Path(root) / name).relative_to(folder)) + "/"] = "dir"
    return out


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeseq", *map(str, args)], capture_output=True, text=True, **kw)


def assert_refused(r, code: int, message: str) -> None:
    assert r.returncode == code, (r.returncode, r.stderr)
    errors = [line for line in r.stderr.splitlines() if line.startswith("edgeseq: error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.fixture
def home(bundle_factory, checkpoint_and_bundle, tmp_path):
    """A folder holding a bundle `b`, a checkpoint `m.safetensors`, a file and a user's own directory."""
    src, *_ = bundle_factory()
    shutil.copytree(src, tmp_path / "b")
    shutil.copy(checkpoint_and_bundle[0], tmp_path / "m.safetensors")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (tmp_path / "data.txt").write_text("abc\nhello world\n")
    return tmp_path


REFUSALS = [
    # (command, exit code, message): every one must leave the folder exactly as it was
    (("quantize", "{h}/b", "--out", "{h}/b", "--mode", "int8", "--force"), 1, "is the input"),
    (("quantize", "{h}/b", "--out", "{h}", "--mode", "int8", "--force"), 1, "contains the input"),
    (("quantize", "{h}/b", "--out", "{h}/b/inner", "--mode", "int8"), 1, "is inside the input"),
    (("quantize", "{h}/b", "--out", "{h}/notes.txt", "--mode", "int8", "--force"), 1, "is not a directory"),
    (("quantize", "{h}/b", "--out", "{h}/photos", "--mode", "int8", "--force"), 1, "not an edgeseq bundle"),
    (("quantize", "{h}/b", "--out", "{h}/b", "--auto", "--force", "--data", "{h}/data.txt"), 1, "is the input"),
    (("quantize", "{h}/b", "--out", "{h}", "--auto", "--force", "--data", "{h}/data.txt"), 1, "contains the input"),
    (("export", "{h}/m.safetensors", "--out", "{h}/photos", "--force"), 1, "not an edgeseq bundle"),
    (("export", "{h}/m.safetensors", "--out", "{h}/notes.txt", "--force"), 1, "is not a directory"),
    (("export", "{h}/m.safetensors", "--out", "{h}/b"), 1, "already exists"),
    (("export", "{h}/m.safetensors", "--out", "{h}/m.safetensors/x"), 1, "is inside the input"),
    (("generate", "{h}/b", "--input", "{h}/data.txt", "--output", "{h}/data.txt"), 1, "is the input"),
    (("generate", "{h}/b", "abc", "--output", "{h}/photos"), 1, "is a directory"),
    (("validate", "{h}/b", "--reference", "{h}/m.safetensors", "--json", "{h}/photos"), 1, "is a directory"),
    (("demo", "--out", "{h}/photos"), 1, "already exists"),
    # reports and outputs never land on an input (found by a red-team run)
    (
        ("validate", "{h}/b", "--reference", "{h}/m.safetensors", "--json", "{h}/b/edgeseq.json"),
        1,
        "is inside the input",
    ),
    (("validate", "{h}/b", "--reference", "{h}/m.safetensors", "--json", "{h}/m.safetensors"), 1, "is the input"),
    (
        ("validate", "{h}/b", "--reference", "{h}/m.safetensors", "--data", "{h}/data.txt", "--json", "{h}/data.txt"),
        1,
        "is the input",
    ),
    (
        ("bench", "{h}/b", "--new-tokens", "2", "--repeats", "1", "--json", "{h}/b/edgeseq.json"),
        1,
        "is inside the input",
    ),
    (("generate", "{h}/b", "abc", "--output", "{h}/b/edgeseq.json"), 1, "is inside the input"),
    (("export", "{h}/m.safetensors", "--out", "{h}/out", "--data", "{h}/out/data.txt"), 1, "contains the input"),
    (
        ("quantize", "{h}/b", "--out", "{h}/q2", "--mode", "static-int8", "--calibration", "{h}/q2/c.txt"),
        1,
        "contains the input",
    ),
]


def _inputs_inside_targets(home):
    for name in ("out", "q2"):  # data and calibration files that sit inside the --out of a run
        (home / name).mkdir(exist_ok=True)
    (home / "out" / "data.txt").write_text("abc\n")
    (home / "q2" / "c.txt").write_text("abc\n")


@pytest.mark.parametrize("args, code, message", REFUSALS, ids=[" ".join(a[:1] + a[3:5]) for a, *_ in REFUSALS])
def test_refused_before_any_work_and_nothing_changes(home, args, code, message):
    _inputs_inside_targets(home)
    before = tree(home)
    r = cli(*(a.format(h=home) for a in args))
    assert_refused(r, code, message)
    assert tree(home) == before


def test_force_replaces_only_a_bundle_in_one_step(home):
    before = tree(home / "b")
    r = cli("quantize", home / "b", "--out", home / "q", "--mode", "int8")
    assert r.returncode == 0, r.stderr
    r = cli("quantize", home / "b", "--out", home / "q", "--mode", "fp16", "--force")
    assert r.returncode == 0, r.stderr
    assert tree(home / "b") == before and load_bundle(home / "q").manifest.provenance["quantize"]
    assert sorted(p.name for p in home.iterdir()) == ["b", "data.txt", "m.safetensors", "notes.txt", "photos", "q"]


def test_auto_force_keeps_the_old_bundle_until_the_new_one_is_whole(home):
    cli("quantize", home / "b", "--out", home / "q", "--mode", "fp16")
    old = tree(home / "q")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgeseq",
            "quantize",
            home / "b",
            "--out",
            home / "q",
            "--auto",
            "--force",
            "--data",
            home / "data.txt",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:  # kill it while it tries recipes
        if any(home.glob(".q.partial-trials-*/trial*")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "quantize --auto finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert tree(home / "q") == old  # the old bundle, whole and untouched
    Generator(home / "q").generate(["abc"])
    r = cli("quantize", home / "b", "--out", home / "q", "--auto", "--force", "--data", home / "data.txt")
    assert r.returncode == 0 and "wrote" in r.stdout, r.stderr  # the next run cleans up after the killed one
    assert not list(home.glob(".q.partial-*"))


def test_a_second_writer_to_the_same_out_is_refused(home):
    lock = os.open(home / ".q.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)  # another edgeseq process is writing q
    try:
        r = cli("quantize", home / "b", "--out", home / "q", "--mode", "int8")
        assert_refused(r, 1, "is being written by another edgeseq process")
        assert not (home / "q").exists()
    finally:
        os.close(lock)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "edgeseq", "quantize", home / "b", "--out", home / "q", "--mode", mode],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mode in ("int8", "fp16")
    ]
    results = [(p.wait(), *p.communicate()) for p in procs]
    wrote = [out for code, out, _ in results if code == 0 and "wrote" in out]
    refused = [err for code, _, err in results if code == 1]
    assert len(wrote) == 1, results  # never two "wrote"
    assert len(wrote) + len(refused) == 2
    assert all("being written by another" in e or "already exists" in e for e in refused), refused


def test_bundles_get_the_users_umask(bundle_factory, tmp_path):
    src, *_ = bundle_factory()
    for mask, dir_mode, file_mode in ((0o022, 0o755, 0o644), (0o077, 0o700, 0o600)):
        out = tmp_path / f"q{mask:o}"
        r = cli("quantize", src, "--out", out, "--mode", "int8", preexec_fn=lambda m=mask: os.umask(m))
        assert r.returncode == 0, r.stderr
        assert out.stat().st_mode & 0o777 == dir_mode
        assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {file_mode}


def _small_files(limit: int):
    def set_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return set_limit


def test_a_full_disk_is_one_line_and_leaves_the_old_bundle(home):
    cli("quantize", home / "b", "--out", home / "q", "--mode", "fp16")
    old = tree(home / "q")
    r = cli("quantize", home / "b", "--out", home / "q", "--mode", "int8", "--force", preexec_fn=_small_files(20000))
    assert_refused(r, 1, "File too large")
    assert tree(home / "q") == old and not list(home.glob(".q.partial-*"))
    device = os.stat("/dev/full")
    r = cli("generate", home / "b", "abc", "--output", "/dev/full")
    assert_refused(r, 1, "/dev/full: no space left on the device")
    assert os.stat("/dev/full").st_rdev == device.st_rdev and Path("/dev/full").is_char_device()  # never replaced


@pytest.mark.parametrize("out", ["/proc/edgeseq-x", "/sys/edgeseq-x", "/dev/null/x"])
def test_special_paths_are_one_line(home, out):
    r = cli("quantize", home / "b", "--out", out, "--mode", "int8")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert out.split("/")[1] in r.stderr


def test_force_never_deletes_files_that_are_not_the_bundles(home):
    cli("quantize", home / "b", "--out", home / "q", "--mode", "fp16")
    (home / "q" / "notes.txt").write_text("mine")
    before = tree(home)
    r = cli("quantize", home / "b", "--out", home / "q", "--mode", "int8", "--force")
    assert_refused(r, 1, "holds files that are not the bundle's (notes.txt)")
    assert tree(home) == before


def test_a_users_function_inside_the_out_bundle_is_an_input(home):
    (home / "b" / "u.py").write_text("def f():\n    return {}\n")
    before = tree(home)
    r = cli("export", f"{home}/b/u.py:f", "--out", home / "b", "--force")
    assert_refused(r, 1, "contains the input")
    assert tree(home) == before


@pytest.mark.parametrize("command", [("bench", "--new-tokens", "2", "--repeats", "1"), ("validate", "--no-record")])
def test_reports_to_a_device_do_not_replace_it(home, command):
    device = os.stat("/dev/full")
    extra = ["--reference", home / "m.safetensors"] if command[0] == "validate" else []
    r = cli(command[0], home / "b", *command[1:], *extra, "--json", "/dev/full")
    assert r.returncode == 1 and "no space left on the device" in r.stderr, r.stderr
    assert Path("/dev/full").is_char_device() and os.stat("/dev/full").st_rdev == device.st_rdev


def test_a_demo_that_cannot_write_leaves_nothing(tmp_path):
    r = cli("demo", "--steps", "1", "--out", tmp_path / "demo", preexec_fn=_small_files(4096))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "File too large" in r.stderr, r.stderr
    assert not (tmp_path / "demo").exists()


@contextlib.contextmanager
def unwritable(*folders: Path):
    """Make `folders` refuse every change while the block runs: `chattr +i` as root (permission bits do not
    stop root), permission bits otherwise. Yields the cause the error must name."""
    if os.geteuid() != 0:
        for f in folders:
            f.chmod(0o555)
        try:
            yield "permission denied"
        finally:
            for f in folders:
                f.chmod(0o755)
        return
    if shutil.which("chattr") is None:
        pytest.skip("running as root, and chattr (e2fsprogs) is not installed: no way to make a folder read-only")
    done = []
    try:
        for f in folders:
            r = subprocess.run(["chattr", "+i", f], capture_output=True, text=True)
            if r.returncode != 0:
                pytest.skip(f"chattr +i does not work here ({r.stderr.strip()}): no way to make a folder read-only")
            done.append(f)
        yield "operation not permitted"
    finally:
        for f in done:
            subprocess.run(["chattr", "-i", f], check=True)


UNWRITABLE = [
    # (command, the path the error must name); {h}/ro is a folder nothing can be written into, {h}/ro/q an
    # old bundle inside it, {h}/frozen an old bundle that cannot be changed (its folder can)
    (("export", "{h}/m.safetensors", "--out", "{h}/ro/new"), "{h}/ro/new"),
    (("quantize", "{h}/b", "--out", "{h}/ro/new", "--mode", "int8"), "{h}/ro/new"),
    (("quantize", "{h}/b", "--out", "{h}/ro/q", "--mode", "int8", "--force"), "{h}/ro/q"),
    (("quantize", "{h}/b", "--out", "{h}/ro/new", "--auto", "--data", "{h}/data.txt"), "{h}/ro/new"),
    (("export", "{h}/m.safetensors", "--out", "{h}/frozen", "--force"), "{h}/frozen"),
    (("quantize", "{h}/b", "--out", "{h}/frozen", "--mode", "int8", "--force"), "{h}/frozen"),
    (("generate", "{h}/b", "abc", "--output", "{h}/ro/out.txt"), "{h}/ro/out.txt"),
    (
        ("validate", "{h}/b", "--reference", "{h}/m.safetensors", "--json", "{h}/ro/r.json", "--no-record"),
        "{h}/ro/r.json",
    ),
    (("validate", "{h}/frozen", "--reference", "{h}/m.safetensors"), "{h}/frozen/edgeseq.json"),
    (("bench", "{h}/b", "--new-tokens", "2", "--repeats", "1", "--json", "{h}/ro/b.json"), "{h}/ro/b.json"),
    (("demo", "--steps", "1", "--out", "{h}/ro/demo"), "{h}/ro/demo"),
]


@pytest.mark.parametrize("args, path", UNWRITABLE, ids=[" ".join(a[:1] + a[3:5]) for a, _ in UNWRITABLE])
def test_an_unwritable_target_is_one_line_naming_it(home, args, path):
    """A read-only or immutable target: one line naming the path the user gave (never edgeseq's lock or
    partial file beside it) and the cause; nothing on disk changed."""
    (home / "ro").mkdir()
    shutil.copytree(home / "b", home / "ro" / "q")
    shutil.copytree(home / "b", home / "frozen")
    frozen = path.startswith("{h}/frozen")
    before = tree(home)
    with unwritable(home / ("frozen" if frozen else "ro")) as cause:
        if frozen and os.geteuid() != 0:
            pytest.skip("permission bits on a directory do not stop its renaming by its owner")
        r = cli(*(a.format(h=home) for a in args))
    assert_refused(r, 1, f"{path.format(h=home)}: {cause}")
    assert ".lock" not in r.stderr and ".partial" not in r.stderr and ".tmp" not in r.stderr, r.stderr
    assert tree(home) == before


def test_errors_and_messages_name_the_users_path(home):
    """/proc/self/x is written through /proc/PID/.x.partial-PID: the error names /proc/self/x; a path with a
    newline in it is printed escaped, on one line."""
    r = cli("generate", home / "b", "abc", "--output", "/proc/self/x")
    assert r.returncode == 1 and r.stderr.startswith("edgeseq: error: /proc/self/x: ") and ".partial" not in r.stderr
    odd = home / "q\nx"
    r = cli("quantize", home / "b", "--out", odd, "--mode", "int8")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"wrote {home}/q\\nx (dynamic-int8)"), r.stdout
    assert lines[1] == f"check it: edgeseq validate {home}/q\\nx --reference {home}/b --data SOURCES"
    r = cli("quantize", home / "b", "--out", odd, "--mode", "int8")
    assert_refused(r, 1, f"{home}/q\\nx already exists")
    assert r.stderr.count("\n") == 1


def test_checkpoints_get_the_users_umask(tmp_path):
    """save_checkpoint (and so the demo's dates.safetensors) respects the umask, as bundles do."""
    from edgeseq.export import save_checkpoint
    from tests.conftest import tiny_rnn

    model, sv, tv = tiny_rnn()
    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(mask)
        try:
            path = save_checkpoint(tmp_path / f"m{mask:o}.safetensors", model, sv, tv)
        finally:
            os.umask(old)
        assert path.stat().st_mode & 0o777 == mode
