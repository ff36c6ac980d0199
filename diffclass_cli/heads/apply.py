"""predict / evaluate: heads applied to feature files or images.

A head is a skops file that `fit` wrote or a classifier file that `export-classifier` wrote;
the second runs on onnxruntime alone, so nothing here imports scikit-learn or skops unless a
skops head is loaded.
"""

import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np

from diffclass_cli.choices import Device, OutputFormat
from diffclass_cli.console import log, progress
from diffclass_cli.data.labels_table import spreadsheet_safe
from diffclass_cli.data.sources import UNLABELED, ImageSource
from diffclass_cli.errors import DiffclassError
from diffclass_cli.features.extract import DEFAULT_MODEL, source_batches
from diffclass_cli.features.h5 import FeatureReader, check_finite, open_feature_file, storable
from diffclass_cli.features.runtime import ExtractorSession
from diffclass_cli.files import existing_file, sha256_file


class Head(Protocol):
    """What predict and evaluate need of a head: its classes in probability-column order, its
    info (feature_dim, extractor_sha256, extractor_name, ...) and probabilities of features."""

    path: Path
    class_names: list[str]
    info: dict

    def predict_proba(self, features: np.ndarray) -> np.ndarray: ...

    def extractor_session(self, model: Path | None, device: Device, threads: int | None) -> ExtractorSession:
        """The session that featurizes images for this head."""


class SkopsHead:
    """A head file that `fit` wrote."""

    def __init__(self, path: Path):
        from diffclass_cli.heads.store import load_head

        self.path = path
        self.pipeline, self.info = load_head(path)
        self.class_names = [self.info["class_names"][c] for c in self.pipeline.classes_]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self.pipeline.predict_proba(features)

    def extractor_session(self, model: Path | None, device: Device, threads: int | None) -> ExtractorSession:
        return ExtractorSession(head_extractor(self.info, self.path, model), device, threads)


def load_any_head(path: Path) -> Head:
    """A skops head or an ONNX classifier, told apart by content."""
    from diffclass_cli.describe import kind_of

    if kind_of(existing_file(path, "head")) == "head":
        return SkopsHead(path)
    from diffclass_cli.classifier_format import OnnxClassifier
    from diffclass_cli.extractor_format import NOT_ONNX

    try:
        return OnnxClassifier(path)
    except DiffclassError as err:
        if NOT_ONNX not in str(err):
            raise
        raise DiffclassError(f"{path} is not a skops head file or a classifier (.onnx) of diffclass") from err


@dataclass
class Predictions:
    paths: list[str]
    labels: list[str]  # predicted class names
    confidence: np.ndarray  # [N]
    proba: np.ndarray  # [N, K], columns in `class_names` order
    class_names: list[str]
    truth: np.ndarray  # [N] the true class of each row as an index into truth_names, -1 where unknown
    truth_names: list[str]  # the input's own class names


def predict(features: Path | Sequence[Path], head_path: Path) -> tuple[list[str], Iterator[Predictions]]:
    """The head's class names, and the predictions of every row of one or several feature files,
    a chunk of a file at a time; refuses files of another extractor or width before reading any row."""
    files = [features] if isinstance(features, str | Path) else list(features)
    head = load_any_head(head_path)
    for path in files:
        with open_feature_file(path) as reader:
            _check_compatible(reader, head, path)
    return head.class_names, (chunk for path in files for chunk in _predicted_chunks(path, head))


def _predicted_chunks(features: Path, head: Head) -> Iterator[Predictions]:
    with open_feature_file(features) as reader, \
            progress(total=reader.rows, desc="predicting", unit="row", delay=2) as bar:  # long files only
        names = reader.class_names
        for rows in reader.chunks():
            check_finite(rows, features)
            yield predictions(head, rows.features, rows.paths, rows.labels, names)
            bar.update(len(rows.paths))


def head_extractor(info: dict, head_path: Path, model: Path | None = None) -> Path:
    """The extractor a head was fitted on: `model` when given (checked by sha256), else the file
    the head names, else the shipped one when it is that file."""
    need, name = info["extractor_sha256"], info.get("extractor_name", "?")
    if model is not None:
        if sha256_file(existing_file(model, "extractor")) != need:
            raise DiffclassError(f"{head_path} was fitted on features of {name} ({need[:12]}), not of {model}: "
                                 "pass that extractor as --model")
        return model
    recorded = Path(info["extractor_path"]) if info.get("extractor_path") else None
    for candidate in (recorded, DEFAULT_MODEL):
        if candidate is not None and candidate.is_file() and sha256_file(candidate) == need:
            return candidate
    where = f", which is no longer at {recorded}" if recorded else ""
    raise DiffclassError(f"{head_path} needs the extractor it was fitted on ({name}, sha256 {need[:16]}...{where}): "
                         "pass it with --model")


