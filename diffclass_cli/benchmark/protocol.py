"""The few-shot protocol. For each K labels per class and each seeded draw, K labeled rows
per class are drawn from the train split (its other rows are the unlabeled set of the semi
head), a head is fitted, and accuracy is measured on the whole test split, which
is never used to choose anything."""

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from diffclass_cli.benchmark.cnn import cnn_accuracy
from diffclass_cli.benchmark.features import FeatureSet
from diffclass_cli.choices import LabelChoice
from diffclass_cli.console import log, progress
from diffclass_cli.data.sources import UNLABELED
from diffclass_cli.heads.models import HeadKind, SpaceCache, draw_per_class, fit_rows, make_head
from diffclass_cli.heads.suggest import suggest_rows

CNN_NAME = "cnn"
FEW_LABELS = 2  # at this many labels per class or fewer, results are bimodal: more draws


@dataclass(frozen=True)
class Protocol:
    per_class: tuple[int, ...] = (1, 2, 5, 10, 32, 100)
    draws: int = 5
    heads: tuple[HeadKind, ...] = tuple(HeadKind)
    seed: int = 0
    cnn_steps: int = 300  # 0: no supervised CNN baseline
    draws_few_labels: int = 20  # draws per K at K <= FEW_LABELS
    labels: LabelChoice = LabelChoice.random

    def draws_at(self, per_class: int, labels: np.ndarray | None = None) -> int:
        """Draws at K = `per_class`; one where every class of `labels` has exactly K labeled rows
        (every draw would be the same)."""
        if labels is not None and self.labels == LabelChoice.random:
            counts = np.bincount(labels[labels != UNLABELED])
            if counts[counts > 0].max(initial=0) <= per_class:
                return 1
        return self.draws_few_labels if per_class <= FEW_LABELS else self.draws

    def total_draws(self, labels: np.ndarray | None = None) -> int:
        return sum(self.draws_at(k, labels) for k in self.per_class)


@dataclass
class Split:
    """Images `[N, C, H, W]` uint8 and labels `[N]` of one split."""

    images: np.ndarray
    labels: np.ndarray
    ids: list[str] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)


def draw_seed(seed: int, per_class: int, draw: int) -> int:
    """One seed per (K, draw): every feature set and head sees the same labeled rows."""
    return seed * 1_000_003 + per_class * 1_000 + draw


def head_accuracy(features: FeatureSet, kind: HeadKind, labels: np.ndarray, labeled: np.ndarray,
                  *, test_labels: np.ndarray, seed: int, C: float = 1.0,
                  memory: SpaceCache | None = None) -> float:
    labeled = labeled[labels[labeled] != UNLABELED]  # a chosen image of no known class adds no label
    present = np.unique(labels[labeled])
    if len(present) < 2:  # a choice that found one class only: a head can only answer that class
        return float((test_labels == present[0]).mean()) if len(present) else 0.0
    rows, targets = fit_rows(labels, labeled, kind)
    head = make_head(kind, C=C, seed=seed, memory=memory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        head.fit(features.train[rows], targets)
    return float((head.predict(features.test) == test_labels).mean())


def cnn_fits_in(minutes: float, train: Split, test: Split, protocol: Protocol) -> bool:
    """Whether the supervised CNN's draws take at most `minutes`, judged by timing its first one;
    says which way it went."""
    if protocol.cnn_steps == 0:
        return False
    k = min(protocol.per_class)
    labeled = draw_per_class(train.labels, k, draw_seed(protocol.seed, k, 0))
    began = time.perf_counter()
    cnn_accuracy(train.images[labeled], train.labels[labeled], test.images, test.labels,
                 seed=0, steps=protocol.cnn_steps)
    estimate = (time.perf_counter() - began) * protocol.total_draws(train.labels) / 60
    fits = estimate <= minutes
    log.info(f"cnn baseline: about {estimate:.1f} min for its draws, "
             + ("included" if fits else f"left out (over {minutes:g} min; --baselines pixels,pca,cnn runs it)"))
    return fits


def run_protocol(feature_sets: list[FeatureSet], train: Split, test: Split, *, protocol: Protocol,
                 sweep: str = "main", heads: tuple[HeadKind, ...] | None = None,
                 cnn: bool = True, on_row: Callable[[dict], None] | None = None) -> tuple[list[dict], dict]:
    """Result rows (one per feature set, head, K and draw; each also given to `on_row` as it is
    finished) and the ids of the labeled train images of each draw."""
    heads = heads or protocol.heads
    with_cnn = cnn and protocol.cnn_steps > 0
    per_draw = len(feature_sets) * len(heads) + with_cnn
    total = protocol.total_draws(train.labels) * per_draw
    rows, labeled_ids = [], {}
    memory = SpaceCache(kept=4 * len(feature_sets))  # the draws refit on the same rows
    classes = len(np.unique(train.labels[train.labels != UNLABELED]))  # a budget of K labels per class: K x classes
    began = time.perf_counter()

    def add(row: dict) -> None:
        rows.append(row)
        if on_row is not None:
            on_row(row)
        bar.update()

    with progress(total=total, desc=f"benchmark ({sweep})", unit="fit") as bar:
        for k in protocol.per_class:
            for draw in range(protocol.draws_at(k, train.labels)):
                seed = draw_seed(protocol.seed, k, draw)
                labeled = draw_per_class(train.labels, k, seed, train.class_names or None)
                common = {"sweep": sweep, "per_class": k, "draw": draw, "seed": seed}
                budget = k * classes
                if protocol.labels == LabelChoice.pool:  # some classes may get none, images of no class some
                    labeled = np.sort(np.random.default_rng(seed).choice(len(train.labels), budget, replace=False))
                for features in feature_sets:
                    if protocol.labels == LabelChoice.suggest:  # chosen from each feature set's own clusters
                        chosen, _ = suggest_rows(features.train, budget, seed=draw, memory=memory)
                        labeled = np.sort([s.row for s in chosen])
                        key = f"{features.name}/{k}/{draw}"
                    else:
                        key = f"{k}/{draw}"  # every feature set and head sees the same labeled rows
                    labeled_ids[key] = [train.ids[i] for i in labeled] if train.ids else labeled.tolist()
                    for kind in heads:
                        accuracy = head_accuracy(features, kind, train.labels, labeled, test_labels=test.labels,
                                                 seed=seed, memory=memory)
                        add({"feature_set": features.name, "head": kind.value, **common, "accuracy": accuracy})
                if with_cnn:
                    known = labeled[train.labels[labeled] != UNLABELED]
                    accuracy = cnn_accuracy(train.images[known], train.labels[known], test.images, test.labels,
                                            seed=seed, steps=protocol.cnn_steps)
                    add({"feature_set": CNN_NAME, "head": "supervised", **common, "accuracy": accuracy})
            _say_progress(sweep, k, len(rows), total, time.perf_counter() - began)
    return rows, labeled_ids


def _say_progress(sweep: str, k: int, done: int, total: int, seconds: float) -> None:
    """A line per K, with the time left at the pace so far (for logs, where no bar is drawn)."""
    left = seconds / done * (total - done) / 60
    log.info(f"benchmark ({sweep}): K = {k} done, {done} of {total} fits in {seconds / 60:.1f} min"
             + (f", about {left:.1f} min left" if done < total else ""))
