"""Crash-safe output files: one owner of an output's lifecycle.

An output OUT is written as OUT.partial, locked by the one process writing it, and renamed to
OUT only when complete. A second run aimed at the same OUT is refused before it touches the
partial file, so it can never empty or corrupt a running job's work.
"""

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

from diffclass_cli.errors import DiffclassError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; outputs are still written atomically
    fcntl = None


def existing_file(path: Path, what: str) -> Path:
    """`path` as a Path, when it is a file; else one line naming `what` was looked for."""
    path = Path(path)
    if not path.is_file():
        raise DiffclassError(f"{what} {path} does not exist")
    return path


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def refuse_overwrite(path: Path, overwrite: bool) -> None:
    path = Path(path)
    if path.is_dir():
        raise DiffclassError(f"{path} is a folder; give a file name to write")
    if path.exists() and not overwrite:
        raise DiffclassError(f"{path} already exists; pass --overwrite to replace it")


def _make_parent(path: Path) -> None:
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise DiffclassError(f"cannot write {path}: {parent} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)


def _lock(tmp: Path, path: Path) -> int | None:
    """Open and lock `tmp` (created empty when absent, never truncated); the descriptor holds the lock."""
    if fcntl is None:
        return None
    while True:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DiffclassError(f"another run is writing {path} ({tmp} is locked); wait for it or stop it "
                                 "first") from None
        try:
            if os.path.samestat(os.fstat(fd), os.stat(tmp)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the run we waited on renamed or removed that file: lock the new one


@contextmanager
def atomic_output(path: Path, overwrite: bool = False, keep_partial: bool = False):
    """Lock and yield `PATH.partial` to write to (it may hold an earlier run's bytes: a
    writer truncates it or resumes it); rename it to `path` when the block succeeds.

    On failure the partial file is removed, unless `keep_partial` (a resumable run).
    """
    path = Path(path)
    refuse_overwrite(path, overwrite)
    _make_parent(path)
    tmp = partial_path(path)
    fd = _lock(tmp, path)
    try:
        refuse_overwrite(path, overwrite)  # another run may have finished it while we started
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        if not keep_partial:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