def predict_images(source: ImageSource, head_path: Path, *, model: Path | None = None, batch_size: int = 256,
                   workers: int = 1, device: Device = Device.auto, threads: int | None = None
                   ) -> tuple[list[str], Iterator[Predictions]]:
    """The head's class names, and the predictions of the images of `source`, batch by batch,
    featurized in memory with the extractor the head was fitted on (`model`, or found by
    head_extractor); unreadable images are skipped."""
    head = load_any_head(head_path)
    session = head.extractor_session(model, device, threads)
    return head.class_names, _predict_batches(source, session, head, batch_size, workers)


def _predict_batches(source: ImageSource, session: ExtractorSession, head: Head, batch_size: int,
                     workers: int) -> Iterator[Predictions]:
    for batch in source_batches(source, session, batch_size, workers, "predicting", skipped=[]):
        if len(batch.rows):
            yield predictions(head, batch.features, [source.ids[row] for row in batch.rows],
                              source.labels[batch.rows], source.class_names)


def predictions(head: Head, features: np.ndarray, paths: list[str], truth: np.ndarray,
                truth_names: list[str]) -> Predictions:
    """The head's predictions of the rows `features`, with their paths and true classes."""
    names = head.class_names
    proba = head.predict_proba(features) if len(features) else np.empty((0, len(names)))
    best = proba.argmax(axis=1)
    return Predictions(paths, [names[i] for i in best], proba.max(axis=1), proba, names, truth, truth_names)


def _check_compatible(reader: FeatureReader, head: Head, features: Path) -> None:
    info, head_path = head.info, head.path
    if reader.feature_dim != info["feature_dim"]:
        raise DiffclassError(f"{features} has {reader.feature_dim} features per row but {head_path} was fitted on "
                             f"{info['feature_dim']}")
    sha = reader.attrs.get("extractor_sha256", "")
    if sha != info["extractor_sha256"]:
        raise DiffclassError(
            f"{features} was made by extractor {reader.attrs.get('extractor_name', '?')} ({sha[:12]}) but "
            f"{head_path} was fitted on features of {info['extractor_name']} ({info['extractor_sha256'][:12]})")


