"""Crash-safe output files: write under a temporary name, rename only when complete."""

import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

from diffclass_cli.errors import DiffclassError


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def refuse_overwrite(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise DiffclassError(f"{path} already exists; pass --overwrite to replace it")


@contextmanager
def atomic_output(path: Path, overwrite: bool = False, keep_partial: bool = False):
    """Yield `PATH.partial` to write to; rename it to `path` when the block succeeds.

    On failure the partial file is removed, unless `keep_partial` (a resumable run).
    """
    path = Path(path)
    refuse_overwrite(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        yield tmp
    except BaseException:
        if not keep_partial:
            tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
