"""Decode, convert and resize images in parallel workers, in batches, in source order."""

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from PIL import Image

from diffclass_cli.console import log, progress
from diffclass_cli.data.sources import ImageSource, UnreadableImage


def to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """One image as uint8 `[C, size, size]`: converted to gray or RGB and resized whole
    (never cropped)."""
    try:
        img = img.convert("L" if channels == 1 else "RGB")
    except ValueError as err:  # a mode Pillow cannot convert (e.g. LAB to L): skipped like a corrupt file
        raise UnreadableImage(f"cannot convert a {img.mode} image: {err}") from err
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1], the input range of every extractor and of training."""
    return images.astype(np.float32) / 255


@dataclass
class Batch:
    indices: np.ndarray  # int64 [n], source rows that decoded
    images: np.ndarray  # uint8 [n, C, H, W]
    skipped: list[tuple[int, str]]  # (source row, reason)


class _Decoder(torch.utils.data.Dataset):
    def __init__(self, source: ImageSource, size: int, channels: int, rows: np.ndarray):
        self.source, self.size, self.channels, self.rows = source, size, channels, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        row = int(self.rows[k])
        try:
            return row, to_array(self.source.load(row), self.size, self.channels), ""
        except UnreadableImage as err:
            return row, None, str(err)


def _collate(items, size: int, channels: int) -> Batch:
    good = [(row, arr) for row, arr, _ in items if arr is not None]
    images = np.stack([a for _, a in good]) if good else np.empty((0, channels, size, size), np.uint8)
    return Batch(
        indices=np.asarray([row for row, _ in good], dtype=np.int64),
        images=images,
        skipped=[(row, reason) for row, arr, reason in items if arr is None],
    )


def iter_batches(source: ImageSource, size: int, channels: int, batch_size: int,
                 workers: int = 0, rows: np.ndarray | None = None) -> Iterator[Batch]:
    """Yield preprocessed batches of `rows` (default: all) in order; decoding runs in
    `workers` processes ahead of the consumer."""
    rows = np.arange(len(source)) if rows is None else rows
    loader = torch.utils.data.DataLoader(
        _Decoder(source, size, channels, rows),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=partial(_collate, size=size, channels=channels),
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    yield from loader


def load_all(source: ImageSource, size: int, channels: int, workers: int = 0):
    """Decode a whole source into memory: (uint8 `[N, C, H, W]`, kept rows, skipped)."""
    images, kept, skipped = [], [], []
    with progress(total=len(source), desc="loading images", unit="img") as bar:
        for batch in iter_batches(source, size, channels, batch_size=256, workers=workers):
            images.append(batch.images)
            kept.append(batch.indices)
            skipped.extend(batch.skipped)
            bar.update(len(batch.indices) + len(batch.skipped))
    skipped_ids = [(source.ids[row], reason) for row, reason in skipped]
    report_skipped(source.skipped + skipped_ids)
    return np.concatenate(images), np.concatenate(kept), skipped_ids


def report_skipped(skipped: list[tuple[str, str]]) -> None:
    """Warn about each file that could not be used, then give the count."""
    for name, reason in skipped:
        log.warning(f"skipped {name}: {reason}")
    if skipped:
        log.warning(f"skipped {len(skipped)} file(s) that could not be read as images")
