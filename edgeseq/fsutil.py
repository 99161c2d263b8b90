"""Writing a bundle safely (no torch, no onnx): nothing the user did not name is removed or replaced.

`building(target, force, inputs)` is the one way edgeseq writes a directory: it refuses a target that is a
file, a directory that is not an edgeseq bundle, or one equal to, inside, or above an input; takes an
exclusive lock so that a second writer to the same target fails at once; builds in a hidden directory
beside the target with the user's umask; and puts the result in place in one step when it is whole.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from edgeseq.errors import EdgeseqError
from edgeseq.escapes import shown

_RENAME_EXCHANGE = 2  # Linux renameat2 flag: swap two paths in one step
MANIFEST = "edgeseq.json"


class WriteError(EdgeseqError):
    """The filesystem refused a write (disk full, read-only, no permission, a special path)."""


class Abandon(Exception):  # noqa: N818 - a signal, not an error
    """Raised inside `building` to leave the target as it was: the partial directory is removed, nothing
    is installed, and the block ends quietly."""


class TargetError(EdgeseqError):
    """The output path names something edgeseq must not replace (a file, another directory, an input)."""


def describe_os_error(e: OSError, path: Path | str) -> str:
    """One line naming the path (control characters escaped) and the cause of a failed file operation."""
    why = {
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EROFS: "the filesystem is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.ENOENT: "no such file or directory",
        errno.ENOTDIR: "a part of the path is not a directory",
        errno.EISDIR: "it is a directory",
        errno.ELOOP: "too many levels of symbolic links",
        errno.ENAMETOOLONG: "the name is too long",
        errno.EXDEV: "it is on another filesystem",
    }.get(e.errno, e.strerror or type(e).__name__)
    return f"{shown(path)}: {why}"


def _write_error(e: OSError, target: Path, tmp: Path | None = None) -> WriteError:
    """A failure while writing `target`, naming the path the user gave, never the lock or the partial
    directory edgeseq makes beside it: a file inside the partial directory is named as it would be inside
    the target (`q/weights.bin: no space left on the device`)."""
    name: Path = target
    if tmp is not None and e.filename:
        try:
            name = target / Path(os.fsdecode(e.filename)).relative_to(tmp)
        except ValueError:
            pass
    return WriteError(describe_os_error(e, name))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories where the OS can (Linux renameat2); False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def replace_dir(new: Path, target: Path) -> None:
    """Move the finished directory `new` to `target`, replacing what is there.

    At every instant `target` is either the complete old directory or the complete new one: on Linux the
    two are swapped in one system call; elsewhere the old one is renamed aside first (a crash between the
    two renames leaves it, whole, at `.NAME.old-*`).
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        new.rename(target)
        return
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old directory
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _related(a: Path, b: Path) -> str | None:
    if a == b:
        return "is"
    if a.is_relative_to(b):
        return "is inside"
    if b.is_relative_to(a):
        return "contains"
    return None


def check_target(target: str | Path, force: bool, inputs: Sequence[str | Path] = ()) -> Path:
    """Refuse a target that would damage something: see `building`. Returns it as a Path."""
    target = Path(target)
    text = str(target)
    if not text or "\0" in text:
        raise TargetError(f"--out {text!r} is not a usable path")
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        raise TargetError(f"--out {text!r} is not a usable path (it cannot be encoded)") from None
    try:
        real = target.resolve()
        for given in inputs:
            relation = _related(real, Path(given).resolve())
            if relation:
                raise TargetError(
                    f"--out {shown(target)} {relation} the input {shown(given)}: write the new bundle somewhere else "
                    "(edgeseq never writes over, into or around its inputs)"
                )
        if target.is_symlink() or (target.exists() and not target.is_dir()):
            raise TargetError(f"--out {shown(target)} exists and is not a directory: edgeseq replaces only a bundle")
        if target.exists() and any(target.iterdir()):  # an empty directory holds nothing to lose
            if not (target / MANIFEST).is_file():
                raise TargetError(
                    f"--out {shown(target)} exists and is not an edgeseq bundle (no {MANIFEST}): refusing to replace "
                    "it, even with --force; choose a new directory"
                )
            if not force:
                raise TargetError(
                    f"{shown(target)} already exists: choose another --out, or pass --force to replace it"
                )
            foreign = sorted(p.name for p in target.iterdir() if p.name not in bundle_file_names(target))
            if foreign:
                raise TargetError(
                    f"--out {shown(target)} holds files that are not the bundle's ({shown(', '.join(foreign[:3]))}): "
                    "replacing it would delete them; move them away or choose another --out"
                )
    except OSError as e:
        raise _write_error(e, target) from None
    return target


