"""Does `suggest --classes N` name the classes a small budget leaves out? For budgets below the
number of classes, over 20 seeds of the clustering: how many classes the suggested images cover,
how many the suggestions and the clusters named as uncovered cover together, and what share of the
missed classes the named clusters hold. Reads a labeled feature file (labels are only scored).

    python benchmarks/uncovered_clusters.py train.h5 [--budgets 3,5,7] [--seeds 20]
"""

import argparse
from pathlib import Path

import numpy as np

from diffclass_cli.features.h5 import read_features
from diffclass_cli.heads.models import SpaceCache
from diffclass_cli.heads.suggest import suggest_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("features", type=Path)
    parser.add_argument("--budgets", default="3,5,7")
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args()
    table = read_features(args.features)
    features, labels = table.features, table.labels
    classes = len(np.unique(labels))
    memory = SpaceCache()  # the clustering space depends on the features alone
    for budget in map(int, args.budgets.split(",")):
        suggested, together, named = [], [], []
        for seed in range(args.seeds):
            chosen, left = suggest_rows(features, budget, seed=seed, memory=memory, classes=classes)
            covered = {int(labels[s.row]) for s in chosen}
            shown = {int(labels[s.row]) for s in left}
            missed = set(range(classes)) - covered
            suggested.append(len(covered))
            together.append(len(covered | shown))
            named.append(len(missed & shown) / max(1, len(missed)))
        print(f"budget {budget}, --classes {classes}: classes the suggestions cover {np.mean(suggested):.2f} "
              f"(fewest {min(suggested)}); with the named clusters {np.mean(together):.2f} (fewest {min(together)}); "
              f"missed classes named {np.mean(named):.2f} (least {min(named):.2f})")


if __name__ == "__main__":
    main()
