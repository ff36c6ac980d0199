"""Design probe for the semi head (SpectralPseudoLabels): accuracy of parameter variants on a
VALIDATION part of a labeled feature file (the built-in stratified 80/20 rule), never on a
test split, as mean ± std over seeded draws of K labels per class.

    python benchmarks/semi_head_probe.py train.h5 [--per-class 1,10] [--draws 5]

where train.h5 is `diffclass featurize mnist-sample:train train.h5` (default extractor).
"""

import argparse
import itertools
import time

import numpy as np
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from diffclass_cli.data.sources import UNLABELED, stratified_split
from diffclass_cli.features.h5 import read_features
from diffclass_cli.heads.models import SpectralPseudoLabels, draw_per_class

VARIANTS = {
    "n_components": (32, 64),
    "n_neighbors": (10, 15, 20),
    "seed_from": (2, 5),
    "confident_fraction": (0.5, 0.7, 0.9),
}


def score(features, labels, fit_rows, val_rows, per_class, draw, params) -> float:
    fit_labels = labels[fit_rows]
    labeled = draw_per_class(fit_labels, per_class, seed=draw)
    targets = np.full(len(fit_rows), UNLABELED)
    targets[labeled] = fit_labels[labeled]
    head = Pipeline([("scale", StandardScaler()), ("pseudo_label", SpectralPseudoLabels(**params))])
    head.fit(features[fit_rows], targets)
    return float((head.predict(features[val_rows]) == labels[val_rows]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("features")
    parser.add_argument("--per-class", default="1,10")
    parser.add_argument("--draws", type=int, default=5)
    args = parser.parse_args()
    ff = read_features(args.features)
    fit_rows, val_rows = stratified_split(ff.labels)
    ks = [int(k) for k in args.per_class.split(",")]
    print(f"{args.features}: {len(fit_rows)} rows to fit on (K labeled per class, the rest unlabeled), "
          f"{len(val_rows)} validation rows; mean ± std of {args.draws} draws")
    print("| " + " | ".join(VARIANTS) + " | " + " | ".join(f"K={k}" for k in ks) + " |")
    print("|" + "---|" * (len(VARIANTS) + len(ks)))
    for values in itertools.product(*VARIANTS.values()):
        params = dict(zip(VARIANTS, values))
        began, cells = time.perf_counter(), []
        for k in ks:
            accs = [score(ff.features, ff.labels, fit_rows, val_rows, k, d, params) for d in range(args.draws)]
            cells.append(f"{np.mean(accs):.3f} ± {np.std(accs):.3f}")
        seconds = time.perf_counter() - began
        print("| " + " | ".join(map(str, values)) + " | " + " | ".join(cells) + f" |  ({seconds:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
