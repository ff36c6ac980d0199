"""fit / predict / evaluate: heads applied to feature files."""

import csv
import json
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TextIO

import numpy as np
from sklearn import metrics
from sklearn.pipeline import Pipeline

from diffclass_cli import __version__
from diffclass_cli.choices import Device, OutputFormat
from diffclass_cli.console import log, progress
from diffclass_cli.data.labels_table import labels_for, read_labels_table
from diffclass_cli.data.loading import DecodePool, report_skipped
from diffclass_cli.data.sources import UNLABELED, ImageSource
from diffclass_cli.errors import DiffclassError
from diffclass_cli.extractor_format import read_metadata
from diffclass_cli.featurize.extract import DEFAULT_MODEL, feature_batches
from diffclass_cli.featurize.h5 import (
    FeatureReader,
    Rows,
    check_finite,
    open_feature_file,
    open_feature_files,
    storable,
    take_across,
)
from diffclass_cli.featurize.runtime import ExtractorSession
from diffclass_cli.files import existing_file, refuse_overwrite, sha256_file
from diffclass_cli.heads import MAX_UNLABELED
from diffclass_cli.heads.models import SEMI_SUPERVISED, HeadKind, make_head, training_labels
from diffclass_cli.heads.store import load_head, save_head
from diffclass_cli.heads.suggest import suspicious_labels


def fit_head(features: Path, out: Path, kind: HeadKind = HeadKind.auto, per_class: int | None = None,
             seed: int = 0, C: float = 1.0, alpha: float = 1e-3, hidden: int = 128, cv: int | None = None,
             max_unlabeled: int = MAX_UNLABELED, overwrite: bool = False, *, unlabeled: Sequence[Path] = (),
             labels: Path | None = None, strict_labels: bool = False) -> dict:
    """Fit a head on the labeled rows of a feature file (and, for semi / auto, a sample of at
    most `max_unlabeled` of its other rows and of every row of the `unlabeled` files) and save it;
    returns its info. Only those rows are read. `labels`: a `path,label` table that labels the
    rows instead of their class folders. Labeled rows that sit with another class are reported
    (an error with `strict_labels`)."""
    refuse_overwrite(out, overwrite, inputs=(features, *unlabeled))
    if unlabeled and kind not in SEMI_SUPERVISED:
        log.warning(f"the {kind.value} head fits on labeled rows only: --unlabeled is used by auto and semi")
    with open_feature_files(features, unlabeled) as readers:
        main = readers[0]
        own_labels, class_names = main.labels, main.class_names
        if labels is not None:
            own_labels, class_names = labels_for(main.paths(), read_labels_table(labels), labels)
        every_label = np.concatenate([own_labels, *(np.full(r.rows, UNLABELED, np.int64) for r in readers[1:])])
        rows, targets = training_labels(every_label, kind, per_class, seed, cv, max_unlabeled, class_names)
        table = take_across(readers, rows)
        attrs = main.attrs
    check_finite(table, features)
    suspicious = _check_labels(table, targets, class_names, strict_labels)
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
        "extractor_path": attrs.get("extractor_path", ""),
        "suspicious_labels": suspicious,
        "fitted_on": {"file": str(features), "unlabeled_files": [str(p) for p in unlabeled],
                      "labels_table": str(labels) if labels else None, "source": attrs.get("source", ""),
                      "labeled_rows": labeled, "unlabeled_rows": len(rows) - labeled, "max_unlabeled": max_unlabeled,
                      "per_class": per_class, "seed": seed},
        "diffclass_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    save_head(out, head, info, overwrite)
    log.info(f"wrote {out}: {kind.value} head on {labeled} labeled rows"
             + (f" and {len(rows) - labeled} unlabeled ones" if kind in SEMI_SUPERVISED else ""))
    return info


def _check_labels(table: Rows, targets: np.ndarray, class_names: list[str], strict: bool) -> list[dict]:
    """The labeled rows that look like another class, each said on stderr; an error if `strict`."""
    labeled_counts = np.bincount(targets[targets != UNLABELED])
    if labeled_counts.max(initial=0) < 2:
        return []  # one labeled row per class: nothing to compare a label with
    found = [{"path": table.paths[f["row"]], "given": class_names[f["given"]],
              "looks_like": class_names[f["looks_like"]], "score": round(f["score"], 3)}
             for f in suspicious_labels(table.features, targets)]
    for f in found:
        log.warning(f"label check: {f['path']} is labeled {f['given']!r} but sits with {f['looks_like']!r} "
                    f"(score {f['score']})")
    if found and strict:
        raise DiffclassError(f"{len(found)} labeled image(s) look like another class (--strict-labels); the first: "
                             f"{found[0]['path']} ({found[0]['given']!r}, looks like {found[0]['looks_like']!r})")
    return found


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
    head, info = load_head(head_path)
    for path in files:
        with open_feature_file(path) as reader:
            _check_compatible(reader, info, path, head_path)
    return class_names(head, info), (chunk for path in files for chunk in _predicted_chunks(path, head, info))


