"""Accuracy of the logreg head (standardise, then logistic regression) at several C, on the
benchmark's validation protocol: the train split's stratified 80/20 parts and the same seeded
draws as `diffclass benchmark --on-validation` (20 draws at 1-2 labels per class, 5 above).

    python benchmarks/logreg_c.py [--train mnist-sample:train] [--model exports/mnist-sample-ddpm.onnx]
"""

import argparse
from pathlib import Path

import numpy as np

from diffclass_cli.benchmark.features import extractor_features, model_input_shape
from diffclass_cli.benchmark.protocol import Protocol, draw_seed, head_accuracy
from diffclass_cli.benchmark.suite import load_split, validation_split
from diffclass_cli.choices import HeadKind
from diffclass_cli.extractors.spec import ExtractorSpec
from diffclass_cli.heads.models import draw_per_class

C_VALUES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", default="mnist-sample:train")
    parser.add_argument("--model", type=Path, default=Path("exports/mnist-sample-ddpm.onnx"))
    parser.add_argument("--per-class", default="1,2,10,100")
    args = parser.parse_args()
    pool, val = validation_split(load_split(args.train, *model_input_shape(args.model), None))
    features = extractor_features("model", args.model, ExtractorSpec(), pool.images, val.images)
    for k in map(int, args.per_class.split(",")):
        draws = Protocol().draws_at(k)
        accuracy = np.zeros((draws, len(C_VALUES)))
        for draw in range(draws):
            seed = draw_seed(0, k, draw)
            labeled = draw_per_class(pool.labels, k, seed)
            for j, C in enumerate(C_VALUES):
                accuracy[draw, j] = head_accuracy(features, HeadKind.logreg, pool.labels, labeled,
                                                  test_labels=val.labels, seed=seed, C=C)
        cells = (f"C={C}: {mean:.3f} ({worst:.3f})" for C, mean, worst in
                 zip(C_VALUES, accuracy.mean(0), accuracy.min(0)))
        print(f"K={k}, {draws} draws, mean (worst): " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
