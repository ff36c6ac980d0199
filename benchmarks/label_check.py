"""How well `fit`'s label check finds labels flipped on purpose: K labeled images per class are
drawn from a train split (the rest unlabeled), F of them get another class at random, and the
check runs as `fit` runs it. Prints, per margin, the flips caught and the clean labels flagged,
averaged over seeded draws. Only the train split is read.

    python benchmarks/label_check.py --source mnist-sample:train --per-class 10 --flips 5 --draws 10
"""

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np

from diffclass_cli.data.sources import open_source
from diffclass_cli.features.extract import DEFAULT_MODEL, featurize
from diffclass_cli.features.h5 import read_features
from diffclass_cli.heads.models import draw_per_class
from diffclass_cli.heads.suggest import SUSPICIOUS_MARGIN, suspicious_labels

MARGINS = (0.0, 0.25, SUSPICIOUS_MARGIN, 0.75, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="mnist-sample:train")
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--features", help="a feature file of SOURCE made already (skips featurizing)")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--flips", type=int, default=5)
    parser.add_argument("--draws", type=int, default=10)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    if args.features:
        data = read_features(args.features)
    else:
        with tempfile.TemporaryDirectory() as folder:
            featurize(open_source(args.source), Path(folder) / "features.h5", Path(args.model))
            data = read_features(Path(folder) / "features.h5")
    n_classes = len(data.class_names)
    flipped_scores, clean_scores = [], []
    for draw in range(args.draws):
        rng = np.random.default_rng(draw)
        labeled = draw_per_class(data.labels, args.per_class, 500 + draw)
        targets = np.full(len(data.labels), -1)
        targets[labeled] = data.labels[labeled]
        flipped = set(rng.choice(labeled, args.flips, replace=False).tolist())
        for row in flipped:
            targets[row] = (data.labels[row] + rng.integers(1, n_classes)) % n_classes
        for found in suspicious_labels(data.features, targets, margin=-np.inf):
            (flipped_scores if found["row"] in flipped else clean_scores).append(found["score"])
    flipped_scores, clean_scores = np.array(flipped_scores), np.array(clean_scores)
    print(f"{args.source}, {args.per_class} labels per class, {args.flips} flipped, {args.draws} draws")
    for margin in MARGINS:
        caught = (flipped_scores > margin).sum() / args.draws
        flagged = (clean_scores > margin).sum() / args.draws
        mark = "  (fit's margin)" if margin == SUSPICIOUS_MARGIN else ""
        print(f"margin {margin:.2f}: {caught:.1f} of {args.flips} flips caught, {flagged:.1f} clean labels "
              f"flagged per draw{mark}")


if __name__ == "__main__":
    main()
