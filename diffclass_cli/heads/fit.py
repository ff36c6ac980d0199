"""fit: a head fitted on the labeled rows of feature files (and unlabeled ones), saved as skops."""

from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from diffclass_cli import __version__
from diffclass_cli.console import log
from diffclass_cli.data.labels_table import labels_for, read_labels_table
from diffclass_cli.data.sources import UNLABELED
from diffclass_cli.errors import DiffclassError
from diffclass_cli.features.h5 import Rows, check_finite, open_feature_files, take_across
from diffclass_cli.files import refuse_overwrite
from diffclass_cli.heads import MAX_UNLABELED
from diffclass_cli.heads.models import SEMI_SUPERVISED, HeadKind, make_head, training_labels
from diffclass_cli.heads.store import save_head
from diffclass_cli.heads.suggest import suspicious_labels


def fit_head(features: Path, out: Path, head: HeadKind | str = HeadKind.auto, *, per_class: int | None = None,
             seed: int = 0, C: float = 1.0, alpha: float = 1e-3, hidden: int = 128, cv: int | None = None,
             max_unlabeled: int = MAX_UNLABELED, overwrite: bool = False, unlabeled: Sequence[Path] | None = (),
             labels: Path | None = None, strict_labels: bool = False) -> dict:
    """Fit a head on the labeled rows of a feature file (and, for semi / auto, a sample of at
    most `max_unlabeled` of its other rows and of every row of the `unlabeled` files) and save it;
    returns its info. Only those rows are read. `labels`: a `path,label` table that labels the
    rows instead of their class folders. Labeled rows that sit with another class are reported
    (an error with `strict_labels`)."""
    kind, unlabeled = HeadKind(head), [Path(u) for u in unlabeled or ()]
    refuse_overwrite(out, overwrite, inputs=(features, *unlabeled))
    if unlabeled and kind not in SEMI_SUPERVISED:
        log.warning(f"the {kind.value} head fits on labeled rows only: --unlabeled is used by auto and semi")
    with open_feature_files(features, unlabeled) as readers:
        main = readers[0]
        own_labels, class_names = main.labels, main.class_names
        if labels is not None:
            own_labels, class_names = labels_for(main.paths(), read_labels_table(labels), labels,
                                                 main.class_names)
        every_label = np.concatenate([own_labels, *(np.full(r.rows, UNLABELED, np.int64) for r in readers[1:])])
        rows, targets = training_labels(every_label, kind, per_class, seed=seed, cv=cv, max_unlabeled=max_unlabeled,
                                        class_names=class_names)
        table = take_across(readers, rows)
        attrs = main.attrs
    check_finite(table, features)
    suspicious = _check_labels(table, targets, class_names, strict_labels)
    estimator = make_head(kind, C=C, alpha=alpha, hidden=hidden, cv=cv, seed=seed)
    estimator.fit(table.features, targets)
    params = {"C": C, "alpha": alpha, "hidden": hidden, "cv": cv}
    if cv:  # keep the refitted best model only: a plain Pipeline, nothing of the search
        search = estimator.steps[-1][1]
        estimator.steps[-1] = ("classify", search.best_estimator_)
        params |= {k: float(v) for k, v in search.best_params_.items()}
        log.info(f"cross-validation chose {search.best_params_}")
    labeled = int((targets != UNLABELED).sum())
    if kind == HeadKind.auto:
        chooser = estimator.steps[-1][1]
        params |= {"choice": chooser.choice_.value, "reason": chooser.reason_}
        log.info(f"auto: {chooser.choice_.value} ({chooser.reason_})")
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
    save_head(out, estimator, info, overwrite)
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
