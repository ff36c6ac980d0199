"""A user's photo album, built on the spot: six classes of drawn objects in the file formats and
image modes cameras, phones and spreadsheets produce (JPEG, PNG, WEBP, CMYK JPEG, GIF, 16-bit
PNG, transparent PNG), odd file names and a nested album folder. Nothing is downloaded."""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("bag", "cup", "hat", "key", "lamp", "shoe")
# (extension, Pillow mode) in turn: what a folder of real photos mixes.
FORMATS = (("jpg", "RGB"), ("png", "RGB"), ("webp", "RGB"), ("jpg", "CMYK"), ("gif", "P"), ("png", "I;16"),
           ("png", "RGBA"), ("JPG", "L"))


def drawing(label: int, seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """An RGB picture of class `label`: its own shape on a noisy background, placed, sized and
    coloured by `seed`."""
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 90, 3)
    pixels = np.clip(background + rng.normal(0, 12, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    w, h = size
    s = rng.uniform(0.45, 0.7) * min(w, h)
    x, y = rng.uniform(0.1 * w, w - s - 0.1 * w), rng.uniform(0.1 * h, h - s - 0.1 * h)
    ink = tuple(int(v) for v in rng.integers(160, 256, 3))
    box = [x, y, x + s, y + s]
    shape = CLASSES[label]
    if shape == "bag":
        draw.rectangle([x, y + s / 3, x + s, y + s], fill=ink)
        draw.arc([x + s / 4, y, x + 3 * s / 4, y + 2 * s / 3], 180, 360, fill=ink, width=max(1, int(s / 10)))
    elif shape == "cup":
        draw.polygon([(x, y), (x + s, y), (x + 0.8 * s, y + s), (x + 0.2 * s, y + s)], fill=ink)
    elif shape == "hat":
        draw.pieslice(box, 180, 360, fill=ink)
        draw.rectangle([x - s / 6, y + s / 2, x + s + s / 6, y + 0.62 * s], fill=ink)
    elif shape == "key":
        draw.ellipse([x, y, x + s / 2, y + s / 2], outline=ink, width=max(1, int(s / 8)))
        draw.line([x + s / 2, y + s / 4, x + s, y + s / 4], fill=ink, width=max(1, int(s / 8)))
    elif shape == "lamp":
        draw.polygon([(x + s / 2, y), (x + s, y + s / 2), (x, y + s / 2)], fill=ink)
        draw.rectangle([x + 0.45 * s, y + s / 2, x + 0.55 * s, y + s], fill=ink)
    else:  # shoe
        draw.rectangle([x, y + 0.6 * s, x + s, y + s], fill=ink)
        draw.rectangle([x, y, x + s / 3, y + s], fill=ink)
    return image


def save_as(image: Image.Image, path: Path, mode: str) -> Path:
    """`image` saved at `path` in `mode` as a camera or editor would: 16-bit gray scaled to
    0..65535, transparency around the picture's middle for RGBA, a palette for GIF."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "I;16":
        gray = np.asarray(image.convert("L"), np.uint16) * 257
        Image.fromarray(gray).save(path)  # uint16: mode I;16
    elif mode == "RGBA":
        rgba = image.convert("RGBA")
        alpha = np.full(rgba.size[::-1], 255, np.uint8)
        alpha[:, : rgba.size[0] // 8] = 0  # a transparent strip at the left
        rgba.putalpha(Image.fromarray(alpha))
        rgba.save(path)
    elif mode == "P":
        image.convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    else:
        image.convert(mode).save(path)
    return path


def photo(path: Path, label: int, seed: int, number: int) -> Path:
    """Picture `seed` of class `label` in the `number`-th of FORMATS, at a size that varies."""
    extension, mode = FORMATS[number % len(FORMATS)]
    size = (48 + 8 * (number % 5), 40 + 6 * (number % 4))
    return save_as(drawing(label, seed, size), path.with_suffix("." + extension), mode)


def album(root: Path, labeled: int = 5, unlabeled: int = 60, new: int = 24, seed: int = 0) -> dict[str, Path]:
    """photos/train/CLASS/* (`labeled` per class), photos/train/* (`unlabeled`, classes mixed; their
    true classes in photos/pool-truth.csv), photos/new/* (`new`, true classes in
    photos/new-truth.csv), files with odd names and a file that is not an image."""
    rng = np.random.default_rng(seed)
    train, new_dir = root / "train", root / "new"
    number = 0
    for label, name in enumerate(CLASSES):
        for i in range(labeled):
            odd = " (copy)" if i == 1 else "-é" if i == 2 else ""
            photo(train / name / f"IMG_{label}{i:03d}{odd}", label, int(rng.integers(1 << 30)), number)
            number += 1
    pool = ["path,label"]
    for i in range(unlabeled):
        label = int(rng.integers(len(CLASSES)))
        saved = photo(train / f"pool_{i:04d}", label, int(rng.integers(1 << 30)), number)
        pool.append(f"{saved.name},{CLASSES[label]}")
        number += 1
    (root / "pool-truth.csv").write_text("\n".join(pool) + "\n")
    truth = ["path,label"]
    for i in range(new):
        label = i % len(CLASSES)
        saved = photo(new_dir / f"new {i:03d}", label, int(rng.integers(1 << 30)), number)
        truth.append(f"{saved.name},{CLASSES[label]}")
        number += 1
    (root / "new-truth.csv").write_text("\n".join(truth) + "\n")
    (train / "notes.txt").write_text("not an image")
    return {"train": train, "new": new_dir, "truth": root / "new-truth.csv", "pool_truth": root / "pool-truth.csv"}


def nested_album(train: Path, n: int = 3, seed: int = 1) -> Path:
    """photos/train/2023 holiday/more/*.JPG: a folder of unlabeled pictures two levels down."""
    folder = train / "2023 holiday" / "more"
    for i in range(n):
        photo(folder / f"DSC{i:04d}", i % len(CLASSES), seed * 1000 + i, 0)
    return folder