def _predicted_chunks(features: Path, head: Pipeline, info: dict) -> Iterator[Predictions]:
    with open_feature_file(features) as reader, \
            progress(total=reader.rows, desc="predicting", unit="row", delay=2) as bar:  # long files only
        names = reader.class_names
        for rows in reader.chunks():
            check_finite(rows, features)
            yield _predictions(head, info, rows.features, rows.paths, rows.labels, names)
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


def predict_images(source: ImageSource, head_path: Path, model: Path | None = None, batch_size: int = 256,
                   workers: int = 1, device: Device = Device.auto, threads: int | None = None
                   ) -> tuple[list[str], Iterator[Predictions]]:
    """The head's class names, and the predictions of the images of `source`, batch by batch,
    featurized in memory with the extractor the head was fitted on (`model`, or found by
    head_extractor); unreadable images are skipped."""
    head, info = load_head(head_path)
    model = head_extractor(info, head_path, model)
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
                yield _predictions(head, info, batch.features, [source.ids[row] for row in batch.rows],
                                   source.labels[batch.rows], source.class_names)
    report_skipped(skipped)


def class_names(head: Pipeline, info: dict) -> list[str]:
    """The head's classes, in the order of its probability columns."""
    return [info["class_names"][c] for c in head.classes_]


def _predictions(head: Pipeline, info: dict, features: np.ndarray, paths: list[str],
                 truth: np.ndarray, truth_names: list[str]) -> Predictions:
    names = class_names(head, info)
    proba = head.predict_proba(features) if len(features) else np.empty((0, len(names)))
    best = proba.argmax(axis=1)
    return Predictions(paths, [names[i] for i in best], proba.max(axis=1), proba, names, truth, truth_names)


def _check_compatible(reader: FeatureReader, info: dict, features: Path, head_path: Path) -> None:
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
        row = [record["path"], record["label"], f"{record['confidence']:.6f}"]
        if "status" in record:
            row.append(record["status"])
        for top in record.get("top", [])[1:]:
            row += [top["label"], f"{top['confidence']:.6f}"]
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
    head, info = load_head(head_path)
    with open_feature_file(features) as reader:
        _check_compatible(reader, info, features, head_path)
        present = [reader.class_names[label] for label in np.unique(reader.labels[reader.labels != UNLABELED])]
    names = class_names(head, info)
    check_overlap(names, present, features, head_path)
    return score(names, present, _predicted_chunks(features, head, info))


def evaluate_images(source: ImageSource, head_path: Path, model: Path | None = None, batch_size: int = 256,
                    workers: int = 1, device: Device = Device.auto) -> dict:
    """evaluate() for labeled images, featurized in memory."""
    present = [source.class_names[label] for label in np.unique(source.labels[source.labels != UNLABELED])]
    names, chunks = predict_images(source, head_path, model, batch_size, workers, device)
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
    truth, guess = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for predictions in chunks:  # the head's probability columns are codes 0.. of `classes` already
        labeled = predictions.truth != UNLABELED
        code_of_label = np.array([code.get(name, -1) for name in predictions.truth_names], np.int64)
        truth.append(code_of_label[predictions.truth[labeled]])
        guess.append(predictions.proba[labeled].argmax(axis=1))
    truth, guess, codes = np.concatenate(truth), np.concatenate(guess), np.arange(len(classes))
    with warnings.catch_warnings():  # classes of one side only: their scores are 0 by definition
        warnings.simplefilter("ignore")
        precision, recall, f1, support = metrics.precision_recall_fscore_support(truth, guess, labels=codes,
                                                                                 zero_division=0)
        balanced = metrics.balanced_accuracy_score(truth, guess)
    return {
        "rows": len(truth),
        "accuracy": metrics.accuracy_score(truth, guess),
        "balanced_accuracy": balanced,
        "classes": classes,
        "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
                      for c, p, r, f, n in zip(classes, precision, recall, f1, support)},
        "confusion_matrix": metrics.confusion_matrix(truth, guess, labels=codes).tolist(),
    }


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
