"""fit / predict / evaluate: heads applied to feature files."""

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import numpy as np
from sklearn import metrics
from sklearn.pipeline import Pipeline

from diffclass_cli import __version__
from diffclass_cli.choices import Device
from diffclass_cli.console import log, progress
from diffclass_cli.data.loading import DecodePool, report_skipped
from diffclass_cli.data.sources import UNLABELED, ImageSource
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractor_format import read_metadata
from diffclass_cli.featurize.extract import feature_batches
from diffclass_cli.featurize.h5 import FeatureReader, Rows, check_finite, open_feature_file
from diffclass_cli.featurize.runtime import ExtractorSession
from diffclass_cli.files import refuse_overwrite, sha256_file
from diffclass_cli.heads import MAX_UNLABELED
from diffclass_cli.heads.models import SEMI_SUPERVISED, HeadKind, make_head, training_labels
from diffclass_cli.heads.store import load_head, save_head


def fit_head(features: Path, out: Path, kind: HeadKind = HeadKind.auto, per_class: int | None = None,
             seed: int = 0, C: float = 1.0, alpha: float = 1e-3, hidden: int = 128, cv: int | None = None,
             max_unlabeled: int = MAX_UNLABELED, overwrite: bool = False) -> dict:
    """Fit a head on the labeled rows of a feature file (and, for semi / auto, a sample of at
    most `max_unlabeled` of its other rows) and save it; returns its info. Only those rows are read."""
    refuse_overwrite(out, overwrite)
    with open_feature_file(features) as reader:
        rows, targets = training_labels(reader.labels, kind, per_class, seed, cv, max_unlabeled)
        table = reader.take(rows)
        class_names, attrs = reader.class_names, reader.attrs
    check_finite(table, features)
    head = make_head(kind, C, alpha, hidden, cv, seed)
    head.fit(table.features, targets)
    params = {"C": C, "alpha": alpha, "hidden": hidden, "cv": cv}
    if cv:  # keep the refitted best model only: a plain Pipeline, nothing of the search
        search = head.steps[-1][1]
        head.steps[-1] = ("classify", search.best_estimator_)
        params |= {k: float(v) for k, v in search.best_params_.items()}
        log.info(f"cross-validation chose {search.best_params_}")
    labeled = int((targets != UNLABELED).sum())
    if kind == HeadKind.auto:
        chooser = head.steps[-1][1]
        params |= {"choice": chooser.choice_, "reason": chooser.reason_}
        log.info(f"auto: {chooser.choice_} ({chooser.reason_})")
    info = {
        "head": kind.value,
        "params": params,
        "class_names": class_names,
        "feature_dim": int(table.features.shape[1]),
        "extractor_sha256": attrs.get("extractor_sha256", ""),
        "extractor_name": attrs.get("extractor_name", ""),
        "fitted_on": {"file": str(features), "source": attrs.get("source", ""), "labeled_rows": labeled,
                      "unlabeled_rows": len(rows) - labeled, "max_unlabeled": max_unlabeled,
                      "per_class": per_class, "seed": seed},
        "diffclass_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    save_head(out, head, info, overwrite)
    log.info(f"wrote {out}: {kind.value} head on {labeled} labeled rows"
             + (f" and {len(rows) - labeled} unlabeled ones" if kind in SEMI_SUPERVISED else ""))
    return info


@dataclass
class Predictions:
    paths: list[str]
    labels: list[str]  # predicted class names
    confidence: np.ndarray  # [N]
    proba: np.ndarray  # [N, K], columns in `class_names` order
    class_names: list[str]


def predict(features: Path, head_path: Path) -> tuple[list[str], Iterator[Predictions]]:
    """The head's class names, and the predictions of every row of a feature file, a chunk of
    the file at a time; refuses files of another extractor or width before reading any row."""
    head, info = load_head(head_path)
    with open_feature_file(features) as reader:
        _check_compatible(reader, info, features, head_path)
    return class_names(head, info), (predictions for _, predictions in _predicted_chunks(features, head, info))


def _predicted_chunks(features: Path, head: Pipeline, info: dict) -> Iterator[tuple[Rows, Predictions]]:
    with open_feature_file(features) as reader, \
            progress(total=reader.rows, desc="predicting", unit="row", delay=2) as bar:  # long files only
        for rows in reader.chunks():
            check_finite(rows, features)
            yield rows, _predictions(head, info, rows.features, rows.paths)
            bar.update(len(rows.paths))


def predict_images(source: ImageSource, model: Path, head_path: Path, batch_size: int = 256, workers: int = 1,
                   device: Device = Device.auto, threads: int | None = None
                   ) -> tuple[list[str], Iterator[Predictions]]:
    """The head's class names, and the predictions of the images of `source`, batch by batch,
    featurized in memory with `model` (which must be the extractor the head was fitted on);
    unreadable images are skipped."""
    head, info = load_head(head_path)
    if sha256_file(model) != info["extractor_sha256"]:
        raise DiffclassError(f"{head_path} was fitted on features of {info['extractor_name']} "
                             f"({info['extractor_sha256'][:12]}), not of {model}: pass that extractor as --model")
    return class_names(head, info), _predict_batches(source, model, head, info, batch_size, workers, device, threads)


def _predict_batches(source: ImageSource, model: Path, head: Pipeline, info: dict, batch_size: int, workers: int,
                     device: Device, threads: int | None) -> Iterator[Predictions]:
    meta = read_metadata(model)
    skipped = list(source.skipped)
    with DecodePool(source, meta["image_size"], meta["channels"], workers) as pool, \
            progress(total=len(source), desc="predicting", unit="img") as bar:
        for batch in feature_batches(pool, ExtractorSession(model, device, threads), batch_size):
            skipped += [(source.ids[row], reason) for row, reason in batch.skipped]
            bar.update(len(batch.rows) + len(batch.skipped))
            if len(batch.rows):
                yield _predictions(head, info, batch.features, [source.ids[row] for row in batch.rows])
    report_skipped(skipped)


def class_names(head: Pipeline, info: dict) -> list[str]:
    """The head's classes, in the order of its probability columns."""
    return [info["class_names"][c] for c in head.classes_]


def _predictions(head: Pipeline, info: dict, features: np.ndarray, paths: list[str]) -> Predictions:
    names = class_names(head, info)
    proba = head.predict_proba(features) if len(features) else np.empty((0, len(names)))
    best = proba.argmax(axis=1)
    return Predictions(paths, [names[i] for i in best], proba.max(axis=1), proba, names)


def _check_compatible(reader: FeatureReader, info: dict, features: Path, head_path: Path) -> None:
    if reader.feature_dim != info["feature_dim"]:
        raise DiffclassError(f"{features} has {reader.feature_dim} features per row but {head_path} was fitted on "
                             f"{info['feature_dim']}")
    sha = reader.attrs.get("extractor_sha256", "")
    if sha != info["extractor_sha256"]:
        raise DiffclassError(
            f"{features} was made by extractor {reader.attrs.get('extractor_name', '?')} ({sha[:12]}) but "
            f"{head_path} was fitted on features of {info['extractor_name']} ({info['extractor_sha256'][:12]})")


def write_csv(chunks: Iterable[Predictions], stream: TextIO, names: list[str], proba: bool = False) -> int:
    """`path,label,confidence` (+ one `p_<class>` column per class of `names` with `proba`), chunk
    by chunk, flushed after each; returns the number of rows."""
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(["path", "label", "confidence"] + ([f"p_{c}" for c in names] if proba else []))
    rows = 0
    for predictions in chunks:
        for i, path in enumerate(predictions.paths):
            row = [path, predictions.labels[i], f"{predictions.confidence[i]:.6f}"]
            if proba:
                row += [f"{p:.6f}" for p in predictions.proba[i]]
            writer.writerow(row)
        stream.flush()
        rows += len(predictions.paths)
    return rows


def evaluate(features: Path, head_path: Path) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall and the confusion matrix over
    the labeled rows of a feature file, read a chunk at a time."""
    head, info = load_head(head_path)
    names = class_names(head, info)
    with open_feature_file(features) as reader:
        _check_compatible(reader, info, features, head_path)
        file_names = reader.class_names
        present = np.unique(reader.labels[reader.labels != UNLABELED])
    if len(present) == 0:
        raise DiffclassError(f"{features} has no labeled rows to evaluate on")
    # Every class as a number: the head's classes first (its probability columns), then the file's others.
    classes = names + sorted({file_names[label] for label in present} - set(names))
    code_of_label = np.array([classes.index(name) if name in classes else -1 for name in file_names])
    truth, guess = [], []
    for rows, predictions in _predicted_chunks(features, head, info):
        labeled = rows.labels != UNLABELED
        truth.append(code_of_label[rows.labels[labeled]])
        guess.append(predictions.proba[labeled].argmax(axis=1))
    truth, guess = np.concatenate(truth), np.concatenate(guess)
    codes = np.arange(len(classes))
    precision, recall, _, support = metrics.precision_recall_fscore_support(truth, guess, labels=codes,
                                                                            zero_division=0)
    return {
        "rows": len(truth),
        "accuracy": metrics.accuracy_score(truth, guess),
        "balanced_accuracy": metrics.balanced_accuracy_score(truth, guess),
        "classes": classes,
        "per_class": {c: {"precision": float(p), "recall": float(r), "support": int(n)}
                      for c, p, r, n in zip(classes, precision, recall, support)},
        "confusion_matrix": metrics.confusion_matrix(truth, guess, labels=codes).tolist(),
    }


def format_report(report: dict) -> str:
    """The evaluation as text for people."""
    lines = [f"rows: {report['rows']}", f"accuracy: {report['accuracy']:.4f}",
             f"balanced_accuracy: {report['balanced_accuracy']:.4f}", "",
             f"{'class':<16}{'precision':>10}{'recall':>10}{'support':>10}"]
    for name, row in report["per_class"].items():
        lines.append(f"{name:<16}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['support']:>10d}")
    width = max(6, *(len(c) + 1 for c in report["classes"]))
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * 16 + "".join(f"{c:>{width}}" for c in report["classes"])]
    for name, row in zip(report["classes"], report["confusion_matrix"]):
        lines.append(f"{name:<16}" + "".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)
