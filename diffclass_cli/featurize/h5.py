"""The feature file (HDF5): the one place that knows its layout.

    features     float32 [N, D], chunked along N
    labels       int64 [N]: class index, or -1 for unlabeled
    paths        UTF-8 [N]: source-relative path, or name:index for built-in datasets
    class_names  UTF-8 [K] (empty when unlabeled)
    skipped      UTF-8 [M, 2]: (path, reason) of files that could not be read
    attributes   extractor_sha256, extractor_name, feature_dim, timesteps, taps, pool,
                 source, source_images, source_fingerprint, shard ("I/N"), provider,
                 created, diffclass_version, ...
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from diffclass_cli.console import log
from diffclass_cli.errors import DiffclassError
from diffclass_cli.files import existing_file

STR = h5py.string_dtype("utf-8")
CHUNK_ROWS = 1024
PROGRESS_ATTR = "source_rows_done"  # rows of the source consumed so far (written or skipped)


def storable(text: str) -> str:
    """Text as valid UTF-8: a file name that is not UTF-8 (held by Python as surrogate
    escapes) keeps its odd bytes as `\\xff` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class FeatureWriter:
    """Appends rows batch by batch, so memory stays flat; can reopen a partial file to resume.

    `path` is locked by its owner (files.atomic_output), so HDF5's own lock is not taken.
    """

    def __init__(self, path: Path, feature_dim: int, attrs: dict, class_names: list[str], resume: bool = False):
        self.resumed = resume and self._reopen(path)
        if self.resumed:
            self._check_resumable(path, attrs)
            return
        self.file = h5py.File(path, "w", locking=False)
        f = self.file
        f.create_dataset("features", (0, feature_dim), np.float32, maxshape=(None, feature_dim),
                         chunks=(CHUNK_ROWS, feature_dim))
        f.create_dataset("labels", (0,), np.int64, maxshape=(None,), chunks=(CHUNK_ROWS,))
        f.create_dataset("paths", (0,), STR, maxshape=(None,), chunks=(CHUNK_ROWS,))
        f.create_dataset("skipped", (0, 2), STR, maxshape=(None, 2), chunks=(256, 2))
        f.create_dataset("class_names", data=np.array(class_names, dtype=object), dtype=STR)
        f.attrs.update(attrs)
        f.attrs[PROGRESS_ATTR] = 0
        f.attrs["rows"] = 0

    def _reopen(self, path: Path) -> bool:
        """Open the partial file of an earlier run; False when it holds nothing to resume."""
        if path.stat().st_size == 0:
            return False
        try:
            self.file = h5py.File(path, "a", locking=False)
            if all(name in self.file for name in ("features", "labels", "paths", "skipped")) \
                    and PROGRESS_ATTR in self.file.attrs:
                return True
            self.file.close()
        except (OSError, KeyError, RuntimeError) as err:
            log.debug(f"cannot reopen {path}: {err}")
        log.warning(f"{path} holds no finished batch (the run was stopped while creating it); starting over")
        return False

    def _check_resumable(self, path: Path, attrs: dict) -> None:
        for key in ("extractor_sha256", "source", "source_fingerprint", "shard"):
            if self.file.attrs.get(key) != attrs[key]:
                self.file.close()
                raise DiffclassError(f"cannot resume {path}: it was made with a different {key} "
                                     "(run without --resume to start over)")
        rows = int(self.file.attrs["rows"])  # a crash may have left rows past the last commit
        for name in ("features", "labels", "paths"):
            self.file[name].resize(rows, axis=0)

    @property
    def feature_dim(self) -> int:
        return self.file["features"].shape[1]

    @property
    def source_rows_done(self) -> int:
        return int(self.file.attrs[PROGRESS_ATTR])

    def append(self, features: np.ndarray, labels: np.ndarray, paths: list[str],
               skipped: list[tuple[str, str]], source_rows: int) -> None:
        """Add one batch; `source_rows` is how many source rows it covered."""
        f = self.file
        n, start = len(features), int(f.attrs["rows"])
        for name, values in (("features", features), ("labels", labels), ("paths", [storable(p) for p in paths])):
            f[name].resize(start + n, axis=0)
            f[name][start:] = values
        if skipped:
            done = f["skipped"].shape[0]
            f["skipped"].resize(done + len(skipped), axis=0)
            f["skipped"][done:] = np.array([(storable(p), storable(r)) for p, r in skipped], dtype=object)
        f.flush()
        # The commit point: a crash before it leaves rows that resume will cut away.
        f.attrs["rows"] = start + n
        f.attrs[PROGRESS_ATTR] = self.source_rows_done + source_rows
        f.flush()

    def close(self) -> None:
        self.file.close()


