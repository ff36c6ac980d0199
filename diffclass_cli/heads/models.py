"""The classifier heads: plain scikit-learn Pipelines, so users can reuse them directly."""

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import LabelSpreading
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from diffclass_cli.choices import HeadKind
from diffclass_cli.errors import DiffclassError

UNLABELED = -1
SEMI_COMPONENTS = 32  # label spreading runs on a whitened PCA projection of the features
SEMI_NEIGHBORS = 10


class SpreadLabels(ClassifierMixin, BaseEstimator):
    """Semi-supervised: label spreading over a k-NN graph of ALL rows (targets -1 = unlabeled)
    in a whitened PCA projection; then a logistic regression on the input features, fitted on
    the labeled rows and the most confidently spread unlabeled ones, predicts rows never seen.

    Whitening and the confidence cut were chosen on a validation part of mnist-sample:train.
    """

    def __init__(self, n_components: int = SEMI_COMPONENTS, n_neighbors: int = SEMI_NEIGHBORS,
                 alpha: float = 0.2, confident_fraction: float = 0.5, C: float = 0.1, whiten: bool = True,
                 random_state: int = 0):
        self.n_components = n_components
        self.whiten = whiten
        self.n_neighbors = n_neighbors
        self.alpha = alpha
        self.confident_fraction = confident_fraction
        self.C = C
        self.random_state = random_state

    def fit(self, X, y):
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        labeled = y != UNLABELED
        self.classes_, codes = np.unique(y[labeled], return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"SpreadLabels needs at least 2 labeled classes; got {len(self.classes_)} class")
        targets = np.full(len(y), UNLABELED, dtype=np.int64)
        targets[labeled] = codes
        components = max(1, min(self.n_components, X.shape[1], len(X) - 1))
        with np.errstate(divide="ignore", invalid="ignore"):
            graph_space = np.nan_to_num(
                PCA(components, whiten=self.whiten, random_state=self.random_state).fit_transform(X))
            spreading = LabelSpreading(kernel="knn", n_neighbors=max(1, min(self.n_neighbors, len(X) - 1)),
                                       alpha=self.alpha, max_iter=200).fit(graph_space, targets)
            distributions = spreading.label_distributions_
            confidence = np.nan_to_num(distributions.max(axis=1) / distributions.sum(axis=1))
        # Unlabeled rows whose spread label is among the most certain join the labeled ones.
        unlabeled = np.flatnonzero(~labeled & (confidence > 0))
        keep = unlabeled[np.argsort(-confidence[unlabeled], kind="stable")][:int(self.confident_fraction
                                                                                 * len(unlabeled))]
        chosen = np.sort(np.concatenate([np.flatnonzero(labeled), keep]))
        targets = np.where(labeled, targets, spreading.transduction_)
        self.classifier_ = LogisticRegression(C=self.C, max_iter=3000).fit(X[chosen], targets[chosen])
        return self

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
        return Pipeline([("scale", StandardScaler()), ("spread", SpreadLabels(random_state=seed))])
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
