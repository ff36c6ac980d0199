"""A one-shot head (nearest class mean) next to logistic regression at 1 and
2 labels per class. Measured on the validation part (stratified 80/20) of each train split;
the test splits are not loaded. Features: the shipped extractor on mnist-sample and digits,
and both datasets' raw pixels.

    python benchmarks/one_shot_head.py [--draws 20]
"""

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, normalize

from diffclass_cli.benchmark.protocol import draw_seed
from diffclass_cli.data.sources import open_source, stratified_split
from diffclass_cli.features.extract import DEFAULT_MODEL, featurize
from diffclass_cli.features.h5 import read_features
from diffclass_cli.heads.models import draw_per_class


def pixels(spec: str) -> tuple[np.ndarray, np.ndarray]:
    source = open_source(spec)
    return np.stack([np.asarray(source.load(i), np.float32).ravel() / 255 for i in range(len(source))]), source.labels


def shipped(spec: str, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    featurize(open_source(spec), folder / "f.h5", DEFAULT_MODEL, overwrite=True)
    ff = read_features(folder / "f.h5")
    return ff.features, ff.labels


def nearest_class_mean(pool: np.ndarray, labeled: np.ndarray, targets: np.ndarray, rows: np.ndarray,
                       dims: int | None) -> np.ndarray:
    """Standardised (on the whole pool, no labels), optionally whitened PCA to `dims`, unit
    length; each row takes the class whose labeled mean is nearest in angle."""
    scale = StandardScaler().fit(pool)
    pca = PCA(dims, whiten=True, random_state=0).fit(scale.transform(pool)) if dims else None

    def space(x):
        x = scale.transform(x)
        return normalize(pca.transform(x) if pca else x)

    classes = np.unique(targets)
    means = normalize(np.stack([space(pool[labeled])[targets == c].mean(axis=0) for c in classes]))
    return classes[(space(rows) @ means.T).argmax(axis=1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--draws", type=int, default=20)
    options = parser.parse_args()
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as tmp:
        sets = {"mnist-sample, shipped extractor": shipped("mnist-sample:train", Path(tmp)),
                "digits, shipped extractor": shipped("digits:train", Path(tmp)),
                "mnist-sample, raw pixels": pixels("mnist-sample:train"),
                "digits, raw pixels": pixels("digits:train")}
    heads = {"logreg": None, "NCM (standardised, unit length)": 0, "NCM (whitened PCA 32-d, unit length)": 32}
    print(f"mean accuracy on the validation part (worst of {options.draws} draws)\n")
    print("| features | K | " + " | ".join(heads) + " |\n|" + "---|" * (len(heads) + 2))
    for name, (features, labels) in sets.items():
        fit, validation = stratified_split(labels)
        pool, pool_labels = features[fit], labels[fit]
        for k in (1, 2):
            scores = {head: [] for head in heads}
            for draw in range(options.draws):
                labeled = draw_per_class(pool_labels, k, draw_seed(0, k, draw))
                for head, dims in heads.items():
                    if dims is None:
                        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
                        guess = model.fit(pool[labeled], pool_labels[labeled]).predict(features[validation])
                    else:
                        guess = nearest_class_mean(pool, labeled, pool_labels[labeled], features[validation],
                                                   dims or None)
                    scores[head].append(float((guess == labels[validation]).mean()))
            print(f"| {name} | {k} | " + " | ".join(f"{np.mean(v):.3f} ({min(v):.3f})" for v in scores.values())
                  + " |", flush=True)


if __name__ == "__main__":
    main()
