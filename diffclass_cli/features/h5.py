"""The feature file (HDF5): the one place that knows its layout.

    features     float32 (or float16: `featurize --dtype`) [N, D], chunked along N
    labels       int64 [N]: class index, or -1 for unlabeled
    paths        UTF-8 [N]: source-relative path, or name:index for built-in datasets
    class_names  UTF-8 [K] (empty when unlabeled)
    skipped      UTF-8 [M, 2]: (path, reason) of files that could not be read
    attributes   extractor_sha256, extractor_name, feature_dim, timesteps, taps, pool,
                 source, source_images, source_fingerprint, shard ("I/N"), provider,
                 dtype, rows, source_rows_done, committed, created, diffclass_version, ...
"""

import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

try:
    import resource
except ImportError:  # Windows: no file-size limits
    resource = None

from diffclass_cli.choices import FeatureDtype
from diffclass_cli.console import log
from diffclass_cli.errors import DiffclassError
from diffclass_cli.files import existing_file

STR = h5py.string_dtype("utf-8")
CHUNK_ROWS = 1024
READ_BYTES = 64 * 1024 * 1024  # the most feature bytes a reader holds at once
WRITE_CHUNK_BYTES = 16 * 1024 * 1024  # fewer rows per chunk for very wide features
DTYPES = tuple(d.value for d in FeatureDtype)  # how features may be stored; readers always get float32
PROGRESS_ATTR = "source_rows_done"  # rows of the source consumed so far (written or skipped)
# What resume keeps: int64 [rows, skipped files, source rows done], in one attribute because two
# attributes can reach the disk apart when a run is killed while HDF5 flushes its metadata.
COMMIT_ATTR = "committed"


def _text(stored: bytes) -> str:
    """A stored string as text; bytes that are not UTF-8 (a file we did not write) as `\\xff` escapes."""
    return stored.decode("utf-8", "backslashreplace")


