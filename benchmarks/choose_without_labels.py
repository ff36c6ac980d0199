"""Can the timestep (or the taps) be chosen from unlabeled images alone?

For each candidate timestep (with --taps: each candidate tap set at --timestep), the features
of a backbone checkpoint are computed for unlabeled images and for a second view of them
(another fixed noise tensor and the image moved by one pixel), and scored without labels
(extractors/choose.py): how many of each image's nearest neighbours the two views agree on, how far
apart 20 k-means clusters are (silhouette), and the product of the two, which `export
--timestep auto` (`--taps auto`) maximises; and the features' effective rank (RankMe). Next to them: the few-shot
accuracy of logreg on the validation part (stratified 80/20) of the train split, which the
label-free choice should track. The test split is not loaded.

    python benchmarks/choose_without_labels.py runs/bb.ckpt --source mnist-sample:train [--taps]
"""

import argparse
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from diffclass_cli.backbone.checkpoint import load_checkpoint
from diffclass_cli.benchmark.protocol import draw_seed
from diffclass_cli.benchmark.suite import load_split, validation_split
from diffclass_cli.data.loading import to_unit_range
from diffclass_cli.extractors.choose import (
    CHOICE_IMAGES,
    cluster_separation,
    extract,
    neighbour_agreement,
    tap_set_columns,
)
from diffclass_cli.extractors.spec import ExtractorSpec
from diffclass_cli.heads.models import draw_per_class


def effective_rank(features: np.ndarray) -> float:
    """RankMe (Garrido et al. 2023): exp of the entropy of the standardised features' normalised
    singular values; low when the features collapse to a few directions."""
    singular = np.linalg.svd(StandardScaler().fit_transform(features), compute_uv=False)
    p = singular / singular.sum() + 1e-12
    return float(np.exp(-(p * np.log(p)).sum()))


def logreg_accuracy(pool, pool_labels, validation, validation_labels, k: int, draws: int) -> float:
    scores = []
    for draw in range(draws):
        labeled = draw_per_class(pool_labels, k, draw_seed(0, k, draw))
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        model.fit(pool[labeled], pool_labels[labeled])
        scores.append((model.predict(validation) == validation_labels).mean())
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--source", default="mnist-sample:train")
    parser.add_argument("--timesteps", default="10,25,50,100,250,500")
    parser.add_argument("--taps", action="store_true", help="compare tap sets at --timestep instead")
    parser.add_argument("--timestep", type=int, default=100)
    parser.add_argument("--unlabeled", type=int, default=CHOICE_IMAGES, help="images the label-free scores use")
    parser.add_argument("--draws", type=int, default=20, help="draws at K = 1 (a third of them at K = 10)")
    options = parser.parse_args()
    warnings.simplefilter("ignore")
    config = load_checkpoint(options.checkpoint).config
    split = load_split(options.source, config.image_size, config.channels, None)
    fit, validation = validation_split(split)
    unlabeled = np.random.default_rng(0).permutation(len(fit.images))[:options.unlabeled]
    pool_images, validation_images = (torch.from_numpy(to_unit_range(s.images)) for s in (fit, validation))
    print(f"{options.checkpoint} on {options.source}: {len(fit.images)} pool / {len(validation.images)} validation "
          f"images; label-free scores on {len(unlabeled)} pool images\n")
    def row(name, pool, held, second) -> str:
        first = pool[unlabeled]
        agreement, separation = neighbour_agreement(first, second), cluster_separation(first)
        accuracy = [logreg_accuracy(pool, fit.labels, held, validation.labels, k, options.draws // (1 + 2 * (k > 1)))
                    for k in (1, 10)]
        rank = effective_rank(first)
        return " | ".join([name] + [f"{v:.3f}" for v in (agreement, separation, agreement * separation)]
                          + [f"{rank:.0f}"] + [f"{v:.3f}" for v in accuracy])

    print(f"| {'taps' if options.taps else 'timestep'} | agreement | separation | score (product) | effective rank "
          "| logreg K=1 | K=10 |\n|---|---|---|---|---|---|---|")
    if options.taps:
        every = ExtractorSpec(timesteps=(options.timestep,), taps=("all",))
        pool, held = (extract(options.checkpoint, every, images) for images in (pool_images, validation_images))
        second = extract(options.checkpoint, every, pool_images[unlabeled], second_view=True)
        for name, columns in tap_set_columns(options.checkpoint, every).items():
            print(f"| {row(name, pool[:, columns], held[:, columns], second[:, columns])} |", flush=True)
        return
    for t in map(int, options.timesteps.split(",")):
        spec = ExtractorSpec(timesteps=(t,))
        pool, held = (extract(options.checkpoint, spec, images) for images in (pool_images, validation_images))
        second = extract(options.checkpoint, spec, pool_images[unlabeled], second_view=True)
        print(f"| {row(str(t), pool, held, second)} |", flush=True)

if __name__ == "__main__":
    main()