def _rounded(value):
    """Probabilities to 6 decimals, as in the CSV."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return [_rounded(v) for v in value] if isinstance(value, list) else value


@dataclass(frozen=True)
class PredictionFormat:
    """How predictions are written: `top_k` classes per row, `proba` adds every class's
    probability, rows below `min_confidence` get no label and say so."""

    format: OutputFormat = OutputFormat.csv
    top_k: int = 1
    proba: bool = False
    min_confidence: float | None = None
    header: bool = True

    def record(self, p: Predictions, i: int) -> dict:
        sure = self.min_confidence is None or p.confidence[i] >= self.min_confidence
        record = {"path": storable(p.paths[i]), "label": p.labels[i] if sure else "",
                  "confidence": float(p.confidence[i])}
        if self.min_confidence is not None:
            record["status"] = "ok" if sure else "below-min-confidence"
        if self.top_k > 1:
            order = np.argsort(-p.proba[i], kind="stable")[:self.top_k]
            record["top"] = [{"label": p.class_names[j], "confidence": float(p.proba[i, j])} for j in order]
        if self.proba:
            record["proba"] = {name: float(v) for name, v in zip(p.class_names, p.proba[i])}
        return record

    def csv_header(self, names: list[str]) -> list[str]:
        header = ["path", "label", "confidence"] + (["status"] if self.min_confidence is not None else [])
        for rank in range(2, self.top_k + 1):
            header += [f"label_{rank}", f"confidence_{rank}"]
        return header + ([f"p_{c}" for c in names] if self.proba else [])

    def csv_row(self, record: dict) -> list[str]:
        row = [spreadsheet_safe(record["path"]), spreadsheet_safe(record["label"]), f"{record['confidence']:.6f}"]
        if "status" in record:
            row.append(record["status"])
        for top in record.get("top", [])[1:]:
            row += [spreadsheet_safe(top["label"]), f"{top['confidence']:.6f}"]
        return row + [f"{v:.6f}" for v in record.get("proba", {}).values()]


def write_predictions(chunks: Iterable[Predictions], stream: TextIO, names: list[str],
                      output: PredictionFormat = PredictionFormat()) -> int:
    """One row per prediction (CSV `path,label,confidence,...` or JSON lines), chunk by chunk,
    flushed after each; returns the number of rows."""
    csv_writer = csv.writer(stream, lineterminator="\n") if output.format == OutputFormat.csv else None
    if csv_writer and output.header:
        csv_writer.writerow(output.csv_header(names))
    rows = 0
    for predictions in chunks:
        for i in range(len(predictions.paths)):
            record = output.record(predictions, i)
            if csv_writer:
                csv_writer.writerow(output.csv_row(record))
            else:
                stream.write(json.dumps(_rounded(record), ensure_ascii=False) + "\n")
        stream.flush()
        rows += len(predictions.paths)
    return rows


def evaluate(features: Path, head_path: Path) -> dict:
    """Accuracy, balanced accuracy, per-class precision/recall/F1 and the confusion matrix over
    the labeled rows of a feature file, read a chunk at a time."""
    head = load_any_head(head_path)
    with open_feature_file(features) as reader:
        _check_compatible(reader, head, features)
        present = [reader.class_names[label] for label in np.unique(reader.labels[reader.labels != UNLABELED])]
    check_overlap(head.class_names, present, features, head_path)
    return score(head.class_names, present, _predicted_chunks(features, head))


def evaluate_images(source: ImageSource, head_path: Path, *, model: Path | None = None, batch_size: int = 256,
                    workers: int = 1, device: Device = Device.auto) -> dict:
    """evaluate() for labeled images, featurized in memory."""
    present = [source.class_names[label] for label in np.unique(source.labels[source.labels != UNLABELED])]
    names, chunks = predict_images(source, head_path, model=model, batch_size=batch_size, workers=workers,
                                   device=device)
    check_overlap(names, present, source.spec, head_path)
    return score(names, present, chunks)


def check_overlap(head_classes: list[str], data_classes: list[str], data: object, head_path: Path) -> None:
    """Refuse data none of whose classes the head knows; warn when the two sets differ."""
    if not data_classes:
        raise DiffclassError(f"{data} has no labeled rows to evaluate on")
    if not set(data_classes) & set(head_classes):
        raise DiffclassError(f"none of the classes of {data} ({', '.join(data_classes[:5])}) is one {head_path} "
                             f"knows ({', '.join(head_classes[:5])}): is it the right head?")
    unknown, unseen = sorted(set(data_classes) - set(head_classes)), sorted(set(head_classes) - set(data_classes))
    if unknown:
        log.warning(f"{data} has classes {head_path} never saw, so it gets them all wrong: {', '.join(unknown)}")
    if unseen:
        log.warning(f"{data} has no labeled rows of: {', '.join(unseen)}")


def score(names: list[str], present: list[str], chunks: Iterable[Predictions]) -> dict:
    """The metrics of every labeled row's prediction."""
    classes = names + sorted(set(present) - set(names))  # the head's classes first, then the data's others
    code = {name: i for i, name in enumerate(classes)}
    confusion = np.zeros((len(classes), len(classes)), np.int64)
    for predictions in chunks:  # the head's probability columns are codes 0.. of `classes` already
        labeled = predictions.truth != UNLABELED
        code_of_label = np.array([code.get(name, -1) for name in predictions.truth_names], np.int64)
        truth, guess = code_of_label[predictions.truth[labeled]], predictions.proba[labeled].argmax(axis=1)
        np.add.at(confusion, (truth, guess), 1)
    right, support, predicted = np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0)
    precision, recall = _ratio(right, predicted), _ratio(right, support)
    f1 = _ratio(2 * precision * recall, precision + recall)  # 0 for a class of one side only, by definition
    rows = int(support.sum())
    return {
        "rows": rows,
        "accuracy": float(right.sum() / rows),
        "balanced_accuracy": float(recall[support > 0].mean()),  # over the classes the data has
        "classes": classes,
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
                      for c, p, r, f, n in zip(classes, precision, recall, f1, support)},
        "confusion_matrix": confusion.tolist(),
    }


def _ratio(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    """part / whole, 0 where whole is 0."""
    return np.divide(part, whole, out=np.zeros(len(part)), where=whole > 0)


def format_report(report: dict) -> str:
    """The evaluation as text for people."""
    lines = [f"rows: {report['rows']}", f"accuracy: {report['accuracy']:.4f}",
             f"balanced_accuracy: {report['balanced_accuracy']:.4f}", "",
             f"{'class':<16}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for name, row in report["per_class"].items():
        lines.append(f"{name:<16}{row['precision']:>10.3f}{row['recall']:>10.3f}{row['f1']:>10.3f}"
                     f"{row['support']:>10d}")
    width = max(6, *(len(c) + 1 for c in report["classes"]))
    lines += ["", "confusion matrix (rows: true, columns: predicted)",
              " " * 16 + "".join(f"{c:>{width}}" for c in report["classes"])]
    for name, row in zip(report["classes"], report["confusion_matrix"]):
        lines.append(f"{name:<16}" + "".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)
