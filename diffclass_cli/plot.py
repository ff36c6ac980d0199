"""`diffclass plot`: a feature file as a 2-D map, coloured by class, backed by a number."""

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.offsetbox import AnnotationBbox, OffsetImage  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402
from sklearn.model_selection import StratifiedKFold, cross_val_score  # noqa: E402
from sklearn.neighbors import KNeighborsClassifier  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from diffclass_cli.choices import Projection  # noqa: E402
from diffclass_cli.console import log  # noqa: E402
from diffclass_cli.data.sources import UNLABELED, open_source  # noqa: E402
from diffclass_cli.errors import DiffclassError  # noqa: E402
from diffclass_cli.features.h5 import Rows, open_feature_file  # noqa: E402
from diffclass_cli.files import atomic_output, refuse_overwrite  # noqa: E402

MIN_ROWS = 3
THUMBNAILS = 60
UNLABELED_COLOR = "#d0d0d0"


def subsample(n_rows: int, max_points: int | None, seed: int) -> np.ndarray:
    """At most `max_points` row indices, in file order, the same for the same seed."""
    if max_points is None or n_rows <= max_points:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, max_points, replace=False))


def project(features: np.ndarray, method: Projection, seed: int) -> np.ndarray:
    """`[N, D]` -> `[N, 2]`, after standardising each feature."""
    x = StandardScaler().fit_transform(features)
    if method == Projection.pca or x.shape[1] < 2:
        return PCA(n_components=min(2, *x.shape), random_state=seed).fit_transform(x)
    x = PCA(n_components=min(50, *x.shape), random_state=seed).fit_transform(x)
    if method == Projection.tsne:
        from sklearn.manifold import TSNE

        return TSNE(2, init="pca", perplexity=min(30.0, (len(x) - 1) / 3), random_state=seed).fit_transform(x)
    import umap

    warnings.filterwarnings("ignore", message="n_jobs value", category=UserWarning)  # seeded UMAP is serial
    return umap.UMAP(n_components=2, n_neighbors=min(15, len(x) - 1), random_state=seed,
                     init="spectral" if len(x) > 10 else "random").fit_transform(x)


def separation(embedding: np.ndarray, labels: np.ndarray) -> float | None:
    """5-NN accuracy in the 2-D map (5-fold cross-validation over the labeled rows), or None
    when there are too few labeled rows to say."""
    labeled = labels != UNLABELED
    counts = np.bincount(labels[labeled]) if labeled.any() else np.array([])
    folds = int(min(5, counts[counts > 0].min())) if (counts > 0).sum() >= 2 else 0
    if folds < 2:
        return None
    knn = KNeighborsClassifier(n_neighbors=min(5, int(labeled.sum()) - 1))
    cv = StratifiedKFold(folds, shuffle=True, random_state=0)
    return float(cross_val_score(knn, embedding[labeled], labels[labeled], cv=cv).mean())


def _load(path: Path, max_points: int | None, seed: int) -> tuple[Rows, list[str]]:
    """The rows to plot (at most `max_points`; only those are read) and the class names."""
    with open_feature_file(path) as reader:
        if reader.rows < MIN_ROWS:
            raise DiffclassError(f"{path} has {reader.rows} rows; a map needs at least {MIN_ROWS}")
        return reader.take(subsample(reader.rows, max_points, seed)), reader.class_names


def _draw(ax, embedding: np.ndarray, labels: np.ndarray, class_names: list[str], *, title: str,
          thumbnails: list[tuple[int, np.ndarray]]) -> None:
    unlabeled = labels == UNLABELED
    size = max(2, min(20, 4000 / len(labels)))
    if unlabeled.any():
        ax.scatter(*embedding[unlabeled].T, s=size, c=UNLABELED_COLOR, label="unlabeled", linewidths=0)
    colors = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for index, name in enumerate(class_names):
        members = labels == index
        if members.any():
            ax.scatter(*embedding[members].T, s=size, color=colors(index % colors.N), label=name, linewidths=0)
    for row, image in thumbnails:
        box = OffsetImage(image, zoom=0.6, cmap="gray" if image.ndim == 2 else None)
        ax.add_artist(AnnotationBbox(box, embedding[row], frameon=False))
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=7, markerscale=max(1.0, 12 / size), loc="best", ncol=2 if len(class_names) > 10 else 1)