def bundle_file_names(folder: Path) -> set[str]:
    """The names of a bundle's own files: what its manifest lists (or, if it cannot be read, what edgeseq
    writes), and the manifest itself."""
    names = {MANIFEST, f".{MANIFEST}.tmp"}
    try:
        from edgeseq.manifest import read_manifest
        from edgeseq.runtime.tokenizer import tokenizer_files

        m = read_manifest(folder)
        return names | {g.file for g in m.graphs.values()} | set(m.files) | set(tokenizer_files(m.tokenizer))
    except EdgeseqError:
        pass
    return names | {
        p.name
        for p in folder.iterdir()
        if p.suffix in (".onnx", ".spm")
        or p.name in ("weights.bin", "tokenizer.json", "vocab.json")
        or p.name.endswith(("_vocab.json", "_tokenizer.json"))
    }


def check_output_file(path: str | Path, flag: str, inputs: Sequence[str | Path] = ()) -> Path:
    """Refuse, before any work, an output file that is a directory, has no folder, or is (or is inside) an
    input: a report must never overwrite what it reports on."""
    p = Path(path)
    try:
        if p.is_dir():
            raise TargetError(f"{flag} {shown(path)} is a directory: give a file name")
        if not p.parent.is_dir():
            raise TargetError(f"{flag} {shown(path)}: the folder {shown(p.parent)} does not exist")
        real = p.resolve()
        for given in inputs:
            other = Path(given).resolve()
            if real == other or real.is_relative_to(other):
                raise TargetError(
                    f"{flag} {shown(path)} is {'inside ' if real != other else ''}the input {shown(given)}: write it "
                    "somewhere else"
                )
    except OSError as e:
        raise WriteError(describe_os_error(e, path)) from None
    return p


def write_file_whole(path: str | Path, text: str) -> None:
    """Write a text file whole: a regular file (or a new one) through a temporary file renamed over it; a
    special file (a device, a pipe) directly: it is never replaced. Errors name `path`, not the temporary
    file."""
    p = Path(path).resolve()
    try:
        if p.exists() and not p.is_file():
            with open(p, "w", encoding="utf-8") as f:
                f.write(text)
            return
        tmp = p.with_name(f".{p.name}.partial-{os.getpid()}")
        try:
            tmp.write_text(text, encoding="utf-8")
            if p.exists():
                os.chmod(tmp, p.stat().st_mode & 0o777)
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as e:
        raise WriteError(describe_os_error(e, path)) from None


def glob_escape(name: str) -> str:
    """`name` with glob's special characters made literal."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode a new file gets under the user's umask (0644 under the usual 022)."""
    return 0o666 & ~_umask()


@contextlib.contextmanager
def building(target: str | Path, force: bool = False, inputs: Sequence[str | Path] = ()) -> Iterator[Path]:
    """Yield a new empty directory beside `target`; when the block ends without error, it replaces `target`.

    Refused before any work: `target` equal to, inside, or an ancestor of one of `inputs`; a file or a
    non-bundle directory at `target` (even with `force`); an existing bundle without `force`; a second
    writer to the same target while this one runs (an exclusive lock). On any failure the partial
    directory is removed and an old bundle at `target` stays as it was. Files get the user's umask.
    """
    target = check_target(target, force, inputs)
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(e, target) from None
    lock_path = parent / f".{target.name}.lock"
    lock = _lock(lock_path, target)
    tmp: Path | None = None
    try:
        check_target(target, force, inputs)  # again, under the lock: another writer may have just finished
        for stale in parent.glob(f".{glob_escape(target.name)}.partial-*"):  # left by a writer that was killed:
            shutil.rmtree(stale, ignore_errors=True)  # under the lock, no live writer owns one
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=parent))
            os.chmod(tmp, 0o777 & ~_umask())
        except OSError as e:
            raise _write_error(e, target) from None
        try:
            yield tmp
            _set_modes(tmp)
            replace_dir(tmp, target)
        except Abandon:
            pass
        except OSError as e:
            raise _write_error(e, target, tmp) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(lock)


def _lock(path: Path, target: Path) -> int:
    """An exclusive lock on `path` (created); refused at once if another process holds it."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
        except OSError as e:
            raise _write_error(e, target) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise TargetError(
                f"{shown(target)} is being written by another edgeseq process; try again when it ends"
            ) from None
        try:  # the holder before us may have removed the file as we opened it: lock the file that is there
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _set_modes(directory: Path) -> None:
    """Files 0666 and directories 0777 less the umask (tempfile creates them private)."""
    mask = _umask()
    for root, dirs, files in os.walk(directory):
        for d in dirs:
            os.chmod(Path(root) / d, 0o777 & ~mask)
        for f in files:
            os.chmod(Path(root) / f, 0o666 & ~mask)
    os.chmod(directory, 0o777 & ~mask)
