"""Which images to label first, and which given labels look wrong: both read the clusters the
unlabeled features fall into (the semi head's clustering space).

`suggest_rows` follows TypiClust (Hacohen et al., ICML 2022): cluster the candidates into as many
clusters as there will be labeled images (those already labeled plus the budget), and label the
most typical image (the densest among its neighbours) of each of the largest clusters that no
labeled image covers yet. With a small budget that is one clean example per large group of
similar images, which is what the semi head needs to name its clusters.
"""

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import StandardScaler

from diffclass_cli.choices import OutputFormat
from diffclass_cli.console import log
from diffclass_cli.data.labels_table import spreadsheet_safe
from diffclass_cli.data.sources import UNLABELED
from diffclass_cli.errors import DiffclassError
from diffclass_cli.features.h5 import check_finite, open_feature_file, open_feature_files, take_across
from diffclass_cli.files import atomic_output
from diffclass_cli.heads import MAX_UNLABELED
from diffclass_cli.heads.models import SpectralPseudoLabels, cached, spread_sample

MAX_SPACE_DIMS = 50  # the spectral embedding's dimensions: one per cluster, up to this many
TYPICALITY_NEIGHBOURS = 20  # TypiClust's K
MIN_CLUSTER = 5  # TypiClust passes over clusters smaller than this while larger ones are uncovered
# How much nearer a labeled row must sit to another class's labeled rows than to its own to be
# flagged, in units of the distance between the two classes. With 5 of 100 labels flipped on
# purpose (10 draws, benchmarks/label_check.py): 5.0 of 5 caught and 0.9 clean labels flagged per
# draw on mnist-sample's train split, 4.8 and 1.0 on 8x8 digits (0.75: 4.6 / 0.4 and 4.0 / 0.1).
SUSPICIOUS_MARGIN = 0.5


@dataclass(frozen=True)
class Suggestion:
    row: int  # in the rows given
    rank: int  # 1 = label first
    cluster: int
    cluster_size: int
    typicality: float  # 1 / mean distance to its nearest neighbours in the clustering space
    why: str
    uncovered: bool = True  # its cluster holds no labeled image (else: every cluster did, and it fills the budget)


def cluster_space(features: np.ndarray, dims: int, memory=None) -> np.ndarray:
    """The rows in the space the semi head clusters them in: standardised, whitened PCA at unit
    length, spectral embedding of its nearest-neighbour graph in `dims` dimensions. `memory`:
    where to cache it (see heads.models.SpaceCache)."""
    scaled = StandardScaler().fit_transform(features)
    return SpectralPseudoLabels(memory=memory).cluster_space(scaled, max(2, min(dims, MAX_SPACE_DIMS)))


def representation(features: np.ndarray) -> np.ndarray:
    """Where typicality is measured: the standardised features' leading principal components (the
    clustering space collapses each cluster, so it says little about which member is typical)."""
    scaled = StandardScaler().fit_transform(features)
    dims = max(1, min(MAX_SPACE_DIMS, scaled.shape[1], len(scaled) - 1))
    return PCA(dims, random_state=0).fit_transform(scaled)


