"""Decode, convert and resize images in parallel workers, in batches, in source order."""

import ctypes
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np
from PIL import Image

from diffclass_cli.console import log, progress
from diffclass_cli.data.sources import ImageSource, UnreadableImage
from diffclass_cli.errors import RunInterrupted

PR_SET_PDEATHSIG = 1  # linux/prctl.h


WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # more than 8 bits a pixel
GRAY_MODES = ("1", "L", "LA", "La", *WIDE_MODES)
TRANSPARENT_BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white, as viewers and browsers do


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """`img` as 8-bit gray ('L') or 'RGB', every pixel scaled to 0-255 from what its mode holds:
    16-bit gray by 255/65535, 32-bit integer gray likewise when it uses more than 8 bits, float
    gray from 0-1 when it stays within it; transparent pixels (alpha, or a palette's transparent
    colour) composited on white; CMYK as Pillow converts it."""
    try:
        if img.mode in WIDE_MODES:
            img = _eight_bit_gray(img)
        elif img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, TRANSPARENT_BACKGROUND)
            img.paste(rgba, mask=rgba.getchannel("A"))
        return img if img.mode == mode else img.convert(mode)
    except ValueError as err:  # a mode Pillow cannot convert (e.g. LAB to L): skipped like a corrupt file
        raise UnreadableImage(f"cannot convert a {img.mode} image: {err}") from err


def _eight_bit_gray(img: Image.Image) -> Image.Image:
    values = np.asarray(img, dtype=np.float64)
    if img.mode == "F":
        top = 1.0 if np.nanmax(values, initial=0) <= 1.0 else 255.0
    else:
        top = 65535.0 if img.mode.startswith("I;16") or values.max(initial=0) > 255 else 255.0
    scaled = np.clip(np.nan_to_num(values) * (255.0 / top), 0, 255)
    return Image.fromarray(np.round(scaled).astype(np.uint8))


def to_array(img: Image.Image, size: int, channels: int) -> np.ndarray:
    """One image as uint8 `[C, size, size]`: converted to gray or RGB (`to_mode`) and resized
    whole (never cropped)."""
    img = to_mode(img, "L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1], the input range of every extractor and of training."""
    return images.astype(np.float32) / 255


@dataclass
class Batch:
    rows: np.ndarray  # int64 [n], source rows that decoded
    images: np.ndarray  # uint8 [n, C, H, W]
    skipped: list[tuple[int, str]]  # (source row, reason)


def decode_rows(source: ImageSource, rows: np.ndarray, size: int, channels: int) -> Batch:
    """Decode and preprocess `rows` of `source`; images that cannot be read are skipped with a reason."""
    good, images, skipped = [], [], []
    for row in rows:
        try:
            images.append(to_array(source.load(int(row)), size, channels))
            good.append(int(row))
        except UnreadableImage as err:
            skipped.append((int(row), str(err)))
    stacked = np.stack(images) if images else np.empty((0, channels, size, size), np.uint8)
    return Batch(np.asarray(good, dtype=np.int64), stacked, skipped)


_worker_source: ImageSource | None = None  # set in each decoding worker by _start_worker


def _start_worker(source: ImageSource, parent: int) -> None:
    """Runs first in each decoding worker: die with the parent, leave Ctrl-C to it."""
    global _worker_source
    _worker_source = source
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _decode_in_worker(rows: np.ndarray, size: int, channels: int) -> Batch:
    return decode_rows(_worker_source, rows, size, channels)


class Decoders:
    """Worker processes that decode batches ahead of the consumer, in source order.

    Start it before opening any output file or onnxruntime session: the workers are forked at
    once, so they hold none of the output's descriptors (a killed parent never leaves a worker
    holding the output's lock), and they are killed when their parent dies.
    """

    def __init__(self, source: ImageSource, size: int, channels: int, workers: int):
        self.source, self.size, self.channels = source, size, channels
        self.executor = None
        if workers > 0:
            context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
            self.executor = ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker,
                                                initargs=(source, os.getpid()))
            self.executor.submit(int).result()  # forks every worker now
        self.ahead = 2 * workers

    def batches(self, rows: np.ndarray, batch_size: int) -> Iterator[Batch]:
        chunks = (rows[i:i + batch_size] for i in range(0, len(rows), batch_size))
        if self.executor is None:
            yield from (decode_rows(self.source, chunk, self.size, self.channels) for chunk in chunks)
            return
        pending = deque()
        try:  # a dead worker breaks the executor: seen by the next submit or by a result, whichever comes first
            for chunk in chunks:
                pending.append(self.executor.submit(_decode_in_worker, chunk, self.size, self.channels))
                if len(pending) > self.ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BrokenProcessPool:
            raise RunInterrupted("a decoding worker died (killed by the system: out of memory?); featurize "
                                 "keeps its partial file for --resume") from None

    def __enter__(self) -> "Decoders":
        return self

    def __exit__(self, *exc) -> None:
        if self.executor is not None:
            # Always wait (a chunk at most): an executor left running after an error made Python's exit
            # hook write to its closed wake-up pipe now and then ("Bad file descriptor" at exit).
            self.executor.shutdown(wait=True, cancel_futures=True)


def iter_batches(source: ImageSource, size: int, channels: int, *, batch_size: int,
                 workers: int = 0, rows: np.ndarray | None = None) -> Iterator[Batch]:
    """Yield preprocessed batches of `rows` (default: all) in order; decoding runs in
    `workers` processes ahead of the consumer."""
    rows = np.arange(len(source)) if rows is None else rows
    with Decoders(source, size, channels, workers) as decoders:
        yield from decoders.batches(rows, batch_size)


def load_all(source: ImageSource, size: int, channels: int, workers: int = 0):
    """Decode a whole source into memory: (uint8 `[N, C, H, W]`, kept rows, skipped)."""
    images, kept, skipped = [], [], []
    with progress(total=len(source), desc="loading images", unit="img") as bar:
        for batch in iter_batches(source, size, channels, batch_size=256, workers=workers):
            images.append(batch.images)
            kept.append(batch.rows)
            skipped.extend(batch.skipped)
            bar.update(len(batch.rows) + len(batch.skipped))
    skipped_ids = [(source.ids[row], reason) for row, reason in skipped]
    report_skipped(source.skipped + skipped_ids)
    return np.concatenate(images), np.concatenate(kept), skipped_ids


def report_skipped(skipped: list[tuple[str, str]]) -> None:
    """Warn about each file that could not be used, then give the count."""
    for name, reason in skipped:
        log.warning(f"skipped {name}: {reason}")
    if skipped:
        log.warning(f"skipped {len(skipped)} file(s) that could not be read as images")
