"""The classifier heads: plain scikit-learn Pipelines, so users can reuse them directly."""

import hashlib
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import spectral_embedding
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import kneighbors_graph
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler, normalize
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from diffclass_cli.choices import HeadKind
from diffclass_cli.data.sources import UNLABELED
from diffclass_cli.errors import DiffclassError
from diffclass_cli.heads import MAX_UNLABELED

SEMI_SUPERVISED = frozenset({HeadKind.semi, HeadKind.auto})  # heads that learn from unlabeled rows too


class SpaceCache:
    """The last few clustering spaces, kept in memory and keyed by the rows themselves: pass one
    as `memory` to heads fitted again and again on the same rows (a benchmark's draws). It has
    joblib.Memory's interface (`cache(function)`), so a joblib.Memory works too; the copies
    scikit-learn's `clone` makes of a head share it."""

    def __init__(self, kept: int = 3):
        self.kept, self.spaces = kept, {}

    def cache(self, function):
        def cached(X: np.ndarray, *args):
            key = (hashlib.sha1(np.ascontiguousarray(X).tobytes()).hexdigest(), X.shape, *args)
            if key not in self.spaces:
                if len(self.spaces) >= self.kept:
                    del self.spaces[next(iter(self.spaces))]
                self.spaces[key] = function(X, *args)
            return self.spaces[key]

        return cached

    def __deepcopy__(self, memo) -> "SpaceCache":
        return self


def cached(function, memory):
    """`function`, cached in `memory` (a SpaceCache or joblib.Memory) when there is one."""
    return function if memory is None else memory.cache(function)


def _class_codes(estimator: BaseEstimator, X, y) -> tuple[np.ndarray, np.ndarray]:
    """Validates X and y for a semi-supervised fit, sets `classes_` (the labeled classes) and
    returns X and the targets as class codes (-1 = unlabeled)."""
    X, y = validate_data(estimator, X, y)
    check_classification_targets(y)
    labeled = y != UNLABELED
    estimator.classes_, codes = np.unique(y[labeled], return_inverse=True)
    if len(estimator.classes_) < 2:
        raise ValueError(f"{type(estimator).__name__} needs at least 2 labeled classes; "
                         f"got {len(estimator.classes_)} class")
    targets = np.full(len(y), UNLABELED, dtype=np.int64)
    targets[labeled] = codes
    return X, targets