def _thumbnails(source_spec: str, paths: list[str], seed: int) -> list[tuple[int, np.ndarray]]:
    source = open_source(source_spec)
    position = {image_id: row for row, image_id in enumerate(source.ids)}
    rows = [i for i, p in enumerate(paths) if p in position]
    if not rows:
        log.warning(f"none of the plotted rows comes from {source_spec}; no thumbnails drawn")
        return []
    chosen = np.random.default_rng(seed).choice(rows, min(THUMBNAILS, len(rows)), replace=False)
    return [(int(i), np.asarray(source.load(position[paths[i]]).convert("L").resize((20, 20)))) for i in chosen]


def plot_feature_map(features: Path, out: Path, *, method: Projection = Projection.umap,
                     max_points: int | None = 5000, seed: int = 0, thumbnails: str | None = None,
                     compare: Path | None = None, overwrite: bool = False) -> dict[str, float | None]:
    """Draw the map (two side by side with `compare`); returns the separation of each."""
    files = [features] + ([compare] if compare else [])
    refuse_overwrite(out, overwrite, inputs=files)  # before minutes of projecting, not after
    loaded = [_load(path, max_points, seed) for path in files]
    fig, axes = plt.subplots(1, len(files), figsize=(7 * len(files), 6.5), dpi=110, squeeze=False)
    scores = {}
    for ax, path, (rows, class_names) in zip(axes[0], files, loaded):
        log.info(f"projecting {len(rows.paths)} rows of {path} with {method.value}")
        embedding = project(rows.features, method, seed)
        score = separation(embedding, rows.labels)
        scores[str(path)] = score
        title = f"{path.name}: {method.value} of {rows.features.shape[1]}-d features" + (
            f"\n5-NN accuracy in the map: {score:.3f}" if score is not None else "")
        _draw(ax, embedding, rows.labels, class_names, title=title,
              thumbnails=_thumbnails(thumbnails, rows.paths, seed) if thumbnails else [])
    _save(fig, out, overwrite)
    return scores


def prediction_grid(predictions_csv: Path | str, source_spec: str, out: Path, *, n: int = 40, columns: int = 10,
                    overwrite: bool = False) -> tuple[int, int]:
    """`n` predicted images of SOURCE, spread evenly over the CSV, with their predicted labels, wrong ones in red
    with the true label beside. `predictions_csv` is `predict`'s CSV (`-`: stdin). Returns
    (shown, wrong)."""
    import csv
    import sys

    if str(predictions_csv) != "-" and not Path(predictions_csv).is_file():
        raise DiffclassError(f"predictions file {predictions_csv} does not exist")
    stream = sys.stdin if str(predictions_csv) == "-" else open(predictions_csv, newline="")
    try:
        with stream:
            predictions = list(csv.DictReader(stream))
    except (UnicodeDecodeError, csv.Error):
        predictions = []
    if not predictions or not {"path", "label"} <= set(predictions[0]):
        raise DiffclassError(f"{predictions_csv} is not a predictions CSV (path,label,...)")
    source = open_source(source_spec)
    position = {image_id: row for row, image_id in enumerate(source.ids)}
    known = [p for p in predictions if p["path"] in position]
    shown = known[::max(1, len(known) // n)][:n]  # spread over the file, which is often sorted by class
    if not shown:
        raise DiffclassError(f"none of the predicted paths is in {source_spec}")
    rows_needed = -(-len(shown) // columns)
    fig, axes = plt.subplots(rows_needed, columns, figsize=(columns * 1.1, rows_needed * 1.3), dpi=110,
                             squeeze=False)
    wrong = 0
    for ax in axes.ravel():
        ax.axis("off")
    for ax, prediction in zip(axes.ravel(), shown):
        row = position[prediction["path"]]
        true = source.class_names[source.labels[row]] if source.labels[row] != UNLABELED else None
        image = source.load(row)
        ax.imshow(np.asarray(image), cmap="gray" if image.mode == "L" else None)
        correct = true is None or true == prediction["label"]
        wrong += not correct
        ax.set_title(prediction["label"] if correct else f"{prediction['label']} (is {true})",
                     color="black" if correct else "red", fontsize=8)
    fig.suptitle(f"{len(shown)} predictions, {wrong} wrong (red: predicted, true in brackets)", fontsize=10)
    _save(fig, out, overwrite)
    return len(shown), wrong


def _save(fig, out: Path, overwrite: bool) -> None:
    fig.tight_layout()
    with atomic_output(out, overwrite) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
