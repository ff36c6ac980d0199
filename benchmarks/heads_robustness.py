"""Do the few-shot heads hold beyond ten balanced, cleanly clustered classes? Each scenario is
a pool (the labeled draws come from it; the rest of it is the semi head's unlabeled set) and a
held-out test set, built from the offline data; the protocol is `diffclass benchmark`'s (seeded
draws, accuracy on the held-out set, mean ± std and the worst draw).

    python benchmarks/heads_robustness.py [--model exports/mnist-sample-ddpm.onnx] [--out DIR]
        [--scenarios standard,imbalanced,...] [--heads logreg,semi,auto] [--on-validation]

Scenarios (mnist-sample features of the extractor unless said otherwise):
    standard      mnist-sample:train as the pool, mnist-sample:test
    imbalanced    pool class sizes geometric from the full class size down to a tenth (400 .. 40); test balanced
    few-classes-3 digits 3, 5, 8 only
    few-classes-5 digits 0, 2, 4, 6, 8 only
    merged-2      two classes, {0..4} and {5..9}: each class is five clusters
    merged-3      three classes of mixed digits, {0,3,6,9}, {1,4,7}, {2,5,8}
    open-set      labels for digits 0..6; the pool also holds 7, 8, 9 unlabeled; test holds 0..6
    small-pool    300 pool images (30 per class)
    digits        scikit-learn's 8x8 digits (another domain) through the same extractor
    pixels        mnist-sample as raw pixels: features that cluster poorly

`--on-validation` builds every scenario from the train splits alone (the built-in 80/20 rule
splits each into pool and validation): use it to choose designs; the test splits decide nothing.
"""

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from diffclass_cli.benchmark.features import FeatureSet, extractor_features, model_input_shape, pixel_features
from diffclass_cli.benchmark.protocol import Protocol, Split, run_protocol
from diffclass_cli.benchmark.report import summary_markdown, write_results
from diffclass_cli.benchmark.suite import load_split
from diffclass_cli.choices import LabelChoice
from diffclass_cli.data.sources import UNLABELED, stratified_split
from diffclass_cli.extractors.spec import ExtractorSpec
from diffclass_cli.features.extract import DEFAULT_MODEL
from diffclass_cli.heads.models import HeadKind

PER_CLASS = (1, 2, 5, 10, 32, 100)


@dataclass
class Labeled:
    """Feature rows `[N, D]` and their true labels `[N]`."""

    features: np.ndarray
    labels: np.ndarray

    def rows(self, rows: np.ndarray) -> "Labeled":
        return Labeled(self.features[rows], self.labels[rows])

    def relabel(self, mapping: dict[int, int]) -> "Labeled":
        """Only the rows of the mapped classes, with their new labels (UNLABELED allowed)."""
        rows = np.flatnonzero(np.isin(self.labels, list(mapping)))
        return Labeled(self.features[rows], np.array([mapping[y] for y in self.labels[rows]], dtype=np.int64))

    def sample(self, sizes: dict[int, int]) -> "Labeled":
        """`sizes[c]` rows of each class c, drawn with a fixed seed."""
        rng = np.random.RandomState(0)
        keep = [rng.permutation(np.flatnonzero(self.labels == c))[:n] for c, n in sizes.items()]
        return self.rows(np.sort(np.concatenate(keep)))


Scenario = Callable[[Labeled, Labeled], tuple[Labeled, Labeled]]  # (pool, test) -> (pool, test)


def imbalanced(pool: Labeled, test: Labeled) -> tuple[Labeled, Labeled]:
    classes, counts = np.unique(pool.labels, return_counts=True)
    sizes = {c: round(n * 0.1 ** (i / (len(classes) - 1))) for i, (c, n) in enumerate(zip(classes, counts))}
    return pool.sample(sizes), test


def as_is(pool: Labeled, test: Labeled) -> tuple[Labeled, Labeled]:
    return pool, test


def grouped(groups: tuple[tuple[int, ...], ...]) -> Scenario:
    """Class i is the union of the digits in groups[i]; other digits are left out."""
    mapping = {c: i for i, group in enumerate(groups) for c in group}
    return lambda pool, test: (pool.relabel(mapping), test.relabel(mapping))


def open_set(pool: Labeled, test: Labeled) -> tuple[Labeled, Labeled]:
    known = {c: c for c in range(7)}
    return pool.relabel(known | {c: UNLABELED for c in (7, 8, 9)}), test.relabel(known)


