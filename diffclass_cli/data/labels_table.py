"""Labels from a table (`path,label` CSV, the form annotation tools export) instead of class
subfolders: `featurize --labels` and `fit --labels`."""

import csv
from pathlib import Path, PurePosixPath

import numpy as np

from diffclass_cli.console import log
from diffclass_cli.data.sources import UNLABELED
from diffclass_cli.errors import DiffclassError
from diffclass_cli.files import existing_file

MAX_TABLE_BYTES = 256 * 1024 * 1024


def read_labels_table(path: Path) -> dict[str, str]:
    """{path: label} from a CSV of `path,label` rows. A header is optional; with one, the `path`
    and `label` columns may be anywhere (as in `diffclass suggest`'s list) and rows whose label is
    empty are left unlabeled."""
    path = existing_file(path, "labels table")
    if path.stat().st_size > MAX_TABLE_BYTES:
        raise DiffclassError(f"{path} is larger than {MAX_TABLE_BYTES >> 20} MB; is it a labels table?")
    table: dict[str, str] = {}
    columns, header = (0, 1), False
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        for number, row in enumerate(csv.reader(f), 1):
            names = [c.strip().lower() for c in row]
            if number == 1 and "path" in names and "label" in names:
                columns, header = (names.index("path"), names.index("label")), True
                continue
            if not row or (header and len(row) > max(columns) and not row[columns[1]].strip()):
                continue  # a list to fill in: rows not filled in yet stay unlabeled
            if len(row) <= max(columns) or not row[columns[0]] or not row[columns[1]].strip():
                raise DiffclassError(f"{path}, line {number}: expected 'path,label', got {','.join(row)!r}")
            name, label = _normalised(row[columns[0]]), row[columns[1]].strip()
            if table.setdefault(name, label) != label:
                raise DiffclassError(f"{path}, line {number}: {row[0]} is labeled both {table[name]!r} and {label!r}")
    if not table:
        raise DiffclassError(f"{path} has no 'path,label' rows")
    return table


def labels_for(paths: list[str], table: dict[str, str], table_path: Path) -> tuple[np.ndarray, list[str]]:
    """Labels `[N]` (UNLABELED for paths the table does not name) and the sorted class names.

    A table path matches a row's path exactly, or after dropping leading folders
    (`photos/train/cat/1.jpg` names the row `cat/1.jpg` of a feature file of `photos/train`),
    or by file name alone when only one row has that name."""
    where = {_normalised(p): i for i, p in enumerate(paths)}
    by_name: dict[str, list[int]] = {}
    for p, i in where.items():
        by_name.setdefault(PurePosixPath(p).name, []).append(i)
    class_names = sorted(set(table.values()))
    labels = np.full(len(paths), UNLABELED, dtype=np.int64)
    unmatched = []
    for name, label in table.items():
        row = _match(name, where, by_name)
        if row is None:
            unmatched.append(name)
        else:
            labels[row] = class_names.index(label)
    if len(unmatched) == len(table):
        raise DiffclassError(f"none of the {len(table)} paths of {table_path} names an image here "
                             f"(e.g. {unmatched[0]!r}; here: {paths[0]!r}, ...)")
    if unmatched:
        log.warning(f"{len(unmatched)} of the {len(table)} paths of {table_path} name no image here: "
                    + ", ".join(unmatched[:3]) + (", ..." if len(unmatched) > 3 else ""))
    log.info(f"labels from {table_path}: {int((labels != UNLABELED).sum())} labeled images in "
             f"{len(class_names)} classes, {int((labels == UNLABELED).sum())} unlabeled")
    return labels, class_names


def _normalised(path: str) -> str:
    return PurePosixPath(path.replace("\\", "/")).as_posix()  # never stripped: a name may hold spaces


def _match(name: str, where: dict[str, int], by_name: dict[str, list[int]]) -> int | None:
    parts = PurePosixPath(name).parts
    for start in range(len(parts)):
        row = where.get(PurePosixPath(*parts[start:]).as_posix())
        if row is not None:
            return row
    same_name = by_name.get(parts[-1], []) if parts else []
    return same_name[0] if len(same_name) == 1 else None