@dataclass
class FeatureFile:
    """A feature file read into memory."""

    features: np.ndarray
    labels: np.ndarray
    paths: list[str]
    class_names: list[str]
    attrs: dict


@contextmanager
def open_feature_file(path: Path) -> Iterator[h5py.File]:
    """An existing feature file, opened read-only, with a clear error when it is not one."""
    path = existing_file(path, "feature file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DiffclassError(f"{path} is not an HDF5 file ({err})") from err
    with f:
        _check_layout(f, path)
        yield f


def _check_layout(f: h5py.File, path: Path) -> None:
    """The datasets a feature file must have, with one row per feature row."""
    if "features" not in f:
        raise DiffclassError(f"{path} is not a diffclass feature file (no 'features' dataset)")
    missing = [name for name in ("labels", "paths", "class_names") if name not in f]
    if missing:
        raise DiffclassError(f"{path} is damaged: it has no {', '.join(missing)} (featurize it again)")
    if f["features"].ndim != 2:
        raise DiffclassError(f"{path} is damaged: features is not a table of rows")
    rows = f["features"].shape[0]
    for name in ("labels", "paths"):
        if f[name].shape != (rows,):
            raise DiffclassError(f"{path} is damaged: {name} has {f[name].shape[0]} rows but features has "
                                 f"{rows} (featurize it again)")
    labels = f["labels"][:]
    if len(labels) and not (-1 <= labels.min() and labels.max() < len(f["class_names"])):
        raise DiffclassError(f"{path} is damaged: labels outside its {len(f['class_names'])} class names")


def check_finite(features: np.ndarray, paths: list[str], path: Path) -> None:
    """Refuse rows with NaN or infinite features, naming the first few."""
    bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if len(bad):
        names = ", ".join(paths[i] for i in bad[:3])
        raise DiffclassError(f"{path} has {len(bad)} row(s) with NaN or infinite features ({names}"
                             f"{', ...' if len(bad) > 3 else ''}); featurize those images again")


def read_features(path: Path) -> FeatureFile:
    """Load a feature file into memory."""
    with open_feature_file(path) as f:
        return FeatureFile(
            features=f["features"][:],
            labels=f["labels"][:],
            paths=[p.decode() for p in f["paths"][:]],
            class_names=[c.decode() for c in f["class_names"][:]],
            attrs=dict(f.attrs),
        )


def copy_rows(f: h5py.File, writer: FeatureWriter) -> None:
    """Append every row and skipped file of open feature file `f` to `writer`, chunk by chunk."""
    rows = int(f.attrs["rows"])
    skipped = [(p.decode(), r.decode()) for p, r in f["skipped"][:]]
    unreadable = int(f.attrs[PROGRESS_ATTR]) - rows  # source rows that were skipped, not written
    writer.append(np.empty((0, f["features"].shape[1]), np.float32), np.empty(0, np.int64), [], skipped,
                  source_rows=unreadable)
    for start in range(0, rows, CHUNK_ROWS):
        stop = min(rows, start + CHUNK_ROWS)
        writer.append(f["features"][start:stop], f["labels"][start:stop],
                      [p.decode() for p in f["paths"][start:stop]], [], source_rows=stop - start)