class SpectralPseudoLabels(ClassifierMixin, BaseEstimator):
    """Semi-supervised (targets -1 = unlabeled): spectral clustering of ALL rows gives every
    unlabeled row a pseudo-label; a logistic regression on the input features, fitted on the
    labeled rows and the most confidently clustered unlabeled ones, predicts rows never seen.
    Then `self_training_rounds` times: that classifier relabels the unlabeled rows and is fitted
    again on the labeled rows and the `self_training_fraction` of them it is surest of.

    The clustering space: a whitened PCA projection, scaled to unit length; the spectral
    embedding of its k-nearest-neighbour graph in one dimension per class, again at unit length
    (Ng, Jordan & Weiss), or the projection itself when that graph falls in pieces. When every
    class has `seed_from` labeled rows or more, or the classes have different numbers of them,
    each row takes the class whose labeled rows' mean is nearest there. With the same few per
    class (one label per class, drawn that way), k-means first finds one cluster per class
    without the labels, each class takes the cluster its labeled rows are closest to
    (one-to-one, which survives an untypical labeled image), and k-means runs on with every
    labeled row held in its class's cluster. Labels chosen otherwise (by `suggest`: one typical
    image per cluster, several for a class of several clusters; or images picked at random from
    the pool) break that one-cluster-per-class assumption, and their class means do better (on
    validation parts of the scenarios: imbalanced 0.95 against 0.76 with `suggest`'s 20 labels,
    open-set 0.99 against 0.85 with 14). The final fit weighs classes equally. Chosen on
    validation parts of the scenarios in `benchmarks/heads_robustness.py` (see the README's
    robustness tables).
    """

    def __init__(self, n_components: int = 32, n_neighbors: int = 15, seed_from: int = 2,
                 confident_fraction: float = 0.7, self_training_rounds: int = 3,
                 self_training_fraction: float = 0.9, C: float = 0.1, random_state: int = 0, memory=None):
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.seed_from = seed_from
        self.confident_fraction = confident_fraction
        self.self_training_rounds = self_training_rounds
        self.self_training_fraction = self_training_fraction
        self.C = C
        self.random_state = random_state
        self.memory = memory  # None, or where clustering spaces are cached (SpaceCache, joblib.Memory)

    def fit(self, X, y):
        X, targets = _class_codes(self, X, y)
        return self.fit_in_space(X, targets, self.cluster_space(X, len(self.classes_)))

    def fit_in_space(self, X: np.ndarray, targets: np.ndarray, space: np.ndarray) -> "SpectralPseudoLabels":
        """Fit with the clustering space already computed (it does not depend on the labels)."""
        pseudo, margin = self.pseudo_labels(space, targets)
        self.classifier_ = self._fit_confident(X, targets, pseudo, margin, self.confident_fraction)
        # Self-training: the classifier, fitted in the full feature space, relabels the rows the
        # clusters got wrong more often than it copies their mistakes (measured in the README).
        for _ in range(self.self_training_rounds):
            proba = self.classifier_.predict_proba(X)
            pseudo = np.where(targets != UNLABELED, targets, proba.argmax(axis=1))
            top_two = np.sort(proba, axis=1)[:, -2:]
            self.classifier_ = self._fit_confident(X, targets, pseudo, top_two[:, 1] - top_two[:, 0],
                                                   self.self_training_fraction, start=self.classifier_)
        return self

    def _fit_confident(self, X: np.ndarray, targets: np.ndarray, pseudo: np.ndarray, margin: np.ndarray,
                       fraction: float, start: LogisticRegression | None = None) -> LogisticRegression:
        """A logistic regression on the labeled rows and the `fraction` of unlabeled rows with the
        largest margin, weighing classes equally (the pseudo-labels inherit the unlabeled rows' class sizes,
        the labeled draw does not); the solver starts from `start`'s coefficients where it has the same classes."""
        unlabeled = np.flatnonzero(targets == UNLABELED)
        keep = unlabeled[np.argsort(-margin[unlabeled], kind="stable")][:int(fraction * len(unlabeled))]
        chosen = np.sort(np.concatenate([np.flatnonzero(targets != UNLABELED), keep]))
        model = LogisticRegression(C=self.C, max_iter=3000, class_weight="balanced")
        return fit_in_row_span(model, X[chosen], pseudo[chosen], start)

    def pseudo_labels(self, space: np.ndarray, targets: np.ndarray,
                      by_class_means: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each row's class (labeled rows keep theirs) and its margin: the distance to the
        second-nearest class centre minus the distance to the nearest. `by_class_means` forces
        one of the two ways (default: decided by the labeled rows per class)."""
        k = int(targets.max()) + 1
        labeled = targets != UNLABELED
        if by_class_means is None:
            by_class_means = self.uses_class_means(targets)
        if by_class_means:
            centres = np.stack([space[targets == c].mean(axis=0) for c in range(k)])
            distances = euclidean_distances(space, centres)
            assigned = np.where(labeled, targets, distances.argmin(axis=1))
        else:
            assigned, distances = self._held_k_means(space, targets, self._named_clusters(space, targets, k))
        nearest = np.sort(distances, axis=1)
        return assigned, nearest[:, 1] - nearest[:, 0]

    def uses_class_means(self, targets: np.ndarray) -> bool:
        counts = np.bincount(targets[targets != UNLABELED])
        return counts.min() >= self.seed_from or counts.min() != counts.max()

    def _named_clusters(self, space: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
        """Centres `[k, D]` of k clusters found without labels, in class order: each class takes
        the cluster its labeled rows are closest to, one cluster per class."""
        found = KMeans(k, n_init=10, random_state=self.random_state).fit(space)
        closeness = np.stack([found.transform(space[targets == c]).mean(axis=0) for c in range(k)])
        classes, clusters = linear_sum_assignment(closeness)
        return found.cluster_centers_[clusters[np.argsort(classes)]]

    @staticmethod
    def _held_k_means(space: np.ndarray, targets: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """k-means from `centres` with every labeled row held in its class's cluster: the
        assignment and the final distances `[N, k]`."""
        labeled = targets != UNLABELED
        assigned = np.full(len(space), UNLABELED)
        for _ in range(100):
            distances = euclidean_distances(space, centres)
            new = np.where(labeled, targets, distances.argmin(axis=1))
            if np.array_equal(new, assigned):
                break
            assigned = new
            centres = np.stack([space[assigned == c].mean(axis=0) if (assigned == c).any() else centres[c]
                                for c in range(len(centres))])
        return assigned, distances

    def cluster_space(self, X: np.ndarray, n_classes: int) -> np.ndarray:
        """The rows `[N, D]` in the space they are clustered in `[N, n_classes]` (or the PCA
        projection); computed without labels, and the same for every random_state."""
        return cached(embedding, self.memory)(X, n_classes, self.n_components, self.n_neighbors)

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        proba = np.zeros((len(X), len(self.classes_)))
        proba[:, self.classifier_.classes_] = self.classifier_.predict_proba(X)
        return proba

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]


def fit_in_row_span(model: LogisticRegression, X: np.ndarray, y: np.ndarray,
                    start: LogisticRegression | None = None) -> LogisticRegression:
    """`model.fit(X, y)`, solved in the span of the rows of X when there are fewer rows than
    features. An L2-penalised linear model's weights lie in that span (the penalty only grows
    outside it), so the solution is the same while the solver handles rows x classes numbers
    instead of features x classes; the weights are mapped back, so the model takes full rows.
    `start`: a fitted model of the same classes to start the solver from (the optimum is unique,
    so only the number of iterations changes)."""
    basis = None
    if len(X) < X.shape[1]:
        rows = X.astype(np.float64)
        variance, u = np.linalg.eigh(rows @ rows.T)  # the row span from the small Gram matrix
        kept = variance > variance[-1] * len(X) * np.finfo(np.float32).eps
        basis = (u[:, kept].T @ rows) / np.sqrt(variance[kept])[:, None]  # [r, D], orthonormal rows
    if start is not None and np.array_equal(start.classes_, np.unique(y)):
        model.set_params(warm_start=True)
        model.coef_ = start.coef_ if basis is None else start.coef_ @ basis.T
        model.intercept_ = start.intercept_
    model.fit(X if basis is None else X @ basis.T, y)
    if basis is not None:
        model.coef_ = model.coef_ @ basis
        model.n_features_in_ = X.shape[1]
    model.set_params(warm_start=False)
    return model


def embedding(X: np.ndarray, n_classes: int, n_components: int, n_neighbors: int) -> np.ndarray:
    """SpectralPseudoLabels' clustering space of the rows `X` (see there)."""
    n = len(X)
    with np.errstate(divide="ignore", invalid="ignore"):
        projected = PCA(max(1, min(n_components, X.shape[1], n - 1)), whiten=True, random_state=0).fit_transform(X)
    space = normalize(np.nan_to_num(projected))
    if n <= 3:  # too few rows for an embedding with more dimensions than rows
        return space
    graph = kneighbors_graph(space, min(n_neighbors, n - 1), include_self=True)
    affinity = 0.5 * (graph + graph.T)
    if connected_components(affinity, directed=False)[0] > 1:
        return space  # the embedding of a graph in pieces loses pieces; clusters that far apart need none
    dims = min(n_classes, n - 2)
    return normalize(spectral_embedding(affinity, n_components=dims, random_state=0))