def small_pool(pool: Labeled, test: Labeled) -> tuple[Labeled, Labeled]:
    return pool.sample({c: 30 for c in np.unique(pool.labels)}), test


SCENARIOS: dict[str, tuple[str, Scenario]] = {  # name -> (data, how the pool and test are built)
    "standard": ("mnist", as_is),
    "imbalanced": ("mnist", imbalanced),
    "few-classes-3": ("mnist", grouped(((3,), (5,), (8,)))),
    "few-classes-5": ("mnist", grouped(((0,), (2,), (4,), (6,), (8,)))),
    "merged-2": ("mnist", grouped(((0, 1, 2, 3, 4), (5, 6, 7, 8, 9)))),
    "merged-3": ("mnist", grouped(((0, 3, 6, 9), (1, 4, 7), (2, 5, 8)))),
    "open-set": ("mnist", open_set),
    "small-pool": ("mnist", small_pool),
    "digits": ("digits", as_is),
    "pixels": ("mnist-pixels", as_is),
}


def load_data(name: str, model: Path, on_validation: bool) -> tuple[Labeled, Labeled]:
    """(pool, held-out) features of one dataset; with `on_validation` both come from its train split."""
    dataset = "mnist-sample" if name.startswith("mnist") else name
    size, channels = model_input_shape(model)
    train = load_split(f"{dataset}:train", size, channels, None)
    if on_validation:
        fit_rows, validation_rows = stratified_split(train.labels)
        held_out = Split(train.images[validation_rows], train.labels[validation_rows])
        train = Split(train.images[fit_rows], train.labels[fit_rows])
    else:
        held_out = load_split(f"{dataset}:test", size, channels, None)
    if name == "mnist-pixels":
        features = pixel_features(train.images, held_out.images)
    else:
        features = extractor_features(model.stem, model, ExtractorSpec(), train.images, held_out.images)
    return Labeled(features.train, train.labels), Labeled(features.test, held_out.labels)


def run_scenario(name: str, pool: Labeled, test: Labeled, protocol: Protocol, largest: int = 100) -> list[dict]:
    """Result rows at every K of PER_CLASS (up to `largest`) that the pool's smallest class allows."""
    smallest = min(np.bincount(pool.labels[pool.labels != UNLABELED]).min(), largest)
    protocol = replace(protocol, per_class=tuple(k for k in PER_CLASS if k <= smallest))
    return run_protocol([FeatureSet(name, pool.features, test.features)], Split(None, pool.labels),
                        Split(None, test.labels), protocol=protocol, sweep=name)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--out", type=Path, default=Path("runs/heads-robustness"))
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--heads", default="logreg,semi,auto")
    parser.add_argument("--draws", type=int, default=5, help="draws per K above 2")
    parser.add_argument("--draws-few", type=int, default=20, help="draws per K at 1 and 2 labels per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--on-validation", action="store_true")
    parser.add_argument("--labels", type=LabelChoice, default=LabelChoice.random,
                        help="random: K per class at random; suggest: K x classes as `diffclass suggest` picks them; "
                        "pool: K x classes at random from the whole pool")
    parser.add_argument("--max-per-class", type=int, default=max(PER_CLASS), help="the largest K to run")
    args = parser.parse_args()
    protocol = Protocol(heads=tuple(HeadKind(h) for h in args.heads.split(",")), draws=args.draws,
                        draws_few_labels=args.draws_few, seed=args.seed, cnn_steps=0, labels=args.labels)
    held_out = "a validation part of each train split" if args.on_validation else "the test split"
    began, rows, data = time.perf_counter(), [], {}
    for name in args.scenarios.split(","):
        dataset, build = SCENARIOS[name]
        if dataset not in data:
            data[dataset] = load_data(dataset, args.model, args.on_validation)
        pool, test = build(*data[dataset])
        rows += run_scenario(name, pool, test, protocol, args.max_per_class)
        print(summary_markdown([r for r in rows if r["sweep"] == name], scored_on=held_out), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(rows, args.out / "results.csv")
    preamble = (f"# Heads robustness\n\nExtractor {args.model}; labeled images chosen by {args.labels.value}; "
                f"accuracy on {held_out}; {args.draws_few} draws at "
                f"K <= 2, {args.draws} above; {(time.perf_counter() - began) / 60:.1f} min.\n")
    (args.out / "summary.md").write_text(summary_markdown(rows, preamble, held_out))
    print(f"wrote {args.out}/summary.md and results.csv")


if __name__ == "__main__":
    main()
