"""`diffclass plot`: a feature file as a 2-D map, coloured by class, backed by a number."""

import os
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
from diffclass_cli.data.loading import to_mode  # noqa: E402
from diffclass_cli.data.sources import UNLABELED, UnreadableImage, open_source  # noqa: E402
from diffclass_cli.errors import DiffclassError  # noqa: E402
from diffclass_cli.features.h5 import Rows, open_feature_file  # noqa: E402
from diffclass_cli.files import atomic_output, png_metadata, refuse_overwrite  # noqa: E402

MIN_ROWS = 3
# t-SNE's 250 early-exaggeration steps and 100 more: on 3000 rows of mnist-sample the map's 5-NN accuracy is
# that of 1000 steps (0.977 vs 0.976) in 2.6 s against 6.4 s, and UMAP's 19.5 s (benchmarks/plot_speed.py).
TSNE_ITERATIONS = 350
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

        return TSNE(2, init="pca", perplexity=min(30.0, (len(x) - 1) / 3), max_iter=TSNE_ITERATIONS,
                    random_state=seed).fit_transform(x)
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
    drawn = []
    for i in chosen:
        try:
            drawn.append((int(i), np.asarray(to_mode(source.load(position[paths[i]]), "L").resize((20, 20)))))
        except UnreadableImage as err:
            log.warning(f"no thumbnail for {paths[i]}: {err}")
    return drawn


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
    _save(fig, out, overwrite, f"plot: {method.value} map of {', '.join(map(str, files))}")
    return scores


def read_predictions(predictions: Path | str) -> list[tuple[str, str]]:
    """(path, label) of each labeled row of `predict`'s CSV or JSON lines (`-`: standard input)."""
    from diffclass_cli.data.labels_table import table_bytes, table_rows

    data = table_bytes(predictions, "predictions file")
    not_predictions = DiffclassError(f"{predictions} is not a predictions CSV or JSON lines (path,label,...)")
    if b"\0" in data[:4096]:
        raise not_predictions
    try:
        rows = [(path, label) for _, path, label in table_rows(data, predictions)]
    except DiffclassError:
        raise not_predictions from None
    if not rows:
        raise DiffclassError(f"{predictions} holds no labeled predictions")
    return rows


def _locate(predicted: list[str], source_spec: str | None) -> tuple[dict[str, int], object]:
    """Where each predicted path is: {path: row of the source} and the source (the SOURCE given,
    or, without one, the predicted paths themselves as image files)."""
    from diffclass_cli.data.sources import open_inputs

    if source_spec is None:
        files = [p for p in dict.fromkeys(predicted) if Path(p).is_file()]
        if not files:
            raise DiffclassError("none of the predicted paths is an image file here; pass --source, the SOURCE "
                                 "the predicted images came from")
        source = open_inputs(files)
        return {image_id: row for row, image_id in enumerate(source.ids)}, source
    source = open_source(source_spec)
    position = {}
    for row, image_id in enumerate(source.ids):  # as featurize stores it, as predict writes it, and absolute
        for name in (image_id, Path(source_spec, image_id).as_posix(), os.path.abspath(Path(source_spec, image_id))):
            position.setdefault(name, row)
    return position, source


def prediction_grid(predictions: Path | str, source_spec: str | None, out: Path, *, n: int = 40, columns: int = 10,
                    overwrite: bool = False) -> tuple[int, int]:
    """`n` predicted images, spread evenly over the predictions, with their predicted labels; wrong
    ones in red with the true label beside, where `source_spec` gives the truth. `predictions`:
    `predict`'s CSV or JSON lines (`-`: stdin), of images or of feature files. Returns (shown, wrong)."""
    refuse_overwrite(out, overwrite, inputs=[None if str(predictions) == "-" else Path(predictions)])
    rows = read_predictions(predictions)
    position, source = _locate([p for p, _ in rows], source_spec)
    known = [(path, label) for path, label in rows if path in position or os.path.abspath(path) in position]
    shown = known[::max(1, len(known) // n)][:n]  # spread over the file, which is often sorted by class
    if not shown:
        raise DiffclassError(f"none of the predicted paths is in {source_spec} (e.g. {rows[0][0]!r})")
    truth = set(source.class_names) & {label for _, label in rows}
    if source.class_names and not truth:
        log.warning(f"the classes of {source_spec} ({', '.join(source.class_names[:3])}, ...) are none of the "
                    "predicted ones: no prediction is marked right or wrong")
    rows_needed = -(-len(shown) // columns)
    fig, axes = plt.subplots(rows_needed, columns, figsize=(columns * 1.1, rows_needed * 1.3), dpi=110,
                             squeeze=False)
    wrong = 0
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (path, label) in zip(axes.ravel(), shown):
        row = position.get(path, position.get(os.path.abspath(path)))
        true = source.class_names[source.labels[row]] if truth and source.labels[row] != UNLABELED else None
        try:
            image = to_mode(source.load(row), "RGB")
        except UnreadableImage as err:
            log.warning(f"skipped {path}: {err}")
            continue
        ax.imshow(np.asarray(image))
        correct = true is None or true == label
        wrong += not correct
        ax.set_title(label if correct else f"{label} (is {true})", color="black" if correct else "red", fontsize=8)
    fig.suptitle(f"{len(shown)} predictions, {wrong} wrong (red: predicted, true in brackets)", fontsize=10)
    _save(fig, out, overwrite, f"show-predictions: {len(shown)} predictions of {predictions}, {wrong} wrong")
    return len(shown), wrong


def _save(fig, out: Path, overwrite: bool, description: str) -> None:
    fig.tight_layout()
    with atomic_output(out, overwrite) as tmp:
        fig.savefig(tmp, format="png", metadata=png_metadata(description))
    plt.close(fig)