def storable(text: str) -> str:
    """Text as valid UTF-8: a file name that is not UTF-8 (held by Python as surrogate
    escapes) keeps its odd bytes as `\\xff` escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class FeatureWriter:
    """Appends rows batch by batch, so memory stays flat; can reopen a partial file to resume.

    `path` is locked by its owner (files.atomic_output), so HDF5's own lock is not taken.
    """

    def __init__(self, path: Path, feature_dim: int, attrs: dict, class_names: list[str], resume: bool = False,
                 dtype: FeatureDtype = FeatureDtype.float32):
        dtype = FeatureDtype(dtype).value
        attrs = {**attrs, "dtype": dtype}
        self.resumed = resume and self._reopen(path, attrs)
        if self.resumed:
            return
        _committed_copy(path).unlink(missing_ok=True)  # a stale one must not outlive the rows it saved
        self.file = h5py.File(path, "w", locking=False)
        _create_layout(self.file, feature_dim, dtype, class_names, attrs)

    def _reopen(self, path: Path, attrs: dict) -> bool:
        """Continue the partial file of an earlier run; False when it holds nothing to resume.

        A run killed mid-write can leave HDF5's string heap damaged past the last committed
        batch, so the committed rows are copied out to `PATH.resume` and written back into a
        fresh file of the same name (the same inode keeps the owner's lock) instead of appended
        to. A `PATH.resume` left by a run stopped while writing back is complete: it is used."""
        copy = _committed_copy(path)
        try:
            if not copy.exists():
                if path.stat().st_size == 0:
                    return False
                _save_committed(path, copy, attrs)
            committed = h5py.File(copy, "r", locking=False)
        except (OSError, KeyError, RuntimeError, ValueError) as err:
            log.debug(f"cannot reopen {path}: {err}")
            for leftover in (copy, copy.with_name(copy.name + ".partial")):
                leftover.unlink(missing_ok=True)
            log.warning(f"{path} holds no finished batch (the run was stopped while creating it); starting over")
            return False
        with committed:
            _check_resumable(committed, path, attrs)
            self.file = h5py.File(path, "w", locking=False)
            _copy_committed(committed, self.file)
        self.file.flush()
        copy.unlink()
        return True

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
        features = self._stored(features)
        _check_room(Path(f.filename), features.nbytes + 300 * (len(paths) + len(skipped)))
        n, start = len(features), int(f.attrs["rows"])
        for name, values in (("features", features), ("labels", labels), ("paths", [storable(p) for p in paths])):
            f[name].resize(start + n, axis=0)
            f[name][start:] = values
        if skipped:
            done = f["skipped"].shape[0]
            f["skipped"].resize(done + len(skipped), axis=0)
            f["skipped"][done:] = np.array([(storable(p), storable(r)) for p, r in skipped], dtype=object)
        f.flush()  # the rows reach the file before the commit that counts them
        _commit(f, start + n, f["skipped"].shape[0], self.source_rows_done + source_rows)

    def _stored(self, features: np.ndarray) -> np.ndarray:
        """`features` in the file's dtype; refuses values that float16 cannot hold."""
        with np.errstate(over="ignore"):  # overflow is checked here
            stored = features.astype(self.file["features"].dtype, copy=False)
        if stored.dtype != features.dtype and np.any(np.isinf(stored) & np.isfinite(features)):
            raise DiffclassError(f"some features exceed what {stored.dtype} can hold "
                                 f"(|x| > {np.finfo(stored.dtype).max:.0f}); featurize with --dtype float32")
        return stored

    def close(self) -> None:
        self.file.close()


ROOM_SPARE = 4 * 1024 * 1024  # what HDF5 may write besides the rows: chunk indexes, heaps, the close


class DiskFull(DiffclassError):
    """No room left for the next batch; the rows committed so far stay resumable."""

    resumable = True


def _check_room(path: Path, nbytes: int) -> None:
    """Refuse a write that would not fit on the disk or under the process's file-size limit: HDF5
    cannot recover from a failed write (it may crash at exit), so we stop before one, cleanly."""
    need = 2 * nbytes + ROOM_SPARE
    disk = os.statvfs(path if path.exists() else path.parent)  # the file's own disk, whatever its name
    free = disk.f_bavail * disk.f_frsize
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0] if resource else -1
    room = min(free, limit - path.stat().st_size if limit >= 0 else free)
    if room < need:
        where = "the disk" if room == free else "the file-size limit (ulimit -f)"
        raise DiskFull(f"no room to write {path}: {where} leaves {room / 2**20:.1f} MB, the next batch needs about "
                       f"{need / 2**20:.1f} MB; free some space and run again with --resume (the rows written so "
                       "far are kept)")


def _committed_copy(path: Path) -> Path:
    """Where resume saves the committed rows of the partial file `path` while it rewrites it."""
    return path.with_name(path.name + ".resume")