class AutoHead(ClassifierMixin, BaseEstimator):
    """The semi head where the unlabeled rows help, else logistic regression on the labeled
    rows, decided from the rows it is fitted on (targets -1 = unlabeled; never a test split).

    With 2 or more labels per class it first asks whether the classes are clusters: k-means
    finds one cluster per class without the labels, and the normalised mutual information of
    the labeled rows' classes and clusters is their alignment. Aligned (at least
    `aligned_from`): the semi head. Not aligned (below `misaligned_below`, e.g. classes made of
    several clusters each): logistic regression. In between, cross-validation over the labeled
    rows decides, each fold's held-out labeled rows turned unlabeled for the semi head; ties go
    to the semi head. (Cross-validation alone judges by a few rows, and its semi score is
    optimistic: the held-out rows stay among the clustered rows.) The thresholds were chosen on
    validation parts of the robustness scenarios (`benchmarks/auto_rule_probe.py`).

    With one label in some class (one per class, or as `suggest` may choose them) there is nothing
    to hold out: the semi head is kept if its clusters are stable, i.e. the clusterings of two
    random subsets of the rows agree (adjusted Rand index at least `min_stability`; measured
    0.72-0.93 on the robustness scenarios, 0.1-0.4 on structureless noise). `choice_` and
    `reason_` say what was decided and why.
    """

    def __init__(self, C: float = 1.0, folds: int = 5, min_stability: float = 0.5, aligned_from: float = 0.7,
                 misaligned_below: float = 0.4, random_state: int = 0, memory=None):
        self.C = C
        self.folds = folds
        self.min_stability = min_stability
        self.aligned_from = aligned_from
        self.misaligned_below = misaligned_below
        self.random_state = random_state
        self.memory = memory  # passed on to the semi head it tries

    def fit(self, X, y):
        semi = SpectralPseudoLabels(random_state=self.random_state, memory=self.memory)
        X, targets = _class_codes(self, X, y)
        _class_codes(semi, X, y)
        labeled = targets != UNLABELED
        if labeled.all():
            return self._choose(X, targets, None, semi, HeadKind.logreg, "no unlabeled rows")
        space = semi.cluster_space(X, len(self.classes_))
        counts = np.bincount(targets[labeled])
        if counts.min() >= 2:
            choice, reason = self._decide_with_labels(X, targets, space, semi, min(self.folds, counts.min()))
        else:
            stability = self._stability(X, semi)
            choice = HeadKind.semi if stability >= self.min_stability else HeadKind.logreg
            reason = (f"{'one label per class' if counts.max() == 1 else 'a class with one label'}; clusters "
                      f"{'stable' if choice == HeadKind.semi else 'unstable'} across subsets of the rows "
                      f"(ARI {stability:.2f})")
        return self._choose(X, targets, space, semi, choice, reason)

    def _decide_with_labels(self, X, targets, space, semi, n_folds: int) -> tuple[HeadKind, str]:
        alignment = self.alignment(space, targets)
        if alignment >= self.aligned_from:
            return HeadKind.semi, f"classes and clusters found without labels align (NMI {alignment:.2f})"
        if alignment < self.misaligned_below:
            return HeadKind.logreg, f"classes and clusters found without labels do not align (NMI {alignment:.2f})"
        semi_hits, logreg_hits = self.cross_validate(X, targets, space, semi, n_folds)
        semi_score, logreg_score = semi_hits.mean(), logreg_hits.mean()
        return (HeadKind.semi if semi_score >= logreg_score else HeadKind.logreg,
                f"classes and clusters partly align (NMI {alignment:.2f}); cross-validation over the labeled "
                f"rows: semi {semi_score:.3f}, logreg {logreg_score:.3f}")

    def _choose(self, X, targets, space, semi, choice: HeadKind, reason: str) -> "AutoHead":
        self.choice_, self.reason_ = choice, reason
        labeled = targets != UNLABELED
        self.model_ = (semi.fit_in_space(X, targets, space) if choice == HeadKind.semi else
                       fit_in_row_span(self._logreg(), X[labeled], self.classes_[targets[labeled]]))
        return self

    def _logreg(self) -> LogisticRegression:
        """The labeled-only candidate, as the logreg head fits it."""
        return LogisticRegression(C=self.C, max_iter=2000)

    def alignment(self, space: np.ndarray, targets: np.ndarray) -> float:
        """Normalised mutual information of the labeled rows' classes and the clusters that
        k-means finds in the clustering space without labels, one per class: near 1 when the
        classes are the clusters, near 0 when each class spans several."""
        labeled = targets != UNLABELED
        clusters = KMeans(len(self.classes_), n_init=10, random_state=self.random_state).fit_predict(space)
        return float(normalized_mutual_info_score(targets[labeled], clusters[labeled]))

    def cross_validate(self, X, targets, space, semi, n_folds: int) -> tuple[np.ndarray, np.ndarray]:
        """Whether the semi head and logistic regression get each labeled row right when it is
        held out (in the order of the labeled rows)."""
        rows = np.flatnonzero(targets != UNLABELED)
        folds = StratifiedKFold(n_folds, shuffle=True, random_state=self.random_state)
        semi_hits, logreg_hits = np.zeros(len(rows), bool), np.zeros(len(rows), bool)
        for train, held in folds.split(rows, targets[rows]):
            fold_targets = targets.copy()
            fold_targets[rows[held]] = UNLABELED
            fold_semi = clone(semi).set_params(self_training_rounds=0).fit_in_space(X, fold_targets, space)
            semi_hits[held] = fold_semi.classifier_.predict(X[rows[held]]) == targets[rows[held]]
            logreg = fit_in_row_span(self._logreg(), X[rows[train]], targets[rows[train]])
            logreg_hits[held] = logreg.predict(X[rows[held]]) == targets[rows[held]]
        return semi_hits, logreg_hits

    def _stability(self, X: np.ndarray, semi: SpectralPseudoLabels) -> float:
        """Agreement (adjusted Rand index) of the clusterings of two random 80% subsets of the
        rows, each embedded on its own, over the rows they share: near 1 for real clusters, near
        0 for clusters that k-means cuts out of structureless data."""
        rng = np.random.default_rng(self.random_state)
        k, n = len(self.classes_), len(X)
        found = []
        for _ in range(2):
            rows = np.sort(rng.choice(n, min(n, max(k + 2, int(0.8 * n))), replace=False))
            clusters = np.full(n, -1)
            clusters[rows] = KMeans(k, n_init=10, random_state=self.random_state).fit_predict(
                semi.cluster_space(X[rows], k))
            found.append(clusters)
        shared = (found[0] >= 0) & (found[1] >= 0)
        return float(adjusted_rand_score(found[0][shared], found[1][shared]))

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return self.model_.predict_proba(X)

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]


