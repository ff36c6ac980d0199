"""Crash-safe output files: one owner of an output's lifecycle.

An output OUT is written as OUT.partial, locked by the one process writing it, and renamed to
OUT only when complete. A second run aimed at the same OUT is refused before it touches the
partial file, so it can never empty or corrupt a running job's work.
"""

import errno
import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

from diffclass_cli.console import log
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


_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read once: the process's umask, which written files follow
STDOUT = "-"


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def refuse_overwrite(path: Path, overwrite: bool, inputs: Sequence[Path | None] = ()) -> None:
    """Refuse to write `path` over an existing file without `overwrite`, ever over a folder, to
    standard output (binary files) or over one of the command's own `inputs`."""
    if str(path) == STDOUT:
        raise DiffclassError(f"this output is a binary file, not text: give a file name, not {STDOUT!r} "
                             "(standard output is for CSV, JSON and text outputs)")
    path = Path(path)
    if path.is_dir():
        raise DiffclassError(f"{path} is a folder; give a file name to write")
    if path.exists() and not overwrite:
        raise DiffclassError(f"{path} already exists; pass --overwrite to replace it")
    if path.exists() and not path.is_file():
        raise DiffclassError(f"{path} is not a regular file (a device, a pipe?): --overwrite replaces files only")
    refuse_inputs_as_outputs([list(inputs)], [path])


def _make_parent(path: Path) -> None:
    for parent in reversed(path.parents):
        if parent.exists() and not parent.is_dir():
            raise DiffclassError(f"cannot write {path}: {parent} is a file, not a folder")
    path.parent.mkdir(parents=True, exist_ok=True)


def _lock(tmp: Path, path: Path) -> int | None:
    """Open and lock `tmp` (created empty when absent, never truncated); the descriptor holds the lock.
    A partial file is taken only if it is a regular file of this user's with no other name: in a
    shared folder a planted link, hard link, pipe or another user's file is refused, never written."""
    if tmp.is_symlink():  # in a shared folder, a planted link would make this run write where it points
        raise _planted(tmp, "a symbolic link")
    if fcntl is None:
        return None
    while True:
        try:
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as err:
            if err.errno == errno.ELOOP:  # planted between the check above and here
                raise _planted(tmp, "a symbolic link") from None
            raise
        found = os.fstat(fd)
        problem = ("not a regular file" if not stat.S_ISREG(found.st_mode) else
                   "a file with another name too (a hard link)" if found.st_nlink != 1 else
                   "another user's file" if found.st_uid != os.geteuid() else None)
        if problem:
            os.close(fd)
            raise _planted(tmp, problem)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DiffclassError(f"another run is writing {path} ({tmp} is locked); wait for it or stop it "
                                 "first") from None
        try:
            if os.path.samestat(found, os.stat(tmp)):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the run we waited on renamed or removed that file: lock the new one


def _planted(tmp: Path, what: str) -> DiffclassError:
    return DiffclassError(f"{tmp} is {what}, not a file this run made; remove it and run again")


def _through_descriptor(fd: int | None, tmp: Path) -> Path:
    """A name of the file open as `fd` that no rename or link at `tmp` can redirect (Linux's
    /proc/self/fd), for writers that open their output by name; `tmp` where there is none."""
    name = Path(f"/proc/self/fd/{fd}")
    return name if fd is not None and name.exists() else tmp


def _still_ours(fd: int, tmp: Path) -> bool:
    """Whether `tmp` is still the regular file open as `fd`, with no other name."""
    if not os.path.lexists(tmp):
        return False
    now = os.lstat(tmp)
    return stat.S_ISREG(now.st_mode) and os.path.samestat(now, os.fstat(fd)) and now.st_nlink == 1


def _rename_into_place(fd: int | None, tmp: Path, path: Path) -> None:
    """Give the finished file the umask's mode through its descriptor and rename it to `path`, if
    `tmp` is still the file this run wrote and `path` is a regular file or nothing."""
    if fd is not None:
        if not _still_ours(fd, tmp):
            raise DiffclassError(f"{tmp} was replaced while this run wrote it; {path} was left as it was")
        os.fchmod(fd, 0o666 & ~_UMASK)  # as the umask says, whatever mode the writer's library chose
    else:
        os.chmod(tmp, 0o666 & ~_UMASK)
    if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
        raise DiffclassError(f"{path} is not a regular file (a link, a pipe, a folder?): it is replaced by files only")
    os.replace(tmp, path)