def _create_layout(f: h5py.File, feature_dim: int, dtype: str, class_names: list[str], attrs: dict) -> None:
    """Empty datasets of the layout above, and the attributes of a run with no rows yet."""
    chunk_rows = max(1, min(CHUNK_ROWS, WRITE_CHUNK_BYTES // (feature_dim * np.dtype(dtype).itemsize)))
    f.create_dataset("features", (0, feature_dim), dtype, maxshape=(None, feature_dim),
                     chunks=(chunk_rows, feature_dim))
    f.create_dataset("labels", (0,), np.int64, maxshape=(None,), chunks=(CHUNK_ROWS,))
    f.create_dataset("paths", (0,), STR, maxshape=(None,), chunks=(CHUNK_ROWS,))
    f.create_dataset("skipped", (0, 2), STR, maxshape=(None, 2), chunks=(256, 2))
    f.create_dataset("class_names", data=np.array([storable(c) for c in class_names], dtype=object), dtype=STR)
    f.attrs.update(attrs)
    _commit(f, 0, 0, 0)


def _commit(f: h5py.File, rows: int, skipped: int, source_rows_done: int) -> None:
    """The commit point: a crash before it leaves rows and skipped files that resume cuts away."""
    f.attrs[COMMIT_ATTR] = np.array([rows, skipped, source_rows_done], np.int64)
    f.flush()
    f.attrs["rows"], f.attrs[PROGRESS_ATTR] = rows, source_rows_done  # what readers use


def _committed(f: h5py.File) -> tuple[int, int, int]:
    if COMMIT_ATTR not in f.attrs:  # a partial file written before the commit attribute existed
        return int(f.attrs["rows"]), f["skipped"].shape[0], int(f.attrs[PROGRESS_ATTR])
    rows, skipped, source_rows_done = (int(v) for v in f.attrs[COMMIT_ATTR])
    return rows, skipped, source_rows_done


def _save_committed(path: Path, copy: Path, attrs: dict) -> None:
    """The committed rows of the partial file `path` into `copy`, which appears only when complete."""
    unfinished = copy.with_name(copy.name + ".partial")
    with h5py.File(path, "r", locking=False) as old:
        if not (all(name in old for name in ("features", "labels", "paths", "skipped", "class_names"))
                and PROGRESS_ATTR in old.attrs):
            raise KeyError("no committed batch")
        _check_resumable(old, path, attrs)
        with h5py.File(unfinished, "w", locking=False) as new:
            _copy_committed(old, new)
    unfinished.replace(copy)


def _check_resumable(f: h5py.File, path: Path, attrs: dict) -> None:
    found = dict(f.attrs) | {"dtype": f["features"].dtype.name}  # as its rows are stored
    for key in ("extractor_sha256", "source", "source_fingerprint", "shard", "dtype"):
        if found.get(key) != attrs[key]:
            raise DiffclassError(f"cannot resume {path}: it was made with a different {key} "
                                 "(run without --resume to start over)")


def _copy_committed(src: h5py.File, dst: h5py.File) -> None:
    """The rows and skipped files `src` committed (a crash may have left more past them) and its
    attributes, into the empty file `dst`, chunk by chunk."""
    rows, skipped_rows, source_rows_done = _committed(src)
    class_names = [c.decode() for c in src["class_names"][:]]
    _create_layout(dst, src["features"].shape[1], src["features"].dtype.name, class_names, dict(src.attrs))
    for name in ("features", "labels", "paths"):
        dataset = src[name].asstr() if name == "paths" else src[name]
        dst[name].resize(rows, axis=0)
        for start in range(0, rows, CHUNK_ROWS):
            stop = min(rows, start + CHUNK_ROWS)
            dst[name][start:stop] = dataset[start:stop]
    skipped = src["skipped"].asstr()[:skipped_rows]
    dst["skipped"].resize(len(skipped), axis=0)
    dst["skipped"][:] = skipped
    _commit(dst, rows, skipped_rows, source_rows_done)


@dataclass
class Rows:
    """Some rows of a feature file, in memory: features always as float32."""

    features: np.ndarray  # [N, D]
    labels: np.ndarray  # [N]
    paths: list[str]

    def pick(self, at: np.ndarray) -> "Rows":
        return Rows(self.features[at], self.labels[at], [self.paths[i] for i in at])


@dataclass
class FeatureFile:
    """A whole feature file read into memory (small files: tests, benchmarks)."""

    features: np.ndarray
    labels: np.ndarray
    paths: list[str]
    class_names: list[str]
    attrs: dict


class FeatureReader:
    """An open feature file whose rows are read a chunk of the file at a time, so memory is
    bounded by a chunk (or by the rows asked for), never by the file."""

    def __init__(self, file: h5py.File, path: Path):
        self.file = file
        self.labels = _checked_labels(file, path)  # 8 bytes a row: small beside the features
        self.class_names = [c.decode(errors="replace") for c in file["class_names"][:]]
        self.attrs = _checked_attrs(file.attrs, path, len(self.labels))

    @property
    def rows(self) -> int:
        return len(self.labels)

    @property
    def feature_dim(self) -> int:
        return self.file["features"].shape[1]

    @property
    def dtype(self) -> str:
        return self.file["features"].dtype.name

    @property
    def chunk_rows(self) -> int:
        """Rows read at a time: the file's chunk, but never more than READ_BYTES of features,
        whatever chunk size the file declares."""
        declared = (self.file["features"].chunks or (CHUNK_ROWS,))[0]
        return max(1, min(declared, READ_BYTES // (4 * self.feature_dim)))

    def paths(self) -> list[str]:
        """Every row's path, read a chunk at a time."""
        return [_text(p) for start in range(0, self.rows, self.chunk_rows)
                for p in self.file["paths"][start:start + self.chunk_rows]]

    def chunks(self) -> Iterator[Rows]:
        """Every row, one chunk of the file at a time."""
        for start in range(0, self.rows, self.chunk_rows):
            yield self._read(start, min(self.rows, start + self.chunk_rows))

    def take(self, index: np.ndarray) -> Rows:
        """The rows numbered `index` (sorted), read chunk by chunk: only the span of each
        chunk that holds some of them is read."""
        index = np.asarray(index, dtype=np.int64)
        if len(index) and (np.any(np.diff(index) <= 0) or index[0] < 0 or index[-1] >= self.rows):
            raise ValueError("take() needs sorted, distinct row numbers within the file")
        parts = []
        bounds = np.searchsorted(index, np.arange(0, self.rows + self.chunk_rows, self.chunk_rows))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if lo < hi:
                span = self._read(int(index[lo]), int(index[hi - 1]) + 1)
                parts.append(span.pick(index[lo:hi] - index[lo]))
        if not parts:
            return Rows(np.empty((0, self.feature_dim), np.float32), np.empty(0, np.int64), [])
        return Rows(np.concatenate([p.features for p in parts]), self.labels[index],
                    [path for p in parts for path in p.paths])

    def _read(self, start: int, stop: int) -> Rows:
        f = self.file
        return Rows(f["features"][start:stop].astype(np.float32, copy=False),
                    self.labels[start:stop], [_text(p) for p in f["paths"][start:stop]])


@contextmanager
def open_feature_file(path: Path) -> Iterator[FeatureReader]:
    """An existing feature file, opened read-only, with a clear error when it is not one."""
    path = existing_file(path, "feature file")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DiffclassError(f"{path} is not an HDF5 file ({err})") from err
    with f:
        _refuse_outside_storage(f, path)
        _refuse_declared_beyond_file(f, path)
        yield FeatureReader(f, path)


DECLARED_SLACK = 1 << 20  # bytes a dataset may declare beyond the file's size (headers, rounding)


def _refuse_declared_beyond_file(f: h5py.File, path: Path) -> None:
    """A dataset declaring more fixed-size data than the whole file holds (HDF5 fills unwritten
    chunks in, so 8 KB can declare 1e9 rows, or class names of 2 GB each) is refused before
    anything is read: we never allocate what the file does not hold. Feature files are written
    uncompressed, so a real one always holds what it declares."""
    size = path.stat().st_size
    for name in DATASETS:
        dataset = f.get(name)
        if not isinstance(dataset, h5py.Dataset) or dataset.dtype.kind == "O":
            continue  # variable-length strings live in the file's heap: their size is the file's
        declared = int(np.prod(dataset.shape, dtype=np.float64) * dataset.dtype.itemsize)
        if declared > size + DECLARED_SLACK:
            raise DiffclassError(f"{path} declares {declared / 2**20:.0f} MB of {name} in a file of "
                                 f"{size / 2**20:.1f} MB: it is damaged or not a file diffclass wrote")


DATASETS = ("features", "labels", "paths", "class_names", "skipped")


def _refuse_outside_storage(f: h5py.File, path: Path) -> None:
    """Only datasets stored inside the file itself are read: a link to another object or file, a
    virtual dataset or external raw storage would make us read files nobody named."""
    for name in DATASETS:
        link = f.get(name, getlink=True)
        if link is None:
            continue
        if not isinstance(link, h5py.HardLink):
            raise DiffclassError(f"{path} is not a plain feature file: {name} is a link ({type(link).__name__}); "
                                 "diffclass reads only data stored in the file itself")
        dataset = f[name]
        if not isinstance(dataset, h5py.Dataset) or dataset.is_virtual or \
                dataset.id.get_create_plist().get_external_count() > 0:
            raise DiffclassError(f"{path} is not a plain feature file: {name} is stored outside it (virtual or "
                                 "external storage); diffclass reads only data stored in the file itself")


MAX_FEATURES = 10_000_000  # columns per row; our extractors make thousands
MAX_CHUNK_BYTES = 256 * 1024 * 1024  # ours are CHUNK_ROWS rows: a few MB
MAX_CLASSES = 1_000_000
MAX_SKIPPED = 10_000_000
TEXT_ATTRS = ("extractor_sha256", "extractor_name", "extractor_path", "source", "source_fingerprint", "shard",
              "provider", "dtype", "created", "diffclass_version", "extractor_metadata")
COUNT_ATTRS = ("rows", PROGRESS_ATTR, "feature_dim", "source_images", "merged_from")


def _checked_attrs(attrs: h5py.AttributeManager, path: Path, rows: int) -> dict:
    """The file's attributes, with those diffclass reads checked to be text or counts."""
    found = dict(attrs)
    for key in TEXT_ATTRS:
        if key in found and not isinstance(found[key], str):
            raise DiffclassError(f"{path} is damaged: its attribute {key} is not text")
    for key in COUNT_ATTRS:
        value = found.get(key, 0)
        if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer) or not 0 <= value < 2**62:
            raise DiffclassError(f"{path} is damaged: its attribute {key} is not a count")
    committed = found.get(COMMIT_ATTR, np.zeros(3, np.int64))
    if not (isinstance(committed, np.ndarray) and committed.shape == (3,) and committed.dtype.kind in "iu"
            and (committed >= 0).all()):
        raise DiffclassError(f"{path} is damaged: its attribute {COMMIT_ATTR} is not three counts")
    if found.get(PROGRESS_ATTR, rows) < rows:
        raise DiffclassError(f"{path} is damaged: it has more rows ({rows}) than images it says it read")
    return found


def _checked_labels(f: h5py.File, path: Path) -> np.ndarray:
    """The labels, once the file is checked to have the datasets of a feature file, with one row
    per feature row."""
    if "features" not in f:
        raise DiffclassError(f"{path} is not a diffclass feature file (no 'features' dataset)")
    missing = [name for name in ("labels", "paths", "class_names", "skipped") if name not in f]
    if missing:
        raise DiffclassError(f"{path} is damaged: it has no {', '.join(missing)} (featurize it again)")
    if f["features"].ndim != 2 or not 1 <= f["features"].shape[1] <= MAX_FEATURES:
        raise DiffclassError(f"{path} is damaged: features is not a table of rows of 1 to {MAX_FEATURES} columns")
    if f["features"].dtype.name not in DTYPES:
        raise DiffclassError(f"{path} holds {f['features'].dtype} features; diffclass reads {', '.join(DTYPES)}")
    for name in ("features", "labels", "paths"):  # HDF5 reads a whole chunk to read any row of it
        chunks = f[name].chunks
        if chunks and int(np.prod(chunks)) * f[name].dtype.itemsize > MAX_CHUNK_BYTES:
            raise DiffclassError(f"{path} stores {name} in chunks larger than {MAX_CHUNK_BYTES >> 20} MB; "
                                 "diffclass does not read such files")
    rows = f["features"].shape[0]
    for name in ("labels", "paths"):
        if f[name].ndim != 1:
            raise DiffclassError(f"{path} is damaged: {name} is not a list of rows (featurize it again)")
        if f[name].shape[0] != rows:
            raise DiffclassError(f"{path} is damaged: {name} has {f[name].shape[0]} rows but features has "
                                 f"{rows} (featurize it again)")
    if f["labels"].dtype.kind not in "iu":
        raise DiffclassError(f"{path} is damaged: its labels are {f['labels'].dtype}, not whole numbers")
    for name, ndim in (("paths", 1), ("class_names", 1), ("skipped", 2)):
        if (f[name].ndim != ndim or h5py.check_string_dtype(f[name].dtype) is None
                or (name == "skipped" and f[name].shape[1] != 2)):
            raise DiffclassError(f"{path} is damaged: {name} is not a {'list' if ndim == 1 else 'table'} of text")
    if len(f["class_names"]) > MAX_CLASSES or len(f["skipped"]) > MAX_SKIPPED:
        raise DiffclassError(f"{path} declares {len(f['class_names'])} classes and {len(f['skipped'])} skipped files; "
                             f"diffclass reads at most {MAX_CLASSES} and {MAX_SKIPPED}")
    labels = f["labels"][:].astype(np.int64)
    if len(labels) and not (-1 <= labels.min() and labels.max() < len(f["class_names"])):
        raise DiffclassError(f"{path} is damaged: labels outside its {len(f['class_names'])} class names")
    return labels


def check_finite(rows: Rows, path: Path) -> None:
    """Refuse rows with NaN or infinite features, naming the first few."""
    bad = np.flatnonzero(~np.isfinite(rows.features).all(axis=1))
    if len(bad):
        names = ", ".join(rows.paths[i] for i in bad[:3])
        raise DiffclassError(f"{path} has {len(bad)} row(s) with NaN or infinite features ({names}"
                             f"{', ...' if len(bad) > 3 else ''}); featurize those images again")


def read_features(path: Path) -> FeatureFile:
    """Load a whole feature file into memory."""
    with open_feature_file(path) as reader:
        rows = reader.take(np.arange(reader.rows))
        return FeatureFile(rows.features, rows.labels, rows.paths, reader.class_names, reader.attrs)


def copy_rows(reader: FeatureReader, writer: FeatureWriter) -> None:
    """Append every row and skipped file of an open feature file to `writer`, chunk by chunk."""
    skipped = [(_text(p), _text(r)) for p, r in reader.file["skipped"][:]]
    unreadable = int(reader.attrs[PROGRESS_ATTR]) - reader.rows  # source rows that were skipped, not written
    writer.append(np.empty((0, reader.feature_dim), np.float32), np.empty(0, np.int64), [], skipped,
                  source_rows=unreadable)
    for rows in reader.chunks():
        writer.append(rows.features, rows.labels, rows.paths, [], source_rows=len(rows.paths))


def take_across(readers: list[FeatureReader], rows: np.ndarray) -> Rows:
    """Rows numbered across several files, as if they were one file after another."""
    parts, offset = [], 0
    for reader in readers:
        mine = rows[(rows >= offset) & (rows < offset + reader.rows)] - offset
        parts.append(reader.take(mine))
        offset += reader.rows
    return Rows(np.concatenate([p.features for p in parts]), np.concatenate([p.labels for p in parts]),
                [path for p in parts for path in p.paths])


@contextmanager
def open_feature_files(first: Path, others: Sequence[Path] = ()) -> Iterator[list[FeatureReader]]:
    """Several feature files opened together, the `others` checked to come from `first`'s extractor
    (same sha256 and width), so their rows can be taken as one table (take_across)."""
    with ExitStack() as stack:
        readers = [stack.enter_context(open_feature_file(path)) for path in (first, *others)]
        main = readers[0]
        for path, reader in zip(others, readers[1:]):
            sha, want = reader.attrs.get("extractor_sha256", ""), main.attrs.get("extractor_sha256", "")
            if sha != want or reader.feature_dim != main.feature_dim:
                raise DiffclassError(f"{path} was made by extractor {reader.attrs.get('extractor_name', '?')} "
                                     f"({sha[:12]}), {first} by {main.attrs.get('extractor_name', '?')} ({want[:12]}): "
                                     "featurize both with the same --model")
        yield readers