def make_head(kind: HeadKind, *, C: float = 1.0, alpha: float = 1e-3, hidden: int = 128, cv: int | None = None,
              seed: int = 0, memory=None) -> Pipeline:
    """An unfitted head. `semi` and `auto` learn from rows labeled -1 too; the others never see them.
    `memory`: where semi and auto cache their clustering space (SpaceCache; not for heads to save)."""
    if kind in SEMI_SUPERVISED and cv:
        raise DiffclassError(f"--cv picks --C / --alpha of the logreg and mlp heads, not of the {kind.value} head; "
                             "pass --head logreg or --head mlp with it")
    if kind == HeadKind.semi:
        semi = SpectralPseudoLabels(random_state=seed, memory=memory)
        return Pipeline([("scale", StandardScaler()), ("pseudo_label", semi)])
    if kind == HeadKind.auto:
        return Pipeline([("scale", StandardScaler()), ("auto", AutoHead(C=C, random_state=seed, memory=memory))])
    if kind == HeadKind.logreg:
        model, grid = LogisticRegression(C=C, max_iter=2000), {"C": np.logspace(-4, 2, 13)}
    else:
        model = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=alpha, max_iter=1000, random_state=seed)
        grid = {"alpha": np.logspace(-5, 1, 7)}
    if cv:
        model = GridSearchCV(model, grid, cv=_folds(cv, seed), scoring="neg_log_loss")
    return Pipeline([("scale", StandardScaler()), ("classify", model)])