def suggest_rows(features: np.ndarray, budget: int, labeled: np.ndarray | None = None, seed: int = 0,
                 memory=None, classes: int = 0) -> tuple[list[Suggestion], list[Suggestion]]:
    """`budget` rows of `features` `[N, D]` to label next, best first, none of them in `labeled`
    (the rows labeled already), and the most typical row of each cluster they leave without a
    label (there are such clusters where `classes` asks for more clusters than the labeled rows
    and the budget together, or where labeled rows share a cluster). Chosen without looking at
    any label. `memory`: where to cache what depends on the
    features alone, for several choices from the same rows."""
    labeled = np.zeros(len(features), bool) if labeled is None else np.asarray(labeled, bool)
    candidates = np.flatnonzero(~labeled)
    budget = min(budget, len(candidates))
    if budget <= 0:
        return [], []
    n_clusters = min(max(int(labeled.sum()) + budget, classes), len(features))
    space = cluster_space(features, n_clusters, memory)
    clusters = KMeans(n_clusters, n_init=10, random_state=seed).fit_predict(space)
    typicality = cached(typicality_of, memory)(features)
    sizes = np.bincount(clusters, minlength=n_clusters)
    covered = set(clusters[labeled].tolist())
    uncovered = sorted((c for c in range(n_clusters) if c not in covered and (~labeled[clusters == c]).any()),
                       key=lambda c: (sizes[c] < MIN_CLUSTER, -sizes[c], c))
    typical = []
    for cluster in uncovered:
        members = candidates[clusters[candidates] == cluster]
        row = int(members[np.argmax(typicality[members])])
        typical.append(Suggestion(row, len(typical) + 1, cluster, int(sizes[cluster]), float(typicality[row]),
                                  f"the most typical image of cluster {cluster} ({sizes[cluster]} images), "
                                  "which no labeled image covers yet"))
    chosen = typical[:budget]
    taken = {s.row for s in chosen}
    for row in candidates[np.argsort(-typicality[candidates], kind="stable")]:  # only when clusters run out
        if len(chosen) == budget:
            break
        if int(row) not in taken:
            cluster = int(clusters[row])
            chosen.append(Suggestion(int(row), len(chosen) + 1, cluster, int(sizes[cluster]),
                                     float(typicality[row]), f"a typical image of cluster {cluster}, already "
                                     "covered (every cluster holds a labeled or suggested image)", uncovered=False))
    return chosen, typical[budget:]


def typicality_of(features: np.ndarray) -> np.ndarray:
    """Each row's typicality among `features`, measured in their `representation`."""
    return _typicality(representation(features))


def _typicality(space: np.ndarray) -> np.ndarray:
    k = min(TYPICALITY_NEIGHBOURS, len(space) - 1)
    if k < 1:
        return np.ones(len(space))
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(space).kneighbors(space)
    return 1.0 / (distances[:, 1:].mean(axis=1) + 1e-12)


def suspicious_labels(features: np.ndarray, targets: np.ndarray, margin: float = SUSPICIOUS_MARGIN) -> list[dict]:
    """Labeled rows (targets >= 0; -1 = unlabeled) that sit with another class in the clustering
    space: nearer, by more than `margin`, to the mean of another class's labeled rows than to the
    mean of their own class's other labeled rows (leave-one-out; classes with one labeled row
    cannot be judged). Returns {row, given, looks_like, score}, most suspicious first."""
    classes = np.unique(targets[targets != UNLABELED])
    space = cluster_space(features, len(classes))
    labeled = np.flatnonzero(targets != UNLABELED)
    sums = {c: space[targets == c].sum(axis=0) for c in classes}
    counts = {c: int((targets == c).sum()) for c in classes}
    found = []
    for row in labeled:
        own = targets[row]
        if counts[own] < 2:
            continue
        own_mean = (sums[own] - space[row]) / (counts[own] - 1)
        others = [c for c in classes if c != own]
        means = np.stack([sums[c] / counts[c] for c in others])
        distances = np.linalg.norm(means - space[row], axis=1)
        nearest = int(distances.argmin())
        # In units of the distance between the two classes: 1 sits on the other class, 0 halfway.
        between = max(float(np.linalg.norm(means[nearest] - own_mean)), 1e-12)
        score = float(np.linalg.norm(space[row] - own_mean) - distances[nearest]) / between
        if score > margin:
            found.append({"row": int(row), "given": int(own), "looks_like": int(others[nearest]), "score": score})
    return sorted(found, key=lambda f: -f["score"])