@contextmanager
def atomic_output(path: Path, overwrite: bool = False, keep_partial: bool = False,
                  inputs: Sequence[Path | None] = ()):
    """Lock and yield a name of `PATH.partial` to write to (it may hold an earlier run's bytes: a
    writer truncates it or resumes it); rename it to `path` when the block succeeds.

    The name yielded reaches the file this run opened whatever is done at `PATH.partial` meanwhile
    (`_through_descriptor`), except for a resumable run (`keep_partial`), whose writer needs the
    real name. On failure the partial file is removed, unless `keep_partial`.
    """
    refuse_overwrite(path, overwrite, inputs)
    path = Path(path)
    _make_parent(path)
    tmp = partial_path(path)
    fd = _lock(tmp, path)
    try:
        refuse_overwrite(path, overwrite, inputs)  # another run may have finished it while we started
        yield tmp if keep_partial else _through_descriptor(fd, tmp)
        _rename_into_place(fd, tmp, path)
    except BaseException:
        if not keep_partial and (fd is None or _still_ours(fd, tmp)):  # never what another put there
            tmp.unlink(missing_ok=True)
        raise
    finally:
        if fd is not None:
            os.close(fd)


def refuse_folder(path: Path, overwrite: bool) -> None:
    """Refuse to write a folder of outputs over a file, or over a folder that holds files without `overwrite`."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DiffclassError(f"{path} is a file; give a folder to write the results into")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise DiffclassError(f"{path} already holds files; pass --overwrite to replace them")


def _named(values) -> list[Path]:
    """The paths an option value names (a path, a list of them, None or '-', which names none)."""
    flat = values if isinstance(values, list | tuple) else [values]
    return [Path(v) for v in flat if v is not None and str(v) != STDOUT]


def _paths(values) -> list[Path]:
    """The existing files and folders among option values (a built-in source name is none)."""
    return [p for p in _named(values) if os.path.exists(p)]  # a dangling link names nothing to compare


def refuse_inputs_as_outputs(inputs, outputs, folder_outputs=(), roots=()) -> None:
    """Refuse, whatever --overwrite says, an output that is one of the inputs (the same file by
    device and inode: a hard link or another name too) or lies inside an input folder, and a
    folder output that holds an input or lies inside one: writing it would destroy what the
    command reads. `roots`: folders read too, which outputs may lie in but not be. Each argument
    is a list of option values (paths, lists of paths, None)."""
    read = [p for value in inputs for p in _paths(value)]
    for given in [p for value in [*outputs, *folder_outputs] for p in _paths(value)]:
        for source in read + [p for value in roots for p in _paths(value)]:
            if os.path.samefile(given, source):
                raise DiffclassError(f"{given} is also an input of this command ({source}); write to another file")
    written = [p for value in outputs for p in _named(value)]
    folders = [p for value in folder_outputs for p in _named(value)]
    for out in written + folders:
        where = Path(os.path.realpath(out))
        for source in read:
            real = Path(os.path.realpath(source))
            inside = real.is_dir() and where.is_relative_to(real)
            holds = out in folders and real.is_relative_to(where)
            if inside or holds:
                raise DiffclassError(f"{out} would {'lie in' if inside else 'hold'} an input of this command "
                                     f"({source}); write to a place of its own")


@contextmanager
def atomic_folder(path: Path, overwrite: bool = False, keep_partial: bool = False):
    """Yield a new empty folder beside `path`, with a name no other run can foresee, to write a
    folder of outputs into; it becomes `path` when the block succeeds. A `path` that holds files
    is replaced only with `overwrite`. Nothing this did not create is ever deleted. On failure
    the folder is removed, or, with `keep_partial`, kept (what was finished) and named."""
    path = Path(path)
    refuse_folder(path, overwrite)
    _make_parent(path)
    tmp = Path(tempfile.mkdtemp(prefix=f"{path.name}.partial-", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        if path.exists():
            refuse_folder(path, overwrite)
            replaced = Path(tempfile.mkdtemp(prefix=f".{path.name}.replaced-", dir=path.parent))
            os.replace(path, replaced)  # onto the empty folder just made: never another's
            os.replace(tmp, path)
            shutil.rmtree(replaced)
        else:
            os.replace(tmp, path)
    except BaseException:
        if keep_partial and any(tmp.iterdir()):
            log.warning(f"stopped: what was finished is in {tmp}/")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


PNG_SOFTWARE = "diffclass"  # the PNG text chunk `Software` of every picture diffclass writes starts so


def png_metadata(description: str) -> dict[str, str]:
    """Text chunks for a PNG we write, so that `info` can say what it is."""
    from diffclass_cli import __version__

    return {"Software": f"{PNG_SOFTWARE} {__version__}", "Description": description}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