def _folds(cv: int, seed: int) -> StratifiedKFold:
    if cv < 2:
        raise DiffclassError("--cv needs at least 2 folds")
    return StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed)


def draw_per_class(labels: np.ndarray, per_class: int, seed: int,
                   class_names: Sequence[str] | None = None) -> np.ndarray:
    """Indices of `per_class` labeled rows of each class, drawn reproducibly from `seed`."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels[labels != UNLABELED]):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            name = repr(class_names[label]) if class_names is not None else str(label)
            raise DiffclassError(f"class {name} has {len(members)} labeled images, fewer than the {per_class} per "
                                 "class asked for (--per-class)")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def training_labels(labels: np.ndarray, kind: HeadKind, per_class: int | None, *, seed: int,
                    cv: int | None, max_unlabeled: int = MAX_UNLABELED,
                    class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The rows a head is fitted on and their targets (-1 = unlabeled, used by `semi` only)."""
    labeled = np.flatnonzero(labels != UNLABELED)
    if len(labeled) == 0:
        raise DiffclassError("the feature file has no labeled rows to fit on")
    if per_class is not None:
        labeled = draw_per_class(labels, per_class, seed, class_names)
    counts = np.bincount(labels[labeled])
    if (counts > 0).sum() < 2:
        raise DiffclassError("fitting a classifier needs labeled rows of at least 2 classes")
    if cv and counts[counts > 0].min() < cv:
        raise DiffclassError(f"--cv {cv} needs at least {cv} labeled rows in every class")
    return fit_rows(labels, labeled, kind, max_unlabeled, seed)


def fit_rows(labels: np.ndarray, labeled: np.ndarray, kind: HeadKind, max_unlabeled: int = MAX_UNLABELED,
             seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Given the rows whose labels may be used: the rows to fit on (sorted) and their targets.
    `semi` and `auto` also get the other rows as unlabeled (-1), at most `max_unlabeled` of them;
    the other heads get the labeled rows only."""
    if kind not in SEMI_SUPERVISED:
        return labeled, labels[labeled]
    unlabeled = spread_sample(np.setdiff1d(np.arange(len(labels)), labeled), max_unlabeled, seed)
    rows = np.union1d(labeled, unlabeled)
    targets = np.full(len(rows), UNLABELED, dtype=np.int64)
    targets[np.searchsorted(rows, labeled)] = labels[labeled]
    return rows, targets


def spread_sample(rows: np.ndarray, n: int, seed: int) -> np.ndarray:
    """At most `n` of the sorted `rows`: one drawn at random from each of `n` equal runs of them,
    so the sample spreads evenly over the file (its folders, its shards) without looking at
    labels, and is the same for the same seed."""
    if len(rows) <= n:
        return rows
    edges = np.arange(n + 1) * len(rows) // n
    return rows[edges[:-1] + np.floor(np.random.default_rng(seed).random(n) * np.diff(edges)).astype(np.int64)]