def suggest(candidates: Path, budget: int, *, labeled: Path | None = None, seed: int = 0,
            max_rows: int = MAX_UNLABELED, classes: int | None = None) -> tuple[list[str], list[Suggestion]]:
    """The paths of the candidates' rows and the `budget` of them to label next (suggest_rows), chosen
    among at most `max_rows` of its unlabeled rows (spread evenly over the file); the rows labeled
    already (among the candidates or in the feature file `labeled`) count as covered. With `classes`
    more than the labels can cover, a warning names the clusters left without a label."""
    with open_feature_files(candidates, [labeled] if labeled else []) as readers:
        own = readers[0].labels
        free = spread_sample(np.flatnonzero(own == UNLABELED), max_rows, seed)
        if len(free) == 0:
            raise DiffclassError(f"{candidates} has no unlabeled rows to choose from")
        known = np.flatnonzero(own != UNLABELED)
        if labeled:
            known = np.concatenate([known, readers[0].rows + np.arange(readers[1].rows)])
        rows = np.sort(np.concatenate([free, known]))
        table = take_across(readers, rows)
        was_labeled = ~np.isin(rows, free)
    check_finite(table, candidates)
    chosen, left = suggest_rows(table.features, budget, was_labeled, seed, classes=classes or 0)
    log.info(f"suggest: {len(chosen)} of {len(free)} unlabeled rows ({int(was_labeled.sum())} rows labeled already)")
    if left and classes:  # without --classes, clusters several labeled rows share leave some over
        log.warning(uncovered_message(table.paths, classes, left))
    return table.paths, chosen


def uncovered_message(paths: list[str], classes: int, left: list[Suggestion]) -> str:
    """What a budget too small for `classes` leaves out: each uncovered cluster, its size and its most
    typical image."""
    clusters = "; ".join(f"cluster {s.cluster} ({s.cluster_size} images, e.g. {paths[s.row]})" for s in left)
    return (f"suggest: with --classes {classes}, {len(left)} cluster(s) get no label from this budget: {clusters}. "
            "Raise --budget, or label these images and run suggest again with --labeled")


SUGGESTION_COLUMNS = ["path", "rank", "cluster", "cluster_size", "typicality", "label", "why"]


def write_suggestions(paths: list[str], chosen: list[Suggestion], stream: TextIO,
                      output: OutputFormat = OutputFormat.csv) -> None:
    """One row per suggestion, best first, with an empty `label` column to fill in: the filled
    table is what `fit --labels` reads."""
    records = [{"path": paths[s.row], "rank": s.rank, "cluster": s.cluster, "cluster_size": s.cluster_size,
                "typicality": round(s.typicality, 4), "label": "", "why": s.why} for s in chosen]
    if output == OutputFormat.jsonl:
        stream.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        return
    writer = csv.DictWriter(stream, SUGGESTION_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({**r, "path": spreadsheet_safe(r["path"])} for r in records)


def copy_suggested(candidates: Path, paths: list[str], chosen: list[Suggestion], folder: Path) -> int:
    """Lay the suggested images out in `folder` (named as in the candidates' file, to sort into class
    subfolders), read from the source the candidates were featurized from; returns how many."""
    from diffclass_cli.data.sources import open_source

    with open_feature_file(candidates) as reader:
        spec = str(reader.attrs.get("source", ""))
    try:
        source = open_source(spec)
    except DiffclassError as err:
        raise DiffclassError(f"--copy-to needs the images {candidates} was made from ({spec}): {err}") from None
    where = {name: i for i, name in enumerate(source.ids)}
    for s in chosen:
        name = paths[s.row]
        if name not in where:
            raise DiffclassError(f"--copy-to: {name} is no longer in {spec}")
        if Path(spec).is_dir():  # the file itself, byte for byte, under its own name
            with atomic_output(folder / Path(name).name) as tmp:
                shutil.copyfile(Path(spec, name), tmp)
        else:  # a built-in data set: the decoded image as PNG
            with atomic_output(folder / f"{name.replace(':', '-')}.png") as tmp:
                source.load(where[name]).save(tmp, format="PNG")
    return len(chosen)
