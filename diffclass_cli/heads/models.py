"""The classifier heads: plain scikit-learn Pipelines, so users can reuse them directly."""

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import spectral_embedding
from sklearn.metrics.pairwise import euclidean_distances
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neighbors import kneighbors_graph
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler, normalize
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from diffclass_cli.choices import HeadKind
from diffclass_cli.errors import DiffclassError

UNLABELED = -1


class SpectralPseudoLabels(ClassifierMixin, BaseEstimator):
    """Semi-supervised (targets -1 = unlabeled): spectral clustering of ALL rows gives every
    unlabeled row a pseudo-label; a logistic regression on the input features, fitted on the
    labeled rows and the most confidently clustered unlabeled ones, predicts rows never seen.

    The clustering space: a whitened PCA projection, scaled to unit length; the spectral
    embedding of its k-nearest-neighbour graph, again at unit length (Ng, Jordan & Weiss), or
    the projection itself when that graph falls in pieces.
    k-means there finds one cluster per class without the labels; each class then takes the
    cluster its labeled rows are closest to (one-to-one), and a last k-means keeps every
    labeled row in its class's cluster. Naming clusters this way, rather than starting k-means
    at the labeled rows, survives an untypical labeled image. Chosen on a validation part of
    mnist-sample:train (`benchmarks/semi_head_probe.py`): 0.92 at one label per class, where
    label spreading over the same rows reached 0.70. The embedding gets at least one dimension
    per class.
    """

    def __init__(self, n_components: int = 32, n_neighbors: int = 15, embedding_dim: int = 16,
                 confident_fraction: float = 0.7, C: float = 0.1, random_state: int = 0):
        self.n_components = n_components
        self.n_neighbors = n_neighbors
        self.embedding_dim = embedding_dim
        self.confident_fraction = confident_fraction
        self.C = C
        self.random_state = random_state

    def fit(self, X, y):
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        labeled = y != UNLABELED
        self.classes_, codes = np.unique(y[labeled], return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"SpectralPseudoLabels needs at least 2 labeled classes; got {len(self.classes_)} class")
        targets = np.full(len(y), UNLABELED, dtype=np.int64)
        targets[labeled] = codes
        pseudo, confidence = self._cluster(X, targets)
        # Unlabeled rows that sit clearly closer to one cluster than to any other join the labeled ones.
        unlabeled = np.flatnonzero(~labeled)
        keep = unlabeled[np.argsort(-confidence[unlabeled], kind="stable")][:int(self.confident_fraction
                                                                                 * len(unlabeled))]
        chosen = np.sort(np.concatenate([np.flatnonzero(labeled), keep]))
        targets = np.where(labeled, targets, pseudo)
        self.classifier_ = LogisticRegression(C=self.C, max_iter=3000).fit(X[chosen], targets[chosen])
        return self

    def _cluster(self, X: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's class cluster and its margin: the distance to the second-nearest cluster
        centre minus the distance to the nearest."""
        space = self._embed(X)
        k = len(self.classes_)
        found = KMeans(k, n_init=10, random_state=self.random_state).fit(space)
        labeled = targets != UNLABELED
        closeness = np.stack([found.transform(space[targets == c]).mean(axis=0) for c in range(k)])
        classes, clusters = linear_sum_assignment(closeness)
        centres = found.cluster_centers_[clusters[np.argsort(classes)]]
        assigned = np.full(len(space), UNLABELED)
        for _ in range(100):  # k-means with the labeled rows held in their class's cluster
            distances = euclidean_distances(space, centres)
            new = np.where(labeled, targets, distances.argmin(axis=1))
            if np.array_equal(new, assigned):
                break
            assigned = new
            centres = np.stack([space[assigned == c].mean(axis=0) if (assigned == c).any() else centres[c]
                                for c in range(k)])
        nearest = np.sort(distances, axis=1)
        return assigned, nearest[:, 1] - nearest[:, 0]

    def _embed(self, X: np.ndarray) -> np.ndarray:
        n = len(X)
        with np.errstate(divide="ignore", invalid="ignore"):
            projected = PCA(max(1, min(self.n_components, X.shape[1], n - 1)), whiten=True,
                            random_state=self.random_state).fit_transform(X)
        space = normalize(np.nan_to_num(projected))
        if n <= 3:  # too few rows for an embedding with more dimensions than rows
            return space
        graph = kneighbors_graph(space, min(self.n_neighbors, n - 1), include_self=True)
        affinity = 0.5 * (graph + graph.T)
        if connected_components(affinity, directed=False)[0] > 1:
            return space  # the embedding of a graph in pieces loses pieces; clusters that far apart need none
        dims = min(max(self.embedding_dim, len(self.classes_)), n - 2)
        return normalize(spectral_embedding(affinity, n_components=dims, random_state=self.random_state))

    def predict_proba(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        proba = np.zeros((len(X), len(self.classes_)))
        proba[:, self.classifier_.classes_] = self.classifier_.predict_proba(X)
        return proba

    def predict(self, X):
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]


def make_head(kind: HeadKind, n_rows: int, n_features: int, C: float = 1.0, alpha: float = 1e-3,
              hidden: int = 128, cv: int | None = None, seed: int = 0) -> Pipeline:
    """An unfitted head. `semi` learns from rows labeled -1 too; the others never see them."""
    if kind == HeadKind.semi:
        if cv:
            raise DiffclassError("--cv is not available for the semi head")
        return Pipeline([("scale", StandardScaler()), ("pseudo_label", SpectralPseudoLabels(random_state=seed))])
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


def draw_per_class(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Indices of `per_class` labeled rows of each class, drawn reproducibly from `seed`."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels[labels != UNLABELED]):
        members = np.flatnonzero(labels == label)
        if len(members) < per_class:
            raise DiffclassError(f"class {label} has only {len(members)} labeled rows, fewer than "
                                 f"--per-class {per_class}")
        chosen.append(rng.choice(members, per_class, replace=False))
    return np.sort(np.concatenate(chosen))


def training_labels(labels: np.ndarray, kind: HeadKind, per_class: int | None, seed: int,
                    cv: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The rows a head is fitted on and their targets (-1 = unlabeled, used by `semi` only)."""
    labeled = np.flatnonzero(labels != UNLABELED)
    if len(labeled) == 0:
        raise DiffclassError("the feature file has no labeled rows to fit on")
    if per_class is not None:
        labeled = draw_per_class(labels, per_class, seed)
    counts = np.bincount(labels[labeled])
    if (counts > 0).sum() < 2:
        raise DiffclassError("fitting a classifier needs labeled rows of at least 2 classes")
    if cv and counts[counts > 0].min() < cv:
        raise DiffclassError(f"--cv {cv} needs at least {cv} labeled rows in every class")
    return fit_rows(labels, labeled, kind)


def fit_rows(labels: np.ndarray, labeled: np.ndarray, kind: HeadKind) -> tuple[np.ndarray, np.ndarray]:
    """Given the rows whose labels may be used: the rows to fit on and their targets. `semi`
    also gets every other row, as unlabeled (-1); the other heads get the labeled rows only."""
    if kind != HeadKind.semi:
        return labeled, labels[labeled]
    targets = np.full(len(labels), UNLABELED, dtype=np.int64)
    targets[labeled] = labels[labeled]
    return np.arange(len(labels)), targets
